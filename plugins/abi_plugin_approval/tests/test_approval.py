"""The approval type end to end through the engine's Python API, on real SQLite files."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from abi_engine import Engine, ExecutionStatus, Principal, StepStatus
from abi_engine.errors import (
    Forbidden,
    InvalidParameters,
    InvalidRequest,
    InvalidState,
    InvalidWorkflowConfig,
    ParameterValidationError,
)

from .conftest import EngineFactory, Receiver, settled

pytestmark = pytest.mark.anyio

STEPS = ["request_approval", "notify_approvers", "await_decision", "record_outcome"]
PURCHASE = {
    "subject": "Laptop for Ada",
    "requested_by": "usr_ada",
    "amount": 1800,
    "currency": "EUR",
}


async def workflow(engine: Engine, **configuration: Any) -> str:
    """An active approval workflow with ``configuration``."""
    created = await engine.workflows.create(
        {"name": "Purchase approval", "type": "approval", "configuration": configuration}
    )
    await engine.workflows.activate(created.id)
    return created.id


async def request(engine: Engine, workflow_id: str, **parameters: Any) -> str:
    """Start an approval request; it is answered as soon as it waits."""
    execution = await engine.executions.execute(workflow_id, {**PURCHASE, **parameters})
    assert execution.status is ExecutionStatus.WAITING
    return execution.execution_id


async def test_waits_then_approved(engine: Engine) -> None:
    """The request waits (status visible), one approval completes it with the decision recorded."""
    wf = await workflow(engine, approvers=["usr_bob", "usr_eve"])
    execution_id = await request(engine, wf, data={"cost_center": "R&D"})
    waiting = await engine.executions.get(execution_id)
    assert waiting.status is ExecutionStatus.WAITING
    assert waiting.steps is not None
    assert [s.status for s in waiting.steps] == [
        StepStatus.COMPLETED,
        StepStatus.SKIPPED,
        StepStatus.RUNNING,
        StepStatus.PENDING,
    ]
    await engine.executions.decide(execution_id, True, comment="fine", decided_by="usr_eve")
    done = await settled(engine, execution_id)
    assert done.status is ExecutionStatus.COMPLETED
    result = done.result
    assert (result["approved"], result["outcome"]) == (True, "approved")
    assert (result["approvals"], result["rejections"], result["required_approvals"]) == (1, 0, 1)
    assert result["subject"] == "Laptop for Ada"
    assert result["requested_by"] == "usr_ada"
    assert (result["amount"], result["currency"]) == (1800, "EUR")
    assert result["data"] == {"cost_center": "R&D"}
    [decision] = result["decisions"]
    assert decision["decided_by"] == "usr_eve"
    assert decision["comment"] == "fine"
    assert decision["approved"] is True
    assert decision["decided_at"] == result["decided_at"]
    assert result["expires_at"] is None
    assert result["requested_at"] <= result["decided_at"]  # same millisecond on a fast machine


async def test_rejection_completes_with_outcome_rejected(engine: Engine) -> None:
    """By default a rejection completes the execution: approved false, outcome rejected."""
    wf = await workflow(engine)
    execution_id = await request(engine, wf)
    await engine.executions.decide(execution_id, False, comment="too much", decided_by="usr_bob")
    done = await settled(engine, execution_id)
    assert done.status is ExecutionStatus.COMPLETED
    assert (done.result["approved"], done.result["outcome"]) == (False, "rejected")
    assert done.result["decisions"][0]["comment"] == "too much"


async def test_rejection_fails_with_on_reject_fail(engine: Engine) -> None:
    """on_reject: fail turns a rejection into a failed execution naming the decider and comment."""
    wf = await workflow(engine, on_reject="fail")
    execution_id = await request(engine, wf)
    await engine.executions.decide(execution_id, False, comment="no budget", decided_by="usr_bob")
    done = await settled(engine, execution_id)
    assert done.status is ExecutionStatus.FAILED
    assert done.error is not None
    assert (done.error.step, done.error.type) == ("record_outcome", "ApprovalRejected")
    assert "usr_bob" in done.error.message
    assert "no budget" in done.error.message


async def test_two_of_three(engine: Engine) -> None:
    """n of m: the first approval leaves it waiting; the same approver again is refused;
    a second approver completes it."""
    wf = await workflow(engine, approvers=["usr_a", "usr_b", "usr_c"], required_approvals=2)
    execution_id = await request(engine, wf)
    await engine.executions.decide(execution_id, True, decided_by="usr_a")
    still = await engine.executions.wait(execution_id, timeout=5)
    assert still.status is ExecutionStatus.WAITING
    with pytest.raises(InvalidState, match="already decided"):
        await engine.executions.decide(execution_id, True, decided_by="usr_a")
    await engine.executions.decide(execution_id, True, comment="ok", decided_by="usr_c")
    done = await settled(engine, execution_id)
    assert done.status is ExecutionStatus.COMPLETED
    assert (done.result["outcome"], done.result["approvals"]) == ("approved", 2)
    assert [d["decided_by"] for d in done.result["decisions"]] == ["usr_a", "usr_c"]


async def test_one_rejection_ends_an_n_of_m_request(engine: Engine) -> None:
    """A rejection ends the request even after approvals."""
    wf = await workflow(engine, approvers=["usr_a", "usr_b", "usr_c"], required_approvals=3)
    execution_id = await request(engine, wf)
    await engine.executions.decide(execution_id, True, decided_by="usr_a")
    await engine.executions.wait(execution_id, timeout=5)
    await engine.executions.decide(execution_id, False, decided_by="usr_b")
    done = await settled(engine, execution_id)
    assert (done.result["outcome"], done.result["approvals"], done.result["rejections"]) == (
        "rejected",
        1,
        1,
    )


async def test_non_approver_and_requester_are_refused(engine: Engine) -> None:
    """Someone not listed, or the requester deciding their own request, gets FORBIDDEN."""
    wf = await workflow(engine, approvers=["usr_bob", "usr_ada"])
    execution_id = await request(engine, wf)
    with pytest.raises(Forbidden) as raised:
        await engine.executions.decide(execution_id, True, decided_by="usr_mallory")
    assert raised.value.details["decided_by"] == "usr_mallory"
    assert "not an approver" in raised.value.message
    with pytest.raises(Forbidden, match="requested this approval"):
        await engine.executions.decide(execution_id, True, decided_by="usr_ada")
    with pytest.raises(Forbidden, match="must name who decides"):
        await engine.executions.decide(execution_id, True)
    assert (await engine.executions.get(execution_id)).status is ExecutionStatus.WAITING


async def test_who_started_the_request_may_not_decide_it_either(engine: Engine) -> None:
    """Naming someone else as requested_by does not let the user who started it approve it."""
    wf = await workflow(engine, approvers=["usr_bob", "usr_mallory"])
    mallory = Principal(user_id="usr_mallory")
    execution = await engine.executions.execute(wf, dict(PURCHASE), actor=mallory)
    assert execution.status is ExecutionStatus.WAITING
    with pytest.raises(Forbidden, match="requested this approval"):
        await engine.executions.decide(execution.execution_id, True, decided_by="usr_mallory")
    await engine.executions.decide(execution.execution_id, True, decided_by="usr_bob")
    assert (await settled(engine, execution.execution_id)).result["approved"] is True


async def test_self_approval_when_allowed(engine: Engine) -> None:
    """allow_self_approval lets the requester decide."""
    wf = await workflow(engine, allow_self_approval=True)
    execution_id = await request(engine, wf)
    await engine.executions.decide(execution_id, True, decided_by="usr_ada")
    assert (await settled(engine, execution_id)).result["approved"] is True


async def test_forged_signal_is_refused(engine: Engine) -> None:
    """A raw approval signal must carry the sender's own id and a boolean 'approved'."""
    wf = await workflow(engine, approvers=["usr_bob"])
    execution_id = await request(engine, wf)
    with pytest.raises(Forbidden, match="own user id"):
        await engine.executions.signal(
            execution_id, "approval", {"approved": True, "decided_by": "usr_bob"}, sender="usr_x"
        )
    with pytest.raises(InvalidRequest, match=r"boolean .approved."):
        await engine.executions.signal(execution_id, "approval", {"approved": "yes"})


@pytest.mark.parametrize(
    ("on_expiry", "status", "approved"),
    [("reject", "completed", False), ("approve", "completed", True), ("fail", "failed", None)],
)
async def test_expiry(engine: Engine, on_expiry: str, status: str, approved: bool | None) -> None:
    """Nobody decides within expires_after_seconds: on_expiry says what that means."""
    wf = await workflow(engine, expires_after_seconds=0.4, on_expiry=on_expiry)
    execution_id = await request(engine, wf)
    started = time.monotonic()
    done = await settled(engine, execution_id, timeout=10)
    assert time.monotonic() - started < 5
    assert done.status.value == status
    if approved is None:
        assert done.error is not None
        assert (done.error.step, done.error.type) == ("record_outcome", "ApprovalExpired")
    else:
        assert (done.result["outcome"], done.result["approved"]) == ("expired", approved)
        assert done.result["decided_at"] == done.result["expires_at"]
    with pytest.raises(InvalidState):
        await engine.executions.decide(execution_id, True, decided_by="usr_bob")


async def test_expiry_counts_from_the_request_across_decisions(engine: Engine) -> None:
    """With 2 approvals required, one approval then silence still expires at the deadline."""
    wf = await workflow(engine, required_approvals=2, expires_after_seconds=0.8)
    execution_id = await request(engine, wf)
    await engine.executions.decide(execution_id, True, decided_by="usr_bob")
    done = await settled(engine, execution_id, timeout=10)
    assert (done.result["outcome"], done.result["approvals"], done.result["approved"]) == (
        "expired",
        1,
        False,
    )


async def test_waiting_request_survives_a_restart(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    """An engine closed while the request waits; a new one on the same file takes the decision."""
    db = tmp_path / "durable.db"
    first = await make_engine(db=db)
    wf = await workflow(first, approvers=["usr_bob"], expires_after_hours=24)
    execution_id = await request(first, wf)
    await first.__aexit__(None, None, None)
    first.close()
    second = await make_engine(db=db)
    assert (await second.executions.get(execution_id)).status is ExecutionStatus.WAITING
    await second.executions.decide(execution_id, True, decided_by="usr_bob")
    done = await settled(second, execution_id)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.result["decisions"][0]["decided_by"] == "usr_bob"
    assert done.result["expires_at"] > done.result["requested_at"]


async def test_small_amounts_are_auto_approved(engine: Engine) -> None:
    """Up to auto_approve_max_amount nothing waits: outcome auto_approved."""
    wf = await workflow(engine, auto_approve_max_amount=2000)
    done = await engine.executions.execute(wf, PURCHASE)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.steps is not None
    assert [s.status for s in done.steps] == [
        StepStatus.COMPLETED,
        StepStatus.SKIPPED,
        StepStatus.SKIPPED,
        StepStatus.COMPLETED,
    ]
    assert (done.result["approved"], done.result["outcome"], done.result["decisions"]) == (
        True,
        "auto_approved",
        [],
    )


async def test_notify_posts_the_request(engine: Engine, receiver: Receiver) -> None:
    """notify.url receives the request with the paths to approve or reject it."""
    wf = await workflow(engine, notify={"url": f"{receiver.url}/approvals"})
    execution_id = await request(engine, wf)
    [body] = receiver.bodies
    assert receiver.paths == ["/approvals"]
    assert body["type"] == "approval.requested"
    assert body["execution_id"] == execution_id
    assert body["subject"] == "Laptop for Ada"
    assert body["amount"] == 1800
    assert body["approve_path"] == f"/api/v1/workflow_executions/{execution_id}/approve"


async def test_notify_resolves_names_off_the_event_loop(
    engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """notify_approvers looks its host up in a worker thread, never on the engine's loop."""
    on_loop: list[object] = []
    real = socket.getaddrinfo

    def spy(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is threading.main_thread():
            on_loop.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    wf = await workflow(engine, notify={"url": f"{receiver.url}/approvals"})
    await request(engine, wf)
    assert receiver.paths == ["/approvals"]
    assert on_loop == []


async def test_notify_through_an_integration(engine: Engine, receiver: Receiver) -> None:
    """notify.integration posts to the connection's base URL plus path."""
    await engine.integrations.put("int_chat", "http", {"base_url": receiver.url})
    created = await engine.workflows.create(
        {
            "name": "Purchase approval",
            "type": "approval",
            "configuration": {"notify": {"integration": "int_chat", "path": "/hooks/approvals"}},
            "integrations": [{"id": "int_chat", "required": True}],
        }
    )
    await engine.workflows.activate(created.id)
    await request(engine, created.id)
    assert receiver.paths == ["/hooks/approvals"]


async def test_failed_notification_fails_after_three_tries(
    engine: Engine, receiver: Receiver
) -> None:
    """A receiver answering 500 fails notify_approvers after its three tries."""
    receiver.status = 500
    wf = await workflow(engine, notify={"url": receiver.url})
    execution = await engine.executions.execute(wf, PURCHASE, wait=False)
    done = await settled(engine, execution.execution_id, timeout=15)
    assert done.status is ExecutionStatus.FAILED
    assert done.error is not None
    assert done.error.step == "notify_approvers"
    assert "answered 500" in done.error.message
    assert len(receiver.bodies) == 3


async def test_notify_to_a_private_address_is_refused(make_engine: EngineFactory) -> None:
    """Without allow_private_urls a notify URL on 127.0.0.1 is refused at creation."""
    guarded = await make_engine()
    with pytest.raises(InvalidWorkflowConfig) as raised:
        await workflow(guarded, notify={"url": "http://127.0.0.1:9/x"})
    assert raised.value.details["field"] == "configuration.notify.url"


@pytest.mark.parametrize(
    ("configuration", "field"),
    [
        ({"approvers": ["usr_a", "usr_a"]}, "configuration.approvers[1]"),
        ({"approvers": [""]}, "configuration.approvers[0]"),
        ({"approvers": ["usr_a"], "required_approvals": 2}, "configuration.required_approvals"),
        ({"required_approvals": 0}, "configuration.required_approvals"),
        ({"expires_after_seconds": 0}, "configuration.expires_after_seconds"),
        ({"expires_after_hours": 10_000}, "configuration.expires_after_hours"),
        (
            {"expires_after_seconds": 5, "expires_after_hours": 1},
            "configuration.expires_after_hours",
        ),
        ({"on_expiry": "ignore"}, "configuration.on_expiry"),
        ({"on_reject": "retry"}, "configuration.on_reject"),
        ({"auto_approve_max_amount": -1}, "configuration.auto_approve_max_amount"),
        ({"notify": {}}, "configuration.notify"),
        ({"notify": {"url": "ftp://x.example"}}, "configuration.notify.url"),
        ({"notify": {"url": "https://x.example", "path": "/p"}}, "configuration.notify.path"),
        ({"approvers": "usr_a"}, "configuration.approvers"),
        ({"approver": ["usr_a"]}, "configuration.approver"),
    ],
)
async def test_bad_configuration_names_the_field(
    engine: Engine, configuration: dict[str, Any], field: str
) -> None:
    """Each bad configuration is INVALID_WORKFLOW_CONFIG naming its field."""
    with pytest.raises(InvalidWorkflowConfig) as raised:
        await engine.workflows.create(
            {"name": "bad", "type": "approval", "configuration": configuration}
        )
    assert raised.value.details["field"] == field


async def test_bad_parameters_are_refused_before_running(engine: Engine) -> None:
    """No subject is INVALID_PARAMETERS; a blank one, a negative amount or 'euro' are 422s."""
    wf = await workflow(engine)
    with pytest.raises(InvalidParameters):
        await engine.executions.execute(wf, {"amount": 3})
    for bad, field in [
        ({"subject": " "}, "parameters.subject"),
        ({"subject": "x", "amount": -1}, "parameters.amount"),
        ({"subject": "x", "currency": "euro"}, "parameters.currency"),
    ]:
        with pytest.raises(ParameterValidationError) as raised:
            await engine.executions.execute(wf, bad)
        assert raised.value.details["field"] == field


async def test_request_expires_while_no_engine_runs(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    """A deadline passing while the engine is down expires the request when one starts."""
    db = tmp_path / "down.db"
    first = await make_engine(db=db)
    wf = await workflow(first, expires_after_seconds=0.5)
    execution_id = await request(first, wf)
    await first.__aexit__(None, None, None)
    first.close()
    await anyio.sleep(0.7)
    second = await make_engine(db=db)
    done = await settled(second, execution_id)
    assert (done.status, done.result["outcome"]) == (ExecutionStatus.COMPLETED, "expired")
