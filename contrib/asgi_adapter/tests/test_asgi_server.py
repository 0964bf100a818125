"""End to end: the adapter served by a real uvicorn on 127.0.0.1, driven over TCP."""

from __future__ import annotations

import contextlib
import json
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
from asgi_helpers import SEED_UPDATE, create_body, error, success
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from abi_engine import Engine

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn (lifespan on) in a thread on a free port; stop it after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a SQLite file, not started (the served app's lifespan starts it)."""
    eng = Engine(tmp_path / "served.db")
    try:
        yield eng
    finally:
        eng.close()


def test_served_app_runs_the_seed_flow_over_tcp(engine: Engine) -> None:
    """uvicorn serves the whole workflow lifecycle; the app's lifespan runs the engine."""
    token = engine.tokens.create_token("usr_test")
    headers = {"Authorization": f"Bearer {token}"}
    assert not engine.running
    with serving(create_app(engine)) as base, httpx.Client(base_url=base, headers=headers) as c:
        assert engine.running  # entered by the lifespan
        assert success(c.get("/api/v1/health"))["database"] == "ok"
        wf = success(c.post("/api/v1/workflows", json=create_body()), 201)
        assert success(c.get(f"/api/v1/workflows/{wf['id']}"))["id"] == wf["id"]
        updated = success(c.put(f"/api/v1/workflows/{wf['id']}", json=SEED_UPDATE))
        assert updated["name"] == SEED_UPDATE["name"]
        success(c.post(f"/api/v1/workflows/{wf['id']}/activate"))
        error(c.post(f"/api/v1/workflows/{wf['id']}/activate"), 409, "INVALID_STATE")
        listed = success(c.get("/api/v1/workflows", params={"status": "active"}))
        assert [i["id"] for i in listed["items"]] == [wf["id"]]
        assert success(c.delete(f"/api/v1/workflows/{wf['id']}"))["deleted"] is True
        error(c.get(f"/api/v1/workflows/{wf['id']}"), 404, "WORKFLOW_NOT_FOUND")
        error(c.get("/api/v1/nowhere"), 404, "NOT_FOUND")
        error(
            c.get("/api/v1/workflows", headers={"Authorization": "Bearer x"}), 401, "UNAUTHORIZED"
        )
        raw = c.post(
            "/api/v1/workflows", content=b'{"name": ', headers={"Content-Type": "application/json"}
        )
        error(raw, 400, "INVALID_REQUEST")
        document = c.get("/api/v1/openapi.json").json()
        assert document["openapi"] == "3.1.0"
    assert not engine.running  # left by the lifespan on shutdown


def test_served_app_refuses_large_and_chunked_bodies(engine: Engine) -> None:
    """Over TCP, a declared or streamed body over the limit answers 413 and the server lives on."""
    token = engine.tokens.create_token("usr_test")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    app = create_app(engine, max_body_bytes=2048)
    with serving(app) as base, httpx.Client(base_url=base, headers=headers) as c:
        big = json.dumps(create_body(description="x" * 5000)).encode()
        error(c.post("/api/v1/workflows", content=big), 413, "PAYLOAD_TOO_LARGE")

        def chunks() -> Iterator[bytes]:
            yield b'{"name": "'
            for _ in range(100):
                yield b"y" * 100

        response = c.post("/api/v1/workflows", content=chunks())
        error(response, 413, "PAYLOAD_TOO_LARGE")
        assert response.request.headers.get("transfer-encoding") == "chunked"
        success(c.post("/api/v1/workflows", json=create_body()), 201)


def test_served_app_rate_limits_over_tcp(engine: Engine) -> None:
    """The 429 and its Retry-After header reach a real client."""
    from abi_asgi import RateLimit

    token = engine.tokens.create_token("usr_test")
    app = create_app(engine, rate_limit=RateLimit(requests_per_second=0.5, burst=2))
    headers = {"Authorization": f"Bearer {token}"}
    with serving(app) as base, httpx.Client(base_url=base, headers=headers) as c:
        success(c.get("/api/v1/workflows"))
        success(c.get("/api/v1/workflows"))
        response = c.get("/api/v1/workflows")
        details = error(response, 429, "RATE_LIMIT_EXCEEDED")
        assert int(response.headers["retry-after"]) == details["retry_after"] >= 1


def test_mounted_under_a_prefix_in_a_host_app(engine: Engine) -> None:
    """Mounted at /abi in a host Starlette app whose lifespan runs the engine, the API answers."""

    @contextlib.asynccontextmanager
    async def lifespan(host: Starlette) -> AsyncIterator[None]:
        async with engine:
            yield

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("host home")

    host = Starlette(
        routes=[Route("/", home), Mount("/abi", app=create_app(engine))], lifespan=lifespan
    )
    token = engine.tokens.create_token("usr_test")
    headers = {"Authorization": f"Bearer {token}"}
    with serving(host) as base, httpx.Client(base_url=base, headers=headers) as c:
        assert engine.running  # by the host's lifespan: Starlette skips the mounted app's
        assert c.get("/").text == "host home"
        wf = success(c.post("/abi/api/v1/workflows", json=create_body()), 201)
        listed = success(c.get("/abi/api/v1/workflows"))
        assert [item["id"] for item in listed["items"]] == [wf["id"]]
        success(c.get(f"/abi/api/v1/workflows/{wf['id']}"))
        error(c.get("/abi/api/v1/nope"), 404, "NOT_FOUND")
        error(c.patch("/abi/api/v1/workflows"), 405, "METHOD_NOT_ALLOWED")
        document = c.get("/abi/api/v1/openapi.json").json()
        assert document["servers"] == [{"url": "/abi"}]
        assert "/api/v1/workflows" in document["paths"]
        assert c.get("/api/v1/workflows").status_code == 404  # nothing outside the mount
    assert not engine.running


def test_served_app_executes_workflows(engine: Engine) -> None:
    """Through uvicorn, execute waits for the result, execute_async answers 202 at once."""
    token = engine.tokens.create_token("usr_test")
    headers = {"Authorization": f"Bearer {token}"}
    config = {
        "steps": [
            {"name": "wait", "action": "delay", "seconds": 0},
            {"name": "total", "action": "transform", "expressions": {"sum": "parameters['a'] + 1"}},
        ]
    }
    with serving(create_app(engine)) as base, httpx.Client(base_url=base, headers=headers) as c:
        wf = success(
            c.post("/api/v1/workflows", json=create_body(integrations=[], configuration=config)),
            201,
        )
        body = {
            "parameters": {"a": 41},
            "execution_options": {"timeout_seconds": 30, "wait_for_completion": True},
        }
        error(c.post(f"/api/v1/workflows/{wf['id']}/execute", json=body), 409, "INVALID_STATE")
        success(c.post(f"/api/v1/workflows/{wf['id']}/activate"))
        done = success(c.post(f"/api/v1/workflows/{wf['id']}/execute", json=body))
        assert done["status"] == "completed"
        assert done["execution_id"].startswith("exec_")
        assert done["result"] == {"sum": 42}
        queued = success(
            c.post(f"/api/v1/workflows/{wf['id']}/execute_async", json={"parameters": {"a": 1}}),
            202,
        )
        assert queued["status"] in {"queued", "running", "completed"}
        got = success(c.get(f"/api/v1/workflow_executions/{queued['execution_id']}"))
        assert got["workflow_id"] == wf["id"]
