"""Without a token, nothing: every route the adapter mounts (walked in Starlette's router and in
the operations table it holds, not read from the OpenAPI document), with every method, answers
401 (or 404/405) in the error envelope and shows no data; only health and the OpenAPI document
answer, and they say nothing of versions or data."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from abi_asgi._routing import OperationTable, _Node
from asgi_helpers import assert_error_envelope
from starlette.applications import Starlette
from starlette.routing import Route

import abi_engine
from abi_engine import Engine
from abi_engine.api import OPERATIONS

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]
PUBLIC = {"/api/v1/health", "/api/v1/openapi.json"}
MARK = "zz-private-marker"  # in every record made: must appear in no answer
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?}")


def _operation_paths(node: _Node, prefix: str) -> Iterator[tuple[str, set[str]]]:
    if node.methods:
        yield prefix, set(node.methods)
    for segment, child in node.literals.items():
        yield from _operation_paths(child, f"{prefix}/{segment}")
    if node.whole is not None:  # a segment that is one {name}
        name, whole = node.whole
        yield from _operation_paths(whole, f"{prefix}/{{{name}}}")
    for segment, _, _, child in node.patterns:
        yield from _operation_paths(child, f"{prefix}/{segment}")


def mounted_routes(app: Starlette) -> list[tuple[str, set[str]]]:
    """Every (path template, methods) the API routes, from its router."""
    found: list[tuple[str, set[str]]] = []
    for route in app.router.routes:
        if getattr(route, "path", "").startswith("/ui"):
            continue  # the dashboard's HTML pages: test_dashboard_security.py walks them
        if isinstance(route, OperationTable):
            found.extend(_operation_paths(route.root, ""))
        elif isinstance(route, Route):
            found.append((route.path, set(route.methods or ())))
        else:  # a new kind of route: this test must learn to walk it
            raise AssertionError(f"unknown route {route!r}")
    return found


@pytest.fixture
async def seeded(engine: Engine, token: str) -> dict[str, str]:
    """Real records of every kind (each holding MARK), by path parameter name."""
    from abi_engine.auth import Principal

    principal: Principal = engine.tokens.authenticate(token)
    wf = await engine.workflows.create(
        {
            "name": MARK,
            "type": "custom",
            "configuration": {"steps": [{"name": "w", "action": "delay", "seconds": 0}]},
            "metadata": {"note": MARK},
        },
        actor=principal,
    )
    await engine.workflows.activate(wf.id)
    execution = await engine.executions.execute(wf.id, {"note": MARK}, actor=principal)
    hook = await engine.webhooks.create(
        {"url": "https://hooks.example.com/in", "events": ["workflow.created"], "description": MARK}
    )
    await engine.integrations.put(
        "int_marked", "http", {"base_url": "https://api.example.com", "headers": {"X": MARK}}
    )
    schedule = await engine.schedules.create(
        wf.id,
        {
            "name": MARK,
            "schedule_type": "interval",
            "interval_value": 1,
            "interval_unit": "hours",
            "parameters": {"note": MARK},
        },
        actor=principal,
    )
    return {
        "workflow_id": wf.id,
        "execution_id": execution.execution_id,
        "webhook_id": hook.id,
        "integration_id": "int_marked",
        "schedule_id": schedule.id,
        "token_id": principal.token_id or "tok_x",
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer", "bearer  "],
    ids=["none", "unknown", "basic", "empty", "blank"],
)
async def test_every_route_without_a_valid_token_gives_nothing(
    app: Starlette,
    seeded: dict[str, str],
    make_client: Callable[..., httpx.AsyncClient],
    authorization: str | None,
) -> None:
    """Each mounted route x each method, without a valid token: 401 UNAUTHORIZED where the
    method exists, else 404/405, always the error envelope, never data; public routes answer
    GET only."""
    routes = mounted_routes(app)
    walked = {(method, path) for path, methods in routes for method in methods}
    assert {(op.method, f"/api/v1{op.path}") for op in OPERATIONS.values()} <= walked
    assert {path for path, _ in routes} >= PUBLIC
    headers = {} if authorization is None else {"Authorization": authorization}
    client = make_client(app)
    for template, methods in routes:
        path = _PARAM.sub(lambda m: seeded.get(m.group(1), "x"), template)
        for method in METHODS:
            response = await client.request(method, path, headers=headers, json={"note": MARK})
            where = f"{method} {path}: {response.status_code} {response.text[:200]}"
            assert MARK not in response.text, where
            if template in PUBLIC and method in ("GET", "HEAD"):
                assert response.status_code == 200, where
                continue
            if method == "HEAD":
                assert response.status_code in (401, 404, 405), where
                assert response.content == b"", where
                continue
            # A literal segment without the method yields to a parameter route that has
            # it (GET /workflow_executions/rerun is the execution 'rerun'): 401 then too.
            expected = 401 if method in methods or _routed_elsewhere(app, path, method) else 405
            assert response.status_code == expected, where
            body = response.json()
            assert_error_envelope(body)
            code = {401: "UNAUTHORIZED", 405: "METHOD_NOT_ALLOWED"}[expected]
            assert body["error"]["code"] == code, where
            assert "data" not in body, where


@pytest.mark.anyio
async def test_unknown_paths_are_404_envelopes(
    app: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """Paths the adapter does not route answer 404 NOT_FOUND in the envelope, token or not."""
    client = make_client(app)
    for path in ["/", "/api", "/api/v1", "/api/v2/workflows", "/api/v1/workflows/x/y/z", "/uix"]:
        for method in ("GET", "POST", "DELETE"):
            response = await client.request(method, path)
            assert response.status_code == 404, (method, path)
            assert_error_envelope(response.json())
            assert response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.anyio
async def test_public_routes_reveal_no_version_or_data(
    app: Starlette, seeded: dict[str, str], make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """health says ok and whether the database answers; the OpenAPI document carries the API's
    version, not the package's; neither shows records."""
    client = make_client(app)
    health = await client.get("/api/v1/health")
    assert health.json() == {
        "status": "success",
        "data": {"status": "ok", "database": "ok", "engine": "running"},
    }
    document = await client.get("/api/v1/openapi.json")
    assert document.json()["info"]["version"] == "v1"
    assert abi_engine.__version__ not in health.text
    for response in (health, document):
        assert MARK not in response.text
        assert seeded["workflow_id"] not in response.text


def _routed_elsewhere(app: Starlette, path: str, method: str) -> bool:
    """Whether another operation than the template's has ``method`` at ``path``."""
    for route in app.router.routes:
        table = getattr(route, "app", route)
        lookup = getattr(table, "lookup", None) or getattr(route, "lookup", None)
        if lookup is not None:
            found = lookup(path, method)
            if found is not None and method in found[0]:
                return True
    return False
