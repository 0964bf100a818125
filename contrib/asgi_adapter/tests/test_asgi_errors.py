"""Bad requests get the contract's error envelope and status, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from abi_asgi import MAX_JSON_DEPTH, create_app
from asgi_helpers import create_body, error, success
from starlette.applications import Starlette

from abi_engine import Engine

pytestmark = pytest.mark.anyio

JSON_HEADERS = {"Content-Type": "application/json"}


# -- authentication and scopes -----------------------------------------------------------


async def test_missing_token_is_unauthorized(
    app: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A request without Authorization answers 401 UNAUTHORIZED with WWW-Authenticate."""
    response = await make_client(app).get("/api/v1/workflows")
    error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer abi_not-a-real-token", "Bearer ", "Basic dXNyOnB3", "abi_token-without-scheme", ""],
)
async def test_bad_token_is_unauthorized(
    app: Starlette,
    token: str,
    make_client: Callable[..., httpx.AsyncClient],
    authorization: str,
) -> None:
    """An unknown token, an empty one or another scheme answers 401 UNAUTHORIZED."""
    client = make_client(app)
    response = await client.get("/api/v1/workflows", headers={"Authorization": authorization})
    error(response, 401, "UNAUTHORIZED")


async def test_bearer_scheme_is_case_insensitive(
    app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """'bearer <token>' is accepted like 'Bearer <token>'."""
    client = make_client(app)
    response = await client.get("/api/v1/workflows", headers={"Authorization": f"bearer {token}"})
    success(response)


async def test_token_without_scope_is_forbidden(
    app: Starlette, engine: Engine, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A read-only token may list but not create: 403 FORBIDDEN naming the scope."""
    reader = engine.tokens.create_token("usr_reader", scopes=["workflows:read"])
    client = make_client(app, reader)
    success(await client.get("/api/v1/workflows"))
    details = error(await client.post("/api/v1/workflows", json=create_body()), 403, "FORBIDDEN")
    assert details == {"required_scope": "workflows:write"}
    other = engine.tokens.create_token("usr_ops", scopes=["executions:read"])
    response = await make_client(app, other).get("/api/v1/workflows")
    assert error(response, 403, "FORBIDDEN") == {"required_scope": "workflows:read"}


async def test_authentication_comes_before_body_checks(
    app: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """Without a token even a malformed body answers 401, not 400."""
    response = await make_client(app).post(
        "/api/v1/workflows", content=b"{nope", headers=JSON_HEADERS
    )
    error(response, 401, "UNAUTHORIZED")


# -- routes and methods -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/api/v1", "/api/v1/nope", "/api/v2/workflows", "/api/v1/workflows/", "/favicon.ico"],
)
async def test_unknown_route_is_not_found(client: httpx.AsyncClient, path: str) -> None:
    """Unknown paths (a trailing slash too: no redirect) answer 404 NOT_FOUND."""
    details = error(await client.get(path), 404, "NOT_FOUND")
    assert details == {"path": path}


async def test_wrong_method_is_method_not_allowed(client: httpx.AsyncClient) -> None:
    """A known path with another method answers 405 with an Allow header."""
    response = await client.patch("/api/v1/workflows", json={})
    details = error(response, 405, "METHOD_NOT_ALLOWED")
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD", "POST"}
    assert details == {"method": "PATCH", "allowed": sorted(allowed)}
    response = await client.get("/api/v1/workflows/wf_x/activate")
    error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "POST"


async def test_head_answers_headers_without_body(client: httpx.AsyncClient) -> None:
    """HEAD on a GET route answers the GET's status and length, with no body."""
    get = await client.get("/api/v1/workflows")
    head = await client.head("/api/v1/workflows")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


# -- bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"name": "x",', "not valid JSON"),
        (b"{'name': 'x'}", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": Infinity}', "not valid JSON"),
        (b'{"a": 1e400}', "not valid JSON"),
        (b'{"name": "caf\xe9"}', "not valid UTF-8"),
        (b'\xef\xbb\xbf{"name": "x"}', "not valid JSON"),
        (b'{"name": "\\ud800"}', "invalid \\u escape"),
        (b'{"\\udfff": 1}', "invalid \\u escape"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nests deeper"),
        (b"[" * 100_000, "nests deeper"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
async def test_malformed_body_is_invalid_request(
    client: httpx.AsyncClient, raw: bytes, message: str
) -> None:
    """Bodies that are not strict UTF-8 JSON answer 400 INVALID_REQUEST on (body)."""
    response = await client.post("/api/v1/workflows", content=raw, headers=JSON_HEADERS)
    details = error(response, 400, "INVALID_REQUEST")
    assert details["field"] == "(body)"
    assert message in response.json()["error"]["message"]


async def test_malformed_json_reports_line_and_column(client: httpx.AsyncClient) -> None:
    """A JSON syntax error names where it is."""
    response = await client.post(
        "/api/v1/workflows", content=b'{\n  "name": }', headers=JSON_HEADERS
    )
    details = error(response, 400, "INVALID_REQUEST")
    assert (details["line"], details["column"]) == (2, 11)


async def test_nesting_up_to_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    """A body nested to just under the depth limit is parsed: what answers is the field's
    own limit (metadata nests at most 8 levels), not the body's."""
    nested: object = 1
    for _ in range(MAX_JSON_DEPTH - 2):
        nested = [nested]
    response = await client.post("/api/v1/workflows", json=create_body(metadata={"n": nested}))
    details = error(response, 400, "INVALID_REQUEST")
    assert details["field"] == "metadata"
    assert "nested at most 8 levels" in response.json()["error"]["message"]
    shallow: object = 1
    for _ in range(6):
        shallow = [shallow]
    response = await client.post("/api/v1/workflows", json=create_body(metadata={"n": shallow}))
    assert success(response, 201)["metadata"] == {"n": shallow}


@pytest.mark.parametrize("body", [[], [1, 2], "text", 42, True, None])
async def test_non_object_body_is_invalid_request(client: httpx.AsyncClient, body: object) -> None:
    """A JSON body that is not an object answers 400 INVALID_REQUEST on (body)."""
    response = await client.post("/api/v1/workflows", content=json.dumps(body).encode())
    assert error(response, 400, "INVALID_REQUEST")["field"] == "(body)"


@pytest.mark.parametrize("raw", [b"", b"   \n"])
async def test_empty_body_is_a_missing_body(client: httpx.AsyncClient, raw: bytes) -> None:
    """An empty body on create or update is a missing body: the handler's 400 INVALID_REQUEST."""
    response = await client.post("/api/v1/workflows", content=raw, headers=JSON_HEADERS)
    assert error(response, 400, "INVALID_REQUEST")["field"] == "(body)"
    wf = success(await client.post("/api/v1/workflows", json=create_body()), 201)
    response = await client.put(f"/api/v1/workflows/{wf['id']}", content=raw)
    assert error(response, 400, "INVALID_REQUEST")["field"] == "(body)"


async def test_body_is_optional_where_the_operation_takes_none(client: httpx.AsyncClient) -> None:
    """activate accepts an empty body or {} alike."""
    wf = success(await client.post("/api/v1/workflows", json=create_body()), 201)
    success(await client.post(f"/api/v1/workflows/{wf['id']}/activate", content=b""))
    success(await client.post(f"/api/v1/workflows/{wf['id']}/deactivate", json={}))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": 123}, "name"),
        ({"name": None}, "name"),
        ({"description": ["x"]}, "description"),
        ({"configuration": "steps"}, "configuration"),
        ({"metadata": [1]}, "metadata"),
        ({"integrations": 5}, "integrations"),
        ({"integrations": [{"id": "int_x", "required": "yes"}]}, "integrations[0].required"),
        ({"integrations": [{"id": 5}]}, "integrations[0].id"),
        ({"integrations": [{"id": "zendesk"}]}, "integrations[0].id"),
    ],
)
async def test_wrong_field_type_names_the_field(
    client: httpx.AsyncClient, overrides: dict[str, object], field: str
) -> None:
    """A field of the wrong type answers 400 INVALID_REQUEST whose details.field names it."""
    response = await client.post("/api/v1/workflows", json=create_body(**overrides))
    assert error(response, 400, "INVALID_REQUEST")["field"] == field


async def test_missing_required_field_names_it(client: httpx.AsyncClient) -> None:
    """A body without 'name' answers 400 INVALID_REQUEST naming it."""
    body = create_body()
    del body["name"]
    response = await client.post("/api/v1/workflows", json=body)
    assert error(response, 400, "INVALID_REQUEST")["field"] == "name"


async def test_unknown_fields_are_refused(client: httpx.AsyncClient) -> None:
    """Unknown fields answer 400 INVALID_REQUEST naming them, on create and on update."""
    response = await client.post("/api/v1/workflows", json=create_body(colour="blue"))
    assert error(response, 400, "INVALID_REQUEST")["field"] == "colour"
    wf = success(await client.post("/api/v1/workflows", json=create_body()), 201)
    response = await client.put(f"/api/v1/workflows/{wf['id']}", json={"status": "active"})
    assert error(response, 400, "INVALID_REQUEST")["field"] == "status"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_content_type_is_invalid_request(
    client: httpx.AsyncClient, content_type: str
) -> None:
    """A body sent as another media type answers 400 INVALID_REQUEST naming content-type."""
    response = await client.post(
        "/api/v1/workflows",
        content=json.dumps(create_body()).encode(),
        headers={"Content-Type": content_type},
    )
    details = error(response, 400, "INVALID_REQUEST")
    assert details == {"field": "content-type", "content_type": content_type}


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge-patch+json", None]
)
async def test_json_content_types_are_accepted(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    """application/json with parameters, +json types, or no Content-Type are read as JSON."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(
        "/api/v1/workflows", content=json.dumps(create_body()).encode(), headers=headers
    )
    success(response, 201)


# -- size limit ---------------------------------------------------------------------------------


@pytest.fixture
def small_app(engine: Engine) -> Starlette:
    """The adapter with a 1000-byte body limit."""
    return create_app(engine, rate_limit=None, max_body_bytes=1000)


def _padded(size: int) -> bytes:
    body = json.dumps(create_body(description="")).encode()
    padding = size - len(body)
    assert padding >= 0
    return json.dumps(create_body(description="x" * padding)).encode()


async def test_body_over_the_limit_is_payload_too_large(
    small_app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A body one byte over max_body_bytes answers 413; one at the limit is accepted."""
    client = make_client(small_app, token)
    at_limit = _padded(1000)
    assert len(at_limit) == 1000
    success(await client.post("/api/v1/workflows", content=at_limit), 201)
    response = await client.post("/api/v1/workflows", content=_padded(1001))
    assert error(response, 413, "PAYLOAD_TOO_LARGE") == {"max_body_bytes": 1000}


async def test_declared_length_over_the_limit_is_refused_unread(
    small_app: Starlette, token: str
) -> None:
    """A Content-Length over the limit answers 413 without reading a byte of the body."""
    sent: list[bytes] = []

    async def receive() -> dict[str, object]:
        sent.append(b"read")
        return {"type": "http.request", "body": b"{}", "more_body": False}

    messages: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/workflows",
        "raw_path": b"/api/v1/workflows",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-length", b"5000000"),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await small_app(scope, receive, send)
    assert sent == []
    assert messages[0]["status"] == 413
    body = json.loads(messages[1]["body"])  # type: ignore[arg-type]
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_streamed_body_over_the_limit_stops_early(
    small_app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """A chunked body without Content-Length is cut off at the limit with 413."""
    produced: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):
            produced.append(1)
            yield b" " * 100

    client = make_client(small_app, token)
    response = await client.post("/api/v1/workflows", content=chunks())
    error(response, 413, "PAYLOAD_TOO_LARGE")
    assert "content-length" not in response.request.headers
    assert len(produced) < 1000


async def test_invalid_content_length_is_invalid_request(
    client: httpx.AsyncClient,
) -> None:
    """A non-numeric Content-Length answers 400 INVALID_REQUEST."""

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[dict[str, object]] = []
    app = client._transport.app  # type: ignore[attr-defined]
    token = client.headers["authorization"].encode()
    for value in (b"12x", b"\xb2", b"-1"):
        sent.clear()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/api/v1/workflows",
            "raw_path": b"/api/v1/workflows",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", token), (b"content-length", value)],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 400, value
        assert json.loads(sent[1]["body"])["error"]["details"]["field"] == "content-length"  # type: ignore[arg-type]


async def test_get_ignores_any_body(client: httpx.AsyncClient) -> None:
    """A body on a GET is not read, so it cannot fail the request."""
    response = await client.request("GET", "/api/v1/workflows", content=b"{not json")
    success(response)
