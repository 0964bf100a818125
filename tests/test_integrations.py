"""Integrations: connections by id, provider config checks, masked secrets, workflow status."""

from __future__ import annotations

import base64
from typing import Any

import anyio
import pytest

from abi_engine import Engine, Principal
from abi_engine.api import ApiRequest, call
from abi_engine.errors import Forbidden, IntegrationNotFound, InvalidRequest
from abi_engine.integrations import MASK

BEARER = {
    "base_url": "https://example.zendesk.com/api/v2",
    "headers": {"Accept": "application/json", "X-Api-Key": "k-123", "Authorization": "Token t"},
    "auth": {"type": "bearer", "token": "s3cret-token"},
}
BASIC = {
    "base_url": "https://crm.example.com",
    "auth": {"type": "basic", "username": "bot", "password": "hunter2"},
}


@pytest.mark.anyio
async def test_put_get_list_delete(engine: Engine) -> None:
    """put creates then replaces (created_at kept); get, list by id and delete work."""
    first = await engine.integrations.put("int_zendesk", "http", BEARER)
    assert (first.id, first.provider) == ("int_zendesk", "http")
    await anyio.sleep(0.002)
    replaced = await engine.integrations.put("int_zendesk", "http", BASIC)
    assert replaced.created_at == first.created_at
    assert replaced.updated_at > first.updated_at
    await engine.integrations.put("int_another", "http", {"base_url": "http://a.example"})

    got = await engine.integrations.get("int_zendesk")
    assert got.config["base_url"] == BASIC["base_url"]
    page = await engine.integrations.list()
    assert [i.id for i in page.items] == ["int_another", "int_zendesk"]
    assert page.pagination.total_items == 2
    assert [i.id for i in (await engine.integrations.list(page=2, page_size=1)).items] == [
        "int_zendesk"
    ]

    await engine.integrations.delete("int_zendesk")
    with pytest.raises(IntegrationNotFound) as info:
        await engine.integrations.get("int_zendesk")
    assert (info.value.code, info.value.http_status) == ("NOT_FOUND", 404)
    with pytest.raises(IntegrationNotFound):
        await engine.integrations.delete("int_zendesk")


@pytest.mark.anyio
async def test_secrets_masked_in_answers_but_stored(engine: Engine) -> None:
    """auth.token, auth.password and secret-looking headers are masked; the store keeps them."""
    shown = await engine.integrations.put("int_zendesk", "http", BEARER)
    assert shown.config["auth"] == {"type": "bearer", "token": MASK}
    assert shown.config["headers"] == {
        "Accept": "application/json",
        "X-Api-Key": MASK,
        "Authorization": MASK,
    }
    for answer in (
        await engine.integrations.get("int_zendesk"),
        (await engine.integrations.list()).items[0],
    ):
        assert answer.config == shown.config
    basic = await engine.integrations.put("int_crm", "http", BASIC)
    assert basic.config["auth"] == {"type": "basic", "username": "bot", "password": MASK}

    stored = await engine.integrations.get_secret("int_zendesk")
    assert stored is not None
    assert stored.config == BEARER
    assert await engine.integrations.get_secret("int_missing") is None


@pytest.mark.anyio
async def test_masking_over_the_operations_table(engine: Engine, principal: Principal) -> None:
    """The REST operations answer masked secrets and require integrations:admin."""
    data = await call(
        engine,
        principal,
        "put_integration",
        ApiRequest(path={"integration_id": "int_crm"}, body={"provider": "http", "config": BASIC}),
    )
    assert "hunter2" not in str(data)
    listed = await call(engine, principal, "list_integrations", ApiRequest())
    assert "hunter2" not in str(listed)
    assert listed["items"][0]["config"]["auth"]["password"] == MASK
    reader = engine.tokens.authenticate(engine.tokens.create_token("usr_r", ["workflows:read"]))
    with pytest.raises(Forbidden):
        await call(
            engine, reader, "get_integration", ApiRequest(path={"integration_id": "int_crm"})
        )


@pytest.mark.anyio
async def test_http_client_carries_the_auth(engine: Engine) -> None:
    """The http provider's client uses the stored secrets: bearer header, basic auth, headers."""
    provider = engine.registry.providers["http"]
    client = provider.client(BEARER)
    try:
        assert str(client.base_url).rstrip("/") == BEARER["base_url"]
        assert client.headers["Authorization"] == "Bearer s3cret-token"
        assert client.headers["X-Api-Key"] == "k-123"
        assert client.follow_redirects is False
    finally:
        await client.aclose()
    basic = provider.client(BASIC)
    try:
        request = basic.build_request("GET", "/x")
        flow = basic.auth.auth_flow(request)  # type: ignore[union-attr]
        signed = next(flow)
        expected = base64.b64encode(b"bot:hunter2").decode()
        assert signed.headers["Authorization"] == f"Basic {expected}"
    finally:
        await basic.aclose()


@pytest.mark.anyio
async def test_unknown_provider(engine: Engine) -> None:
    """An unknown provider is INVALID_REQUEST on 'provider', listing the known ones."""
    with pytest.raises(InvalidRequest) as info:
        await engine.integrations.put("int_x", "carrier_pigeon", {})
    assert info.value.details["field"] == "provider"
    assert "http" in info.value.details["allowed"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "config.base_url"),
        ({"base_url": "ftp://files.example.com"}, "config.base_url"),
        ({"base_url": "not a url"}, "config.base_url"),
        ({"base_url": 5}, "config.base_url"),
        ({"base_url": "https://a.example", "bogus": 1}, "config.bogus"),
        ({"base_url": "http://["}, "config.base_url"),
        ({"base_url": "http://a b.example"}, "config.base_url"),
        ({"base_url": "https://a.example:99999"}, "config.base_url"),
        ({"base_url": "https://a.example", "headers": {"X": 1}}, "config.headers['X']"),
        ({"base_url": "https://a.example", "auth": {"type": "magic"}}, "config.auth.type"),
        ({"base_url": "https://a.example", "auth": {"type": "bearer"}}, "config.auth"),
        ({"base_url": "https://a.example", "timeout_seconds": "10"}, "config.timeout_seconds"),
    ],
)
async def test_bad_config_names_the_field(engine: Engine, config: Any, field: str) -> None:
    """A bad provider config is INVALID_REQUEST naming config.<field>; nothing is stored."""
    with pytest.raises(InvalidRequest) as info:
        await engine.integrations.put("int_x", "http", config)
    assert info.value.details["field"] == field
    assert field in info.value.message
    assert await engine.integrations.get_secret("int_x") is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "bad_id", ["zendesk", "int_", "int_with space", "wf_123", "int_" + "x" * 121]
)
async def test_bad_integration_ids(engine: Engine, bad_id: str) -> None:
    """Connection ids must look like int_<name>."""
    with pytest.raises(InvalidRequest) as info:
        await engine.integrations.put(bad_id, "http", {"base_url": "https://a.example"})
    assert info.value.details["field"] == "id"


@pytest.mark.anyio
async def test_bad_put_arguments(engine: Engine, principal: Principal) -> None:
    """Non-string providers and non-object configs are refused, in-process and over operations."""
    with pytest.raises(InvalidRequest):
        await engine.integrations.put("int_x", 5, {})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        await engine.integrations.put("int_x", "http", [])  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as info:
        await call(
            engine,
            principal,
            "put_integration",
            ApiRequest(path={"integration_id": "int_x"}, body={"provider": "http", "cfg": {}}),
        )
    assert info.value.details["field"] == "cfg"


@pytest.mark.anyio
async def test_workflow_integration_status_lifecycle(engine: Engine) -> None:
    """A workflow's integration is pending, connected after put, pending again after delete."""
    wf = await engine.workflows.create(
        {
            "name": "uses zendesk",
            "type": "custom",
            "configuration": {"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
            "integrations": [{"id": "int_zendesk", "required": True}],
        }
    )

    async def status() -> str:
        return (await engine.workflows.get(wf.id)).integrations[0].status.value

    assert await status() == "pending"
    await engine.integrations.put("int_zendesk", "http", BEARER)
    assert await status() == "connected"
    assert await engine.integrations.connected(["int_zendesk", "int_other"]) == {"int_zendesk"}
    await engine.integrations.delete("int_zendesk")
    assert await status() == "pending"
