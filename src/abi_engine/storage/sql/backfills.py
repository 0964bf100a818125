"""Schedule backfills in storage (mixed into :class:`~abi_engine.storage.sql.store.SQLStore`).

A backfill is claimed by one process at a time (a lease, renewed at each step);
each step's write is a compare-and-set on the holder and the ``running``
status, so a cancel (or another process taking over an expired lease) stops
the holder at its next due time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from abi_engine.events import OutboxEvent
from abi_engine.models_backfills import BackfillRun, BackfillStatus
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage.records_backfills import BackfillProgress, BackfillRecord
from abi_engine.storage.sql.dialect import Dialect

__all__ = ["BackfillsMixin"]

_COLUMNS = (
    "id, schedule_id, status, start_at, end_at, max_runs, overlap_policy, due_times, position,"
    " started, skipped, failed, truncated, last_error, created_by, created_at, updated_at,"
    " finished_at, owner, lease_until, total"
)
#: The columns of a listed backfill: its due times not read (``total`` counts them).
_LISTED = _COLUMNS.replace(" due_times,", " NULL,")


def _record(row: Sequence[Any]) -> BackfillRecord:
    run = BackfillRun(
        id=row[0],
        schedule_id=row[1],
        status=BackfillStatus(row[2]),
        start=from_ms(row[3]),  # type: ignore[arg-type]
        end=from_ms(row[4]),  # type: ignore[arg-type]
        max_runs=int(row[5]),
        overlap_policy=row[6],
        total=int(row[20]),
        started=int(row[9]),
        skipped=int(row[10]),
        failed=int(row[11]),
        truncated=bool(row[12]),
        last_error=row[13],
        created_by=row[14],
        created_at=from_ms(row[15]),  # type: ignore[arg-type]
        updated_at=from_ms(row[16]),  # type: ignore[arg-type]
        finished_at=from_ms(row[17]),
    )
    return BackfillRecord(
        run=run,
        due_times=[from_ms(ms) for ms in loads(row[7]) or []],  # type: ignore[misc]
        position=int(row[8]),
        owner=row[18],
        lease_until=from_ms(row[19]),
    )


class BackfillsMixin:
    """Backfill storage, in the shared SQL."""

    dialect: ClassVar[Dialect]
    _read: Callable[[], Any]
    write: Callable[[Callable[[Any], Any]], Any]
    _insert_events: Callable[[Any, Sequence[OutboxEvent]], None]

    def insert_backfill(self, record: BackfillRecord) -> None:
        run = record.run
        args = (
            run.id,
            run.schedule_id,
            run.status.value,
            to_ms(run.start),
            to_ms(run.end),
            run.max_runs,
            run.overlap_policy,
            dumps([to_ms(d) for d in record.due_times]),
            record.position,
            run.started,
            run.skipped,
            run.failed,
            run.truncated,
            run.last_error,
            run.created_by,
            to_ms(run.created_at),
            to_ms(run.updated_at),
            to_ms(run.finished_at) if run.finished_at else None,
            record.owner,
            to_ms(record.lease_until) if record.lease_until else None,
            len(record.due_times),
        )
        marks = ", ".join("?" * len(args))
        sql = f"INSERT INTO schedule_backfills ({_COLUMNS}) VALUES ({marks})"

        def insert(conn: Any) -> None:
            conn.execute(sql, args)
            self._insert_events(conn, record.events)

        self.write(insert)

    def get_backfill(self, backfill_id: str) -> BackfillRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM schedule_backfills WHERE id = ?", (backfill_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def list_backfills(
        self, schedule_id: str, status: str | None, page: int, page_size: int
    ) -> tuple[list[BackfillRecord], int]:
        """One page of the schedule's backfills (only those in ``status`` when given),
        newest first, and how many there are; their ``due_times`` are not read (empty)."""
        clause, args = "WHERE schedule_id = ?", [schedule_id]
        if status is not None:
            clause += " AND status = ?"
            args.append(status)
        with self._read() as conn:
            total = conn.execute(
                f"SELECT count(*) FROM schedule_backfills {clause}", args
            ).fetchone()
            rows = conn.execute(
                f"SELECT {_LISTED} FROM schedule_backfills {clause}"
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                [*args, page_size, (page - 1) * page_size],
            ).fetchall()
        return [_record(r) for r in rows], int(total[0] if total else 0)

    def claim_backfills(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[BackfillRecord]:
        """Take the running backfills no process holds (or whose lease ran out), at most
        ``limit``, for ``owner`` until ``lease_until``."""
        now_ms = to_ms(now)

        def claim(conn: Any) -> list[BackfillRecord]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM schedule_backfills WHERE status = 'running'"
                " AND (lease_until IS NULL OR lease_until < ?) ORDER BY id LIMIT ?",
                (now_ms, limit),
            ).fetchall()
            taken = []
            for row in rows:
                claimed = conn.execute(
                    "UPDATE schedule_backfills SET owner = ?, lease_until = ? WHERE id = ?"
                    " AND status = 'running' AND (lease_until IS NULL OR lease_until < ?)",
                    (owner, to_ms(lease_until), row[0], now_ms),
                ).rowcount
                if claimed:
                    record = _record(row)
                    record.owner, record.lease_until = owner, lease_until
                    taken.append(record)
            return taken

        return list(self.write(claim))

    def save_backfill_progress(self, progress: BackfillProgress) -> bool:
        """Write one step of a running backfill held by ``progress.owner``; ``False`` when it
        is no longer running or no longer held by it. A backfill cancelled meanwhile still
        takes the counters of its holder's last step (what it started), not its status."""
        p = progress
        counters = (p.position, p.started, p.skipped, p.failed, p.last_error)
        held = " WHERE id = ? AND owner = ? AND status = ?"

        def save(conn: Any) -> bool:
            row = conn.execute(
                "SELECT status FROM schedule_backfills WHERE id = ? AND owner = ?",
                (p.backfill_id, p.owner),
            ).fetchone()
            if row is None or row[0] not in ("running", "cancelled"):
                return False
            sets = "position = ?, started = ?, skipped = ?, failed = ?, last_error = ?"
            if row[0] == "cancelled":
                conn.execute(
                    f"UPDATE schedule_backfills SET {sets}" + held,
                    (*counters, p.backfill_id, p.owner, "cancelled"),
                )
                return False
            conn.execute(
                f"UPDATE schedule_backfills SET {sets}, updated_at = ?, lease_until = ?,"
                " status = ?, finished_at = ?" + held,
                (
                    *counters,
                    to_ms(p.updated_at),
                    to_ms(p.lease_until),
                    p.status,
                    to_ms(p.finished_at) if p.finished_at else None,
                    p.backfill_id,
                    p.owner,
                    "running",
                ),
            )
            self._insert_events(conn, p.events)
            return True

        return bool(self.write(save))

    def cancel_backfill(self, backfill_id: str, now: datetime) -> bool:
        """Mark a running backfill ``cancelled`` (its holder stops at its next due time);
        ``False`` when it is not running."""
        sql = (
            "UPDATE schedule_backfills SET status = 'cancelled', updated_at = ?,"
            " finished_at = ?, lease_until = NULL WHERE id = ? AND status = 'running'"
        )
        args = (to_ms(now), to_ms(now), backfill_id)
        return bool(self.write(lambda conn: conn.execute(sql, args).rowcount > 0))

    def release_backfills(self, owner: str) -> int:
        """Give back the running backfills ``owner`` holds (it stops): any process may take
        them at once."""
        sql = (
            "UPDATE schedule_backfills SET owner = NULL, lease_until = NULL"
            " WHERE owner = ? AND status = 'running'"
        )
        return int(self.write(lambda conn: conn.execute(sql, (owner,)).rowcount))
