"""Steps see the workflow's connected integrations, and get ready clients from them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, StepContext, WorkflowType, hookimpl, step
from abi_engine.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.anyio


class UsesCrm(WorkflowType):
    name = "uses_crm"

    @step
    async def call(self, ctx: StepContext) -> Any:
        connection = ctx.integrations["int_crm"]
        async with ctx.client("int_crm") as client:
            response = await client.get("/contacts")
        return {"provider": connection.provider, "answer": response.json()}


class Plugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(UsesCrm)


@pytest.fixture
def crm() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP server on 127.0.0.1 that records the headers it receives."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_step_uses_the_connection_and_its_client(
    tmp_path: Path, crm: tuple[str, list[dict[str, str]]]
) -> None:
    """ctx.integrations holds the connection (with its secret) and ctx.client() is authenticated."""
    base_url, seen = crm
    engine = Engine(
        tmp_path / "i.db",
        plugins=[Plugin()],
        runtime=RuntimeSettings(poll_interval=0.05),
        allow_private_urls=True,  # the CRM listens on 127.0.0.1
    )
    try:
        async with engine:
            await engine.integrations.put(
                "int_crm",
                "http",
                {"base_url": base_url, "auth": {"type": "bearer", "token": "s3cr3t"}},
            )
            wf = await engine.workflows.create(
                {
                    "name": "crm",
                    "type": "uses_crm",
                    "integrations": [{"id": "int_crm", "required": True}],
                }
            )
            await engine.workflows.activate(wf.id)
            execution = await engine.executions.execute(wf.id, {})
    finally:
        engine.close()
    assert execution.result == {"provider": "http", "answer": {"path": "/contacts"}}
    assert seen[0]["authorization"] == "Bearer s3cr3t"
    assert "s3cr3t" not in json.dumps(execution.result)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_client_requests_follow_the_outbound_url_rules(
    tmp_path: Path, crm: tuple[str, list[dict[str, str]]], host: str
) -> None:
    """Without allow_private_urls, a private base URL is refused at put, and ctx.client()
    refuses it (by IP or by name) for a connection stored anyway (by an engine allowing it)."""
    from abi_engine.errors import InvalidRequest, WorkflowExecutionError

    base_url, seen = crm
    base_url = base_url.replace("127.0.0.1", host)
    config = {"base_url": base_url, "auth": {"type": "bearer", "token": "s3cr3t"}}
    allowing = Engine(tmp_path / "r.db", plugins=[Plugin()], allow_private_urls=True)
    try:
        await allowing.integrations.put("int_crm", "http", config)
    finally:
        allowing.close()
    engine = Engine(
        tmp_path / "r.db", plugins=[Plugin()], runtime=RuntimeSettings(poll_interval=0.05)
    )
    try:
        async with engine:
            with pytest.raises(InvalidRequest) as refused:
                await engine.integrations.put("int_crm", "http", config)
            assert refused.value.details["field"] == "config.base_url"
            wf = await engine.workflows.create(
                {
                    "name": "crm",
                    "type": "uses_crm",
                    "integrations": [{"id": "int_crm", "required": True}],
                }
            )
            await engine.workflows.activate(wf.id)
            with pytest.raises(WorkflowExecutionError, match="URL refused") as caught:
                await engine.executions.execute(wf.id, {})
    finally:
        engine.close()
    assert seen == []  # nothing reached the server
    assert "s3cr3t" not in str(caught.value)


async def test_client_of_an_unconnected_integration_fails_the_step(tmp_path: Path) -> None:
    """An optional integration that is not connected is absent; asking for it fails the step."""
    from abi_engine.errors import WorkflowExecutionError

    engine = Engine(
        tmp_path / "j.db", plugins=[Plugin()], runtime=RuntimeSettings(poll_interval=0.05)
    )
    try:
        async with engine:
            wf = await engine.workflows.create(
                {
                    "name": "crm",
                    "type": "uses_crm",
                    "integrations": [{"id": "int_crm", "required": False}],
                }
            )
            await engine.workflows.activate(wf.id)
            with pytest.raises(WorkflowExecutionError) as caught:
                await engine.executions.execute(wf.id, {})
    finally:
        engine.close()
    assert caught.value.details["error_type"] == "KeyError"
