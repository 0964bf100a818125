"""Self-service access tokens over REST: list, create (no escalation), revoke; secrets shown once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from abi_asgi import create_app
from asgi_helpers import assert_timestamps, create_body, error, success
from starlette.applications import Starlette
from test_asgi_server import serving

from abi_engine import Engine, Scope
from abi_engine.auth import hash_token

pytestmark = pytest.mark.anyio

MakeClient = Callable[..., httpx.AsyncClient]
TOKEN_FIELDS = {"id", "user_id", "name", "scopes", "created_at", "parent_id"}
READERS = ["workflows:read", "executions:read"]


def _token_id(engine: Engine, token: str) -> str:
    token_id = engine.tokens.authenticate(token).token_id
    assert token_id is not None
    return token_id


async def test_create_with_some_scopes_gives_a_working_listed_token(
    app: Starlette, client: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """POST answers 201 with the token once; it works within its scopes and is listed without it."""
    created = success(
        await client.post("/api/v1/tokens", json={"name": "ci", "scopes": ["workflows:read"]}), 201
    )
    assert set(created) == {*TOKEN_FIELDS, "token"}
    assert created["id"].startswith("tok_")
    assert created["token"].startswith("abi_")
    assert created["user_id"] == "usr_test"
    assert created["name"] == "ci"
    assert created["scopes"] == ["workflows:read"]
    assert_timestamps(created, "created_at")

    new = make_client(app, created["token"])
    assert success(await new.get("/api/v1/workflows"))["items"] == []
    error(await new.post("/api/v1/workflows", json=create_body()), 403, "FORBIDDEN")

    for lister in (client, new):
        listed = success(await lister.get("/api/v1/tokens"))
        shown = next(item for item in listed["items"] if item["id"] == created["id"])
        assert shown == {k: v for k, v in created.items() if k != "token"}
        assert created["token"] not in str(listed)


async def test_default_scopes_are_the_callers(
    engine: Engine, app: Starlette, make_client: MakeClient
) -> None:
    """Without scopes (empty object, null, or no body at all) the new token gets the caller's scopes."""
    caller = make_client(app, engine.tokens.create_token("usr_reader", READERS))
    answers = [
        await caller.post("/api/v1/tokens", json={}),
        await caller.post("/api/v1/tokens", json={"scopes": None, "name": None}),
        await caller.post("/api/v1/tokens"),
    ]
    for answer in answers:
        created = success(answer, 201)
        assert created["scopes"] == sorted(READERS)
        assert created["user_id"] == "usr_reader"
        assert created["name"] is None
        principal = engine.tokens.authenticate(created["token"])
        assert principal.scopes == {Scope(s) for s in READERS}
    assert len({success(a, 201)["id"] for a in answers}) == 3


async def test_a_scope_the_caller_lacks_is_forbidden(
    engine: Engine, app: Starlette, make_client: MakeClient
) -> None:
    """Asking for a scope the calling token lacks answers 403 FORBIDDEN and creates nothing."""
    caller = make_client(app, engine.tokens.create_token("usr_reader", READERS))
    body = {"scopes": ["workflows:read", "workflows:write", "webhooks:admin"]}
    details = error(await caller.post("/api/v1/tokens", json=body), 403, "FORBIDDEN")
    assert details["missing_scopes"] == ["webhooks:admin", "workflows:write"]
    assert details["field"] == "scopes"
    assert len(engine.tokens.list_tokens("usr_reader")) == 1
    subset = success(await caller.post("/api/v1/tokens", json={"scopes": ["executions:read"]}), 201)
    assert subset["scopes"] == ["executions:read"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": ["workflows:admin"]}, "scopes[0]"),
        ({"scopes": ["workflows:read", "everything"]}, "scopes[1]"),
        ({"scopes": []}, "scopes"),
        ({"scopes": "workflows:read"}, "scopes"),
        ({"scopes": [7]}, "scopes[0]"),
        ({"name": 5}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ci", "user_id": "usr_other"}, "user_id"),
        (["workflows:read"], "(body)"),
        ("ci", "(body)"),
    ],
)
async def test_invalid_bodies_name_the_field(
    engine: Engine, client: httpx.AsyncClient, body: Any, field: str
) -> None:
    """Unknown scopes, an empty scope list and wrong types answer 400 naming the field."""
    details = error(await client.post("/api/v1/tokens", json=body), 400, "INVALID_REQUEST")
    assert details["field"] == field
    if field.startswith("scopes"):
        assert "workflows:read" in details["allowed"]
    assert len(engine.tokens.list_tokens()) == 1  # only the fixture's


async def test_list_shows_only_own_tokens_and_never_secrets(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """Another user's tokens are not listed, and no token or hash appears in any answer."""
    others = [engine.tokens.create_token("usr_other", name="theirs") for _ in range(2)]
    created = success(await client.post("/api/v1/tokens", json={"name": "mine"}), 201)
    answer = await client.get("/api/v1/tokens", params={"page_size": "100"})
    listed = success(answer)
    assert [item["id"] for item in listed["items"]] == [created["id"], _token_id(engine, token)]
    assert listed["pagination"]["total_items"] == 2
    for item in listed["items"]:
        assert set(item) == TOKEN_FIELDS
        assert item["user_id"] == "usr_test"
    for secret in (token, created["token"], *others):
        assert secret not in answer.text
        assert hash_token(secret) not in answer.text
        assert secret.removeprefix("abi_") not in answer.text
    for other in others:
        assert _token_id(engine, other) not in answer.text


async def test_revoking_an_own_token_stops_it_at_once(
    engine: Engine, token: str, app: Starlette, client: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """DELETE answers {id, revoked}; the next request with that token gets 401; others still work."""
    created = success(await client.post("/api/v1/tokens", json={"name": "ci"}), 201)
    doomed = make_client(app, created["token"])
    assert success(await doomed.get("/api/v1/workflows"))["items"] == []  # checked, now cached
    revoked = success(await client.delete(f"/api/v1/tokens/{created['id']}"))
    assert revoked == {"id": created["id"], "revoked": True, "revoked_descendants": 0}
    error(await doomed.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    error(await doomed.get("/api/v1/tokens"), 401, "UNAUTHORIZED")
    listed = success(await client.get("/api/v1/tokens"))
    assert [item["id"] for item in listed["items"]] == [_token_id(engine, token)]
    error(await client.delete(f"/api/v1/tokens/{created['id']}"), 404, "NOT_FOUND")


async def test_revoking_the_calling_token_is_allowed(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """A token may revoke itself: the answer is 200, and its very next request is 401."""
    own_id = _token_id(engine, token)
    assert success(await client.get("/api/v1/tokens"))["items"][0]["id"] == own_id  # cached
    assert success(await client.delete(f"/api/v1/tokens/{own_id}")) == {
        "id": own_id,
        "revoked": True,
        "revoked_descendants": 0,
    }
    error(await client.get("/api/v1/tokens"), 401, "UNAUTHORIZED")
    assert engine.tokens.list_tokens("usr_test") == []


async def test_revoking_a_parent_revokes_the_tokens_minted_from_it(
    engine: Engine, token: str, app: Starlette, client: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """Minted tokens show their parent_id; DELETE of a parent makes its descendants 401 and counts them."""
    own_id = _token_id(engine, token)
    child = success(await client.post("/api/v1/tokens", json={"name": "child"}), 201)
    sibling = success(await client.post("/api/v1/tokens", json={"name": "sibling"}), 201)
    assert (child["parent_id"], sibling["parent_id"]) == (own_id, own_id)
    as_child = make_client(app, child["token"])
    grandchild = success(await as_child.post("/api/v1/tokens"), 201)
    assert grandchild["parent_id"] == child["id"]
    as_grandchild = make_client(app, grandchild["token"])
    as_sibling = make_client(app, sibling["token"])
    listed = success(await client.get("/api/v1/tokens"))["items"]
    parents = {item["id"]: item["parent_id"] for item in listed}
    assert parents == {
        own_id: None,
        child["id"]: own_id,
        sibling["id"]: own_id,
        grandchild["id"]: child["id"],
    }
    for caller in (as_child, as_grandchild, as_sibling):
        assert success(await caller.get("/api/v1/workflows"))["items"] == []  # checked, cached

    revoked = success(await client.delete(f"/api/v1/tokens/{child['id']}"))
    assert revoked == {"id": child["id"], "revoked": True, "revoked_descendants": 1}
    for caller in (as_child, as_grandchild):
        error(await caller.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
    assert success(await as_sibling.get("/api/v1/workflows"))["items"] == []
    error(await client.delete(f"/api/v1/tokens/{grandchild['id']}"), 404, "NOT_FOUND")

    # The sibling was minted just before its parent's revocation: it goes with it.
    revoked = success(await client.delete(f"/api/v1/tokens/{own_id}"))
    assert revoked == {"id": own_id, "revoked": True, "revoked_descendants": 1}
    for caller in (client, as_sibling):
        error(await caller.get("/api/v1/tokens"), 401, "UNAUTHORIZED")
    assert engine.tokens.list_tokens("usr_test") == []


async def test_another_users_or_unknown_token_is_not_found(
    engine: Engine, app: Starlette, client: httpx.AsyncClient, make_client: MakeClient
) -> None:
    """Revoking another user's token, or an unknown id, answers 404 NOT_FOUND and revokes nothing."""
    theirs = engine.tokens.create_token("usr_other")
    their_id = _token_id(engine, theirs)
    for token_id in (their_id, "tok_00000000000000000000000000", "nonsense"):
        details = error(await client.delete(f"/api/v1/tokens/{token_id}"), 404, "NOT_FOUND")
        assert details == {"token_id": token_id}
    other = make_client(app, theirs)
    assert success(await other.get("/api/v1/tokens"))["items"][0]["id"] == their_id


async def test_pagination(engine: Engine, token: str, client: httpx.AsyncClient) -> None:
    """page and page_size page the caller's tokens newest first; bad values answer 400."""
    made = [
        success(await client.post("/api/v1/tokens", json={"name": f"t{n}"}), 201)["id"]
        for n in range(4)
    ]
    newest_first = [*reversed(made), _token_id(engine, token)]
    first = success(await client.get("/api/v1/tokens", params={"page_size": "2"}))
    assert first["pagination"] == {"page": 1, "page_size": 2, "total_items": 5, "total_pages": 3}
    assert [item["id"] for item in first["items"]] == newest_first[:2]
    last = success(await client.get("/api/v1/tokens", params={"page": "3", "page_size": "2"}))
    assert [item["id"] for item in last["items"]] == newest_first[4:]
    beyond = success(await client.get("/api/v1/tokens", params={"page": "4", "page_size": "2"}))
    assert beyond["items"] == []
    default = success(await client.get("/api/v1/tokens"))
    assert default["pagination"]["page_size"] == 10
    assert [item["id"] for item in default["items"]] == newest_first
    for params, field in (
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "101"}, "page_size"),
        ({"page": "0"}, "page"),
        ({"page": "x"}, "page"),
    ):
        response = await client.get("/api/v1/tokens", params=params)
        assert error(response, 400, "INVALID_REQUEST")["field"] == field


async def test_no_token_is_unauthorized(
    engine: Engine, token: str, app: Starlette, make_client: MakeClient
) -> None:
    """Every token operation answers 401 without a token, or with an unknown one."""
    own_id = _token_id(engine, token)
    for caller in (make_client(app), make_client(app, "abi_unknown")):
        for answer in (
            await caller.get("/api/v1/tokens"),
            await caller.post("/api/v1/tokens", json={"name": "x"}),
            await caller.delete(f"/api/v1/tokens/{own_id}"),
        ):
            error(answer, 401, "UNAUTHORIZED")
    assert engine.tokens.list_tokens("usr_test")[0].id == own_id


async def test_minting_past_the_per_user_cap_is_a_conflict(
    engine: Engine, token: str, client: httpx.AsyncClient
) -> None:
    """Past max_tokens_per_user live tokens POST answers 409 INVALID_STATE; revoking frees a place."""
    engine.tokens.max_tokens_per_user = 3
    minted = [success(await client.post("/api/v1/tokens", json={}), 201) for _ in range(2)]
    details = error(await client.post("/api/v1/tokens", json={}), 409, "INVALID_STATE")
    assert details == {"limit": "max_tokens_per_user", "max_tokens_per_user": 3}
    assert len(engine.tokens.list_tokens()) == 3  # the fixture's and the two minted
    success(await client.delete(f"/api/v1/tokens/{minted[0]['id']}"))
    success(await client.post("/api/v1/tokens", json={}), 201)
    error(await client.post("/api/v1/tokens", json={}), 409, "INVALID_STATE")


async def test_openapi_lists_the_token_operations(make_client: MakeClient, app: Starlette) -> None:
    """The OpenAPI document has GET and POST /tokens and DELETE /tokens/{token_id}, no secrets in lists."""
    document = (await make_client(app).get("/api/v1/openapi.json")).json()
    paths = document["paths"]
    assert paths["/api/v1/tokens"]["get"]["operationId"] == "list_tokens"
    assert paths["/api/v1/tokens"]["post"]["operationId"] == "create_token"
    assert paths["/api/v1/tokens/{token_id}"]["delete"]["operationId"] == "revoke_token"
    assert "201" in paths["/api/v1/tokens"]["post"]["responses"]
    assert (
        "NOT_FOUND"
        in paths["/api/v1/tokens/{token_id}"]["delete"]["responses"]["404"]["description"]
    )
    assert "INVALID_STATE" in paths["/api/v1/tokens"]["post"]["responses"]["409"]["description"]
    create = paths["/api/v1/tokens"]["post"]["requestBody"]
    assert create["required"] is False  # an empty or missing body means the caller's scopes
    assert paths["/api/v1/workflows"]["post"]["requestBody"]["required"] is True
    schemas = document["components"]["schemas"]
    assert "token" in schemas["CreatedToken"]["properties"]
    assert set(schemas["Token"]["properties"]) == TOKEN_FIELDS
    assert "null" in schemas["Token"]["properties"]["parent_id"]["type"]
    assert "parent_id" in schemas["Token"]["required"]
    revoke = schemas["RevokeResult"]
    assert set(revoke["properties"]) == {"id", "revoked", "revoked_descendants"}
    assert revoke["properties"]["revoked_descendants"]["type"] == "integer"
    assert set(schemas["TokenCreateRequest"]["properties"]) == {"name", "scopes"}
    scope_items = schemas["TokenCreateRequest"]["properties"]["scopes"]
    assert "workflows:read" in str(scope_items)


@pytest.mark.slow
def test_self_service_over_tcp(idle_engine: Engine, token: str) -> None:
    """Under uvicorn on 127.0.0.1: create a token, use it, let it revoke itself, then 401."""
    admin_headers = {"Authorization": f"Bearer {token}"}
    with (
        serving(create_app(idle_engine, rate_limit=None)) as base,
        httpx.Client(base_url=base, headers=admin_headers) as admin,
    ):
        created = success(admin.post("/api/v1/tokens", json={"scopes": ["workflows:read"]}), 201)
        own_headers = {"Authorization": f"Bearer {created['token']}"}
        with httpx.Client(base_url=base, headers=own_headers) as new:
            listed = success(new.get("/api/v1/tokens"))
            assert created["id"] in [item["id"] for item in listed["items"]]
            revoked = success(new.delete(f"/api/v1/tokens/{created['id']}"))
            assert revoked == {"id": created["id"], "revoked": True, "revoked_descendants": 0}
            error(new.get("/api/v1/workflows"), 401, "UNAUTHORIZED")
        assert success(admin.get("/api/v1/tokens"))["pagination"]["total_items"] == 1
