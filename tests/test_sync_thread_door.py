"""The synchronous door without the event loop (#18): ``engine.call(execute, wait=False)``
commits the new execution in the caller's thread, threads calling at once share commits,
``engine.call(wait)`` of an ended execution reads it there; every accepted execution is
durable (SIGKILL right after the answers) and runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, Event, ExecutionStatus, RuntimeSettings, hookimpl
from abi_engine.errors import InvalidParameters, InvalidRequest, InvalidState, QueueFull
from abi_engine.storage.records import InsertExecution

STEPS = {
    "steps": [
        {"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}},
        {"name": "double", "action": "transform", "expressions": {"b": "results['add']['a'] * 2"}},
    ]
}

DatabaseFactory = Callable[..., Any]


def _workflow(engine: Engine, name: str = "door") -> str:
    wf = engine.call(
        engine.workflows.create, {"name": name, "type": "custom", "configuration": STEPS}
    )
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


class Hops:
    """Counts the coroutines ``Engine.call`` hands to the event loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = asyncio.run_coroutine_threadsafe

        def counting(coro: Any, loop: Any) -> Any:
            self.count += 1
            return real(coro, loop)

        monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", counting)


def _record_appliers(engine: Engine) -> list[tuple[int, int]]:
    """(thread, number of inserts) of every ``store.apply`` from now on."""
    calls: list[tuple[int, int]] = []
    apply = engine.store.apply

    def recording(ops: Any) -> Any:
        calls.append((threading.get_ident(), sum(isinstance(op, InsertExecution) for op in ops)))
        return apply(ops)

    engine.store.apply = recording  # type: ignore[method-assign]
    return calls


def test_execute_without_wait_commits_in_the_callers_thread(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the workflow is compiled, ``execute(wait=False)`` through ``engine.call``
    does not go through the loop: the insert is committed from the caller's thread
    (with whatever the loop had to write then), one per call, counted by the committer;
    the executions run, and ``wait`` of an ended one does not go through the loop either."""
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {"i": 0}, wait=False)  # compiles it
    hops = Hops(monkeypatch)
    calls = _record_appliers(engine)
    ops0 = engine.runtime.committer.ops
    accepted = [
        engine.call(engine.executions.execute, wf_id, {"i": i}, wait=False) for i in range(1, 21)
    ]
    assert hops.count == 0
    me = threading.get_ident()
    # One insert per commit (one caller), most of them in this thread: the loop commits
    # a caller's insert only when it happens to be committing its own batch then.
    assert sum(inserts for _, inserts in calls) == 20
    assert all(inserts <= 1 for _, inserts in calls)
    assert sum(1 for thread, inserts in calls if thread == me and inserts) >= 10
    assert all(a.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING) for a in accepted)
    for i, ex in enumerate(accepted, 1):
        done = engine.call(engine.executions.wait, ex.execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == {"b": (i + 1) * 2}
    hops.count = 0
    again = engine.call(engine.executions.wait, accepted[0].execution_id, 60)
    assert again.result == {"b": 4}
    assert [s.name for s in again.steps] == ["add", "double"]
    assert hops.count == 0
    # The thread commits are settled (counted, their writes too) on the loop.
    deadline = time.monotonic() + 30
    while engine.runtime.committer.ops - ops0 < 20 * 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Inserts, checkpoints of the first step, finishes (and a claim each of those stored
    # queued: with a worker idle, one is stored running at its acceptance).
    assert engine.runtime.committer.ops - ops0 >= 20 * 3


def test_threads_calling_at_once_share_a_commit(engine: Engine) -> None:
    """While one thread's commit runs, the inserts of the threads calling meanwhile queue
    and the next commit carries all of them: 8 threads, 2 commits."""
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {"i": 0}, wait=False)
    commits = engine.runtime.thread_commits
    apply = engine.store.apply
    sizes: list[int] = []
    first = threading.Event()

    def held_apply(ops: Any) -> Any:
        if threading.current_thread().name.startswith("door-"):
            sizes.append(sum(isinstance(op, InsertExecution) for op in ops))
            if len(sizes) == 1:  # the first commit waits until the other 7 queued
                first.set()
                deadline = time.monotonic() + 30
                while len(commits._pending) < 7 and time.monotonic() < deadline:
                    time.sleep(0.01)
        return apply(ops)

    engine.store.apply = held_apply  # type: ignore[method-assign]
    accepted: list[str] = []

    def submit(i: int) -> None:
        if i:
            first.wait(30)
        ex = engine.call(engine.executions.execute, wf_id, {"i": i}, wait=False)
        accepted.append(ex.execution_id)

    threads = [threading.Thread(target=submit, args=(i,), name=f"door-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sizes == [1, 7]
    assert len(set(accepted)) == 8
    for execution_id in accepted:
        done = engine.call(engine.executions.wait, execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED


def test_the_thread_door_refuses_what_execute_refuses(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad parameters, options and an inactive workflow raise what ``execute`` raises; a
    full queue is ``QueueFull`` and leaves nothing behind; an idempotency key (a replay
    to look up) goes through the loop and returns the first execution again."""
    engine = Engine(databases(), runtime=RuntimeSettings(queue_size=2, workers=1))
    try:
        wf_id = _workflow(engine)
        engine.call(engine.executions.execute, wf_id, {"i": 0})
        hops = Hops(monkeypatch)
        with pytest.raises(InvalidParameters):
            engine.call(engine.executions.execute, wf_id, {"i": float("nan")}, wait=False)
        with pytest.raises(InvalidParameters):
            engine.call(engine.executions.execute, wf_id, ["not", "an", "object"], wait=False)
        with pytest.raises(InvalidRequest):
            engine.call(engine.executions.execute, wf_id, {"i": 1}, wait=False, timeout_seconds=-1)
        with pytest.raises(InvalidRequest):
            engine.call(engine.executions.execute, wf_id, {"i": 1}, wait=False, priority=12)
        assert hops.count == 0
        first = engine.call(
            engine.executions.execute, wf_id, {"i": 1}, wait=False, idempotency_key="k"
        )
        assert hops.count == 1
        again = engine.call(
            engine.executions.execute, wf_id, {"i": 1}, wait=False, idempotency_key="k"
        )
        assert again.execution_id == first.execution_id
        assert engine.runtime._reserved == 0
        engine.call(engine.workflows.deactivate, wf_id)
        with pytest.raises(InvalidState):
            engine.call(engine.executions.execute, wf_id, {"i": 2}, wait=False)
    finally:
        engine.close()


def test_a_full_queue_refuses_in_the_callers_thread(databases: DatabaseFactory) -> None:
    """With every place of the queue taken, the thread door raises ``QueueFull``; the
    refused call stores nothing and holds no place."""
    engine = Engine(databases(), runtime=RuntimeSettings(queue_size=1, workers=1))
    try:
        wf_id = _workflow(engine)
        first = engine.call(engine.executions.execute, wf_id, {"i": 0}, wait=False)
        engine.call(engine.executions.wait, first.execution_id, 60)
        runtime = engine.runtime
        with runtime._reserve_lock:
            runtime._reserved += 1  # the one place taken by someone else
        before = engine.call(engine.executions.list, page_size=100).pagination.total_items
        with pytest.raises(QueueFull):
            engine.call(engine.executions.execute, wf_id, {"i": 1}, wait=False)
        assert engine.call(engine.executions.list, page_size=100).pagination.total_items == before
        with runtime._reserve_lock:
            runtime._reserved -= 1
        assert runtime._reserved == 0
        ex = engine.call(engine.executions.execute, wf_id, {"i": 2}, wait=False)
        assert engine.call(engine.executions.wait, ex.execution_id, 60).result == {"b": 6}
        assert runtime._reserved == 0
    finally:
        engine.close()


CHILD = """
import json, sys, threading
from abi_engine import Engine
from abi_engine import RuntimeSettings
engine = Engine(sys.argv[1], durability=sys.argv[2],
                runtime=RuntimeSettings(lease_seconds=2.0, poll_interval=0.2))
engine.start_blocking()
wf = engine.call(engine.workflows.create, {"name": "door", "type": "custom",
                 "configuration": json.loads(sys.argv[3])})
engine.call(engine.workflows.activate, wf.id)
engine.call(engine.executions.execute, wf.id, {"i": 0}, wait=False)
lock = threading.Lock()
def submit(t):
    for i in range(t, 100000, 4):
        ex = engine.call(engine.executions.execute, wf.id, {"i": i}, wait=False)
        with lock:
            sys.stdout.write(f"ok {ex.execution_id} {i}\\n")
            sys.stdout.flush()
for t in range(4):
    threading.Thread(target=submit, args=(t,)).start()
threading.Event().wait()
"""


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["normal", "full"])
def test_accepted_executions_survive_sigkill(
    every_database: DatabaseFactory, durability: str
) -> None:
    """A child process accepting executions from 4 threads through the thread door is
    SIGKILLed: every execution it answered for is in the database after the crash, and
    a restarted engine runs each to its result."""
    db = str(every_database())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db, durability, json.dumps(STEPS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    accepted: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(accepted) < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("ok "):
                _, execution_id, i = line.split()
                accepted[execution_id] = int(i)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, errors = proc.communicate(timeout=30)
    assert len(accepted) >= 200, errors
    engine = Engine(db, runtime=RuntimeSettings(lease_seconds=1.0, poll_interval=0.2))
    try:
        engine.start_blocking()
        for execution_id, i in accepted.items():
            done = engine.call(engine.executions.wait, execution_id, 120)
            assert done.status is ExecutionStatus.COMPLETED, done
            assert done.result == {"b": (i + 1) * 2}
    finally:
        engine.close()


class _Recorder:
    """A store whose ``apply`` records each transaction's ops, and a committer whose
    ``settle`` records what the loop is told."""

    blocking = False

    def __init__(self) -> None:
        self.transactions: list[list[Any]] = []
        self.settled: list[tuple[list[Any], bool]] = []

    def apply(self, ops: Any) -> list[Any]:
        self.transactions.append(list(ops))
        return [f"done {op}" for op in ops]

    def settle(self, ops: Any, results: Any, seconds: float, thens: Any, *, count: bool) -> None:
        self.settled.append((list(ops), count))
        for then, result in thens:
            then(result)


def test_a_batch_of_the_committer_shares_the_callers_commit() -> None:
    """A batch of the group committer (its worker thread at durability="full") and the
    ops of callers' threads queued while another commit runs go in one transaction: each
    gets its own results; the callers' ops are settled on the loop (not counted as a
    commit of their own, the committer counts the transaction), each ``then`` called."""
    from abi_engine.runtime.thread_commit import ThreadCommits

    recorder = _Recorder()
    commits = ThreadCommits(recorder, recorder, lambda op: op)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    commits.start(loop)
    answers: dict[str, Any] = {}
    thens: list[Any] = []
    try:
        with commits._turn:  # a commit is running: the next ops queue
            commits._leading = True
        batch = threading.Thread(
            target=lambda: answers.update(batch=commits.apply_batch(["b1", "b2"]))
        )
        caller = threading.Thread(
            target=lambda: answers.update(caller=commits.apply("c1", thens.append))
        )
        batch.start()
        deadline = time.monotonic() + 30
        while len(commits._pending) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        caller.start()
        while len(commits._pending) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with commits._turn:
            commits._leading = False
            commits._turn.notify_all()
        batch.join(30)
        caller.join(30)
        assert recorder.transactions == [["b1", "b2", "c1"]]
        assert answers == {"batch": ["done b1", "done b2"], "caller": "done c1"}
        while not recorder.settled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.settled == [(["c1"], False)]
        assert thens == ["done c1"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.close()


def test_a_caller_carried_by_a_commit_is_answered_when_it_ends() -> None:
    """A caller whose op a commit carried is answered when that commit ends, not after
    the next one (led by a caller who queued meanwhile, here held in the store): its
    answer does not wait for a commit that does not carry it (at durability="full",
    another fsync)."""
    from abi_engine.runtime.thread_commit import ThreadCommits

    held = threading.Event()

    class Holding(_Recorder):
        def apply(self, ops: Any) -> list[Any]:
            if "n" in ops:
                assert held.wait(60)
            return super().apply(ops)

    recorder = Holding()
    commits = ThreadCommits(recorder, recorder, lambda op: op)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()
    commits.start(loop)
    answers: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    try:
        with commits._turn:  # this test leads a commit: the callers' ops queue
            commits._leading = True
        carried = threading.Thread(target=lambda: answers.update(f=commits.apply("f")))
        carried.start()
        while len(commits._pending) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with commits._turn:
            (slot,) = commits._pending
            commits._pending = []
        nxt = threading.Thread(target=lambda: answers.update(n=commits.apply("n")))
        nxt.start()
        while len(commits._pending) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        commits._write([slot])  # the commit carrying "f"; "n" queued behind it
        with commits._turn:
            commits._leading = False
            commits._turn.notify_all()
        carried.join(60)
        assert not carried.is_alive()  # answered while the next commit ("n") is held
        assert answers == {"f": "done f"}
        assert nxt.is_alive()
        held.set()
        nxt.join(60)
        assert answers == {"f": "done f", "n": "done n"}
        assert recorder.transactions == [["f"], ["n"]]
    finally:
        held.set()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(30)
        loop.close()


def test_the_committer_shares_commits_with_callers_only_at_full_durability(
    tmp_path: Path,
) -> None:
    """A SQLite file at durability="full" has its group commits applied through the
    callers' thread commits (one fsync for both); at "normal" they stay inline."""
    full = Engine(tmp_path / "full.db", durability="full")
    normal = Engine(tmp_path / "normal.db")
    try:
        assert full.runtime.committer.thread_apply == full.runtime.thread_commits.apply_batch
        assert normal.runtime.committer.thread_apply is None

    finally:
        full.close()
        normal.close()


class _Heard:
    """A plugin keeping the events its ``abi_event`` hook hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.mark.parametrize("hooked", [False, True])
def test_debounce_skips_through_the_thread_door(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch, hooked: bool
) -> None:
    """Executions of a debounced workflow accepted in the caller's thread end the ones
    they replace: each skipped one is ``skipped`` to a waiter, and an ``abi_event``
    hook hears each skip once, with its data (read back on the loop after the commit)."""
    heard = _Heard()
    engine = Engine(databases(), plugins=[heard] if hooked else [])
    try:
        wf = engine.call(
            engine.workflows.create,
            {
                "name": "debounced",
                "type": "custom",
                "configuration": STEPS,
                "debounce": {"key": "parameters.customer", "seconds": 1},
            },
        )
        engine.call(engine.workflows.activate, wf.id)
        engine.call(engine.executions.execute, wf.id, {"customer": "warm", "i": 0}, wait=False)
        hops = Hops(monkeypatch)
        ids = [
            engine.call(
                engine.executions.execute, wf.id, {"customer": "c", "i": i}, wait=False
            ).execution_id
            for i in range(3)
        ]
        assert hops.count == 0
        for execution_id in ids[:2]:
            view = engine.call(engine.executions.wait, execution_id, 60)
            assert view.status is ExecutionStatus.SKIPPED
        last = engine.call(engine.executions.wait, ids[2], 60)
        assert last.status is ExecutionStatus.COMPLETED
        if hooked:
            deadline = time.monotonic() + 30
            skips = [e for e in heard.events if e.type == "execution.skipped"]
            while len(skips) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
                skips = [e for e in heard.events if e.type == "execution.skipped"]
            assert [e.data["execution_id"] for e in skips] == ids[:2]
            assert {e.data["status"] for e in skips} == {"skipped"}
    finally:
        engine.close()


def test_an_acceptance_not_yet_handed_over_when_the_engine_stops(
    databases: DatabaseFactory,
) -> None:
    """An execution committed by a caller's thread whose hand-over the loop had not run
    when the engine stopped lets go of its queue place and is handed back: a new engine
    on the database runs it to its result."""
    db = databases()
    engine = Engine(db)
    try:
        wf_id = _workflow(engine)
        engine.call(engine.executions.execute, wf_id, {"i": 0}, wait=False)
        commits = engine.runtime.thread_commits
        with commits._queue_lock:
            commits._waking = True  # as if a drain were scheduled: this one never runs
        ex = engine.call(engine.executions.execute, wf_id, {"i": 5}, wait=False)
        assert len(commits._settle) == 1
        engine.stop_blocking()
        assert engine.runtime._reserved == 0
    finally:
        engine.close()
    again = Engine(db)
    try:
        done = again.call(again.executions.wait, ex.execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == {"b": 12}
    finally:
        again.close()
