"""The audit log in storage (mixed into :class:`~abi_engine.storage.sql.store.SQLStore`).

Entries are appended one after the other: a writer locks the one row of
``audit_head`` (``FOR UPDATE`` on PostgreSQL; on SQLite the write
transaction is ``BEGIN IMMEDIATE``, one writer at a time across processes),
reads the last id and hash there, and writes the entry and the new head in
the same transaction. So two writers, in one process or in two, never hand
out the same id nor chain two entries to the same predecessor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from abi_engine.models_audit import AuditDraft, AuditEntry, AuditQuery, chain_hash, entry_content
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage.sql.dialect import Conn, Dialect

__all__ = ["AuditMixin"]

_COLUMNS = "id, at, actor, action, target_type, target_id, changes, prev_hash, hash"


def _entry(row: Sequence[Any]) -> AuditEntry:
    changes = loads(row[6]) or {}
    return AuditEntry(
        id=int(row[0]),
        at=from_ms(row[1]),  # type: ignore[arg-type]
        actor=row[2],
        action=row[3],
        target_type=row[4],
        target_id=row[5],
        before=changes.get("before"),
        after=changes.get("after"),
        prev_hash=row[7],
        hash=row[8],
    )


def _filters(query: AuditQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for column in ("actor", "action", "target_type", "target_id"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if query.since is not None:
        where.append("at >= ?")
        args.append(to_ms(query.since))
    if query.until is not None:
        where.append("at < ?")
        args.append(to_ms(query.until))
    return (" WHERE " + " AND ".join(where)) if where else "", args


class AuditMixin:
    """Audit log storage, in the shared SQL."""

    dialect: ClassVar[Dialect]
    _read: Callable[[], Any]
    write: Callable[[Callable[[Any], Any]], Any]

    def append_audit(self, draft: AuditDraft) -> AuditEntry:
        """Append ``draft`` to the log, chained to the last entry; the entry as stored."""

        def run(conn: Conn) -> AuditEntry:
            return self._append_audit(conn, draft)

        entry: AuditEntry = self.write(run)
        return entry

    def _append_audit(self, conn: Conn, draft: AuditDraft) -> AuditEntry:
        """Append ``draft`` in the transaction of ``conn`` (which it locks the head in)."""
        head = conn.execute(
            f"SELECT last_id, last_hash FROM audit_head WHERE id = 1{self.dialect.lock()}"
        ).fetchone()
        entry_id, prev_hash = int(head[0]) + 1, str(head[1])
        at_ms = int(to_ms(draft.at))  # type: ignore[arg-type]
        # The values as they will be read back (JSON), so the hash verifies later.
        changes = {"before": draft.before, "after": draft.after}
        text = dumps(changes)
        changes = loads(text)
        stored = AuditDraft(
            at=draft.at,
            actor=draft.actor,
            action=draft.action,
            target_type=draft.target_type,
            target_id=draft.target_id,
            before=changes["before"],
            after=changes["after"],
        )
        digest = chain_hash(prev_hash, entry_content(entry_id, at_ms, stored))
        conn.execute(
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry_id,
                at_ms,
                draft.actor,
                draft.action,
                draft.target_type,
                draft.target_id,
                text,
                prev_hash,
                digest,
            ),
        )
        conn.execute(
            "UPDATE audit_head SET last_id = ?, last_hash = ? WHERE id = 1", (entry_id, digest)
        )
        row = (entry_id, at_ms, draft.actor, draft.action, draft.target_type, draft.target_id)
        return _entry((*row, text, prev_hash, digest))

    def list_audit(self, query: AuditQuery) -> tuple[list[AuditEntry], int]:
        """A page of entries matching ``query``, newest first, and how many match."""
        where, args = _filters(query)
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM audit_log{where}", args).fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM audit_log{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*args, query.page_size, (query.page - 1) * query.page_size],
            ).fetchall()
        return [_entry(row) for row in rows], int(total[0] if total else 0)

    def audit_entries(self, after_id: int, limit: int) -> list[AuditEntry]:
        """Up to ``limit`` entries with ids above ``after_id``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [_entry(row) for row in rows]

    def audit_head(self) -> tuple[int, str]:
        """The last id and hash handed out (``(0, "")`` before the first entry)."""
        with self._read() as conn:
            row = conn.execute("SELECT last_id, last_hash FROM audit_head WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, "")

    def prune_audit(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest entries, those before the first one recorded
        at or after ``before``; how many went."""

        def run(conn: Conn) -> int:
            # Only a run of the oldest entries goes, so the kept ones stay one chain.
            stop = conn.execute(
                "SELECT min(id) FROM audit_log WHERE at >= ?", (to_ms(before),)
            ).fetchone()[0]
            return int(
                conn.execute(
                    "DELETE FROM audit_log WHERE id IN"
                    " (SELECT id FROM audit_log WHERE id < ? ORDER BY id LIMIT ?)",
                    (2**62 if stop is None else int(stop), limit),
                ).rowcount
            )

        return int(self.write(run))
