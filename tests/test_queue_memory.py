"""A deep queue keeps only ids in memory (``RuntimeSettings.queued_in_memory``, #18):
executions queued beyond the bound are read from the store when a worker takes them,
and run, wait, cancel and answer exactly as the ones kept in memory."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from abi_engine import (
    Engine,
    ExecutionStatus,
    RuntimeSettings,
    WorkflowType,
    hookimpl,
    step,
)

GATES: dict[str, anyio.Event] = {}


class Gated(WorkflowType):
    name = "gated_queue"

    @step
    async def first(self, ctx: Any) -> dict[str, int]:
        await GATES["open"].wait()
        return {"a": ctx.parameters["i"] + 1}

    @step
    async def second(self, ctx: Any) -> dict[str, int]:
        return {"value": ctx.results["first"]["a"] * 2}


class GatedPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Gated)


@pytest.mark.anyio
async def test_executions_queued_beyond_the_bound_run_from_the_store(databases: Any) -> None:
    """With 2 workers and 3 queued executions kept in memory, 40 queued executions:
    the others hold no prepared run, yet all complete with their own results; one of
    them cancelled while queued ends cancelled and runs no step."""
    GATES["open"] = anyio.Event()
    settings = RuntimeSettings(workers=2, queued_in_memory=3)
    engine = Engine(databases(), plugins=[GatedPlugin()], runtime=settings)
    try:
        await _run_beyond_the_bound(engine)
    finally:
        engine.close()


async def _run_beyond_the_bound(engine: Engine) -> None:
    async with engine:
        wf = await engine.workflows.create({"name": "q", "type": "gated_queue"})
        await engine.workflows.activate(wf.id)
        started = [await engine.executions.execute(wf.id, {"i": i}, wait=False) for i in range(40)]
        assert len(engine.runtime._prepared) <= 2 + 3
        victim = started[30].execution_id
        cancelled = await engine.executions.cancel(victim)
        assert cancelled.status is ExecutionStatus.CANCELLED
        GATES["open"].set()
        for i, execution in enumerate(started):
            done = await engine.executions.wait(execution.execution_id, timeout=60)
            assert done is not None
            if execution.execution_id == victim:
                assert done.status is ExecutionStatus.CANCELLED
                assert all(s.status.value == "pending" for s in done.steps or [])
                continue
            assert done.status is ExecutionStatus.COMPLETED, done
            assert done.result == {"value": (i + 1) * 2}
        assert engine.runtime._prepared == {}


@pytest.mark.anyio
async def test_a_bound_of_zero_reads_every_queued_execution(databases: Any) -> None:
    """queued_in_memory=0: every asynchronous execution is read back from the store;
    synchronous ones still run from memory."""
    GATES["open"] = anyio.Event()
    GATES["open"].set()
    settings = RuntimeSettings(workers=4, queued_in_memory=0)
    engine = Engine(databases(), plugins=[GatedPlugin()], runtime=settings)
    try:
        await _run_all_from_the_store(engine)
    finally:
        engine.close()


async def _run_all_from_the_store(engine: Engine) -> None:
    async with engine:
        wf = await engine.workflows.create({"name": "q0", "type": "gated_queue"})
        await engine.workflows.activate(wf.id)
        accepted = await engine.executions.execute_many(wf.id, [{"i": i} for i in range(25)])
        sync = await engine.executions.execute(wf.id, {"i": 100})
        assert sync.result == {"value": 202}
        for i, execution in enumerate(accepted):
            done = await engine.executions.wait(execution.execution_id, timeout=60)
            assert done is not None
            assert done.result == {"value": (i + 1) * 2}, done
