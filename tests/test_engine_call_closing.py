"""``Engine.call`` while the engine stops or after it closed (#18, the adversary): a call
never hangs and never starts a closed engine again; it raises ``EngineNotRunning``
within a bounded time. A thread-door acceptance committed while the engine stops is
not lost: it runs, once, after a restart.

Interleavings are aimed with hooks (the loop's ``close``, ``run_coroutine_threadsafe``,
the store's ``apply``), not with timing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import pytest

from abi_engine import Engine, ExecutionStatus, RuntimeSettings
from abi_engine.errors import EngineNotRunning
from abi_engine.storage.records import InsertExecution

STEPS = {
    "steps": [
        {"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}},
        {"name": "double", "action": "transform", "expressions": {"b": "results['add']['a'] * 2"}},
    ]
}

DatabaseFactory = Callable[..., Any]
DEADLINE = 60.0


def _workflow(engine: Engine) -> str:
    wf = engine.call(
        engine.workflows.create, {"name": "closing", "type": "custom", "configuration": STEPS}
    )
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its outcome (result or exception) lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _portal_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("asyncio-portal")]


def test_a_call_after_close_raises_and_starts_nothing(databases: DatabaseFactory) -> None:
    """After ``close()`` a call is ``EngineNotRunning`` at once: it does not start the
    engine again on its closed store (nor leave a loop thread behind)."""
    engine = Engine(databases())
    before = _portal_threads()
    engine.call(engine.workflows.list)
    engine.close()
    for call in (
        partial(engine.call, engine.workflows.list),
        partial(engine.call, engine.executions.execute, "wf_x", {}, wait=False),
        engine.start_blocking,
    ):
        with pytest.raises(EngineNotRunning):
            call()
    assert _portal_threads() == before


def test_a_call_handed_to_a_loop_that_stops_before_running_it_raises(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call saw the loop open, and hands its coroutine over once the loop has stopped
    (it is closing): nothing will ever run it. The call raises ``EngineNotRunning``
    within a bounded time instead of waiting for ever."""
    engine = Engine(databases())
    try:
        engine.call(engine.workflows.list)
        loop = engine._token.native_token  # type: ignore[union-attr]
        assert isinstance(loop, asyncio.AbstractEventLoop)
        stopped, handed = threading.Event(), threading.Event()
        real_close, real_hand = loop.close, asyncio.run_coroutine_threadsafe

        def closing() -> None:  # the loop has stopped running: hold its close
            stopped.set()
            handed.wait(DEADLINE)
            real_close()

        def hand(coro: Any, to: Any) -> Any:
            stopped.wait(DEADLINE)
            try:
                return real_hand(coro, to)
            finally:
                handed.set()

        loop.close = closing  # type: ignore[method-assign]
        monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", hand)
        call, outcome = _in_thread(lambda: engine.call(engine.workflows.list))
        engine.stop_blocking()
        call.join(DEADLINE)
        assert not call.is_alive(), "engine.call hung on a loop that stopped"
        assert stopped.is_set()
        assert handed.is_set()
        assert isinstance(outcome[0], EngineNotRunning), outcome
    finally:
        engine.close()


def test_a_call_racing_stop_blocking_after_starting_the_engine_raises(
    databases: DatabaseFactory,
) -> None:
    """The call started the engine (it was not running), and another thread stopped it
    before the call reached its loop: ``EngineNotRunning``, not anyio's error about
    a missing event loop token."""
    engine = Engine(databases())
    try:
        real = engine.start_blocking

        def started_then_stopped() -> None:
            real()
            stopper = threading.Thread(target=engine.stop_blocking)
            stopper.start()
            stopper.join(DEADLINE)

        engine.start_blocking = started_then_stopped  # type: ignore[method-assign]
        with pytest.raises(EngineNotRunning):
            engine.call(engine.workflows.list)
        engine.start_blocking = real  # type: ignore[method-assign]
        assert engine.call(engine.workflows.list) is not None  # started again
    finally:
        engine.close()


def test_a_call_running_when_the_engine_stops_raises(databases: DatabaseFactory) -> None:
    """A coroutine still running on the loop when ``stop_blocking`` ends it: the call
    raises ``EngineNotRunning`` (not a bare ``CancelledError``)."""
    engine = Engine(databases())
    try:
        engine.call(engine.workflows.list)
        started = threading.Event()

        async def long() -> None:
            started.set()
            await anyio.sleep(3600)

        call, outcome = _in_thread(lambda: engine.call(long))
        assert started.wait(DEADLINE)
        engine.stop_blocking()
        call.join(DEADLINE)
        assert not call.is_alive()
        assert isinstance(outcome[0], EngineNotRunning), outcome
    finally:
        engine.close()


def test_a_coroutines_own_timeout_error_is_not_taken_for_a_stop(
    databases: DatabaseFactory,
) -> None:
    """A ``TimeoutError`` the coroutine raises is the caller's, as it was raised."""
    engine = Engine(databases())
    try:

        async def times_out() -> None:
            raise TimeoutError("mine")

        with pytest.raises(TimeoutError, match="mine"):
            engine.call(times_out)
        assert engine.call(engine.workflows.list) is not None
    finally:
        engine.close()


def test_thread_door_commits_racing_close_are_not_lost(databases: DatabaseFactory) -> None:
    """4 threads accept through the thread door; one of them commits after the engine
    began to stop (the stop waits for that commit under way), then the engine
    closes. Every execution a caller was answered with is stored and, after a restart,
    runs once to its result; a refused caller got ``EngineNotRunning``."""
    db = databases()
    settings = RuntimeSettings(lease_seconds=2.0, poll_interval=0.2)
    engine = Engine(db, runtime=settings)
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {"i": 0}, wait=False)  # compiled now
    aimed, apply = threading.Event(), engine.store.apply
    callers: set[int] = set()  # the submitting threads (not the committer's worker)

    def applying(ops: Any) -> Any:
        if threading.get_ident() in callers and not aimed.is_set() and len(answers) >= 20:
            aimed.set()  # one caller's commit waits until the engine is stopping
            deadline = time.monotonic() + DEADLINE
            while engine._token is not None and time.monotonic() < deadline:
                time.sleep(0.01)  # polling a condition, not a margin
            results = apply(ops)  # the store may be closed by now: then it raises
            late.extend(
                op.record.id
                for op, result in zip(ops, results, strict=True)
                if isinstance(op, InsertExecution) and result is True
            )
            return results
        return apply(ops)

    engine.store.apply = applying  # type: ignore[method-assign]
    late: list[str] = []
    answers: list[Any] = []
    refused: list[BaseException] = []
    lock = threading.Lock()

    def submit(t: int) -> None:
        callers.add(threading.get_ident())
        for i in range(1, 10_000):
            try:
                ex = engine.call(
                    partial(engine.executions.execute, wait=False), wf_id, {"i": t * 10_000 + i}
                )
            except BaseException as exc:
                with lock:
                    refused.append(exc)
                return
            with lock:
                answers.append((ex.execution_id, t * 10_000 + i))

    threads = [threading.Thread(target=submit, args=(t,), daemon=True) for t in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + DEADLINE
    while not aimed.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert aimed.is_set()
    engine.close()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert all(isinstance(exc, EngineNotRunning) for exc in refused), refused
    assert len(refused) == 4
    # The aimed commit (the stop waited for it) stored executions, and answered them.
    assert late
    assert set(late) <= {execution_id for execution_id, _ in answers}
    restarted = Engine(db, runtime=settings)
    try:
        for execution_id, i in answers:
            done = restarted.call(restarted.executions.wait, execution_id, DEADLINE)
            assert done.status is ExecutionStatus.COMPLETED, done
            assert done.result == {"b": (i + 1) * 2}
            assert [s.attempts for s in done.steps] == [1, 1]
    finally:
        restarted.close()
