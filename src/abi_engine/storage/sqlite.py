"""The default store: one SQLite file, WAL, on sqlite-utils.

Concurrency: every write goes through one connection under a lock, inside
``BEGIN IMMEDIATE`` (so a write never fails half-way on a lock upgrade);
reads use one connection per thread and never block writers (WAL). Across
processes, ``busy_timeout`` makes writers queue instead of failing.

Switching a fresh file to WAL is the one step SQLite does not queue behind
``busy_timeout`` (it answers "database is locked" at once when another process
is opening the same file), so :func:`_use_wal` retries it until the same
deadline.

Checkpoints (copying the WAL back into the database file) do not run on the
writer: SQLite's automatic checkpoint would run inside a commit, on the
caller's thread (the engine's event loop), every ~1,000 pages, and cost that
commit milliseconds (issue #18). The writer's automatic checkpoint is off and
a :class:`~abi_engine.storage._wal.Checkpointer` thread with its own connection
runs PASSIVE checkpoints (they wait for no reader or writer) after writes: once a
second, or as soon as the WAL passes 4 MB; should it fall behind or fail, the writer
checkpoints itself once the WAL passes ``wal_limit`` bytes, so the WAL stays
bounded. The writer learns the WAL's size after each commit from SQLite's
wal-index header, mapped in memory (:class:`~abi_engine.storage._wal.WalSize`; a
``stat`` released the GIL at every commit), or ``stat``s it when it cannot.

A new execution whose workflow is active at the version it was checked against,
unpaused and without rules is inserted by one statement checking exactly that
(:meth:`SQLiteStore._insert_checked`), without reading the workflow first (#18).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlite_utils

from abi_engine.storage._codec import to_ms
from abi_engine.storage._nodelocks import NodeLocks
from abi_engine.storage._waiting import WouldWait, impatient, settled
from abi_engine.storage._wal import WAL_KEPT_BYTES, WAL_LIMIT_BYTES, Checkpointer, WalSize
from abi_engine.storage.migrations import MIGRATIONS
from abi_engine.storage.records import AGAIN, ExecutionRecord, InsertExecution
from abi_engine.storage.sql.dialect import SQLITE
from abi_engine.storage.sql.execution_ops import (
    EXECUTION_COLUMNS,
    execution_row,
    insert_execution_sql,
)
from abi_engine.storage.sql.store import SQLStore

__all__ = ["SQLiteStore"]

T = TypeVar("T")

Durability = Literal["normal", "full"]

_BUSY_TIMEOUT_MS = 60_000
#: How long a write made on the event loop waits for the database's lock (another
#: thread's or process's write) before it is handed to a thread (``WouldWait``).
_IMPATIENT_S = 0.005

log = logging.getLogger("abi_engine.storage")


def _bind_as_is(kind: type, adapter: Callable[[Any], Any]) -> None:
    """Give ``kind`` an adapter returning what sqlite3 binds it as anyway, unless one is
    registered: sqlite3 looks for an adapter of each bound value not exactly an int,
    float, str or bytearray, and a failed look-up raises and clears an AttributeError,
    ~3,000 instructions a value (a schedule row binds some twenty ``None``; that was a
    tenth of a create)."""
    if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(kind, adapter)


_INSERT = insert_execution_sql(SQLITE)
#: The insert of an execution row (values: ``execution_row``, then its workflow's id and
#: version in epoch ms) made only when its workflow is active at that version, not
#: deleted nor paused, without rules (concurrency limits, rate limit, debounce: what
#: ``concurrency.add_rules`` reads): what ``flow_ops.insert_held`` inserts as it is.
_INSERT_CHECKED = (
    f"INSERT INTO executions ({', '.join(name for name, _ in EXECUTION_COLUMNS)})"
    f" SELECT {', '.join('?' for _ in EXECUTION_COLUMNS)} FROM workflows"
    " WHERE id = ? AND updated_at = ? AND status = 'active' AND deleted_at IS NULL"
    " AND paused_at IS NULL AND max_concurrency IS NULL AND concurrency_limit IS NULL"
    " AND rate_limit IS NULL AND debounce_ms IS NULL ON CONFLICT DO NOTHING"
)

_bind_as_is(type(None), {}.get)  # (a C function returning None for any value: NULL)
_bind_as_is(bool, int)  # (an integer, 0 or 1, as bool binds as an int subclass)


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (another connection writes)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "locked" in str(exc)


def _alive(thread: threading.Thread) -> bool:
    """Whether ``thread`` runs still (a thread Python did not start, once ended, may
    raise instead of answering: Python 3.13)."""
    try:
        return thread.is_alive()
    except RuntimeError:
        return False


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


def _empty_file(path: str) -> bool:
    """Whether ``path`` is no database yet (missing, or empty)."""
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return True


def _incremental_vacuum_when_new(conn: sqlite3.Connection) -> None:
    """Put a new (empty) database in ``auto_vacuum = INCREMENTAL`` mode, so pruning can give
    free pages back to the file system (:meth:`SQLiteStore.reclaim_space`). SQLite sets
    the mode only before the first table is created; an older file stays as it is
    (``VACUUM`` after ``PRAGMA auto_vacuum = INCREMENTAL`` converts it, offline)."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")


class _ReaderOf:
    """``with store._read() as conn``: the calling thread's reader connection."""

    __slots__ = ("_store",)

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        return self._store._reader()

    def __exit__(self, *exc: object) -> None:
        return None


class SQLiteStore(SQLStore):
    """A :class:`~abi_engine.storage.Store` on one SQLite database file.

    :param path: a file path (created when missing) or ``":memory:"``.
    :param durability: ``"normal"`` (WAL, ``synchronous=NORMAL``: survives a
        killed process) or ``"full"`` (``synchronous=FULL``: survives power loss).
    :param checkpoint_interval: the least time between two background WAL
        checkpoints, in seconds, while the WAL is under 4 MB (past that, one
        runs after each commit, as SQLite's automatic checkpoint would).
    :param wal_limit: the WAL size (bytes) past which the writer checkpoints
        itself, when the background checkpoints fall behind or fail.
    """

    dialect = SQLITE

    blocking = False

    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = "normal",
        checkpoint_interval: float = 1.0,
        wal_limit: int = WAL_LIMIT_BYTES,
    ) -> None:
        self.path = str(path)
        self.durability = durability
        self._memory = self.path == ":memory:"
        #: Group commits are applied in a worker thread (``durability="full"``): the
        #: event loop runs steps and takes new writes while the fsync of a commit waits.
        self.commits_in_thread = durability == "full" and not self._memory
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.RLock()
        #: Whether a write on the event loop found the database's lock taken (by another
        #: process, or a thread here) and none has begun since: a call on the loop is
        #: then handed to a thread at once, not after waiting ``_IMPATIENT_S`` first (a
        #: burst of calls, each waiting its 5 ms, stood the loop still as long as the lock).
        self._contended = False
        self._local = threading.local()
        #: Each thread's reader, and the thread (closed once it ended: a worker thread a
        #: call was handed to, see ``WouldWait``, ends after a while idle).
        self._readers: dict[sqlite3.Connection, threading.Thread] = {}
        self._readers_lock = threading.Lock()
        self._reader_of = _ReaderOf(self)
        self._closed = False
        self._wal = None if self._memory else str(Path(self.path).resolve()) + "-wal"
        self._wal_size = None if self._wal is None else WalSize(self._wal[:-4] + "-shm")
        self._wal_limit = wal_limit
        self._wal_kept = min(WAL_KEPT_BYTES, wal_limit // 2)
        self._inline_at = 0  # the WAL size at the writer's last own checkpoint
        #: Checkpoints the writer ran itself (the WAL passed ``wal_limit``).
        self.inline_checkpoints = 0
        self.checkpointer = Checkpointer(self._connect_checkpointer, checkpoint_interval)
        self._writer = self._connect()
        # The writer waits for another process's lock a few milliseconds at a time:
        # ``transaction`` retries (or, in a hurry, gives up), so a caller on the event
        # loop is never held for long.
        self._writer.execute(f"PRAGMA busy_timeout = {int(_IMPATIENT_S * 1000)}")
        if not self._memory:
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            # The WAL file shrinks back to this when it restarts, under ``wal_limit``.
            self._writer.execute(f"PRAGMA journal_size_limit = {self._wal_kept}")
        self.db = sqlite_utils.Database(self._writer)
        self._migrate()
        self._nodes = None if self._memory else NodeLocks(str(Path(self.path).resolve()))

    # -- connections -----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        new = not self._memory and _empty_file(self.path)
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if new:
            _incremental_vacuum_when_new(conn)
        if not self._memory:
            _use_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        return conn

    def _committed(self) -> None:
        """After each commit of the writer: ask for a background checkpoint; checkpoint
        here when the WAL grew past the limit all the same."""
        if self._wal is None or self._wal_size is None:
            return
        size = self._wal_size.size()
        if size is None:
            try:
                size = os.stat(self._wal).st_size
            except OSError:
                size = 0
        self.checkpointer.wake(urgent=size > self._wal_kept)
        if size <= self._wal_limit:
            self._inline_at = 0
        elif size >= self._inline_at + self._wal_limit // 8:
            # Again only once the WAL grew on (a reader may keep it from restarting).
            self._inline_at = size
            self.inline_checkpoints += 1
            try:
                self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:  # committed already: the next commit tries again
                self._inline_at = 0
                log.warning("WAL checkpoint by the writer failed", exc_info=True)

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
                self._close_orphans()
                self._readers[conn] = threading.current_thread()
        return conn

    def _close_orphans(self) -> None:
        """Close the readers of threads that ended (under ``_readers_lock``): else each
        new worker thread reading here would leave a connection open, for good."""
        for conn, thread in list(self._readers.items()):
            if not _alive(thread):
                del self._readers[conn]
                conn.close()

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """This thread's reader connection (in memory: the writer, under its lock)."""
        if self._memory:
            return self._read_memory()
        return self._reader_of  # (a generator context manager costs ~3x as much: #18)

    @contextmanager
    def _read_memory(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            yield self._writer

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
        """One serialized write transaction (``BEGIN IMMEDIATE``), as :meth:`write`."""
        hurry = self._lock()
        try:
            conn = self._writer
            self._begin(conn, hurry)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._commit(conn, hurry)
        finally:
            self._write_lock.release()

    def _lock(self) -> bool:
        """Take the writer's lock; whether in a hurry (:func:`~abi_engine.storage._waiting.
        impatient`). In a hurry, :class:`~abi_engine.storage._waiting.WouldWait` is raised
        instead of waiting for the lock, held by another thread or another process:
        after ``_IMPATIENT_S``, or at once while an earlier write waits for it."""
        hurry = impatient()
        if hurry and self._contended:
            raise WouldWait()
        if not self._write_lock.acquire(timeout=_IMPATIENT_S if hurry else -1):
            self._contended = True
            raise WouldWait()
        return hurry

    def _begin(self, conn: sqlite3.Connection, hurry: bool) -> None:
        """``BEGIN IMMEDIATE``: wait for another process's write for at most
        ``_IMPATIENT_S`` when in a hurry (then :class:`WouldWait`), else for as long
        as the busy timeout (the writer's own is short: it is retried here)."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._contended = False
                return
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
                if hurry:
                    self._contended = True
                    raise WouldWait() from None
                if time.monotonic() >= deadline:
                    raise

    def _commit(self, conn: sqlite3.Connection, hurry: bool) -> None:
        try:
            conn.execute("COMMIT")
        except BaseException:
            # A COMMIT that failed (disk full, I/O error) leaves the transaction
            # open: roll it back, or every later write would fail to begin.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if hurry:
            settled()
        self._committed()

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction and return its result (what
        :meth:`transaction` does, without a generator: every commit comes here, #18)."""
        hurry = self._lock()
        try:
            conn = self._writer
            self._begin(conn, hurry)
            try:
                result = fn(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._commit(conn, hurry)
            return result
        finally:
            self._write_lock.release()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._write_lock:  # no commit wakes it once stopped
            self.checkpointer.stop()
        if self._nodes is not None:
            self._nodes.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        with self._write_lock:
            if self._wal_size is not None:
                self._wal_size.close()  # before the writer lets go of the -shm file
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

    def _insert_checked(
        self, conn: sqlite3.Connection, records: Sequence[ExecutionRecord], ops: Sequence[Any]
    ) -> list[bool] | None:
        """Insert each new execution whose workflow, in this transaction, is active at the
        version it was checked against, unpaused and without rules, in one statement
        that checks it (no read of the workflow before: #18); whether each was. The
        others (and those of a workflow one of them found otherwise) are left to
        ``insert_held``."""
        done = [False] * len(records)
        refused: set[str] = set()
        for i, op in enumerate(ops):
            r = records[i]
            if (
                type(op) is not InsertExecution
                or op.workflow_version is None
                or r.idempotency_key is not None
                or r.replaced
                or r.workflow_id in refused
            ):
                continue
            row = (*execution_row(SQLITE, r), r.workflow_id, to_ms(op.workflow_version))
            if conn.execute(_INSERT_CHECKED, row).rowcount > 0:
                done[i] = True
            else:
                refused.add(r.workflow_id)
        return done

    def _insert_executions(
        self, conn: sqlite3.Connection, records: Sequence[ExecutionRecord]
    ) -> list[Any]:
        """Insert execution rows one by one; ``False`` for one whose idempotency key is
        taken, ``AGAIN`` for one whose id is there already (its own insert, retried)."""
        results: list[Any] = []
        for r in records:
            if conn.execute(_INSERT, execution_row(SQLITE, r)).rowcount > 0:
                results.append(True)
                continue
            found = conn.execute("SELECT 1 FROM executions WHERE id = ?", (r.id,)).fetchone()
            results.append(AGAIN if found is not None else False)
        return results

    def reclaim_space(self, pages: int) -> int:
        """Give up to ``pages`` free pages back to the file system (``PRAGMA
        incremental_vacuum``, when the database is in incremental ``auto_vacuum`` mode);
        the free pages before."""
        if impatient():  # not worth a wait on the loop: a thread does it
            raise WouldWait()
        with self._write_lock:
            conn = self._writer
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free and int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
                deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
                while True:
                    try:  # (executescript steps the pragma to its end; execute() one page)
                        conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
                        break
                    except sqlite3.OperationalError as exc:
                        if not _locked(exc) or time.monotonic() >= deadline:
                            raise
                self._committed()
            return free

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
