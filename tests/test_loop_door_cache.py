"""The loop's ``execute`` trusts its cached workflow on a first attempt (#18, REST door).

``engine.executions.execute`` (what ``execute_async`` and the in-process API call)
no longer reads the workflow's version before each insert: the cached compiled
workflow, when it was active and needs no other check (no required integration,
no template), is used as it is, and the insert checks that version in its own
transaction. Another node's edit between two requests (committed straight
through the store here, so this engine's cache does not hear of it) is therefore
seen by the insert: the request is checked again against the new version and
answered as before the change (refused as the contract says, or accepted and run
under the new version). A parameter refusal by the cached version is checked
again too, since a newer version may accept the parameters.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from abi_engine import Engine, ExecutionStatus, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidState, ParameterValidationError, WorkflowNotFound
from abi_engine.ids import utcnow
from abi_engine.models import WorkflowStatus
from abi_engine.testing import engine_for

pytestmark = pytest.mark.anyio


class Bounded(WorkflowType):
    """Doubles ``i``; refuses an ``i`` above its configuration's ``most``."""

    name = "bounded"

    @attrs.define
    class Configuration:
        most: int = 10

    @attrs.define
    class Parameters:
        i: int

    def check_parameters(self, params: Any, config: Any) -> None:
        if params.i > config.most:
            raise ParameterValidationError(
                f"'parameters.i' must be at most {config.most}", {"field": "parameters.i"}
            )

    @step
    async def double(self, ctx: Any) -> dict[str, int]:
        return {"v": ctx.parameters["i"] * 2, "most": ctx.config.most}


class BoundedPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Bounded)


async def _workflow(engine: Engine, most: int = 10, active: bool = True) -> str:
    wf = await engine.workflows.create(
        {"name": "bounded", "type": "bounded", "configuration": {"most": most}}
    )
    if active:
        await engine.workflows.activate(wf.id)
    return wf.id


def _edit(engine: Engine, wf_id: str, **changes: Any) -> None:
    """Commit a new version of the workflow (``changes``), as another node would."""
    current = engine.store.get_workflow(wf_id)
    assert current is not None
    assert engine.store.update_workflow(attrs.evolve(current, updated_at=utcnow(), **changes))


class VersionReads:
    """Counts the reads of a workflow's version (``store.workflow_version``)."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        read = engine.store.workflow_version

        def counted(workflow_id: str) -> Any:
            self.count += 1
            return read(workflow_id)

        engine.store.workflow_version = counted  # type: ignore[method-assign]


async def _done(engine: Engine, execution_id: str) -> Any:
    done = await engine.executions.wait(execution_id, timeout=60)
    assert done.status is ExecutionStatus.COMPLETED, done
    return done.result


async def test_accepting_from_the_cache_reads_no_version(databases: Any) -> None:
    async with engine_for(BoundedPlugin(), db=databases()) as engine:
        wf_id = await _workflow(engine)
        first = await engine.executions.execute(wf_id, {"i": 1}, wait=False)
        reads = VersionReads(engine)
        accepted = [await engine.executions.execute(wf_id, {"i": i}, wait=False) for i in range(5)]
        assert reads.count == 0
        assert [await _done(engine, a.execution_id) for a in accepted] == [
            {"v": 2 * i, "most": 10} for i in range(5)
        ]
        # An idempotency key still reads the store (its replay), as before.
        await engine.executions.execute(wf_id, {"i": 1}, wait=False, idempotency_key="k1")
        assert reads.count == 1
        assert await _done(engine, first.execution_id) == {"v": 2, "most": 10}


async def test_another_nodes_update_is_run_by_the_next_request(databases: Any) -> None:
    async with engine_for(BoundedPlugin(), db=databases()) as engine:
        wf_id = await _workflow(engine, most=10)
        await engine.executions.execute(wf_id, {"i": 1}, wait=False)  # cached: most 10
        _edit(engine, wf_id, configuration={"most": 1000})
        reads = VersionReads(engine)
        accepted = await engine.executions.execute(wf_id, {"i": 3}, wait=False)
        assert await _done(engine, accepted.execution_id) == {"v": 6, "most": 1000}
        assert reads.count == 1  # refused by the insert, then checked afresh
        record = engine.store.get_execution(accepted.execution_id)
        assert record is not None
        assert record.configuration == {"most": 1000}


async def test_parameters_the_cached_version_refuses_are_checked_again(databases: Any) -> None:
    async with engine_for(BoundedPlugin(), db=databases()) as engine:
        wf_id = await _workflow(engine, most=10)
        await engine.executions.execute(wf_id, {"i": 1}, wait=False)  # cached: most 10
        _edit(engine, wf_id, configuration={"most": 100})
        accepted = await engine.executions.execute(wf_id, {"i": 50}, wait=False)
        assert await _done(engine, accepted.execution_id) == {"v": 100, "most": 100}
        with pytest.raises(ParameterValidationError) as refused:  # by the current version
            await engine.executions.execute(wf_id, {"i": 500}, wait=False)
        assert refused.value.message == "'parameters.i' must be at most 100"


@pytest.mark.parametrize("edit", ["deactivate", "delete"])
async def test_another_nodes_deactivation_or_deletion_refuses(databases: Any, edit: str) -> None:
    async with engine_for(BoundedPlugin(), db=databases()) as engine:
        wf_id = await _workflow(engine)
        first = await engine.executions.execute(wf_id, {"i": 1}, wait=False)
        await _done(engine, first.execution_id)
        if edit == "deactivate":
            _edit(engine, wf_id, status=WorkflowStatus.INACTIVE, deactivated_at=utcnow())
            with pytest.raises(InvalidState) as refused:
                await engine.executions.execute(wf_id, {"i": 2}, wait=False)
            assert refused.value.details["status"] == "inactive"
        else:
            engine.store.delete_workflow(wf_id, utcnow())
            with pytest.raises(WorkflowNotFound):
                await engine.executions.execute(wf_id, {"i": 2}, wait=False)
        page = await engine.executions.list(workflow_id=wf_id)
        assert [e.execution_id for e in page.items] == [first.execution_id]


async def test_an_inactive_cached_version_is_read_again(databases: Any) -> None:
    """Cached while inactive (refused), activated by another node: accepted at once."""
    async with engine_for(BoundedPlugin(), db=databases()) as engine:
        wf_id = await _workflow(engine, active=False)
        with pytest.raises(InvalidState):
            await engine.executions.execute(wf_id, {"i": 1}, wait=False)
        _edit(engine, wf_id, status=WorkflowStatus.ACTIVE, activated_at=utcnow())
        accepted = await engine.executions.execute(wf_id, {"i": 2}, wait=False)
        assert await _done(engine, accepted.execution_id) == {"v": 4, "most": 10}


@pytest.mark.parametrize("wait", [False, True])
def test_the_thread_door_checks_a_refusal_by_its_cache_again(databases: Any, wait: bool) -> None:
    """The synchronous door (``engine.call`` from a host thread) refused parameters by
    its cached version for good: after another node loosened the rule, they were still
    refused. Now the refusal is checked against the current version, on the loop."""
    engine = Engine(databases(), plugins=[BoundedPlugin()])
    try:
        engine.start_blocking()
        wf_id = engine.call(_workflow, engine, 10)
        engine.call(engine.executions.execute, wf_id, {"i": 1}, wait=False)  # cached: most 10
        _edit(engine, wf_id, configuration={"most": 100})
        accepted = engine.call(engine.executions.execute, wf_id, {"i": 50}, wait=wait)
        done = engine.call(engine.executions.wait, accepted.execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED, done
        assert done.result == {"v": 100, "most": 100}
        with pytest.raises(ParameterValidationError) as refused:  # by the current version
            engine.call(engine.executions.execute, wf_id, {"i": 500}, wait=wait)
        assert refused.value.message == "'parameters.i' must be at most 100"
    finally:
        engine.close()
