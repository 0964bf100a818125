"""The approval type over the REST API (the ASGI adapter, in-process through httpx)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from abi_asgi import create_app

from abi_engine import Engine

from .conftest import settled

pytestmark = pytest.mark.anyio

Client = Callable[[str], httpx.AsyncClient]
CONFIGURATION = {"approvers": ["usr_bob", "usr_eve"], "required_approvals": 2}


@pytest.fixture
async def client_for(engine: Engine) -> AsyncIterator[Client]:
    """``client_for(user_id)``: an in-process client of the adapter with that user's token."""
    app = create_app(engine, rate_limit=None)
    clients: list[httpx.AsyncClient] = []

    def make(user_id: str) -> httpx.AsyncClient:
        token = engine.tokens.create_token(user_id)
        made = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {token}"},
        )
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.aclose()


def data(response: httpx.Response, status: int = 200) -> Any:
    """The success envelope's data, after checking the status."""
    assert response.status_code == status, response.text
    assert response.json()["status"] == "success"
    return response.json()["data"]


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error envelope's error, after checking status and code."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error", body
    assert body["error"]["code"] == code, body
    return dict(body["error"])


async def start(client: httpx.AsyncClient, **configuration: Any) -> str:
    """Create and activate an approval workflow over REST, execute it; it answers waiting."""
    workflow = data(
        await client.post(
            "/api/v1/workflows",
            json={
                "name": "Purchase approval",
                "type": "approval",
                "configuration": {**CONFIGURATION, **configuration},
            },
        ),
        201,
    )
    data(await client.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    execution = data(
        await client.post(
            f"/api/v1/workflows/{workflow['id']}/execute",
            json={
                "parameters": {"subject": "Server rack", "amount": 12000, "currency": "USD"},
                "execution_options": {"wait_for_completion": True, "timeout_seconds": 30},
            },
        )
    )
    assert execution["status"] == "waiting"
    return str(execution["execution_id"])


async def test_two_approvers_over_rest(engine: Engine, client_for: Client) -> None:
    """Waiting shows in GET; approvals by two approvers complete it; the requester is the caller."""
    ada, bob, eve = client_for("usr_ada"), client_for("usr_bob"), client_for("usr_eve")
    execution_id = await start(ada)
    path = f"/api/v1/workflow_executions/{execution_id}"
    assert data(await bob.get(path))["status"] == "waiting"
    first = data(await bob.post(f"{path}/approve", json={"comment": "looks right"}))
    assert first["status"] in ("queued", "running", "waiting")
    await engine.executions.wait(execution_id, timeout=5)
    assert data(await bob.get(path))["status"] == "waiting"
    data(await eve.post(f"{path}/approve", json={"data": {"po": "PO-7"}}))
    await settled(engine, execution_id)
    done = data(await ada.get(path))
    assert done["status"] == "completed"
    result = done["result"]
    assert (result["approved"], result["outcome"], result["approvals"]) == (True, "approved", 2)
    assert result["requested_by"] == "usr_ada"
    assert [(d["decided_by"], d["comment"], d["data"]) for d in result["decisions"]] == [
        ("usr_bob", "looks right", {}),
        ("usr_eve", None, {"po": "PO-7"}),
    ]


async def test_non_approver_gets_forbidden(engine: Engine, client_for: Client) -> None:
    """A caller not among the approvers gets 403 FORBIDDEN naming decided_by; it still waits."""
    execution_id = await start(client_for("usr_ada"))
    mallory = client_for("usr_mallory")
    path = f"/api/v1/workflow_executions/{execution_id}"
    found = error(await mallory.post(f"{path}/approve"), 403, "FORBIDDEN")
    assert found["details"]["field"] == "decided_by"
    assert found["details"]["decided_by"] == "usr_mallory"
    error(await mallory.post(f"{path}/reject"), 403, "FORBIDDEN")
    forged = {"name": "approval", "payload": {"approved": True, "decided_by": "usr_bob"}}
    error(await mallory.post(f"{path}/signal", json=forged), 403, "FORBIDDEN")
    assert data(await mallory.get(path))["status"] == "waiting"


async def test_requester_cannot_approve_own_request(engine: Engine, client_for: Client) -> None:
    """An approver who started the execution may not decide it (four eyes)."""
    bob = client_for("usr_bob")
    execution_id = await start(bob)
    found = error(
        await bob.post(f"/api/v1/workflow_executions/{execution_id}/approve"), 403, "FORBIDDEN"
    )
    assert "requested this approval" in found["message"]


async def test_rejection_and_decisions_after_the_end(engine: Engine, client_for: Client) -> None:
    """A rejection completes it as rejected; approving or rejecting afterwards is 409 INVALID_STATE."""
    execution_id = await start(client_for("usr_ada"))
    bob, eve = client_for("usr_bob"), client_for("usr_eve")
    path = f"/api/v1/workflow_executions/{execution_id}"
    data(await bob.post(f"{path}/reject", json={"comment": "over budget"}))
    done = await settled(engine, execution_id)
    assert done.status.value == "completed"
    assert (done.result["outcome"], done.result["approved"]) == ("rejected", False)
    found = error(await eve.post(f"{path}/approve"), 409, "INVALID_STATE")
    assert found["details"]["status"] == "completed"
    error(await eve.post(f"{path}/reject"), 409, "INVALID_STATE")
    error(
        await eve.post("/api/v1/workflow_executions/exec_missing/approve"),
        404,
        "EXECUTION_NOT_FOUND",
    )


async def test_approve_while_not_waiting_is_invalid_state(
    engine: Engine, client_for: Client
) -> None:
    """An execution of another type, waiting for nothing, answers approve with 409."""
    bob = client_for("usr_bob")
    workflow = data(
        await bob.post(
            "/api/v1/workflows",
            json={
                "name": "done at once",
                "type": "custom",
                "configuration": {"steps": [{"name": "w", "action": "delay", "seconds": 0}]},
            },
        ),
        201,
    )
    data(await bob.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    execution = data(await bob.post(f"/api/v1/workflows/{workflow['id']}/execute", json={}))
    assert execution["status"] == "completed"
    path = f"/api/v1/workflow_executions/{execution['execution_id']}/approve"
    error(await bob.post(path), 409, "INVALID_STATE")


async def test_bad_configuration_over_rest(client_for: Client) -> None:
    """A bad configuration is 400 INVALID_WORKFLOW_CONFIG naming the field."""
    found = error(
        await client_for("usr_ada").post(
            "/api/v1/workflows",
            json={
                "name": "bad",
                "type": "approval",
                "configuration": {"approvers": ["usr_a"], "required_approvals": 3},
            },
        ),
        400,
        "INVALID_WORKFLOW_CONFIG",
    )
    assert found["details"]["field"] == "configuration.required_approvals"
