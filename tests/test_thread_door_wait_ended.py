"""``engine.call(engine.executions.wait, id)`` of an ended execution (issue #18).

Answered in the caller's thread from one read of the execution and one of its steps;
a waiter (a ``threading.Event``) is registered with the runtime only when the first
read finds the execution still running (then read again, so that an end between the
read and the registration is not missed). Both backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from runtime_plugins.helpers import EngineFactory

from abi_engine import Engine, ExecutionStatus

DatabaseFactory = Callable[..., Any]

STEPS = {
    "steps": [
        {"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}},
        {"name": "double", "action": "transform", "expressions": {"b": "results['add']['a'] * 2"}},
    ]
}


class _Registry(dict):  # type: ignore[type-arg]
    """``Runtime._waiters``, recording the ids a waiter was registered for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.registered: list[str] = []

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.registered.append(key)
        return super().setdefault(key, default)


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


def test_a_wait_for_an_ended_execution_registers_no_waiter(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = engine.call(
        engine.workflows.create, {"name": "w", "type": "custom", "configuration": STEPS}
    )
    engine.call(engine.workflows.activate, wf.id)
    ended = engine.call(engine.executions.execute, wf.id, {"i": 4})  # waits for its end
    registry = _Registry(engine.runtime._waiters)
    monkeypatch.setattr(engine.runtime, "_waiters", registry)
    hops: list[Any] = []
    real = asyncio.run_coroutine_threadsafe
    monkeypatch.setattr(
        asyncio, "run_coroutine_threadsafe", lambda c, loop: hops.append(c) or real(c, loop)
    )
    view = engine.call(engine.executions.wait, ended.execution_id, 30)
    assert view.status is ExecutionStatus.COMPLETED
    assert view.result == {"b": 10}
    assert [s.name for s in view.steps] == ["add", "double"]
    assert registry.registered == []  # no waiter for an execution that has ended
    assert hops == []  # and no coroutine for the loop
    monkeypatch.undo()
    assert view == engine.call(engine.executions.get, ended.execution_id)  # as the loop reads it


def test_a_wait_for_a_running_execution_still_waits_in_the_thread(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait that finds the execution still running registers its waiter and is
    answered in the thread when the run ends (its second step sleeps a second)."""
    engine = make()
    engine.start_blocking()
    wf = engine.call(engine.workflows.create, {"name": "w", "type": "test_three"})
    engine.call(engine.workflows.activate, wf.id)
    registry = _Registry(engine.runtime._waiters)
    monkeypatch.setattr(engine.runtime, "_waiters", registry)
    params = {"do": {"second": {"sleep": 1.0}}}
    accepted = engine.call(engine.executions.execute, wf.id, params, wait=False)
    view = engine.call(engine.executions.wait, accepted.execution_id, 30)
    assert view.status is ExecutionStatus.COMPLETED
    assert view.result == {"done": 3}
    assert registry.registered == [accepted.execution_id]
    assert accepted.execution_id not in engine.runtime._waiters  # let go once answered
