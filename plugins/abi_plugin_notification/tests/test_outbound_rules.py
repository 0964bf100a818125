"""The smtp and slack providers under the engine's outbound URL rules: a private SMTP host or
Slack URL is refused when the connection is put, and a name that comes to resolve to a private
address (its DNS answer changed since) is refused when a notification is sent.

The changed DNS answer comes from a table in place of ``socket.getaddrinfo`` (no DNS traffic);
the SMTP server and the Slack receiver are real, on 127.0.0.1, and must receive nothing.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from abi_engine import Engine
from abi_engine.errors import InvalidRequest, WorkflowExecutionError

from .conftest import EngineFactory, Mailbox, Receiver, smtp_config

pytestmark = pytest.mark.anyio

SECRET_PATH = "services/T0/B0/XyZsecret"


def _point_at_loopback(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``name`` resolve to 127.0.0.1 from now on."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == name else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


async def _send(engine: Engine, channel: str, integration: str, recipient: str) -> str:
    """Run a one-channel notification; the execution's error message."""
    workflow = await engine.workflows.create(
        {
            "name": "alerts",
            "type": "notification",
            "configuration": {
                "channels": [channel],
                "templates": {channel: {"body": "Hi"}},
                "recipients": {channel: [recipient]},
                "retry": {"attempts": 1},
            },
            "integrations": [{"id": integration, "required": True}],
        }
    )
    await engine.workflows.activate(workflow.id)
    with pytest.raises(WorkflowExecutionError) as raised:
        await engine.executions.execute(workflow.id, {}, timeout_seconds=30)
    message: str = raised.value.details["error_message"]
    return message


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "0xa9fea9fe", "127.1", "::1"])
async def test_private_smtp_host_and_slack_url_refused_at_put(
    make_engine: EngineFactory, host: str
) -> None:
    """smtp host and slack webhook_url on a private address (any literal form): INVALID_REQUEST
    naming the field, nothing stored, no secret in the message."""
    engine = await make_engine()
    with pytest.raises(InvalidRequest) as caught:
        await engine.integrations.put("int_smtp", "smtp", {**smtp_config(25), "host": host})
    assert caught.value.details["field"] == "config.host"
    url_host = f"[{host}]" if ":" in host else host
    with pytest.raises(InvalidRequest) as caught:
        await engine.integrations.put(
            "int_slack", "slack", {"webhook_url": f"https://{url_host}/{SECRET_PATH}"}
        )
    assert caught.value.details["field"] == "config.webhook_url"
    assert SECRET_PATH not in caught.value.message
    assert (await engine.integrations.list()).pagination.total_items == 0


async def test_smtp_host_resolving_privately_is_refused_at_use(
    make_engine: EngineFactory, smtp: tuple[Mailbox, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SMTP host that passed the put but now resolves to 127.0.0.1 is refused when sending:
    the server receives nothing, and the error does not say the address."""
    engine = await make_engine()
    await engine.integrations.put(
        "int_smtp", "smtp", {**smtp_config(smtp[1]), "host": "mail.example.com"}
    )
    _point_at_loopback(monkeypatch, "mail.example.com")
    message = await _send(engine, "email", "int_smtp", "user@example.com")
    assert "not allowed" in message
    assert "127.0.0.1" not in message
    assert smtp[0].messages == []


async def test_slack_url_resolving_privately_is_refused_at_use(
    make_engine: EngineFactory, slack: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slack URL whose name passed the put but now resolves to 127.0.0.1 is refused when
    posting: the receiver gets nothing, and neither the address nor the secret is shown."""
    engine = await make_engine()
    port = slack.server.server_port
    await engine.integrations.put(
        "int_slack", "slack", {"webhook_url": f"http://hooks.example.com:{port}/{SECRET_PATH}"}
    )
    _point_at_loopback(monkeypatch, "hooks.example.com")
    message = await _send(engine, "slack", "int_slack", "#ops")
    assert "not allowed" in message
    assert "127.0.0.1" not in message
    assert SECRET_PATH not in message
    assert slack.paths == []
