"""``GET /workflows/{id}`` answers from its kept JSON while the workflow is unchanged (#18).

The adapter asks operations for their answer encoded (``call_with_status(...,
encoded=True)``); ``get_workflow`` keeps the JSON it sent last per workflow and
sends it again when the workflow read now equals the one it was made of (every
field: its version, its stats, the statuses of its integrations and templates).
The bytes are exactly those the general path (the handler's answer, encoded by
the adapter) would send, on a miss and on a hit, whatever the workflow holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from abi_asgi import create_app
from abi_asgi._app import _success
from anyio.from_thread import BlockingPortal, start_blocking_portal
from asgi_helpers import create_body, success
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from abi_engine import Engine, api
from abi_engine.api import workflows as workflow_ops

MakeClient = Callable[..., httpx.AsyncClient]

_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


class Served:
    """A running engine and app driven from synchronous code (Hypothesis) through a portal."""

    def __init__(self, portal: BlockingPortal, engine: Engine, client: httpx.AsyncClient) -> None:
        self.portal = portal
        self.engine = engine
        self.client = client
        self.principal = engine.tokens.authenticate(
            client.headers["Authorization"].removeprefix("Bearer ")
        )

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            with anyio.fail_after(20):
                return await self.client.request(method, path, **kwargs)

        return self.portal.call(send)

    def general(self, workflow_id: str) -> bytes:
        """What the general path sends: the handler's answer, encoded by the adapter."""

        async def answer() -> Any:
            request = api.ApiRequest(path={"workflow_id": workflow_id})
            return await api.call(self.engine, self.principal, "get_workflow", request)

        return _success(self.portal.call(answer))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    engine = Engine(tmp_path / "answers.db")
    token = engine.tokens.create_token("usr_answers")
    app = create_app(engine, rate_limit=None)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(engine),
            portal.wrap_async_context_manager(client),
        ):
            yield Served(portal, engine, client)
    finally:
        engine.close()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    metadata=st.dictionaries(st.text(min_size=1, max_size=8), _JSON, max_size=4),
    name=st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s and s.strip()),
    description=st.none() | st.text(max_size=30).filter(lambda s: "\x00" not in s),
)
def test_the_kept_answer_is_the_general_paths_bytes(
    served: Served, metadata: dict[str, Any], name: str, description: str | None
) -> None:
    body = create_body(name=name, description=description, metadata=metadata, integrations=[])
    created = served.request("POST", "/api/v1/workflows", json=body)
    if created.status_code != 201:  # a body the contract refuses (keys, sizes): not ours here
        assert created.status_code == 400, created.text
        return
    path = f"/api/v1/workflows/{created.json()['data']['id']}"
    for _ in range(2):  # made, then kept
        answered = served.request("GET", path)
        assert answered.status_code == 200
        assert answered.content == served.general(created.json()["data"]["id"])
    update = {"metadata": {**metadata, "changed": True}}
    assert served.request("PUT", path, json=update).status_code == 200
    again = served.request("GET", path)
    assert success(again)["metadata"]["changed"] is True
    assert again.content == served.general(created.json()["data"]["id"])


@pytest.fixture
def idle_engine(backend_engine: Engine) -> Engine:
    """The tests below on each engine backend (SQLite, PostgreSQL)."""
    return backend_engine


pytestmark = pytest.mark.anyio


async def test_stats_and_integration_statuses_are_never_answered_stale(
    app: Starlette, token: str, make_client: MakeClient
) -> None:
    """What changes without a new version (its stats, an integration's status) is seen
    by the very next request."""
    client = make_client(app, token)
    body = create_body(configuration={"steps": [{"name": "s", "action": "delay", "seconds": 0}]})
    created = success(await client.post("/api/v1/workflows", json=body), 201)
    path = f"/api/v1/workflows/{created['id']}"
    first = success(await client.get(path))
    assert success(await client.get(path)) == first  # kept
    assert [i["status"] for i in first["integrations"]] == ["pending", "pending"]
    integration = {"provider": "http", "config": {"base_url": "https://x.example"}}
    connected = await client.put("/api/v1/integrations/int_salesforce", json=integration)
    assert connected.status_code in (200, 201), connected.text
    statuses = success(await client.get(path))["integrations"]
    assert {i["id"]: i["status"] for i in statuses} == {
        "int_zendesk": "pending",
        "int_salesforce": "connected",
    }
    # A run changes the stats, not the version.
    no_integrations = create_body(
        configuration={"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
        integrations=[],
    )
    plain = success(await client.post("/api/v1/workflows", json=no_integrations), 201)
    plain_path = f"/api/v1/workflows/{plain['id']}"
    success(await client.post(f"{plain_path}/activate"))
    before = success(await client.get(plain_path))
    assert before["stats"]["runs_total"] == 0
    ran = await client.post(f"{plain_path}/execute", json={"parameters": {}})
    assert success(ran)["status"] == "completed"
    after = success(await client.get(plain_path))
    assert after["stats"]["runs_total"] == 1
    assert after["updated_at"] == before["updated_at"]


async def test_kept_answers_are_bounded(
    app: Starlette,
    engine: Engine,
    token: str,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workflow_ops, "_ANSWERS_KEPT", 2)
    client = make_client(app, token)
    ids = []
    for n in range(3):
        body = create_body(name=f"w{n}", integrations=[])
        ids.append(success(await client.post("/api/v1/workflows", json=body), 201)["id"])
    for wf_id in ids * 2:
        assert success(await client.get(f"/api/v1/workflows/{wf_id}"))["id"] == wf_id
    assert len(workflow_ops._ANSWERS[engine]) == 2
    deleted = await client.delete(f"/api/v1/workflows/{ids[2]}")
    assert deleted.status_code == 200
    missing = await client.get(f"/api/v1/workflows/{ids[2]}")
    assert missing.status_code == 404
