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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlite_utils

from abi_engine.storage._nodelocks import NodeLocks
from abi_engine.storage.migrations import MIGRATIONS
from abi_engine.storage.records import AGAIN, ExecutionRecord
from abi_engine.storage.sql.dialect import SQLITE
from abi_engine.storage.sql.execution_ops import execution_row, insert_execution_sql
from abi_engine.storage.sql.store import SQLStore

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


class SQLiteStore(SQLStore):
    """A :class:`~abi_engine.storage.Store` on one SQLite database file.

    :param path: a file path (created when missing) or ``":memory:"``.
    :param durability: ``"normal"`` (WAL, ``synchronous=NORMAL``: survives a
        killed process) or ``"full"`` (``synchronous=FULL``: survives power loss).
    """

    dialect = SQLITE

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
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A connection whose statements all read one snapshot (a read transaction)."""
        with self._read() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

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

    # -- what SQLite adds to the shared SQL ------------------------------------------------

    def _insert_executions(
        self, conn: sqlite3.Connection, records: Sequence[ExecutionRecord]
    ) -> list[Any]:
        """Insert execution rows one by one; ``False`` for one whose idempotency key is
        taken, ``AGAIN`` for one whose id is there already (its own insert, retried)."""
        sql = insert_execution_sql(SQLITE)
        results: list[Any] = []
        for r in records:
            if conn.execute(sql, execution_row(SQLITE, r)).rowcount > 0:
                results.append(True)
                continue
            found = conn.execute("SELECT 1 FROM executions WHERE id = ?", (r.id,)).fetchone()
            results.append(AGAIN if found is not None else False)
        return results

    # -- node liveness (one host: kernel file locks, storage/_nodelocks.py) -----------------

    def register_node(self, node_id: str) -> None:
        """Mark node ``node_id`` (a runtime of this process) alive until
        :meth:`unregister_node` or the end of the process (a kernel file lock)."""
        if self._nodes is not None:
            self._nodes.register(node_id)

    def unregister_node(self, node_id: str) -> None:
        if self._nodes is not None:
            self._nodes.unregister(node_id)

    def dead_nodes(self) -> list[str]:
        """Nodes known to have ended (their process is gone) that still own unfinished
        executions; the files of dead nodes that own nothing any more are removed."""
        if self._nodes is None:
            return []
        dead = self._nodes.dead()
        if not dead:
            return []
        owning: list[str] = []
        with self._read() as conn:
            for node_id in dead:
                row = conn.execute(
                    "SELECT 1 FROM executions WHERE owner = ?"
                    " AND status IN ('queued', 'running') LIMIT 1",
                    (node_id,),
                ).fetchone()
                if row is None:
                    self._nodes.forget(node_id)
                else:
                    owning.append(node_id)
        return owning
