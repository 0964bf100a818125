"""The SQLite writer learns the WAL's size from SQLite's wal-index header (issue #18).

After each commit the writer decides whether to ask for a background checkpoint now
(the WAL passed the size it is kept at) or to checkpoint itself (the WAL passed its
limit). It used to ``stat`` the WAL file for that, a system call releasing the GIL at
every commit; it now reads the header SQLite keeps at the start of the ``-shm`` file
(mapped in memory), and falls back to ``stat`` when it cannot.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.storage import SQLiteStore
from abi_engine.storage import sqlite as sqlite_module
from abi_engine.storage._wal import WalSize

pytestmark = pytest.mark.sqlite_only


class _NoCheckpoints(SQLiteStore):
    """A store whose background checkpoints cannot open their connection: the WAL only
    grows, until the writer checkpoints itself past ``wal_limit``."""

    def _connect_checkpointer(self) -> sqlite3.Connection:
        return sqlite3.connect(Path(self.path).parent / "missing" / "x.db")


def _table(store: SQLiteStore) -> None:
    store.write(lambda conn: conn.execute("CREATE TABLE ballast (id INTEGER PRIMARY KEY, b BLOB)"))


def _insert(store: SQLiteStore, sizes: list[int]) -> None:
    store.write(
        lambda conn: conn.executemany(
            "INSERT INTO ballast (b) VALUES (?)", [(b"x" * size,) for size in sizes]
        )
    )


def _wal_file(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except FileNotFoundError:
        return 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20_000), min_size=1, max_size=5), min_size=1, max_size=20))
def test_the_header_tells_the_wal_files_size(transactions: list[list[int]]) -> None:
    """Rule: while no checkpoint runs, the WAL's size read from the header after each
    commit is the WAL file's size (the file only grows: each commit appends its pages)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "wal.db"
        store = _NoCheckpoints(db)
        try:
            _table(store)
            assert store._wal_size is not None
            for sizes in transactions:
                _insert(store, sizes)
                assert store._wal_size.size() == _wal_file(db)
        finally:
            store.close()


def test_a_commit_stats_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's commits make no ``stat`` of the WAL (the header is read instead)."""
    store = SQLiteStore(db_path)
    try:
        _table(store)
        stats: list[Any] = []
        real = os.stat

        def counting(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            stats.append(path)
            return real(path, *args, **kwargs)

        monkeypatch.setattr(sqlite_module.os, "stat", counting)
        for _ in range(50):
            _insert(store, [100])
        monkeypatch.undo()
        assert [p for p in stats if str(p).endswith("-wal")] == []
    finally:
        store.close()


@pytest.mark.parametrize("reader", ["header", "stat"])
def test_the_wal_stays_bounded_without_background_checkpoints(db_path: Path, reader: str) -> None:
    """Every background checkpoint failing, the writer checkpoints itself once the WAL
    passes its limit, whether it reads the WAL's size from the header or (the header
    unreadable) ``stat``s the file: 12 MB written, the WAL file never grows past the
    limit and one transaction."""
    limit = 1024 * 1024
    store = _NoCheckpoints(db_path, wal_limit=limit)
    try:
        if reader == "stat":
            store._wal_size = WalSize(str(db_path.parent / "missing-shm"))
        _table(store)
        largest = 0
        for _ in range(150):
            _insert(store, [8192] * 10)
            largest = max(largest, _wal_file(db_path))
        one_transaction = 10 * 3 * (4096 + 24) + 16 * (4096 + 24)  # rows, b-tree pages
        assert largest <= limit + one_transaction, largest
        assert store.inline_checkpoints >= 5
        assert store.checkpointer.done == 0
    finally:
        store.close()


def _shm(path: Path, first: bytes, second: bytes | None = None) -> None:
    path.write_bytes(first + (first if second is None else second) + b"\0" * 32)


def _header(frames: int, page: int = 4096, init: int = 1, version: int = 3007000) -> bytes:
    encoded = page if page < 65536 else 1  # (65536 is written 1)
    return struct.pack("=IIIBBHI", version, 0, 7, init, 0, encoded, frames) + b"\0" * 28


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (_header(19), None, 32 + 19 * (4096 + 24)),
        (_header(3, page=65536), None, 32 + 3 * (65536 + 24)),
        (_header(0), None, 0),
        (_header(19), _header(20), None),  # the copies differ: being written
        (_header(19, init=0), None, None),
        (_header(19, version=1), None, None),
    ],
    ids=["frames", "64k-pages", "empty", "copies-differ", "not-initialised", "other-version"],
)
def test_the_header_is_read_as_sqlite_writes_it(
    tmp_path: Path, first: bytes, second: bytes | None, expected: int | None
) -> None:
    shm = tmp_path / "x.db-shm"
    _shm(shm, first, second)
    reader = WalSize(str(shm))
    try:
        assert reader.size() == expected
    finally:
        reader.close()


def test_no_shm_file_reads_nothing(tmp_path: Path) -> None:
    reader = WalSize(str(tmp_path / "none-shm"))
    assert reader.size() is None
    (tmp_path / "short-shm").write_bytes(b"\0" * 10)
    assert WalSize(str(tmp_path / "short-shm")).size() is None
