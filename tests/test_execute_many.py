"""engine.executions.execute_many: many asynchronous executions accepted in one call (#18)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from abi_engine import (
    Engine,
    ExecutionStatus,
    RuntimeSettings,
    WorkflowType,
    hookimpl,
    step,
)
from abi_engine.errors import InvalidParameters, InvalidRequest, InvalidState, QueueFull
from abi_engine.execution_batches import MAX_BATCH


class Doubles(WorkflowType):
    name = "doubles"

    @attrs.define
    class Parameters:
        i: int

    @step
    async def double(self, ctx: Any) -> dict[str, int]:
        return {"value": ctx.parameters["i"] * 2}


class DoublesPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Doubles)


def _engine(database: Any, **options: Any) -> Engine:
    return Engine(database(), plugins=[DoublesPlugin()], **options)


def _workflow(engine: Engine) -> str:
    workflow = engine.call(engine.workflows.create, {"name": "doubles", "type": "doubles"})
    engine.call(engine.workflows.activate, workflow.id)
    return workflow.id


def _stored(engine: Engine, workflow_id: str) -> int:
    page = engine.call(engine.executions.list, workflow_id=workflow_id, page_size=100)
    return len(page.items)


def test_a_synchronous_host_starts_many_in_one_call(databases: Any) -> None:
    """From a plain thread: 300 executions in one call come back in the order of their
    parameters, durable, and all complete; their acceptance took far fewer commits than
    executions (the group committer saw them together)."""
    engine = _engine(databases)
    try:
        wf = _workflow(engine)
        before = engine.runtime.committer.batches
        started = engine.call(engine.executions.execute_many, wf, [{"i": i} for i in range(300)])
        accepted_in = engine.runtime.committer.batches - before
        assert [e.parameters for e in started] == [{"i": i} for i in range(300)]
        assert len({e.execution_id for e in started}) == 300
        assert all(e.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING) for e in started)
        assert accepted_in < 100, accepted_in
        for i, execution in enumerate(started):
            done = engine.call(engine.executions.wait, execution.execution_id, timeout=60)
            assert done.status is ExecutionStatus.COMPLETED
            assert done.result == {"value": 2 * i}
    finally:
        engine.close()


def test_one_refused_item_refuses_the_batch_naming_it(databases: Any) -> None:
    """Every item is checked before any is stored: a bad one at index 2 raises the error
    execute would, with its index, and nothing is stored."""
    engine = _engine(databases)
    try:
        wf = _workflow(engine)
        with pytest.raises(InvalidParameters) as refused:
            engine.call(engine.executions.execute_many, wf, [{"i": 1}, {"i": 2}, {"i": "x"}])
        assert refused.value.details["index"] == 2
        with pytest.raises(InvalidRequest) as not_object:
            engine.call(engine.executions.execute_many, wf, [{"i": 1}, 5])
        assert not_object.value.details == {"field": "parameters[1]", "index": 1}
        assert _stored(engine, wf) == 0
    finally:
        engine.close()


@pytest.mark.parametrize(
    "parameters",
    [{"i": 1}, "abc", 7, None, [{"i": 1}] * (MAX_BATCH + 1)],
    ids=["mapping", "string", "number", "none", "too-many"],
)
def test_parameters_must_be_a_bounded_list(tmp_path: Any, parameters: Any) -> None:
    engine = Engine(tmp_path / "abi.db", plugins=[DoublesPlugin()])
    try:
        wf = _workflow(engine)
        with pytest.raises(InvalidRequest) as refused:
            engine.call(engine.executions.execute_many, wf, parameters)
        assert refused.value.details["field"] == "parameters"
        assert _stored(engine, wf) == 0
    finally:
        engine.close()


def test_no_room_for_all_refuses_all(databases: Any) -> None:
    """QueueFull when the queue cannot take the whole batch, and none of it is stored;
    a batch that fits is then accepted whole."""
    engine = _engine(databases, runtime=RuntimeSettings(queue_size=5, workers=1))
    try:
        wf = _workflow(engine)
        with pytest.raises(QueueFull) as full:
            engine.call(engine.executions.execute_many, wf, [{"i": i} for i in range(6)])
        assert full.value.details["room"] <= 5
        assert _stored(engine, wf) == 0
        started = engine.call(engine.executions.execute_many, wf, [{"i": i} for i in range(5)])
        assert len(started) == 5
        assert engine.runtime.room() >= 0
    finally:
        engine.close()


def test_an_inactive_workflow_is_refused(databases: Any) -> None:
    engine = _engine(databases)
    try:
        wf = _workflow(engine)
        engine.call(engine.workflows.deactivate, wf)
        with pytest.raises(InvalidState):
            engine.call(engine.executions.execute_many, wf, [{"i": 1}])
        engine.call(engine.workflows.activate, wf)
        assert engine.call(engine.executions.execute_many, wf, []) == []
    finally:
        engine.close()


def test_as_many_as_workers_are_idle_are_stored_running(databases: Any) -> None:
    """With 3 idle workers, the first 3 of 8 are accepted (and stored) running, started
    at their creation, without a claim write of their own; the others queued; all
    complete, each once. Paused or limited by concurrency: all queued (the store decides)."""
    engine = _engine(databases, runtime=RuntimeSettings(workers=3))
    try:
        wf = _workflow(engine)
        assert engine.runtime.idle_workers() == 3
        writes = engine.runtime.committer.ops
        started = engine.call(engine.executions.execute_many, wf, [{"i": i} for i in range(8)])
        statuses = [e.status for e in started]
        assert statuses == [ExecutionStatus.RUNNING] * 3 + [ExecutionStatus.QUEUED] * 5
        assert all(e.started_at == e.created_at for e in started[:3])
        for i, execution in enumerate(started):
            done = engine.call(engine.executions.wait, execution.execution_id, timeout=60)
            assert done.status is ExecutionStatus.COMPLETED
            assert done.result == {"value": 2 * i}
            assert done.steps[0].attempts == 1
        # An insert and a finish each, and a claim for the 5 queued ones.
        assert engine.runtime.committer.ops - writes == 8 + 8 + 5
        assert engine.runtime.idle_workers() == 3
        limited = engine.call(
            engine.workflows.create, {"name": "lim", "type": "doubles", "max_concurrency": 5}
        )
        engine.call(engine.workflows.activate, limited.id)
        queued = engine.call(engine.executions.execute_many, limited.id, [{"i": 1}] * 2)
        assert [e.status for e in queued] == [ExecutionStatus.QUEUED] * 2
        for execution in queued:
            done = engine.call(engine.executions.wait, execution.execution_id, timeout=60)
            assert done.status is ExecutionStatus.COMPLETED
    finally:
        engine.close()
