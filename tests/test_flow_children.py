"""Child workflows (#16, point 10): a step starts another workflow's execution with
``ctx.run_workflow`` and waits for it durably; the child's end is signalled to the
parent in the transaction that ends it; cancelling the parent cancels its children.
On every engine backend (SQLite file, PostgreSQL where configured)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    new_workflow,
    wait_status,
)

from abi_engine import ExecutionStatus, StepContext, WorkflowType, hookimpl, step

pytestmark = pytest.mark.anyio


class Parent(WorkflowType):
    """``spawn`` runs the workflow ``parameters.child`` and returns its result; ``after``."""

    name = "test_parent"

    @step
    async def spawn(self, ctx: StepContext) -> Any:
        PROBE.calls[(ctx.execution_id, "spawn")] += 1
        return await ctx.run_workflow(ctx.parameters["child"], ctx.parameters.get("with"))

    @step
    async def after(self, ctx: StepContext) -> Any:
        return {"child_said": ctx.results["spawn"]}


class _Plugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Parent)


@pytest.mark.parametrize("gated", [True, False], ids=["child-slower", "child-faster"])
async def test_a_step_runs_a_child_workflow_and_gets_its_result(
    make: EngineFactory, gated: bool
) -> None:
    """The parent waits (holding no worker) until the child completes, then goes on with
    its result; the child is started once, names its parent, and is listed as its child.
    A child that ends before the parent waits is seen as well."""
    engine = make(plugins=(_Plugin(),))
    async with engine:
        child_wf = await new_workflow(engine)
        parent_wf = await new_workflow(engine, "test_parent")
        plan = {"do": {"second": {"gate": "child"}}} if gated else {}
        parent = await engine.executions.execute(
            parent_wf, {"child": child_wf, "with": plan}, wait=False
        )
        if gated:
            await wait_status(engine, parent.execution_id, ExecutionStatus.WAITING, timeout=30)
            PROBE.gate("child").set()
        done = await wait_status(engine, parent.execution_id, *TERMINAL, timeout=30)
        children = await engine.executions.list(parent_execution_id=parent.execution_id)
        (summary,) = children.items
        child = await engine.executions.get(summary.execution_id)
    assert done.status is ExecutionStatus.COMPLETED, done.error
    assert done.result == {"child_said": {"done": 3}}
    assert child.parent_execution_id == parent.execution_id
    assert child.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(child.execution_id) == {"first": 1, "second": 1, "third": 1}


async def test_a_failed_child_fails_the_parents_step(make: EngineFactory) -> None:
    """A child that fails makes ``run_workflow`` raise ChildWorkflowFailed: the parent's
    step fails with the child's id and error."""
    engine = make(plugins=(_Plugin(),))
    async with engine:
        child_wf = await new_workflow(engine)
        parent_wf = await new_workflow(engine, "test_parent")
        plan = {"do": {"first": {"raise": "child broke"}}}
        parent = await engine.executions.execute(
            parent_wf, {"child": child_wf, "with": plan}, wait=False
        )
        done = await wait_status(engine, parent.execution_id, *TERMINAL, timeout=30)
    assert done.status is ExecutionStatus.FAILED
    assert done.error is not None
    assert done.error.step == "spawn"
    assert done.error.type == "ChildWorkflowFailed"
    assert "child broke" in done.error.message


async def test_cancelling_the_parent_cancels_its_children(make: EngineFactory) -> None:
    """The parent waits for a child that is running; cancelling the parent cancels the
    child, which never completes its step."""
    engine = make(plugins=(_Plugin(),))
    async with engine:
        child_wf = await new_workflow(engine)
        parent_wf = await new_workflow(engine, "test_parent")
        plan = {"do": {"first": {"gate": "never"}}}
        parent = await engine.executions.execute(
            parent_wf, {"child": child_wf, "with": plan}, wait=False
        )
        await wait_status(engine, parent.execution_id, ExecutionStatus.WAITING, timeout=30)
        (summary,) = (await engine.executions.list(parent_execution_id=parent.execution_id)).items
        await engine.executions.cancel(parent.execution_id)
        child = await wait_status(engine, summary.execution_id, *TERMINAL, timeout=30)
        parent_now = await engine.executions.get(parent.execution_id)
    assert child.status is ExecutionStatus.CANCELLED
    assert parent_now.status is ExecutionStatus.CANCELLED
