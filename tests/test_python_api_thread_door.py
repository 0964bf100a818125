"""The seed's Python API takes the synchronous door when embedded (#18, fix 14):
``WorkflowExecutor.execute_workflow`` (waiting for completion, or not) and
``execute_workflow_async`` are answered in the caller's thread, without handing a
coroutine to the engine's loop, and answer exactly what the operation answers there:
the same execution JSON, the same errors (scope, inactive workflow, failed run)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from abi.workflows import WorkflowExecutor
from abi_engine import Engine, ExecutionStatus, Limits, RuntimeSettings, StepContext, hookimpl
from abi_engine.converter import unstructure
from abi_engine.errors import Forbidden, InvalidState, WorkflowExecutionError

STEPS = {
    "steps": [
        {"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}},
        {"name": "double", "action": "transform", "expressions": {"b": "results['add']['a'] * 2"}},
    ]
}

DatabaseFactory = Callable[..., Any]


class Hops:
    """Counts the coroutines ``Engine.call`` hands to the event loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = asyncio.run_coroutine_threadsafe

        def counting(coro: Any, loop: Any) -> Any:
            self.count += 1
            return real(coro, loop)

        monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", counting)


class Held:
    """A ``held`` step that waits until the test's gate opens: one worker, the rest queue."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @hookimpl
    def abi_step_handlers(self, register: Callable[[str, Any], None]) -> None:
        async def held(ctx: StepContext) -> Any:
            with anyio.fail_after(120):
                while not self.gate.is_set():  # noqa: ASYNC110 - set from the test's thread
                    await anyio.sleep(0.05)

        register("held", held)


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


def _workflow(engine: Engine) -> str:
    wf = engine.call(
        engine.workflows.create, {"name": "seed door", "type": "custom", "configuration": STEPS}
    )
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


def test_seed_execute_takes_the_thread_door(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the workflow is compiled (and a queued place counted), the seed's executes
    hand no coroutine to the loop: synchronous ones answer ended with their result,
    asynchronous ones accepted; every one is stored and runs."""
    wf_id = _workflow(engine)
    executor = WorkflowExecutor(access_token=engine.tokens.create_token("usr_seed"), engine=engine)
    executor.execute_workflow(wf_id, {"i": 0})  # compiles it (on the loop)
    executor.execute_workflow_async(wf_id, {"i": 0})  # counts the user's queued places
    hops = Hops(monkeypatch)
    started = [executor.execute_workflow_async(wf_id, {"i": i}) for i in range(1, 4)]
    started.append(
        executor.execute_workflow(wf_id, {"i": 4}, execution_options={"wait_for_completion": False})
    )
    done = [executor.execute_workflow(wf_id, {"i": i}) for i in range(5, 10)]
    assert hops.count == 0
    for i, ex in enumerate(done, 5):
        assert ex.status is ExecutionStatus.COMPLETED
        assert ex.result == {"b": (i + 1) * 2}
        assert ex.steps is not None
        assert [s.name for s in ex.steps] == ["add", "double"]
    for i, ex in enumerate(started, 1):
        assert ex.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
        ended = executor.wait_for_execution(ex.execution_id, timeout=60)
        assert ended.result == {"b": (i + 1) * 2}
    assert not engine.runtime._waiters


def test_seed_execute_in_thread_answers_as_the_operation(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same JSON as the loop's operation gives (compared field by field with an
    execution started on the loop, ids and times aside), and its errors."""
    wf_id = _workflow(engine)
    token = engine.tokens.create_token("usr_seed")
    executor = WorkflowExecutor(access_token=token, engine=engine)
    on_loop = executor.execute_workflow(wf_id, {"i": 1})
    hops = Hops(monkeypatch)
    in_thread = executor.execute_workflow(wf_id, {"i": 1})
    assert hops.count == 0
    varying = {"execution_id", "started_at", "completed_at", "created_at", "duration_ms"}

    def shown(ex: Any) -> dict[str, Any]:
        data = {k: v for k, v in unstructure(ex).items() if k not in varying}
        data["steps"] = [{k: v for k, v in s.items() if k not in varying} for s in data["steps"]]
        return data

    assert shown(in_thread) == shown(on_loop)
    reader = WorkflowExecutor(
        access_token=engine.tokens.create_token("usr_reader", ["executions:read"]), engine=engine
    )
    with pytest.raises(Forbidden):
        reader.execute_workflow(wf_id, {"i": 1})
    with pytest.raises(WorkflowExecutionError) as failed:
        executor.execute_workflow(wf_id, {"j": 1})  # parameters['i'] is missing
    assert failed.value.details["step"] == "add"
    assert hops.count == 0
    engine.call(engine.workflows.deactivate, wf_id)
    with pytest.raises(InvalidState):
        executor.execute_workflow(wf_id, {"i": 1})


def test_seed_execute_with_an_idempotency_key_goes_to_the_loop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idempotency key is looked up on the loop: the second call replays the first."""
    wf_id = _workflow(engine)
    executor = WorkflowExecutor(access_token=engine.tokens.create_token("usr_seed"), engine=engine)
    executor.execute_workflow(wf_id, {"i": 0})
    hops = Hops(monkeypatch)
    first = executor.execute_workflow(wf_id, {"i": 1}, idempotency_key="k-1")
    again = executor.execute_workflow(wf_id, {"i": 1}, idempotency_key="k-1")
    assert hops.count == 2
    assert again.execution_id == first.execution_id


def test_a_seed_async_execute_over_the_quota_is_refused(
    databases: DatabaseFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``max_queued_executions_per_user`` holds whichever door a call takes: the thread
    door takes a place only from the budget a recent count left (the loop counts), so
    most calls skip the loop and the 21st queued one is refused as when each counted."""
    gate = threading.Event()
    engine = Engine(
        databases(),
        plugins=(Held(gate),),
        limits=Limits(max_queued_executions_per_user=20),
        runtime=RuntimeSettings(workers=1),
    )
    try:
        wf = engine.call(
            engine.workflows.create,
            {"name": "held", "type": "custom", "configuration": {"handler": "held"}},
        )
        engine.call(engine.workflows.activate, wf.id)
        executor = WorkflowExecutor(access_token=engine.tokens.create_token("usr_q"), engine=engine)
        executor.execute_workflow_async(wf.id, {})  # compiles it, counts
        hops = Hops(monkeypatch)
        taken = [1]

        def fill() -> None:
            for _ in range(40):
                executor.execute_workflow_async(wf.id, {})
                taken[0] += 1

        with pytest.raises(InvalidState) as refused:
            fill()
        assert refused.value.details == {
            "limit": "max_queued_executions_per_user",
            "max_queued_executions_per_user": 20,
        }
        assert 20 <= taken[0] <= 21  # the first may have started before the others
        assert hops.count < taken[0] // 2  # most took a counted place in their own thread
    finally:
        gate.set()
        engine.close()
