"""Another writer of the SQLite file (a second process, ``abi-engine prune``, a backup)
never stalls the engine's event loop.

A write made inline on the loop waited for the other writer's lock up to SQLite's busy
timeout (60 s): the whole process stood still meanwhile, requests, timers and
heartbeats included (another connection holding the lock 2 s held the loop 1,990 ms).
Now such a write gives up after a few milliseconds before writing anything and runs
again in a worker thread; a call that already committed a write is never repeated;
threads wait as before."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from runtime_plugins.helpers import TERMINAL, engines, fast, new_workflow, wait_status

from abi_engine import ExecutionStatus
from abi_engine.ids import new_id, utcnow
from abi_engine.storage import SQLiteStore
from abi_engine.storage.aio import call_store
from abi_engine.storage.records import ExecutionRecord, InsertExecution

pytestmark = pytest.mark.anyio

HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


class Ticker:
    """The longest gap between the ticks of a task on the loop: how long it stood still."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.02)
            now = time.monotonic()
            self.worst = max(self.worst, now - last)
            self.ticks += 1
            last = now


@pytest.fixture
def other_process_lock(tmp_path: Path) -> Iterator[Any]:
    """``hold(db, seconds)``: another process holds ``db``'s write lock for ``seconds``
    (returns once it holds it)."""
    procs: list[subprocess.Popen[str]] = []

    def hold(db: str, seconds: float) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, db, str(seconds)], stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_the_loop_keeps_running_while_another_process_holds_the_lock(
    tmp_path: Path, other_process_lock: Any
) -> None:
    """Executions submitted on the loop while another process holds the write lock 3 s
    wait for it (their acceptance is a commit), but the loop never stands still for a
    second (it stood still 3 s): reads answer meanwhile, and every execution submitted
    completes once the lock is free."""
    with engines(tmp_path) as make:
        engine = make(settings=fast(workers=4))
        async with engine, anyio.create_task_group() as tg:
            wf = await new_workflow(engine)
            ticker = Ticker()
            tg.start_soon(ticker.run)
            accepted: list[str] = []

            async def submit() -> None:
                execution = await engine.executions.execute(wf, {}, wait=False)
                accepted.append(execution.execution_id)

            holder = other_process_lock(str(tmp_path / "abi.db"), 3.0)
            reads = 0
            with anyio.fail_after(60):
                async with anyio.create_task_group() as submits:  # left once all accepted
                    while holder.poll() is None:
                        submits.start_soon(submit)
                        started = time.monotonic()
                        assert (await engine.workflows.get(wf)).id == wf
                        assert time.monotonic() - started < 1.0
                        reads += 1
                        await anyio.sleep(0.1)
            assert holder.wait(timeout=30) == 0
            assert reads >= 5
            assert len(accepted) == reads
            assert ticker.worst < 1.0, ticker.worst
            for execution_id in accepted:
                done = await wait_status(engine, execution_id, *TERMINAL, timeout=60)
                assert done.status is ExecutionStatus.COMPLETED
            tg.cancel_scope.cancel()


def _count(store: SQLiteStore, table: str) -> int:
    return int(store.write(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))


def _holder(path: str, taken: threading.Event, seconds: float) -> threading.Thread:
    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


async def test_a_call_that_would_wait_before_writing_runs_again_in_a_thread(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.write(lambda c: c.execute("CREATE TABLE marks (n INTEGER)"))
        calls: list[str] = []

        def mark() -> None:
            calls.append(threading.current_thread().name)
            store.write(lambda c: c.execute("INSERT INTO marks VALUES (1)"))

        taken = threading.Event()
        holder = _holder(store.path, taken, 1.5)
        taken.wait(30)
        ticker = Ticker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await call_store(store, mark)
            tg.cancel_scope.cancel()
        holder.join()
        assert len(calls) == 2  # once on the loop (gave up), once in a thread
        assert calls[0] == threading.current_thread().name != calls[1]
        assert _count(store, "marks") == 1
        assert ticker.worst < 1.0, ticker.worst
    finally:
        store.close()


async def test_a_call_that_committed_is_not_repeated(tmp_path: Path) -> None:
    """A call writes, then another writer takes the lock, then it writes again: the
    second write waits (on the loop: it cannot be run again without the first twice)."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.write(lambda c: c.execute("CREATE TABLE marks (n INTEGER)"))
        taken = threading.Event()
        holders: list[threading.Thread] = []
        calls = 0

        def two_writes() -> None:
            nonlocal calls
            calls += 1
            store.write(lambda c: c.execute("INSERT INTO marks VALUES (1)"))
            holders.append(_holder(store.path, taken, 0.5))
            taken.wait(30)
            store.write(lambda c: c.execute("INSERT INTO marks VALUES (2)"))

        await call_store(store, two_writes)
        holders[0].join()
        assert calls == 1
        rows = store.write(lambda c: c.execute("SELECT n FROM marks ORDER BY n").fetchall())
        assert [r[0] for r in rows] == [1, 2]
    finally:
        store.close()


def test_a_thread_waits_for_the_other_writer(tmp_path: Path) -> None:
    """Off the loop nothing changes: a write waits for the lock (retried past the
    writer's short busy timeout) and succeeds once it is free."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.write(lambda c: c.execute("CREATE TABLE marks (n INTEGER)"))
        taken = threading.Event()
        holder = _holder(store.path, taken, 1.0)
        taken.wait(30)
        started = time.monotonic()
        store.write(lambda c: c.execute("INSERT INTO marks VALUES (1)"))
        assert time.monotonic() - started >= 0.5  # it waited for the holder
        holder.join()
        assert _count(store, "marks") == 1
        assert store.reclaim_space(10) >= 0
    finally:
        store.close()


async def test_a_batch_of_ops_meeting_the_lock_is_applied_whole_in_a_thread(
    tmp_path: Path, new_workflow: Any
) -> None:
    """The committer's ``apply`` keeps an op's error as its result: the hand-over to a
    thread must not be taken for every op failing (each is stored, once)."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        workflow = new_workflow()
        store.insert_workflow(workflow)
        records = [
            ExecutionRecord(
                id=new_id("exec_"),
                workflow_id=workflow.id,
                workflow_type="custom",
                status=ExecutionStatus.QUEUED,
                parameters={"n": n},
                created_at=utcnow(),
            )
            for n in range(3)
        ]
        taken = threading.Event()
        holder = _holder(store.path, taken, 1.0)
        taken.wait(30)
        ops = [InsertExecution(record=r) for r in records]
        results = await call_store(store, store.apply, ops)
        holder.join()
        assert results == [True, True, True]
        assert _count(store, "executions") == 3
    finally:
        store.close()


async def test_a_burst_of_writes_on_the_loop_is_handed_over_without_waiting_each(
    tmp_path: Path, other_process_lock: Any
) -> None:
    """While one write handed to a thread holds the store's lock waiting for another
    process, every other write on the loop is handed over at once: each waited its
    5 ms first, and 400 at once stood the loop still 2 s of the 3 s hold."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.write(lambda c: c.execute("CREATE TABLE marks (n INTEGER)"))
        holder = other_process_lock(store.path, 3.0)
        ticker = Ticker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await anyio.sleep(0.1)  # the ticker runs
            async with anyio.create_task_group() as writes:
                for n in range(400):
                    insert = partial(_insert_mark, n=n)
                    writes.start_soon(call_store, store, store.write, insert)
            tg.cancel_scope.cancel()
        assert holder.wait(timeout=30) == 0
        assert _count(store, "marks") == 400
        assert ticker.worst < 1.0, ticker.worst
    finally:
        store.close()


def _insert_mark(conn: sqlite3.Connection, n: int) -> None:
    conn.execute("INSERT INTO marks VALUES (?)", (n,))


def _open_files(path: str) -> int:
    """How many file descriptors of this process are open on the database file."""
    target = str(Path(path).resolve())
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += fd.readlink() == Path(target)
    return count


def test_the_reader_of_a_thread_that_ended_is_closed(tmp_path: Path) -> None:
    """A call handed to a worker thread reads there on a connection of that thread; the
    worker ends after a while idle, and a new one takes its place at the next burst.
    Each left its connection open for good (a process meeting another writer once a
    minute leaked file descriptors until it ran out)."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        before = _open_files(store.path)
        for _ in range(40):
            thread = threading.Thread(target=store.get_execution, args=("exec_x",))
            thread.start()
            thread.join()
        # The last thread's; SQLite keeps a few closed ones' open for reuse while the
        # process holds locks on the file (closing them would drop those locks).
        assert _open_files(store.path) <= before + 5, _open_files(store.path)
        assert store.get_execution("exec_x") is None  # this thread's reader works
    finally:
        store.close()
    assert _open_files(store.path) == 0


async def test_calls_handed_over_leave_the_default_threads_free(
    tmp_path: Path, other_process_lock: Any
) -> None:
    """Writes handed to threads wait there for the other process; they took every
    thread of the default limiter meanwhile, so work of the engine needing one (a
    webhook's DNS look-up, a plugin's work) waited for the other writer too."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.write(lambda c: c.execute("CREATE TABLE marks (n INTEGER)"))
        holder = other_process_lock(store.path, 3.0)
        async with anyio.create_task_group() as writes:
            for n in range(60):
                writes.start_soon(call_store, store, store.write, partial(_insert_mark, n=n))
            await anyio.sleep(0.2)  # all handed over
            started = time.monotonic()
            assert await anyio.to_thread.run_sync(threading.get_ident) != threading.get_ident()
            assert time.monotonic() - started < 1.0, time.monotonic() - started
            assert holder.poll() is None  # (still held: the figure means something)
        assert _count(store, "marks") == 60
    finally:
        store.close()


async def test_a_burst_of_requests_writing_during_a_hold_keeps_the_loop_running(
    tmp_path: Path, other_process_lock: Any
) -> None:
    """200 workflows created at once while another process holds the lock 3 s: each
    create's write waited 5 ms on the loop before it was handed over (1.2 s of the
    hold, the loop standing still); all are created once the lock is free."""
    with engines(tmp_path) as make:
        engine = make()
        async with engine, anyio.create_task_group() as tg:
            ticker = Ticker()
            tg.start_soon(ticker.run)
            holder = other_process_lock(str(tmp_path / "abi.db"), 3.0)
            body = {"name": "w", "type": "test_three", "configuration": {}}
            with anyio.fail_after(60):
                async with anyio.create_task_group() as creates:
                    for _ in range(200):
                        creates.start_soon(engine.workflows.create, body)
            assert holder.wait(timeout=30) == 0
            page = await engine.workflows.list(page_size=1)
            assert page.pagination.total_items == 200
            assert ticker.worst < 0.5, ticker.worst
            tg.cancel_scope.cancel()


async def test_a_failing_batch_retried_op_by_op_never_waits_on_the_loop(
    tmp_path: Path, new_workflow: Any
) -> None:
    """A batch failing as a whole (one bad op) is retried op by op, a commit each: the
    first commit made the call unrepeatable, so the next op waited on the loop for
    another writer taking the lock in between (1.5 s here). The retry op by op is made
    in a worker thread instead (the failed batch wrote nothing); each op is stored once,
    the bad one gets its error."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        workflow = new_workflow()
        store.insert_workflow(workflow)

        def op(parameters: dict[str, Any]) -> InsertExecution:
            return InsertExecution(
                record=ExecutionRecord(
                    id=new_id("exec_"),
                    workflow_id=workflow.id,
                    workflow_type="custom",
                    status=ExecutionStatus.QUEUED,
                    parameters=parameters,
                    created_at=utcnow(),
                )
            )

        ops = [op({"n": 1}), op({"bad": object()}), op({"n": 2})]
        taken = threading.Event()
        holders: list[threading.Thread] = []
        begins = 0

        def another_writer_after_the_first_commit(statement: str) -> None:
            nonlocal begins
            if statement == "BEGIN IMMEDIATE" and not holders:
                begins += 1
                if begins == 3:  # the batch's, the first op's, the second op's: take it
                    holders.append(_holder(store.path, taken, 1.5))
                    taken.wait(30)

        store._writer.set_trace_callback(another_writer_after_the_first_commit)
        ticker = Ticker()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await anyio.sleep(0.1)  # the ticker runs
            results = await call_store(store, store.apply, ops)
            await anyio.sleep(0.1)  # the ticker ticks after it
            tg.cancel_scope.cancel()
        store._writer.set_trace_callback(None)
        for holder in holders:
            holder.join()
        assert len(holders) == 1  # (the other writer did take the lock in between)
        assert results[0] is True
        assert results[2] is True
        assert isinstance(results[1], TypeError)
        assert _count(store, "executions") == 2
        assert ticker.worst < 1.0, ticker.worst
    finally:
        store.close()


def test_a_known_user_costs_no_write(tmp_path: Path) -> None:
    """Minting a token for a known user commits once (the token), not twice: a first
    commit would make the call's next write wait on the loop (it cannot be repeated)."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        first = store.ensure_user("usr_a", utcnow())
        written: list[str] = []
        store._writer.set_trace_callback(written.append)
        again = store.ensure_user("usr_a", utcnow())
        store._writer.set_trace_callback(None)
        assert again == first
        assert written == []
    finally:
        store.close()
