"""The default store: one SQLite file, WAL, on sqlite-utils.

Concurrency: every write goes through one connection under a lock, inside
``BEGIN IMMEDIATE`` (so a write never fails half-way on a lock upgrade);
reads use one connection per thread and never block writers (WAL). Across
processes, ``busy_timeout`` makes writers queue instead of failing.

Switching a fresh file to WAL is the one step SQLite does not queue behind
``busy_timeout`` (it answers "database is locked" at once when another process
is opening the same file), so :func:`_use_wal` retries it until the same
deadline.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlite_utils

from abi_engine.events import Event, ExecutionEventRef, OutboxEvent, resolve
from abi_engine.models import (
    Integration,
    Token,
    User,
    Workflow,
)
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage._nodelocks import NodeLocks
from abi_engine.storage._refs import PACKED_TYPE, pack, unpack
from abi_engine.storage._rows import (
    _TOKEN_COLUMNS,
    _WORKFLOW_COLUMNS,
    _department,
    _row_to_token,
    _row_to_workflow,
    _token_tree,
)
from abi_engine.storage._templates import TemplatesMixin
from abi_engine.storage.base import (
    OWNED_ROWS,
    OwnedKind,
    StoredEvent,
    TokenLimitReached,
    WorkflowQuery,
)
from abi_engine.storage.migrations import MIGRATIONS
from abi_engine.storage.sqlite_executions import ExecutionsMixin
from abi_engine.storage.sqlite_schedules import SchedulesMixin
from abi_engine.storage.sqlite_webhooks import WebhooksMixin, subscribed_types

__all__ = ["SQLiteStore"]

T = TypeVar("T")

Durability = Literal["normal", "full"]

_BUSY_TIMEOUT_MS = 60_000


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out other processes doing the same."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            raise sqlite3.OperationalError(f"cannot switch the database to WAL (mode {mode})")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class SQLiteStore(ExecutionsMixin, SchedulesMixin, WebhooksMixin, TemplatesMixin):
    """A :class:`~abi_engine.storage.Store` on one SQLite database file.

    :param path: a file path (created when missing) or ``":memory:"``.
    :param durability: ``"normal"`` (WAL, ``synchronous=NORMAL``: survives a
        killed process) or ``"full"`` (``synchronous=FULL``: survives power loss).
    """

    _MARK = "?"  # the placeholder of the shared template SQL

    blocking = False

    def __init__(self, path: str | Path, *, durability: Durability = "normal") -> None:
        self.path = str(path)
        self.durability = durability
        self._memory = self.path == ":memory:"
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        self.db = sqlite_utils.Database(self._writer)
        self._migrate()
        self._nodes = None if self._memory else NodeLocks(str(Path(self.path).resolve()))

    # -- connections -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not self._memory:
            _use_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError("the store is closed")
        if self._memory:
            return self._writer
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._memory:
            with self._write_lock:
                yield self._writer
        else:
            yield self._reader()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One serialized write transaction (``BEGIN IMMEDIATE``)."""
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (disk full, I/O error) leaves the transaction
                # open: roll it back, or every later write would fail to begin.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction and return its result."""
        with self.transaction() as conn:
            return fn(conn)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._nodes is not None:
            self._nodes.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()

    # -- schema ------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            current = conn.execute(
                "SELECT coalesce(max(version), 0) FROM schema_migrations"
            ).fetchone()[0]
            for version, migration in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                migration(self.db)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (?, ?, strftime('%s','now') * 1000)",
                    (version, migration.__name__),
                )

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])

    # -- events --------------------------------------------------------------------

    @staticmethod
    def _insert_events(conn: sqlite3.Connection, events: Sequence[OutboxEvent]) -> None:
        if not events:
            return
        rows: list[tuple[Any, ...]] = []
        refs: list[ExecutionEventRef] = []
        for e in resolve(events, lambda: subscribed_types(conn)):
            if isinstance(e, ExecutionEventRef):
                refs.append(e)
            else:
                rows.append((e.id, e.type, to_ms(e.timestamp), dumps(e.data), None))
        if refs:  # one row for all of them (storage/_refs.py)
            first, at, text = pack(refs)
            rows.append((first, PACKED_TYPE, at, None, text))
        conn.executemany(
            "INSERT INTO events (id, type, timestamp, data, refs) VALUES (?, ?, ?, ?, ?)", rows
        )

    def insert_events(self, events: Sequence[OutboxEvent]) -> None:
        with self.transaction() as conn:
            self._insert_events(conn, events)

    def events_after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, id, type, timestamp, data, refs FROM events"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        found: list[StoredEvent] = []
        for position, event_id, kind, timestamp, data, refs in rows:
            if refs is not None:
                found.extend(StoredEvent(seq=position, event=r) for r in unpack(event_id, refs))
            else:
                at = from_ms(timestamp)
                assert at is not None
                event = Event(id=event_id, type=kind, timestamp=at, data=loads(data))
                found.append(StoredEvent(seq=position, event=event))
        return found

    def ensure_user(self, user_id: str, created_at: datetime) -> User:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO users (id, created_at) VALUES (?, ?)",
                (user_id, to_ms(created_at)),
            )
            row = conn.execute("SELECT created_at FROM users WHERE id = ?", (user_id,)).fetchone()
        return User(id=user_id, created_at=from_ms(row[0]))  # type: ignore[arg-type]

    def insert_token(self, token: Token, token_hash: str, *, max_live: int | None = None) -> bool:
        values = (
            token.id,
            token_hash,
            token.user_id,
            dumps(sorted(token.scopes)),
            token.name,
            to_ms(token.created_at),
            token.parent_id,
        )
        sql = "INSERT INTO tokens (id, hash, user_id, scopes, name, created_at, parent_id)"
        with self.transaction() as conn:  # BEGIN IMMEDIATE: no other write between count and insert
            if max_live is not None:
                _check_live_tokens(conn, token, max_live)
            if token.parent_id is None:
                conn.execute(sql + " VALUES (?, ?, ?, ?, ?, ?, ?)", values)
                return True
            cursor = conn.execute(
                sql + " SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM tokens"
                " WHERE id = ? AND user_id = ? AND revoked_at IS NULL)",
                (*values, token.parent_id, token.user_id),
            )
            return cursor.rowcount > 0

    def get_token(self, token_hash: str) -> Token | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                (token_hash,),
            ).fetchone()
        return None if row is None else _row_to_token(row)

    # -- workflows ----------------------------------------------------------------------

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        where, args = (
            ("WHERE revoked_at IS NULL", ())
            if user_id is None
            else ("WHERE revoked_at IS NULL AND user_id = ?", (user_id,))
        )
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {where} ORDER BY created_at DESC, id DESC",
                args,
            ).fetchall()
        return [_row_to_token(row) for row in rows]

    def list_user_tokens(self, user_id: str, page: int, page_size: int) -> tuple[list[Token], int]:
        live = "WHERE revoked_at IS NULL AND user_id = ?"
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM tokens {live}", (user_id,)).fetchone()
            rows = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens {live}"
                " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (user_id, page_size, (page - 1) * page_size),
            ).fetchall()
        return [_row_to_token(row) for row in rows], int(total[0] if total else 0)

    def revoke_token(
        self, token_id: str, revoked_at: datetime, user_id: str | None = None
    ) -> list[str]:
        sql = "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        args: tuple[Any, ...] = (to_ms(revoked_at), token_id)
        if user_id is not None:
            sql, args = sql + " AND user_id = ?", (*args, user_id)
        tree = _token_tree("?")
        live = "WHERE revoked_at IS NULL AND id IN (SELECT id FROM tree)"
        with self.transaction() as conn:
            if conn.execute(sql, args).rowcount == 0:
                return []
            rows = conn.execute(
                f"{tree} SELECT id FROM tokens {live} ORDER BY id", (token_id,)
            ).fetchall()
            if rows:
                conn.execute(
                    f"{tree} UPDATE tokens SET revoked_at = ? {live}",
                    (token_id, to_ms(revoked_at)),
                )
        return [token_id, *(row[0] for row in rows)]

    def insert_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO workflows (id, name, description, type, status, department,"
                " configuration, integrations, metadata, created_at, updated_at,"
                " activated_at, deactivated_at, created_by)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    workflow.id,
                    workflow.name,
                    workflow.description,
                    workflow.type,
                    workflow.status.value,
                    _department(workflow.metadata),
                    dumps(workflow.configuration),
                    dumps([{"id": i.id, "required": i.required} for i in workflow.integrations]),
                    dumps(workflow.metadata),
                    to_ms(workflow.created_at),
                    to_ms(workflow.updated_at),
                    to_ms(workflow.activated_at),
                    to_ms(workflow.deactivated_at),
                    workflow.created_by,
                ),
            )
            self._insert_events(conn, events)

    def get_workflow(self, workflow_id: str) -> Workflow | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE id = ? AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else _row_to_workflow(row)

    def workflow_version(self, workflow_id: str) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT updated_at FROM workflows WHERE id = ? AND deleted_at IS NULL",
                (workflow_id,),
            ).fetchone()
        return None if row is None else from_ms(row[0])

    def update_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE workflows SET name = ?, description = ?, status = ?, department = ?,"
                " configuration = ?, integrations = ?, metadata = ?, updated_at = ?,"
                " activated_at = ?, deactivated_at = ?"
                " WHERE id = ? AND deleted_at IS NULL",
                (
                    workflow.name,
                    workflow.description,
                    workflow.status.value,
                    _department(workflow.metadata),
                    dumps(workflow.configuration),
                    dumps([{"id": i.id, "required": i.required} for i in workflow.integrations]),
                    dumps(workflow.metadata),
                    to_ms(workflow.updated_at),
                    to_ms(workflow.activated_at),
                    to_ms(workflow.deactivated_at),
                    workflow.id,
                ),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_events(conn, events)
            return True

    def delete_workflow(
        self, workflow_id: str, deleted_at: datetime, events: Sequence[Event] = ()
    ) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute(
                "UPDATE workflows SET deleted_at = ?, status = 'inactive'"
                " WHERE id = ? AND deleted_at IS NULL",
                (to_ms(deleted_at), workflow_id),
            )
            if cursor.rowcount == 0:
                return False
            self._insert_events(conn, events)
            return True

    def list_workflows(self, query: WorkflowQuery) -> tuple[list[Workflow], int]:
        where = ["deleted_at IS NULL"]
        args: list[Any] = []
        for column, value in (
            ("status", query.status.value if query.status else None),
            ("type", query.type),
            ("department", query.department),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = " AND ".join(where)
        order = "DESC" if query.sort_order == "desc" else "ASC"
        sort_column = {"created_at": "created_at", "updated_at": "updated_at", "name": "name"}[
            query.sort_by
        ]
        offset = (query.page - 1) * query.page_size
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM workflows WHERE {clause}", args).fetchone()[
                0
            ]
            rows = conn.execute(
                f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE {clause}"
                f" ORDER BY {sort_column} {order}, id {order} LIMIT ? OFFSET ?",
                [*args, query.page_size, offset],
            ).fetchall()
        return [_row_to_workflow(row) for row in rows], int(total)

    # -- integrations -----------------------------------------------------------------------

    def put_integration(self, integration: Integration) -> bool:
        with self.transaction() as conn:
            existed = conn.execute(
                "SELECT 1 FROM integrations WHERE id = ?", (integration.id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO integrations (id, provider, config, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " provider = excluded.provider, config = excluded.config,"
                " updated_at = excluded.updated_at",
                (
                    integration.id,
                    integration.provider,
                    dumps(integration.config),
                    to_ms(integration.created_at),
                    to_ms(integration.updated_at),
                ),
            )
        return existed is None

    @staticmethod
    def _row_to_integration(row: tuple[Any, ...]) -> Integration:
        return Integration(
            id=row[0],
            provider=row[1],
            config=loads(row[2]),
            created_at=from_ms(row[3]),  # type: ignore[arg-type]
            updated_at=from_ms(row[4]),  # type: ignore[arg-type]
        )

    def get_integration(self, integration_id: str) -> Integration | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, provider, config, created_at, updated_at FROM integrations"
                " WHERE id = ?",
                (integration_id,),
            ).fetchone()
        return None if row is None else self._row_to_integration(row)

    def list_integrations(self, page: int, page_size: int) -> tuple[list[Integration], int]:
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM integrations").fetchone()[0]
            rows = conn.execute(
                "SELECT id, provider, config, created_at, updated_at FROM integrations"
                " ORDER BY id LIMIT ? OFFSET ?",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [self._row_to_integration(row) for row in rows], int(total)

    def count_owned(self, kind: OwnedKind, user_id: str, limit: int) -> int:
        rows = OWNED_ROWS[kind].format(owner="?")
        with self._read() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM ({rows} LIMIT ?)", (user_id, limit)
            ).fetchone()
        return int(row[0])

    def delete_integration(self, integration_id: str) -> bool:
        with self.transaction() as conn:
            cursor = conn.execute("DELETE FROM integrations WHERE id = ?", (integration_id,))
            return cursor.rowcount > 0

    def existing_integration_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        marks = ", ".join("?" for _ in wanted)
        with self._read() as conn:
            rows = conn.execute(f"SELECT id FROM integrations WHERE id IN ({marks})", wanted)
            return {row[0] for row in rows}


def _check_live_tokens(conn: sqlite3.Connection, token: Token, max_live: int) -> None:
    """Raise ``TokenLimitReached`` when ``token``'s user holds ``max_live`` live tokens.

    A parent no longer live is left to the insert (refused there), not counted as full.
    """
    parent_live, live = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM tokens WHERE id = ? AND user_id = ? AND revoked_at IS NULL),"
        " (SELECT count(*) FROM tokens WHERE user_id = ? AND revoked_at IS NULL)",
        (token.parent_id, token.user_id, token.user_id),
    ).fetchone()
    if (parent_live or token.parent_id is None) and live >= max_live:
        raise TokenLimitReached(max_live)
