"""The upkeep of a SQLite WAL (issue #18): checkpoints from a thread of their own, and the
WAL's size as SQLite's wal-index header tells it (see :mod:`abi_engine.storage.sqlite`)."""

from __future__ import annotations

import logging
import mmap
import os
import sqlite3
import struct
import threading
from collections.abc import Callable

__all__ = ["WAL_KEPT_BYTES", "WAL_LIMIT_BYTES", "Checkpointer", "WalSize"]

log = logging.getLogger("abi_engine.storage")

#: The WAL size kept after a checkpoint (``journal_size_limit``), about the 1,000
#: pages of SQLite's own automatic checkpoint.
WAL_KEPT_BYTES = 4 * 1024 * 1024
#: Past this WAL size the writer checkpoints itself (the background thread fell behind).
WAL_LIMIT_BYTES = 64 * 1024 * 1024


class Checkpointer:
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
        if not urgent and self._wanted.is_set():  # asked already (or stopping): as it is
            return
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


#: The start of SQLite's wal-index header (https://www.sqlite.org/walformat.html, "the
#: WAL-index header"), in native byte order: version, (unused), change counter, isInit,
#: (the checksum's byte order), page size, ``mxFrame`` (the frames of the WAL in use).
_WAL_INDEX = struct.Struct("=I4xIBxHI")
_WAL_INDEX_VERSION = 3007000
_WAL_HEADER_BYTES = 32
_WAL_FRAME_HEADER_BYTES = 24


class WalSize:
    """The size of a WAL in use as SQLite's own wal-index header (the two copies at the
    start of the ``-shm`` file, mapped read-only) tells it: no system call per commit,
    where a ``stat`` of the WAL released the GIL at each one (#18). ``None`` when the
    header cannot be read (no ``-shm`` file: the caller ``stat``s the WAL instead).

    Mapped only while the store's writer holds the database open (SQLite truncates the
    ``-shm`` file only when no connection of any process does); unmapped before it
    closes."""

    def __init__(self, shm_path: str) -> None:
        self._path = shm_path
        self._map: mmap.mmap | None = None
        self._tried = False

    def size(self) -> int | None:
        view = self._map
        if view is None:
            if self._tried:
                return None
            view = self._map = self._open()
            if view is None:
                return None
        first, second = view[:48], view[48:96]
        if first != second:  # a writer of another process between its two copies
            return None
        version, _change, init, page, frames = _WAL_INDEX.unpack_from(first)
        if version != _WAL_INDEX_VERSION or not init:
            return None
        page_size = (page & 0xFE00) + ((page & 1) << 16)
        return _WAL_HEADER_BYTES + frames * (page_size + _WAL_FRAME_HEADER_BYTES) if frames else 0

    def _open(self) -> mmap.mmap | None:
        self._tried = True
        try:
            with open(self._path, "rb") as file:
                if os.fstat(file.fileno()).st_size < 96:
                    return None
                return mmap.mmap(file.fileno(), 96, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        view, self._map = self._map, None
        if view is not None:
            view.close()
