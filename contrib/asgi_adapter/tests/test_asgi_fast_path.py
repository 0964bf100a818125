"""The operations answered before Starlette's stack, and tokens checked on the loop (#18).

``create_app`` answers a request whose path and method match an operation
itself (``OperationsFirst``), not through Starlette's middlewares and router;
everything else still goes that way, and so does every request once the host
adds a middleware. A token checked lately is answered from the cache on the
event loop, also on PostgreSQL (no thread); a revoked one is refused at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from abi_asgi import create_app
from abi_asgi._routing import OperationsFirst
from asgi_helpers import error, success
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from abi_engine import Engine

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., httpx.AsyncClient]


@pytest.fixture
def idle_engine(backend_engine: Engine) -> Engine:
    """Every test here on each engine backend (SQLite, PostgreSQL)."""
    return backend_engine


async def _refusing_stack(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError(f"Starlette's stack was called for {scope['type']} {scope.get('path')}")


async def test_an_operation_skips_starlettes_stack_and_the_rest_takes_it(
    app: Starlette, token: str, make_client: MakeClient
) -> None:
    """With Starlette's stack refusing every call, operations still answer (GET, HEAD,
    POST, path parameters, errors as envelopes); health, 404 and 405 reach the stack."""
    assert isinstance(app, OperationsFirst)
    client = make_client(app, token)
    assert success(await client.get("/api/v1/health"))["status"] == "ok"  # the stack built
    app.middleware_stack = _refusing_stack
    assert success(await client.get("/api/v1/workflows"))["items"] == []
    assert (await client.head("/api/v1/workflows")).status_code == 200
    steps = [{"name": "s", "action": "delay", "seconds": 0}]
    body = {"name": "fast", "type": "custom", "configuration": {"steps": steps}}
    created = success(await client.post("/api/v1/workflows", json=body), 201)
    assert success(await client.get(f"/api/v1/workflows/{created['id']}"))["id"] == created["id"]
    error(await client.get("/api/v1/workflows/wf_nothere"), 404, "WORKFLOW_NOT_FOUND")
    error(await client.post("/api/v1/workflows", content=b"{"), 400, "INVALID_REQUEST")
    error(await make_client(app).get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    for path, method in [
        ("/api/v1/health", "GET"),
        ("/api/v1/nothing", "GET"),
        ("/api/v1/workflows", "PATCH"),
    ]:
        with pytest.raises(AssertionError, match="Starlette's stack was called"):
            await client.request(method, path)


async def test_404_and_405_keep_their_envelopes(
    app: Starlette, token: str, make_client: MakeClient
) -> None:
    """What the operations do not answer is Starlette's, with the contract's envelopes."""
    client = make_client(app, token)
    error(await client.get("/api/v1/nothing"), 404, "NOT_FOUND")
    answer = await client.patch("/api/v1/workflows")
    details = error(answer, 405, "METHOD_NOT_ALLOWED")
    assert details["allowed"] == ["GET", "HEAD", "POST"]
    assert answer.headers["allow"] == "GET, HEAD, POST"


async def test_a_middleware_added_by_the_host_sees_every_request(
    engine: Engine, token: str, make_client: MakeClient
) -> None:
    """After ``add_middleware`` the operations go through the stack, the middleware too."""
    app = create_app(engine, rate_limit=None)
    seen: list[str] = []

    class Recording:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                seen.append(scope["path"])
            await self.app(scope, receive, send)

    app.add_middleware(Recording)
    client = make_client(app, token)
    assert success(await client.get("/api/v1/workflows"))["items"] == []
    error(await client.get("/api/v1/workflows/wf_nothere"), 404, "WORKFLOW_NOT_FOUND")
    assert seen == ["/api/v1/workflows", "/api/v1/workflows/wf_nothere"]


async def test_mounted_under_a_prefix_the_operations_answer_first(
    engine: Engine, token: str, make_client: MakeClient
) -> None:
    """Mounted in a host app under /abi: operations answer on the fast path, the host's
    own routes and 404s stay the host's."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    app = create_app(engine, rate_limit=None)
    calls = 0

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("host")

    host = Starlette(routes=[Route("/", home), Mount("/abi", app=app)])
    client = make_client(host, token)
    assert (await client.get("/")).text == "host"
    assert success(await client.get("/abi/api/v1/health"))["status"] == "ok"
    real_stack = app.middleware_stack

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal calls
        calls += 1
        assert real_stack is not None
        await real_stack(scope, receive, send)

    app.middleware_stack = counting
    assert success(await client.get("/abi/api/v1/workflows"))["items"] == []
    assert calls == 0
    error(await client.get("/abi/api/v1/nothing"), 404, "NOT_FOUND")
    assert calls == 1


async def test_a_checked_token_is_answered_without_the_store_and_revoked_at_once(
    engine: Engine, token: str, app: Starlette, make_client: MakeClient, monkeypatch: Any
) -> None:
    """On both backends: one store read for a token's many requests (PostgreSQL: no
    thread either); revoked over REST, its very next request is 401."""
    reads: list[str] = []
    get_token = engine.tokens._store.get_token

    def counted(digest: str) -> Any:
        reads.append(digest)
        return get_token(digest)

    monkeypatch.setattr(engine.tokens._store, "get_token", counted)
    client = make_client(app, token)
    created = success(await client.post("/api/v1/tokens", json={"name": "ci"}), 201)
    doomed = make_client(app, created["token"])
    before = len(reads)
    for _ in range(5):
        assert success(await doomed.get("/api/v1/workflows"))["items"] == []
    assert len(reads) == before + 1
    if engine.store.blocking:  # the cached answer came on the loop, not from a thread
        assert engine.tokens.cached(created["token"]) is not None
    revoked = success(await client.delete(f"/api/v1/tokens/{created['id']}"))
    assert revoked["revoked"] is True
    assert engine.tokens.cached(created["token"]) is None
    error(await doomed.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    error(await doomed.post("/api/v1/workflows", json={}), 401, "UNAUTHORIZED")
    assert success(await client.get("/api/v1/workflows"))["items"] == []
