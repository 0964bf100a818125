"""The notification type over the REST API (the ASGI adapter, in-process through httpx)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from abi_asgi import create_app

from abi_engine import Engine

from .conftest import Mailbox, Receiver, smtp_config

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the adapter with an all-scopes token."""
    token = engine.tokens.create_token("usr_ops")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(engine, rate_limit=None)),
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {token}"},
    ) as made:
        yield made


def data(response: httpx.Response, status: int = 200) -> Any:
    """The success envelope's data, after checking the status."""
    assert response.status_code == status, response.text
    return response.json()["data"]


async def test_notify_over_rest(
    client: httpx.AsyncClient, smtp: tuple[Mailbox, int], slack: Receiver
) -> None:
    """PUT the SMTP connection (password masked), create, activate, execute: the mail arrives."""
    shown = data(
        await client.put(
            "/api/v1/integrations/int_smtp",
            json={"provider": "smtp", "config": smtp_config(smtp[1], username="u", password="pw1")},
        )
    )
    assert shown["config"]["password"] == "********"
    await client.put(
        "/api/v1/integrations/int_smtp",
        json={"provider": "smtp", "config": smtp_config(smtp[1])},
    )
    workflow = data(
        await client.post(
            "/api/v1/workflows",
            json={
                "name": "Deploy notices",
                "type": "notification",
                "configuration": {
                    "channels": ["email"],
                    "templates": {"email": {"subject": "Deployed $version", "body": "By $who"}},
                    "recipients": {"email": ["team@example.com"]},
                    "priority_rules": [{"condition": "env == 'prod'", "priority": "high"}],
                },
                "integrations": [{"id": "int_smtp", "required": True}],
            },
        ),
        201,
    )
    assert workflow["integrations"][0]["status"] == "connected"
    data(await client.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    execution = data(
        await client.post(
            f"/api/v1/workflows/{workflow['id']}/execute",
            json={"parameters": {"version": "2.0", "who": "ci", "env": "prod"}},
        )
    )
    assert execution["status"] == "completed"
    assert execution["result"]["priority"] == "high"
    mail = smtp[0].messages[0][2]
    assert (mail["Subject"], mail["X-Priority"]) == ("Deployed 2.0", "2 (High)")


async def test_errors_over_rest(client: httpx.AsyncClient) -> None:
    """A bad condition is 400 INVALID_WORKFLOW_CONFIG naming it; a bad SMTP port 400 INVALID_REQUEST."""
    response = await client.post(
        "/api/v1/workflows",
        json={
            "name": "bad",
            "type": "notification",
            "configuration": {
                "channels": ["email"],
                "templates": {"email": {"body": "x"}},
                "recipients": {"email": ["a@example.com"]},
                "priority_rules": [{"condition": "severity = 'high'", "priority": "urgent"}],
            },
        },
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_WORKFLOW_CONFIG"
    assert error["details"]["field"] == "configuration.priority_rules[0].condition"
    response = await client.put(
        "/api/v1/integrations/int_smtp",
        json={"provider": "smtp", "config": smtp_config(70000)},
    )
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "config.port"
