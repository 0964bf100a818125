"""Random requests never get a 500, and always get one of the two envelopes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from abi_asgi import create_app
from anyio.from_thread import BlockingPortal, start_blocking_portal
from asgi_helpers import assert_error_envelope, create_body, success
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from abi_engine import Engine
from abi_engine.api import OPERATIONS

# No ':' anywhere, so no generated string is an absolute URL the engine could call out to.
TEXT = st.text(st.characters(exclude_characters=":", exclude_categories=("Cs",)), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "name",
        "description",
        "type",
        "configuration",
        "integrations",
        "metadata",
        "provider",
        "config",
        "parameters",
        "execution_options",
        "timeout_seconds",
        "wait_for_completion",
        "idempotency_key",
        "steps",
        "id",
        "required",
        "handler",
    ]
)
OBJECTS = st.dictionaries(FIELDS | TEXT, JSON, max_size=6)
WORKFLOW_BODIES = st.builds(
    lambda changes: create_body(**changes),
    st.dictionaries(FIELDS, JSON, max_size=2),
)
BODIES = st.one_of(
    st.none(),
    JSON.map(lambda v: json.dumps(v).encode()),
    OBJECTS.map(lambda v: json.dumps(v).encode()),
    WORKFLOW_BODIES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)
QUERY_NAMES = sorted({q.name for op in OPERATIONS.values() for q in op.query})
QUERIES = st.dictionaries(st.sampled_from(QUERY_NAMES) | TEXT, TEXT, max_size=4)
SEGMENT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])
ROUTES = sorted({(op.method, "/api/v1" + op.path) for op in OPERATIONS.values()})
PARAM = re.compile(r"{[^}]+}")


@st.composite
def routes(draw: st.DrawFn, known_ids: list[str]) -> tuple[str, str]:
    """Mostly a real operation's method and path with random or real ids; sometimes anything."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        segments = draw(st.lists(SEGMENT, max_size=4))
        return draw(METHODS), "/api/v1/" + "/".join(quote(s, safe="") for s in segments)
    method, template = draw(st.sampled_from(ROUTES))
    if roll == 1:
        method = draw(METHODS)
    ids = st.sampled_from(known_ids) | SEGMENT
    return method, PARAM.sub(lambda _: quote(draw(ids), safe=""), template)


class Target:
    """A running engine and app, driven from synchronous code through a portal.

    Hypothesis drives the examples synchronously (anyio's runner does not mix
    ``@given`` with async fixtures), and each request runs on the portal's loop.
    """

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient, token: str) -> None:
        self.portal = portal
        self.client = client
        self.token = token
        self.known_ids: list[str] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            with anyio.fail_after(20):
                return await self.client.request(method, path, **kwargs)

        return self.portal.call(send)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """The adapter over a running engine, with a real workflow and integration to hit."""
    engine = Engine(tmp_path / "fuzz.db")
    token = engine.tokens.create_token("usr_fuzz")
    app = create_app(engine, rate_limit=None)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(engine),
            portal.wrap_async_context_manager(client),
        ):
            found = Target(portal, client, token)
            auth = {"Authorization": f"Bearer {token}"}
            workflow = found.request("POST", "/api/v1/workflows", json=create_body(), headers=auth)
            integration = {"provider": "http", "config": {"base_url": "https://x.example"}}
            found.request("PUT", "/api/v1/integrations/int_zendesk", json=integration, headers=auth)
            found.known_ids = [success(workflow, 201)["id"], "int_zendesk", "exec_missing"]
            yield found
    finally:
        engine.close()


@settings(
    max_examples=int(os.environ.get("ABI_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_requests_never_get_a_500(data: st.DataObject, target: Target) -> None:
    """Random methods, paths, queries, headers and bodies: status < 500, always an envelope."""
    method, path = data.draw(routes(target.known_ids), "route")
    query = data.draw(QUERIES, "query")
    body = data.draw(BODIES, "body")
    auth = data.draw(st.sampled_from(["valid"] * 8 + ["none", "bogus"]), "auth")
    content_type = data.draw(
        st.sampled_from([None, "application/json", "text/plain", "application/json; charset=x"]),
        "content_type",
    )
    headers: dict[str, str] = {}
    if auth == "valid":
        headers["Authorization"] = f"Bearer {target.token}"
    elif auth == "bogus":
        headers["Authorization"] = "Bearer abi_" + data.draw(st.text("abc", max_size=5))
    if content_type:
        headers["Content-Type"] = content_type
    response = target.request(method, path, params=query, content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code == 200 and response.headers["content-type"].startswith("text/plain"):
        assert path == "/api/v1/metrics"  # Prometheus' text format, the one non-JSON answer
        assert "# TYPE" in response.text
        return
    event(f"{response.status_code} {response.json().get('error', {}).get('code', '')}")
    payload: Any = response.json()
    if path == "/api/v1/openapi.json" and response.status_code == 200:
        assert payload["openapi"] == "3.1.0"
    elif response.status_code < 400:
        assert set(payload) == {"status", "data"}
        assert payload["status"] == "success"
    else:
        assert_error_envelope(payload)
