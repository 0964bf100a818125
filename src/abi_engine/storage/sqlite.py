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
a :class:`_Checkpointer` thread with its own connection runs PASSIVE
checkpoints (they wait for no reader or writer) after writes: once a second,
or as soon as the WAL passes 4 MB; should it fall behind or fail, the writer
checkpoints itself once the WAL passes ``wal_limit`` bytes, so the WAL stays
bounded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import sqlite_utils

from abi_engine.storage._nodelocks import NodeLocks
from abi_engine.storage._waiting import WouldWait, impatient, settled
from abi_engine.storage.migrations import MIGRATIONS
from abi_engine.storage.records import AGAIN, ExecutionRecord
from abi_engine.storage.sql.dialect import SQLITE
from abi_engine.storage.sql.execution_ops import execution_row, insert_execution_sql
from abi_engine.storage.sql.store import SQLStore

__all__ = ["SQLiteStore"]

T = TypeVar("T")

Durability = Literal["normal", "full"]

_BUSY_TIMEOUT_MS = 60_000
#: How long a write made on the event loop waits for the database's lock (another
#: thread's or process's write) before it is handed to a thread (``WouldWait``).
_IMPATIENT_S = 0.005

log = logging.getLogger("abi_engine.storage")

#: The WAL size kept after a checkpoint (``journal_size_limit``), about the 1,000
#: pages of SQLite's own automatic checkpoint.
_WAL_KEPT_BYTES = 4 * 1024 * 1024
#: Past this WAL size the writer checkpoints itself (the background thread fell behind).
_WAL_LIMIT_BYTES = 64 * 1024 * 1024


def _bind_as_is(kind: type, adapter: Callable[[Any], Any]) -> None:
    """Give ``kind`` an adapter returning what sqlite3 binds it as anyway, unless one is
    registered: sqlite3 looks for an adapter of each bound value not exactly an int,
    float, str or bytearray, and a failed look-up raises and clears an AttributeError,
    ~3,000 instructions a value (a schedule row binds some twenty ``None``; that was a
    tenth of a create)."""
    if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(kind, adapter)


_bind_as_is(type(None), {}.get)  # (a C function returning None for any value: NULL)
_bind_as_is(bool, int)  # (an integer, 0 or 1, as bool binds as an int subclass)


class _Checkpointer:
    """Checkpoints a WAL database from a thread of its own (PASSIVE: never waits for,
    nor blocks, readers and writers).

    :meth:`wake` (called by the writer after each commit) asks for one; the
    thread runs at most one every ``interval`` seconds, unless the wake is
    ``urgent`` (the WAL passed the size it is kept at). A failing checkpoint is
    logged (once per streak) and retried at the next wake, on a new connection.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection], interval: float) -> None:
        self._connect = connect
        self._interval = interval
        self._wanted = threading.Event()
        self._urgent = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Checkpoints run, and failed, so far.
        self.done = 0
        self.failures = 0
        self._streak = 0
        self._conn: sqlite3.Connection | None = None

    def wake(self, *, urgent: bool = False) -> None:
        if self._stopping.is_set():
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="abi-engine-sqlite-checkpoint", daemon=True
            )
            self._thread.start()
        if not self._wanted.is_set():  # (set already: the thread has not run since)
            self._wanted.set()
        if urgent and not self._urgent.is_set():
            self._urgent.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()
        self._urgent.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            while True:
                self._wanted.wait()
                if self._stopping.is_set():
                    return
                self._wanted.clear()
                self._urgent.clear()
                self.checkpoint()
                # At most one checkpoint per interval (the writes in between share it),
                # unless the WAL grows past its kept size meanwhile.
                self._urgent.wait(self._interval)
                if self._stopping.is_set():
                    return
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def checkpoint(self) -> None:
        """One PASSIVE checkpoint; an error is logged, never raised."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:
            self.failures += 1
            self._streak += 1
            if self._streak == 1:
                log.warning("WAL checkpoint failed; retried after the next writes", exc_info=True)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            return
        if self._streak:
            log.warning("WAL checkpoints work again after %d failures", self._streak)
            self._streak = 0
        self.done += 1


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
        wal_limit: int = _WAL_LIMIT_BYTES,
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
        self._closed = False
        self._wal = None if self._memory else str(Path(self.path).resolve()) + "-wal"
        self._wal_limit = wal_limit
        self._wal_kept = min(_WAL_KEPT_BYTES, wal_limit // 2)
        self._inline_at = 0  # the WAL size at the writer's last own checkpoint
        #: Checkpoints the writer ran itself (the WAL passed ``wal_limit``).
        self.inline_checkpoints = 0
        self.checkpointer = _Checkpointer(self._connect_checkpointer, checkpoint_interval)
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
        if self._wal is None:
            return
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
        """One serialized write transaction (``BEGIN IMMEDIATE``).

        Where waiting would stall the event loop (:func:`~abi_engine.storage._waiting.
        impatient`), :class:`~abi_engine.storage._waiting.WouldWait` is raised instead
        of waiting for the lock, held by another thread or another process: after
        ``_IMPATIENT_S``, or at once while an earlier write waits for it."""
        hurry = impatient()
        if hurry and self._contended:
            raise WouldWait()
        if not self._write_lock.acquire(timeout=_IMPATIENT_S if hurry else -1):
            self._contended = True
            raise WouldWait()
        try:
            conn = self._writer
            self._begin(conn, hurry)
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
            if hurry:
                settled()
            self._committed()
        finally:
            self._write_lock.release()

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

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction and return its result."""
        with self.transaction() as conn:
            return fn(conn)

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
