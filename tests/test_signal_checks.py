"""A workflow type refusing signals (check_signal) and approval decisions (executions.decide)."""

from __future__ import annotations

from typing import Any

import pytest

from abi_engine import Engine, ExecutionStatus, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import ExecutionNotFound, Forbidden, InvalidRequest, InvalidState
from abi_engine.testing import engine_for, run_workflow
from abi_engine.types import (
    APPROVAL_SIGNAL,
    IncomingSignal,
    approval_signal,
    is_approval_signal,
)

pytestmark = pytest.mark.anyio

SEEN: list[IncomingSignal] = []


class TwoDecisions(WorkflowType):
    """Waits for two approval decisions; only usr_a and usr_b may decide."""

    name = "two_decisions"

    def check_signal(self, signal: IncomingSignal, config: Any) -> None:
        SEEN.append(signal)
        decided_by = (signal.payload or {}).get("decided_by")
        if decided_by not in ("usr_a", "usr_b"):
            raise Forbidden(f"{decided_by} may not decide", {"decided_by": decided_by})

    @step
    async def decide(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.progress is None:  # kept with the signals, never shown as one
            await ctx.save_progress({"asked": True})
        first = ctx.wait_for_signal(approval_signal(1))
        second = ctx.wait_for_signal(approval_signal(2))
        return {"by": [first["decided_by"], second["decided_by"]]}


class Plugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(TwoDecisions)


def test_approval_signal_names() -> None:
    """The first decision is `approval`, later ones `approval:<n>`; both are approval signals."""
    assert [approval_signal(n) for n in (1, 2, 3)] == ["approval", "approval:2", "approval:3"]
    assert all(is_approval_signal(approval_signal(n)) for n in range(1, 5))
    assert not is_approval_signal("approvals")
    assert not is_approval_signal("go")
    assert APPROVAL_SIGNAL == "approval"


async def _waiting(engine: Engine) -> str:
    execution = await run_workflow(engine, "two_decisions")
    assert execution.status is ExecutionStatus.WAITING
    return execution.execution_id


async def test_decide_delivers_each_decision_to_the_wait_in_progress() -> None:
    """Two decisions land on `approval` then `approval:2`; the type sees sender and payload."""
    async with engine_for(Plugin()) as engine:
        execution_id = await _waiting(engine)
        SEEN.clear()
        await engine.executions.decide(execution_id, True, comment="ok", decided_by="usr_a")
        waiting = await engine.executions.wait(execution_id, timeout=5)
        assert waiting.status is ExecutionStatus.WAITING
        await engine.executions.decide(execution_id, True, decided_by="usr_b")
        done = await engine.executions.wait(execution_id, timeout=5)
        assert engine.store.get_signals(execution_id)["#progress:0"] == {"asked": True}
    assert done.status is ExecutionStatus.COMPLETED
    assert done.result == {"by": ["usr_a", "usr_b"]}
    assert [(s.name, s.sender) for s in SEEN] == [("approval", "usr_a"), ("approval:2", "usr_b")]
    assert SEEN[0].payload["comment"] == "ok"
    assert SEEN[0].payload["decided_at"].endswith("Z")
    assert set(SEEN[1].delivered) == {"approval"}  # the step's progress is not a signal


async def test_refused_signal_is_not_stored() -> None:
    """A decider the type refuses gets its error; the execution still waits for the decision."""
    async with engine_for(Plugin()) as engine:
        execution_id = await _waiting(engine)
        with pytest.raises(Forbidden):
            await engine.executions.decide(execution_id, True, decided_by="usr_x")
        assert (await engine.executions.get(execution_id)).status is ExecutionStatus.WAITING
        assert engine.store.get_signals(execution_id) == {"#progress:0": {"asked": True}}
        with pytest.raises(Forbidden):
            await engine.executions.signal(execution_id, "approval", {}, sender="usr_x")


async def test_decide_on_a_finished_execution_is_invalid_state() -> None:
    """No check runs on a finished execution: a decision there is INVALID_STATE."""
    async with engine_for(Plugin()) as engine:
        execution_id = await _waiting(engine)
        await engine.executions.cancel(execution_id)
        with pytest.raises(InvalidState):
            await engine.executions.decide(execution_id, True, decided_by="usr_x")


async def test_decide_checks_its_arguments() -> None:
    """A comment that is not a string, or data that is not an object, is INVALID_REQUEST."""
    async with engine_for(Plugin()) as engine:
        execution_id = await _waiting(engine)
        with pytest.raises(InvalidRequest) as raised:
            await engine.executions.decide(execution_id, True, data=[1])  # type: ignore[arg-type]
        assert raised.value.details["field"] == "data"
        with pytest.raises(InvalidRequest):
            await engine.executions.decide(execution_id, True, comment=3)  # type: ignore[arg-type]


async def test_details_show_progress_signals_and_what_a_waiting_execution_waits_for() -> None:
    """executions.details: the saved progress by step, the signals without it, the approval
    waited for; once finished, the step's stored result and no wait."""
    async with engine_for(Plugin()) as engine:
        execution_id = await _waiting(engine)
        waiting = await engine.executions.details(execution_id)
        assert waiting.progress == {0: {"asked": True}}
        assert waiting.signals == {}
        assert (waiting.waiting_for, waiting.approval) == ("approval", True)
        assert waiting.results == {}
        await engine.executions.decide(execution_id, True, decided_by="usr_a")
        await engine.executions.wait(execution_id, timeout=5)
        second = await engine.executions.details(execution_id)
        assert (second.waiting_for, second.approval) == ("approval:2", True)
        assert set(second.signals) == {"approval"}
        await engine.executions.decide(execution_id, False, decided_by="usr_b")
        await engine.executions.wait(execution_id, timeout=5)
        done = await engine.executions.details(execution_id)
        assert (done.waiting_for, done.approval) == (None, False)
        assert done.results == {0: {"by": ["usr_a", "usr_b"]}}
        assert done.execution.status is ExecutionStatus.COMPLETED
        with pytest.raises(ExecutionNotFound):
            await engine.executions.details("exec_missing")


class WaitsForGo(WorkflowType):
    """Waits for a plain signal, not an approval."""

    name = "waits_for_go"

    @step
    async def hold(self, ctx: StepContext) -> Any:
        return ctx.wait_for_signal("go")


class BothPlugin(Plugin):
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(TwoDecisions)
        register(WaitsForGo)


async def test_list_awaiting_approval_keeps_only_approval_waits(databases: Any) -> None:
    """executions.list(awaiting_approval=True) lists the executions waiting for an approval's
    decision, not those waiting for another signal nor finished ones (both backends)."""
    async with engine_for(BothPlugin(), db=databases()) as engine:
        approval = await _waiting(engine)
        other = await run_workflow(engine, "waits_for_go")
        assert other.status is ExecutionStatus.WAITING
        found = await engine.executions.list(awaiting_approval="true")
        assert [e.execution_id for e in found.items] == [approval]
        assert found.pagination.total_items == 1
        everything = await engine.executions.list(awaiting_approval=False)
        assert {e.execution_id for e in everything.items} == {approval, other.execution_id}
        await engine.executions.decide(approval, False, decided_by="usr_a")
        await engine.executions.wait(approval, timeout=5)  # waits for the second decision
        await engine.executions.decide(approval, False, decided_by="usr_b")
        await engine.executions.wait(approval, timeout=5)
        assert (await engine.executions.list(awaiting_approval=True)).items == []
        with pytest.raises(InvalidRequest) as refused:
            await engine.executions.list(awaiting_approval="maybe")
        assert refused.value.details == {"field": "awaiting_approval"}
