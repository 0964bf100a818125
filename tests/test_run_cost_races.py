"""Attacks on #18's fix 19 (the run's cost per execution, docs/performance.md).

1. ``execute(wait=False)`` from a host thread (the thread door) stores the execution
   *running* at its acceptance when a worker is idle, as ``execute_many`` does: its run
   writes no claim. Its hand-over to the runtime is posted to the loop after the commit,
   from the caller's thread: an execution cancelled in between (found in the store by
   another caller) must run no step. (Before the fix the runtime, not knowing it yet when
   the cancel came, ran its first step; the same held for ``execute(wait=True)``.)
2. A run's writes await the committer's future directly (no coroutine of their own):
   a store failing under them is still retried, each step still runs once.
3. A run's write made alone is committed at once by the run itself, without the
   writer task (at ``durability="normal"`` on SQLite): a lone sequential execution's
   checkpoints and finish go that way; a store failing under one is retried, each step
   runs once; another writer of the SQLite file holding its lock does not stall the
   loop (the write goes to the writer, which waits in a thread).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    engines,
    fast,
    new_workflow,
    until_sync,
    wait_status,
)
from test_sqlite_other_writer import HOLD

from abi_engine import ExecutionStatus
from abi_engine.storage.records import CheckpointStep, FinishExecution, InsertExecution, WriteOp


@pytest.mark.parametrize("wait", [False, True])
def test_cancelled_between_its_commit_and_its_hand_over_runs_no_step(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch, wait: bool
) -> None:
    engine = make(settings=fast(workers=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        warm = engine.call(engine.executions.execute, wf, {}, wait=False)  # compiles it
        assert engine.call(engine.executions.wait, warm.execution_id, 60).status is (
            ExecutionStatus.COMPLETED
        )
        commits = engine.runtime.thread_commits
        post, gate, held = commits._post, threading.Event(), []

        def held_post(posted: Any, elapsed: float, *, count: bool) -> None:
            inserted = [
                op.record.id for s in posted for op in s.ops if isinstance(op, InsertExecution)
            ]
            if inserted and not gate.is_set():  # committed; the hand-over waits
                held.extend(inserted)
                gate.wait(60)
            post(posted, elapsed, count=count)

        monkeypatch.setattr(commits, "_post", held_post)
        answers: list[Any] = []

        def call() -> None:
            execute = engine.executions.execute
            answers.append(engine.call(execute, wf, {}, wait=wait, timeout_seconds=60))

        caller = threading.Thread(target=call)
        caller.start()
        until_sync(lambda: held, "the insert committed, its hand-over held")
        execution_id = held[0]
        stored = engine.call(engine.executions.get, execution_id)
        assert stored.status is ExecutionStatus.RUNNING  # stored running at its acceptance
        engine.call(engine.executions.cancel, execution_id)
        gate.set()
        caller.join(60)
        assert not caller.is_alive()
        final = engine.call(engine.executions.wait, execution_id, 60)
        assert final.status is ExecutionStatus.CANCELLED
        if wait:
            assert answers[0].status is ExecutionStatus.CANCELLED
        runtime = engine.runtime
        until_sync(lambda: not runtime._inflight and runtime.idle_workers() == 2, "workers idle")
        assert PROBE.runs(execution_id) == {}  # not even up to its first await
        monkeypatch.undo()
        after = engine.call(engine.executions.execute, wf, {}, timeout_seconds=60)
        assert after.status is ExecutionStatus.COMPLETED
    finally:
        engine.stop_blocking()
        engine.close()


def _failing(engine: Any, kind: type, times: int) -> list[int]:
    """The store fails ``times`` batches carrying an op of ``kind`` (before writing)."""
    store, failed = engine.store, [0]
    apply = store.apply

    def failing_apply(ops: Sequence[WriteOp]) -> list[Any]:
        if failed[0] < times and any(isinstance(op, kind) for op in ops):
            failed[0] += 1
            raise OSError("injected: the database is unreachable")
        return apply(ops)

    store.apply = failing_apply
    return failed


@pytest.mark.parametrize("kind", [CheckpointStep, FinishExecution])
@pytest.mark.parametrize("wait", [False, True])
def test_a_failing_write_of_a_run_is_retried_and_each_step_runs_once(
    make: EngineFactory, wait: bool, kind: type
) -> None:
    """A lone run's writes are committed at once, by the run (at ``durability="normal"``
    on SQLite): the store failing under one of them (a checkpoint, or the finish: the
    last step's checkpoint and the end in one write) is retried; each step runs once."""
    engine = make(settings=fast(workers=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        warm = engine.call(engine.executions.execute, wf, {}, wait=False)
        engine.call(engine.executions.wait, warm.execution_id, 60)
        failed = _failing(engine, kind, 3)
        started = engine.call(engine.executions.execute, wf, {}, wait=wait, timeout_seconds=60)
        final = engine.call(engine.executions.wait, started.execution_id, 60)
        assert failed[0] == 3
        assert final.status is ExecutionStatus.COMPLETED
        assert [s.status.value for s in final.steps] == ["completed"] * 3
        assert PROBE.runs(started.execution_id) == {"first": 1, "second": 1, "third": 1}
    finally:
        engine.stop_blocking()
        engine.close()


def test_a_lone_runs_writes_are_committed_at_once_without_the_writer(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make(settings=fast(workers=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        engine.call(engine.executions.execute, wf, {}, timeout_seconds=60)
        committer = engine.runtime.committer
        at_once: list[str] = []
        commit_now = committer._commit_now

        def counted(op: WriteOp, *args: Any) -> Any:
            at_once.append(type(op).__name__)
            return commit_now(op, *args)

        monkeypatch.setattr(committer, "_commit_now", counted)
        done = [
            engine.call(engine.executions.execute, wf, {}, timeout_seconds=60) for _ in range(5)
        ]
        assert all(d.status is ExecutionStatus.COMPLETED for d in done)
        assert all(
            PROBE.runs(d.execution_id) == {"first": 1, "second": 1, "third": 1} for d in done
        )
        if engine.store.blocking or getattr(engine.store, "commits_in_thread", False):
            assert at_once == []  # written in a worker thread: always by the writer
        else:  # one caller waiting for each: every write of its run is alone
            # (a poll or heartbeat ready at that moment sends one through the writer)
            assert at_once.count("CheckpointStep") >= 5
            assert at_once.count("FinishExecution") >= 3
    finally:
        engine.stop_blocking()
        engine.close()


def _hold(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``db``'s write lock for ``seconds`` (once it holds it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    if holder.stdout is not None:
        holder.stdout.close()


class _Ticker:
    """The longest gap between the ticks of a task on the loop (how long it stood still),
    ticking slowly: rarely ready to run when a run writes (then alone)."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.3)
            now = time.monotonic()
            self.worst, last = max(self.worst, now - last), now


@pytest.mark.anyio
async def test_a_lone_runs_write_meeting_another_writer_does_not_stall_the_loop(
    tmp_path: Path,
) -> None:
    """The write a run commits at once, on the loop, never waits there for another
    writer of the SQLite file (another process): it gives way to the writer, which waits
    for it in a thread. The loop keeps running (it stood still the 2 s of the other
    writer's lock), and the run goes on, each step once."""
    with engines(tmp_path) as make:
        engine = make(settings=fast(workers=2, poll_interval=5))
        async with engine, anyio.create_task_group() as tg:
            wf = await new_workflow(engine)
            committer, outcomes = engine.runtime.committer, []
            commit_now = committer._commit_now

            def recorded(op: WriteOp, *args: Any) -> Any:
                began = time.monotonic()
                done = commit_now(op, *args)
                outcomes.append((began, done is not None))
                return done

            committer._commit_now = recorded
            ticker = _Ticker()
            tg.start_soon(ticker.run)
            gated = {"do": {"first": {"gate": "g"}}}
            execution = await engine.executions.execute(wf, gated, wait=False)
            with anyio.fail_after(60):
                await PROBE.step_started("first").wait()
            holder = _hold(tmp_path / "abi.db", 2.0)
            held_until = time.monotonic() + 1.5  # (2 s from a moment before this one)
            try:
                PROBE.gate("g").set()  # the first step ends: its checkpoint meets the lock
                # (a timer: this task is not ready to run meanwhile, the run's write alone)
                await anyio.sleep(2.5)
                done = await wait_status(engine, execution.execution_id, *TERMINAL, timeout=60)
                assert holder.wait(timeout=30) == 0
            finally:
                _release(holder)
            assert done.status is ExecutionStatus.COMPLETED
            assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}
            # Each write the run tried at once while the lock was held gave way (it is the
            # run's first checkpoint, unless another task happened to be ready then).
            assert all(not made for began, made in outcomes if began < held_until), outcomes
            assert ticker.worst < 1.2, ticker.worst
            tg.cancel_scope.cancel()
