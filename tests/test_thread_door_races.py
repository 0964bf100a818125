"""Races of the synchronous thread door (#18) with the event loop, found by the
breaker: the queue limit holds while callers' threads reserve places the loop
lets go of at the same moment."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from abi_engine import Engine, RuntimeSettings
from abi_engine.errors import QueueFull
from abi_engine.runtime import runner

STEPS = {
    "steps": [{"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}}]
}

DatabaseFactory = Callable[..., Any]


def test_a_place_let_go_on_the_loop_is_not_counted_twice(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop hands an accepted execution to the queue and lets go of its reservation;
    a caller's thread reserving in between must not see the place free while the
    execution is not counted queued yet: the queue never holds more than its size."""
    size = 2
    engine = Engine(databases(), runtime=RuntimeSettings(queue_size=size, workers=1))
    worst: list[int] = []
    release = runner._Reservation.release
    loop_thread: list[int] = []

    def slow_release(self: Any) -> None:
        release(self)
        if threading.get_ident() in loop_thread:
            # Widen the window: callers' threads run while the loop is here.
            threading.Event().wait(0.02)

    push = runner.Runtime._push

    def checked_push(self: runner.Runtime, *args: Any, **kwargs: Any) -> None:
        push(self, *args, **kwargs)
        worst.append(self._queued)  # executions in the queue, not taken by a worker yet

    guarded = runner.Runtime._guarded

    async def slow_worker(self: runner.Runtime, *args: Any) -> None:
        await anyio.sleep(0.05)  # the queue drains slowly: it stays full
        await guarded(self, *args)

    try:
        engine.start_blocking()
        wf = engine.call(
            engine.workflows.create, {"name": "race", "type": "custom", "configuration": STEPS}
        )
        engine.call(engine.workflows.activate, wf.id)
        loop_thread.append(engine._loop_thread or 0)
        monkeypatch.setattr(runner._Reservation, "release", slow_release)
        monkeypatch.setattr(runner.Runtime, "_push", checked_push)
        monkeypatch.setattr(runner.Runtime, "_guarded", slow_worker)
        accepted: list[str] = []

        def caller() -> None:
            for i in range(15):
                try:
                    ex = engine.call(engine.executions.execute, wf.id, {"i": i}, wait=False)
                except QueueFull:
                    continue
                accepted.append(ex.execution_id)

        threads = [threading.Thread(target=caller) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert accepted
        assert worst
        assert max(worst) <= size, f"the queue held {max(worst)} places of {size}"
        for execution_id in accepted:  # and every accepted one runs
            done = engine.call(engine.executions.wait, execution_id, 60)
            assert done.status.value == "completed"
    finally:
        engine.close()


@pytest.mark.parametrize("restart", ["same_engine", "new_engine"])
def test_callers_committing_while_the_engine_stops_lose_nothing(
    databases: DatabaseFactory, restart: str
) -> None:
    """Threads keep accepting executions while the engine stops: every id a caller got
    runs, exactly once, after the engine starts again (the same object, or a new engine
    on the database taking over leases)."""
    database = databases()
    settings = RuntimeSettings(lease_seconds=2.0, poll_interval=0.2)
    engine = Engine(database, runtime=settings)
    accepted: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    try:
        engine.start_blocking()
        wf = engine.call(
            engine.workflows.create, {"name": "stop", "type": "custom", "configuration": STEPS}
        )
        engine.call(engine.workflows.activate, wf.id)

        def caller(t: int) -> None:
            i = t
            while not stop.is_set():
                try:
                    ex = engine.call(engine.executions.execute, wf.id, {"i": i}, wait=False)
                except Exception as exc:
                    errors.append(type(exc).__name__)
                else:
                    accepted.append(ex.execution_id)
                i += 4

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(accepted) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling, not a margin
        engine.stop_blocking()  # the callers go on meanwhile
        stop.set()
        for thread in threads:
            thread.join(120)
        engine.stop_blocking()  # a caller may have started it again meanwhile
        if restart == "new_engine":
            engine.close()
            engine = Engine(database, runtime=settings)
        engine.start_blocking()
        for execution_id in accepted:
            done = engine.call(engine.executions.wait, execution_id, 120)
            assert done.status.value == "completed", (execution_id, done.status)
            assert [s.name for s in done.steps or []] == ["add"]
        assert len(set(accepted)) == len(accepted)
    finally:
        stop.set()
        engine.close()
