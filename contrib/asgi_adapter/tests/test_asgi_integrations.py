"""Integration connections over REST: put, get, list, delete; secrets never shown."""

from __future__ import annotations

import httpx
import pytest
from asgi_helpers import assert_timestamps, create_body, error, success

from abi_engine import Engine

pytestmark = pytest.mark.anyio

ZENDESK = {
    "provider": "http",
    "config": {
        "base_url": "https://acme.zendesk.example/api/v2",
        "headers": {"X-Api-Key": "key-123", "Accept": "application/json"},
        "auth": {"type": "bearer", "token": "zd-secret-token"},
    },
}
SALESFORCE = {
    "provider": "http",
    "config": {
        "base_url": "https://acme.salesforce.example",
        "auth": {"type": "basic", "username": "api", "password": "sf-password"},
    },
}
MASK = "********"


async def test_put_get_list_delete_with_secrets_masked(client: httpx.AsyncClient) -> None:
    """PUT stores a connection; every answer masks its secrets; DELETE removes it."""
    put = success(await client.put("/api/v1/integrations/int_zendesk", json=ZENDESK))
    assert set(put) == {"id", "provider", "config", "created_at", "updated_at"}
    assert put["id"] == "int_zendesk"
    assert put["provider"] == "http"
    assert_timestamps(put, "created_at", "updated_at")
    shown = put["config"]
    assert shown["base_url"] == ZENDESK["config"]["base_url"]
    assert shown["auth"] == {"type": "bearer", "token": MASK}
    assert shown["headers"] == {"X-Api-Key": MASK, "Accept": "application/json"}

    got = success(await client.get("/api/v1/integrations/int_zendesk"))
    assert got == put
    success(await client.put("/api/v1/integrations/int_salesforce", json=SALESFORCE))
    listed = success(await client.get("/api/v1/integrations", params={"page_size": "1"}))
    assert listed["pagination"] == {"page": 1, "page_size": 1, "total_items": 2, "total_pages": 2}
    assert [item["id"] for item in listed["items"]] == ["int_salesforce"]
    assert listed["items"][0]["config"]["auth"]["password"] == MASK
    for secret in ("zd-secret-token", "key-123", "sf-password"):
        for response in (
            await client.get("/api/v1/integrations"),
            await client.get("/api/v1/integrations/int_zendesk"),
            await client.get("/api/v1/integrations/int_salesforce"),
        ):
            assert secret not in response.text

    deleted = success(await client.delete("/api/v1/integrations/int_zendesk"))
    assert deleted == {"id": "int_zendesk", "deleted": True}
    error(await client.get("/api/v1/integrations/int_zendesk"), 404, "NOT_FOUND")
    error(await client.delete("/api/v1/integrations/int_zendesk"), 404, "NOT_FOUND")


async def test_put_replaces_and_keeps_created_at(client: httpx.AsyncClient) -> None:
    """A second PUT replaces the config and keeps the first created_at."""
    first = success(await client.put("/api/v1/integrations/int_zendesk", json=ZENDESK))
    second = success(await client.put("/api/v1/integrations/int_zendesk", json=SALESFORCE))
    assert second["created_at"] == first["created_at"]
    assert second["config"]["base_url"] == SALESFORCE["config"]["base_url"]


async def test_stored_secrets_stay_usable_by_the_engine(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """Masking is for display only: the engine still has the real secret."""
    success(await client.put("/api/v1/integrations/int_zendesk", json=ZENDESK))
    stored = await engine.integrations.get_secret("int_zendesk")
    assert stored is not None
    assert stored.config["auth"]["token"] == "zd-secret-token"


async def test_workflow_integration_turns_connected(client: httpx.AsyncClient) -> None:
    """A workflow's integration shows pending, connected once PUT, pending again after DELETE."""
    wf = success(await client.post("/api/v1/workflows", json=create_body()), 201)

    async def statuses() -> dict[str, str]:
        data = success(await client.get(f"/api/v1/workflows/{wf['id']}"))
        return {i["id"]: i["status"] for i in data["integrations"]}

    assert await statuses() == {"int_zendesk": "pending", "int_salesforce": "pending"}
    success(await client.put("/api/v1/integrations/int_zendesk", json=ZENDESK))
    assert await statuses() == {"int_zendesk": "connected", "int_salesforce": "pending"}
    success(await client.put("/api/v1/integrations/int_salesforce", json=SALESFORCE))
    assert await statuses() == {"int_zendesk": "connected", "int_salesforce": "connected"}
    success(await client.delete("/api/v1/integrations/int_zendesk"))
    assert await statuses() == {"int_zendesk": "pending", "int_salesforce": "connected"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("int_x", {"provider": "carrier-pigeon", "config": {}}, "provider"),
        ("int_x", {"provider": "http", "config": {"base_url": "ftp://x"}}, "config.base_url"),
        ("int_x", {"provider": "http"}, "config.base_url"),
        ("int_x", {"config": {}}, "provider"),
        ("int_x", {"provider": "http", "config": [], "x": 1}, "config"),
        ("int_x", {"provider": "http", "config": {"base_url": "https://x"}, "x": 1}, "x"),
        ("zendesk", {"provider": "http", "config": {"base_url": "https://x"}}, "id"),
    ],
)
async def test_bad_integration_is_invalid_request(
    client: httpx.AsyncClient, path: str, body: dict[str, object], field: str
) -> None:
    """Unknown providers, bad configs, unknown fields and bad ids answer 400 naming the field."""
    response = await client.put(f"/api/v1/integrations/{path}", json=body)
    assert error(response, 400, "INVALID_REQUEST")["field"] == field


async def test_integrations_need_the_admin_scope(
    client: httpx.AsyncClient, engine: Engine, app: object
) -> None:
    """A token without integrations:admin gets 403 on every integration route."""
    reader = engine.tokens.create_token("usr_test", scopes=["workflows:read", "workflows:write"])
    headers = {"Authorization": f"Bearer {reader}"}
    for method, path, body in [
        ("PUT", "/api/v1/integrations/int_x", ZENDESK),
        ("GET", "/api/v1/integrations", None),
        ("GET", "/api/v1/integrations/int_x", None),
        ("DELETE", "/api/v1/integrations/int_x", None),
    ]:
        response = await client.request(method, path, json=body, headers=headers)
        assert error(response, 403, "FORBIDDEN") == {"required_scope": "integrations:admin"}
