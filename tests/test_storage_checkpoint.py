"""SQLite WAL checkpoints run off the writer (issue #18), on real files.

SQLite's automatic checkpoint would run inside a commit, on the engine's
event loop; the store turns it off on its writer and checkpoints from a thread
of its own, the writer stepping in only when the WAL passes its limit.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from abi_engine.storage import SQLiteStore

pytestmark = pytest.mark.sqlite_only

ROW = b"x" * 8192  # two pages and more per row


def _ballast(store: SQLiteStore) -> None:
    store.write(lambda conn: conn.execute("CREATE TABLE ballast (id INTEGER PRIMARY KEY, b BLOB)"))


def _fill(store: SQLiteStore, rows: int, per_tx: int = 10) -> None:
    for start in range(0, rows, per_tx):
        store.write(
            lambda conn, start=start: conn.executemany(
                "INSERT INTO ballast (id, b) VALUES (?, ?)",
                [(i, ROW) for i in range(start, start + per_tx)],
            )
        )


def _wal_size(db: Path) -> int:
    try:
        return os.stat(f"{db}-wal").st_size
    except FileNotFoundError:
        return 0


def _poll(condition, what: str, deadline: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    give_up = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < give_up, f"{what} did not happen within {deadline} s"
        time.sleep(0.05)


def _fill_range(store: SQLiteStore, start: int, count: int) -> None:
    store.write(
        lambda conn: conn.executemany(
            "INSERT INTO ballast (id, b) VALUES (?, ?)",
            [(i, ROW) for i in range(start, start + count)],
        )
    )


class _RefusingCheckpoints(SQLiteStore):
    """A store whose checkpoint connections SQLite refuses the checkpoint pragma to
    (an authorizer answering SQLITE_DENY), the first ``refusals`` times; with
    ``unopenable``, whose checkpoint connections cannot open (a missing directory)."""

    def __init__(
        self, path: Path, refusals: int = 2, unopenable: bool = False, **options: Any
    ) -> None:
        self.refusals = refusals
        self.unopenable = unopenable
        self.connections = 0
        super().__init__(path, **options)

    def _connect_checkpointer(self) -> sqlite3.Connection:
        if self.unopenable:
            return sqlite3.connect(Path(self.path).parent / "missing" / "x.db")
        conn = super()._connect_checkpointer()
        self.connections += 1

        def authorize(action: int, arg1: str | None, *rest: object) -> int:
            if action == sqlite3.SQLITE_PRAGMA and arg1 == "wal_checkpoint" and self.refusals:
                self.refusals -= 1
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorize)
        return conn


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_checkpoints_run_in_the_background(db_path: Path, durability: str) -> None:
    """The writer never checkpoints by itself; the background thread copies the WAL
    into the database file, at both durabilities, with the durability's sync level."""
    store = SQLiteStore(db_path, durability=durability)  # type: ignore[arg-type]
    try:
        assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        checkpointer = store._connect_checkpointer()
        level = checkpointer.execute("PRAGMA synchronous").fetchone()[0]
        checkpointer.close()
        assert level == {"normal": 1, "full": 2}[durability]
        _ballast(store)
        _fill(store, 400)  # ~3.3 MB
        _poll(lambda: os.path.getsize(db_path) > 400 * len(ROW), "a background checkpoint")
        assert store.checkpointer.done >= 1
        assert store.inline_checkpoints == 0
        assert store.checkpointer.failures == 0
    finally:
        store.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM ballast").fetchone()[0] == 400
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_the_wal_stays_bounded_when_background_checkpoints_fail(db_path: Path) -> None:
    """With every background checkpoint failing (its connection cannot open), the
    writer checkpoints itself once the WAL passes its limit: 24 MB written, the WAL
    never grows past the limit and one transaction."""
    limit = 1024 * 1024
    store = _RefusingCheckpoints(db_path, unopenable=True, wal_limit=limit)
    try:
        _ballast(store)
        largest = 0
        for start in range(0, 3000, 10):
            _fill_range(store, start, 10)
            largest = max(largest, _wal_size(db_path))
        one_transaction = 10 * 3 * (4096 + 24) + 16 * (4096 + 24)  # rows, b-tree pages
        assert largest <= limit + one_transaction, largest
        assert store.inline_checkpoints >= 10
        assert store.checkpointer.failures >= 1
        assert store.checkpointer.done == 0
        assert os.path.getsize(db_path) > 3000 * len(ROW)
    finally:
        store.close()


def test_the_checkpointer_survives_failing_checkpoints(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Checkpoints that fail are logged once, on a fresh connection each time; the
    thread goes on, and the next checkpoint after the writes that follow works."""
    caplog.set_level(logging.WARNING, logger="abi_engine.storage")
    store = _RefusingCheckpoints(db_path, checkpoint_interval=0)
    try:
        _ballast(store)
        written = [0]

        def refused_twice() -> bool:  # each look writes a row: a wake for the thread
            _fill_range(store, 10_000 + written[0], 1)
            written[0] += 1
            return store.checkpointer.failures >= 2

        _poll(refused_twice, "two refused checkpoints")
        _fill(store, 400)
        _poll(lambda: os.path.getsize(db_path) > 400 * len(ROW), "a checkpoint after failures")
        assert store.checkpointer.done >= 1
        assert store.connections >= 3  # a new connection after each failure
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("WAL checkpoint failed; retried after the next writes") == 1
        assert "WAL checkpoints work again after 2 failures" in messages
        failed = next(r for r in caplog.records if r.getMessage().startswith("WAL checkpoint"))
        assert failed.exc_info is not None
        assert "not authorized" in str(failed.exc_info[1])
    finally:
        store.close()
    assert store.checkpointer.failures == 2


_WRITER = textwrap.dedent(
    """
    import sys
    from abi_engine.storage import SQLiteStore

    store = SQLiteStore(sys.argv[1], durability=sys.argv[2], checkpoint_interval=0)
    store.write(lambda c: c.execute("CREATE TABLE ballast (id INTEGER PRIMARY KEY, b BLOB)"))
    print("ready", flush=True)
    i = 0
    while True:
        store.write(lambda c: c.execute("INSERT INTO ballast VALUES (?, ?)", (i, b"y" * 6000)))
        print(i, flush=True)
        i += 1
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_killed_process_loses_no_commit(db_path: Path, durability: str) -> None:
    """A writer killed (SIGKILL) while its thread checkpoints back to back: every
    insert it reported committed is there afterwards, and the file is sound."""
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db_path), durability],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            last = -1
            while last < 1500:
                line = child.stdout.readline()
                assert line, child.stderr.read() if child.stderr else ""
                last = int(line)
            child.send_signal(signal.SIGKILL)
            child.wait(30)
            for line in child.stdout:  # what it printed before it died was committed too
                if line.strip():
                    last = int(line)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    store = SQLiteStore(db_path)
    try:
        count, top = store.db.execute("SELECT count(*), max(id) FROM ballast").fetchone()
        assert top >= last
        assert count == top + 1
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        store.close()
