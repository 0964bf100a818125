"""A host application that mounts the API but forgets to start the engine (#12, point 7).

Starlette does not run a mounted application's lifespan: a host that mounts
``create_app(engine)`` and does not run ``async with engine:`` in its own
lifespan serves an API whose engine never started. Health says so (503
``ENGINE_NOT_RUNNING``) and executing answers 503 with a message saying how to
mount it, instead of health ``ok`` and a 500. Served by uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from abi_asgi import create_app
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from abi.workflows import WorkflowExecutor
from abi_engine import Engine
from abi_engine.errors import EngineNotRunning


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free 127.0.0.1 port (lifespan on), in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive(), "uvicorn died"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


async def home(request: Any) -> JSONResponse:
    return JSONResponse({"service": "host"})


def host(engine: Engine, *, start_engine: bool) -> Starlette:
    """A host app mounting the API under /abi; its lifespan runs the engine only if asked."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start_engine:
            async with engine:
                yield
        else:
            yield  # forgot the engine

    abi = create_app(engine, manage_engine=False, rate_limit=None)
    return Starlette(routes=[Route("/", home), Mount("/abi", app=abi)], lifespan=lifespan)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = Engine(tmp_path / "host.db")
    try:
        yield made
    finally:
        made.close()


def _workflow(client: httpx.Client) -> str:
    created = client.post(
        "/abi/api/v1/workflows",
        json={
            "name": "Pause",
            "type": "custom",
            "configuration": {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
        },
    )
    assert created.status_code == 201, created.text
    workflow_id = str(created.json()["data"]["id"])
    assert client.post(f"/abi/api/v1/workflows/{workflow_id}/activate").status_code == 200
    return workflow_id


def test_forgotten_engine_is_reported_and_refused(engine: Engine) -> None:
    """Health is 503 ENGINE_NOT_RUNNING (details engine not_running); execute and
    execute_async are 503 ENGINE_NOT_RUNNING saying how to mount; no 500, nothing stored."""
    token = engine.tokens.create_token("usr_host")
    with (
        serve(host(engine, start_engine=False)) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        assert client.get("/").json() == {"service": "host"}
        health = client.get("/abi/api/v1/health")
        assert health.status_code == 503, health.text
        error = health.json()["error"]
        assert error["code"] == "ENGINE_NOT_RUNNING"
        assert error["details"] == {
            "status": "degraded",
            "database": "ok",
            "engine": "not_running",
        }
        assert "lifespan" in error["message"]

        workflow_id = _workflow(client)  # management works: it needs no worker
        for path, status_hint in (("execute", 200), ("execute_async", 202)):
            answer = client.post(f"/abi/api/v1/workflows/{workflow_id}/{path}", json={})
            assert answer.status_code == 503, (path, status_hint, answer.text)
            refused = answer.json()["error"]
            assert refused["code"] == "ENGINE_NOT_RUNNING"
            assert "async with engine" in refused["message"]
            assert "docs/deployment.md" in refused["message"]
        listed = client.get("/abi/api/v1/workflow_executions").json()["data"]
        assert listed["pagination"]["total_items"] == 0

        # The remote Python API raises the same error class.
        executor = WorkflowExecutor(access_token=token, base_url=f"{url}/abi")
        try:
            with pytest.raises(EngineNotRunning) as raised:
                executor.execute_workflow(workflow_id)
            assert raised.value.http_status == 503
        finally:
            executor.close()


def test_host_that_runs_the_engine_is_healthy(engine: Engine) -> None:
    """The same host with `async with engine:` in its lifespan: health ok, engine running."""
    token = engine.tokens.create_token("usr_host")
    with (
        serve(host(engine, start_engine=True)) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        health = client.get("/abi/api/v1/health")
        assert health.status_code == 200, health.text
        assert health.json()["data"] == {
            "status": "ok",
            "database": "ok",
            "engine": "running",
        }
        workflow_id = _workflow(client)
        run = client.post(f"/abi/api/v1/workflows/{workflow_id}/execute", json={})
        assert run.status_code == 200, run.text
        assert run.json()["data"]["status"] == "completed"
