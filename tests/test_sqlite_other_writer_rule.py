"""The rule of a store call made on the event loop while another connection writes the
SQLite file (#18): whatever that writer does, each call's writes land exactly once, and
a call is run again (in a worker thread) only when its run on the loop committed nothing.

Each example: calls of one to three writes each (a pause before each: the call works
meanwhile), started together on the loop, while other connections of the file (threads
here: SQLite locks them out as it would another process) take its write lock at random
moments for random lengths."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.storage import SQLiteStore
from abi_engine.storage.aio import call_store

#: Per call, the pause before each of its writes (seconds).
CALLS = st.lists(st.lists(st.floats(0, 0.004), min_size=1, max_size=3), min_size=1, max_size=8)
#: (after how long, for how long) another connection holds the write lock, in seconds.
HOLDS = st.lists(st.tuples(st.floats(0, 0.03), st.floats(0.001, 0.03)), min_size=1, max_size=3)


def _hold(path: str, after: float, seconds: float) -> None:
    time.sleep(after)
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _committed(store: SQLiteStore, call: int) -> int:
    with store._read() as conn:
        return int(conn.execute("SELECT count(*) FROM marks WHERE call = ?", (call,)).fetchone()[0])


async def _run_calls(store: SQLiteStore, calls: list[list[float]]) -> dict[int, list[int]]:
    """Run the calls on the loop at once (one write after each pause); for each call, how
    many of its writes were committed as each of its runs began."""
    runs: dict[int, list[int]] = {call: [] for call in range(len(calls))}

    def work(call: int, pauses: list[float]) -> None:
        runs[call].append(_committed(store, call))
        for n, pause in enumerate(pauses):
            time.sleep(pause)
            store.write(lambda c, n=n: c.execute("INSERT INTO marks VALUES (?, ?)", (call, n)))

    async with anyio.create_task_group() as tg:
        for call, pauses in enumerate(calls):
            tg.start_soon(call_store, store, work, call, pauses)
    return runs


@settings(max_examples=25)
@given(calls=CALLS, holds=HOLDS)
def test_each_call_writes_once_and_runs_again_only_when_it_committed_nothing(
    tmp_path_factory: object, calls: list[list[float]], holds: list[tuple[float, float]]
) -> None:
    directory = Path(tmp_path_factory.mktemp("rule"))  # type: ignore[attr-defined]
    store = SQLiteStore(directory / "s.db")
    try:
        store.write(lambda c: c.execute("CREATE TABLE marks (call INTEGER, n INTEGER)"))
        others = [
            threading.Thread(target=_hold, args=(store.path, after, seconds))
            for after, seconds in holds
        ]
        for other in others:
            other.start()
        runs = anyio.run(_run_calls, store, calls)
        for other in others:
            other.join()
        with store._read() as conn:
            rows = conn.execute("SELECT call, n FROM marks ORDER BY call, n").fetchall()
        assert rows == [(call, n) for call, pauses in enumerate(calls) for n in range(len(pauses))]
        for call, started in runs.items():
            assert 1 <= len(started) <= 2, (call, started)
            assert started == [0] * len(started), (call, started)  # again: nothing was in
    finally:
        store.close()
