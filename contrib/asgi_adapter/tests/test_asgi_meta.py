"""Health, the OpenAPI document, the lifespan, and operations added to the table."""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

import attrs
import httpx
import pytest
from abi_asgi import build_openapi, create_app
from abi_asgi._logsafe import MAX_LOGGED, loggable
from abi_asgi.openapi import SchemaBuilder
from asgi_helpers import create_body, error, success
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette

from abi_engine import Engine
from abi_engine.api import OPERATIONS, ApiRequest, Operation, QueryParam
from abi_engine.auth import Principal
from abi_engine.errors import error_for_code
from abi_engine.models import Scope

# -- health ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_health_needs_no_token(
    app: Starlette, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """GET /health answers ok, the database and the engine state without a token (no version)."""
    data = success(await make_client(app).get("/api/v1/health"))
    assert data == {"status": "ok", "database": "ok", "engine": "running"}


@pytest.mark.anyio
async def test_health_reports_a_dead_database(
    tmp_path: Any, make_client: Callable[..., httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    """With the database file destroyed, /health answers 503 SERVICE_UNAVAILABLE and logs why."""
    path = tmp_path / "dead.db"
    engine = Engine(path)
    app = create_app(engine)
    engine.close()
    for leftover in tmp_path.glob("dead.db-*"):
        leftover.unlink()
    path.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.ERROR, logger="abi_asgi"):
        response = await make_client(app).get("/api/v1/health")
    details = error(response, 503, "SERVICE_UNAVAILABLE")
    assert details["database"] == "error"
    assert "database does not answer" in caplog.text


# -- OpenAPI --------------------------------------------------------------------------------


@pytest.fixture
async def document(app: Starlette, make_client: Callable[..., httpx.AsyncClient]) -> Any:
    """The served OpenAPI document."""
    response = await make_client(app).get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response.json()


@pytest.mark.anyio
async def test_openapi_document_is_valid_openapi_3_1(document: Any) -> None:
    """The document passes openapi-spec-validator as OpenAPI 3.1."""
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == "v1"  # the API's version, not the package's
    validate(document)


@pytest.mark.anyio
async def test_openapi_describes_every_operation(document: Any) -> None:
    """Every operation of OPERATIONS appears with its method, id, parameters, body and errors."""
    assert OPERATIONS
    seen = set()
    for op in OPERATIONS.values():
        item = document["paths"]["/api/v1" + op.path][op.method.lower()]
        seen.add(op.name)
        assert item["operationId"] == op.name
        assert item["summary"] == op.summary
        assert item["tags"] == [op.tag]
        assert item["security"] == ([] if op.public else [{"bearerAuth": []}])
        params = {(p["in"], p["name"]) for p in item["parameters"]}
        assert {("query", q.name) for q in op.query} <= params
        path_params = {name for where, name in params if where == "path"}
        assert path_params == {s[1:-1] for s in op.path.split("/") if s.startswith("{")}
        assert ("requestBody" in item) == (op.request_model is not None or op.public)
        responses = item["responses"]
        if op.raw_media_type:  # sent as it is (the metrics' text), no envelope
            media = op.raw_media_type.split(";")[0]
            assert responses[str(op.status_code)]["content"] == {
                media: {"schema": {"type": "string"}}
            }
        else:
            success = responses[str(op.status_code)]["content"]["application/json"]["schema"]
            assert success["properties"]["status"] == {"const": "success"}
            if op.paginated:
                assert set(success["properties"]["data"]["properties"]) == {"items", "pagination"}
        for code in (*op.errors, "INVALID_REQUEST", "UNAUTHORIZED", "FORBIDDEN"):
            status = str(error_for_code(code, "").http_status)
            assert code in responses[status]["description"], (op.name, code)
        assert "Retry-After" in responses["429"]["headers"]
    assert seen == set(OPERATIONS)
    operation_ids = [
        item["operationId"] for path in document["paths"].values() for item in path.values()
    ]
    assert len(operation_ids) == len(set(operation_ids)) == len(OPERATIONS) + 2
    for meta in ("/api/v1/health", "/api/v1/openapi.json"):
        assert document["paths"][meta]["get"]["security"] == []


def _validator(document: Any, pointer: str) -> Draft202012Validator:
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:abi", resource)
    return Draft202012Validator({"$ref": f"urn:abi#{pointer}"}, registry=registry)


def _response_pointer(path: str, method: str, status: int) -> str:
    escaped = path.replace("~", "~0").replace("/", "~1")
    return f"/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema"


@pytest.mark.anyio
async def test_real_responses_match_the_documented_schemas(
    client: httpx.AsyncClient, document: Any
) -> None:
    """Actual answers (success and errors) validate against the document's schemas."""
    checks: list[tuple[str, str, int, httpx.Response]] = []
    created = await client.post("/api/v1/workflows", json=create_body())
    wf = created.json()["data"]["id"]
    checks.append(("/api/v1/workflows", "post", 201, created))
    checks.append(("/api/v1/workflows", "get", 200, await client.get("/api/v1/workflows")))
    one = "/api/v1/workflows/{workflow_id}"
    checks.append((one, "get", 200, await client.get(f"/api/v1/workflows/{wf}")))
    activate = "/api/v1/workflows/{workflow_id}/activate"
    checks.append((activate, "post", 200, await client.post(f"/api/v1/workflows/{wf}/activate")))
    checks.append((activate, "post", 409, await client.post(f"/api/v1/workflows/{wf}/activate")))
    checks.append((one, "get", 404, await client.get("/api/v1/workflows/wf_missing")))
    bad = await client.post("/api/v1/workflows", json=create_body(name=1))
    checks.append(("/api/v1/workflows", "post", 400, bad))
    put = await client.put(
        "/api/v1/integrations/int_zendesk",
        json={"provider": "http", "config": {"base_url": "https://example.com"}},
    )
    checks.append(("/api/v1/integrations/{integration_id}", "put", 200, put))
    checks.append(("/api/v1/integrations", "get", 200, await client.get("/api/v1/integrations")))
    checks.append((one, "delete", 200, await client.delete(f"/api/v1/workflows/{wf}")))
    for path, method, status, response in checks:
        assert response.status_code == status, response.text
        _validator(document, _response_pointer(path, method, status)).validate(response.json())


@pytest.mark.anyio
async def test_documented_request_schema_refuses_unknown_fields(document: Any) -> None:
    """The create body schema requires name and type and refuses unknown fields, like the API."""
    pointer = "/paths/~1api~1v1~1workflows/post/requestBody/content/application~1json/schema"
    validator = _validator(document, pointer)
    validator.validate(create_body())
    assert not validator.is_valid(create_body(colour="blue"))
    assert not validator.is_valid({"name": "x"})


@pytest.mark.anyio
async def test_openapi_is_built_once_per_prefix(
    app: Starlette, make_client: Callable[..., httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The document is generated on first request and cached afterwards."""
    import abi_asgi._app

    calls: list[str | None] = []
    real = abi_asgi._app.build_openapi

    def counting(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs.get("server_url"))
        return real(**kwargs)

    monkeypatch.setattr(abi_asgi._app, "build_openapi", counting)
    fresh = create_app(app.state.engine)
    client = make_client(fresh)
    first = (await client.get("/api/v1/openapi.json")).content
    second = (await client.get("/api/v1/openapi.json")).content
    assert first == second
    assert calls == [None]


# -- the schema generator -----------------------------------------------------------------------

T = TypeVar("T")


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.define(kw_only=True)
class Leaf:
    """A nested class."""

    when: datetime
    tags: frozenset[str] = frozenset()


@attrs.define(kw_only=True)
class Sample:
    """A class exercising every supported type."""

    text: str
    count: int = 3
    ratio: float | None = None
    flag: bool = False
    colour: Colour = Colour.RED
    mode: Literal["a", "b"] = "a"
    leaves: list[Leaf] = attrs.Factory(list)
    extra: dict[str, Any] = attrs.Factory(dict)
    scores: dict[str, int] = attrs.Factory(dict)
    parent: Leaf | None = None
    either: int | str = 0
    pair: tuple[int, str] = (0, "")
    hidden: int = attrs.field(default=0, init=False)


@attrs.define(kw_only=True)
class Box(Generic[T]):
    """A generic wrapper."""

    items: list[T]


def test_schema_builder_maps_python_types() -> None:
    """Types map to JSON Schema: primitives, date-time, enums, lists, dicts, unions, refs."""
    builder = SchemaBuilder()
    assert builder.schema(Sample) == {"$ref": "#/components/schemas/Sample"}
    sample = builder.components["Sample"]
    props = sample["properties"]
    assert sample["required"] == [f.name for f in attrs.fields(Sample)]  # responses: all present
    assert props["text"] == {"type": "string"}
    assert props["count"] == {"type": "integer"}
    assert props["ratio"] == {"type": ["number", "null"]}
    assert props["flag"] == {"type": "boolean"}
    assert props["colour"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["mode"] == {"type": "string", "enum": ["a", "b"]}
    assert props["leaves"] == {"type": "array", "items": {"$ref": "#/components/schemas/Leaf"}}
    assert props["extra"] == {"type": "object"}
    assert props["scores"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["parent"] == {"anyOf": [{"$ref": "#/components/schemas/Leaf"}, {"type": "null"}]}
    assert props["either"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    leaf = builder.components["Leaf"]
    assert leaf["properties"]["when"] == {"type": "string", "format": "date-time"}
    assert leaf["properties"]["tags"] == {
        "type": "array",
        "items": {"type": "string"},
        "uniqueItems": True,
    }
    assert leaf["description"] == "A nested class."


def test_schema_builder_request_mode() -> None:
    """Request schemas require only fields without defaults, show defaults, refuse extras."""
    builder = SchemaBuilder()
    ref = builder.schema(Sample, "request")
    assert ref == {"$ref": "#/components/schemas/Sample"}
    builder.schema(Sample)  # the response form gets a name of its own
    request, response = builder.components["Sample"], builder.components["Sample2"]
    assert request["required"] == ["text"]
    assert request["additionalProperties"] is False
    assert "hidden" not in request["properties"]
    assert request["properties"]["count"]["default"] == 3
    assert request["properties"]["colour"]["default"] == "red"
    assert "hidden" in response["properties"]


def test_schema_builder_generic_classes() -> None:
    """A generic attrs class gets one component per type argument."""
    builder = SchemaBuilder()
    assert builder.schema(Box[Leaf]) == {"$ref": "#/components/schemas/BoxLeaf"}
    assert builder.schema(Box[int]) == {"$ref": "#/components/schemas/BoxInt"}
    assert builder.components["BoxLeaf"]["properties"]["items"]["items"] == {
        "$ref": "#/components/schemas/Leaf"
    }
    assert builder.components["BoxInt"]["properties"]["items"]["items"] == {"type": "integer"}


def test_build_openapi_names_the_mount_prefix_as_server() -> None:
    """server_url becomes the document's servers entry."""
    document = build_openapi(server_url="/abi")
    assert document["servers"] == [{"url": "/abi"}]
    assert "servers" not in build_openapi()


# -- operations added to the table ----------------------------------------------------------------


@attrs.define(kw_only=True)
class EchoBody:
    """The body of the test-only echo operation."""

    word: str
    times: int = 1


async def _echo(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = request.body
    return {
        "echo": [body["word"]] * body["times"],
        "thing": request.path["thing_id"],
        "query": dict(request.query),
        "user": actor.user_id,
        "header": request.headers.get("x-test"),
    }


async def _explode(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    raise RuntimeError("secret internals: /etc/passwd")


@pytest.fixture
def extra_operations() -> Iterator[None]:
    """Two operations registered in OPERATIONS for one test, like a future feature would."""
    added = {
        "echo_thing": Operation(
            name="echo_thing",
            method="POST",
            path="/things/{thing_id}/echo",
            scope=Scope.WORKFLOWS_READ,
            summary="Echo a word",
            handler=_echo,
            status_code=202,
            request_model=EchoBody,
            query=(
                QueryParam(name="x", schema={"type": "array", "items": {"type": "string"}}),
                QueryParam(name="y", schema={"type": "string"}),
            ),
            tag="things",
        ),
        "explode": Operation(
            name="explode",
            method="GET",
            path="/things/{thing_id}/explode",
            scope=None,
            summary="Fail unexpectedly",
            handler=_explode,
            tag="things",
        ),
    }
    OPERATIONS.update(added)
    try:
        yield
    finally:
        for name in added:
            OPERATIONS.pop(name, None)


@pytest.mark.anyio
@pytest.mark.usefixtures("extra_operations")
async def test_new_operations_are_routed_and_documented(
    engine: Engine, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> None:
    """An operation added to OPERATIONS gets a route and an OpenAPI entry with no adapter change."""
    client = make_client(create_app(engine, rate_limit=None), token)
    response = await client.post(
        "/api/v1/things/t1/echo?x=1&x=2&y=",
        json={"word": "hi", "times": 2},
        headers={"X-Test": "yes"},
    )
    data = success(response, 202)
    assert data == {
        "echo": ["hi", "hi"],
        "thing": "t1",
        "query": {"x": ["1", "2"], "y": ""},
        "user": "usr_test",
        "header": "yes",
    }
    document = (await client.get("/api/v1/openapi.json")).json()
    validate(document)
    item = document["paths"]["/api/v1/things/{thing_id}/echo"]["post"]
    assert item["operationId"] == "echo_thing"
    assert "202" in item["responses"]
    body_schema = item["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/EchoBody"}
    assert document["components"]["schemas"]["EchoBody"]["required"] == ["word"]


@pytest.mark.anyio
@pytest.mark.usefixtures("extra_operations")
async def test_unexpected_exception_is_a_logged_generic_500(
    engine: Engine,
    token: str,
    make_client: Callable[..., httpx.AsyncClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler's unexpected exception answers 500 INTERNAL_ERROR, logged, without internals."""
    client = make_client(create_app(engine, rate_limit=None), token)
    with caplog.at_level(logging.ERROR, logger="abi_asgi"):
        response = await client.get("/api/v1/things/one/explode")
    details = error(response, 500, "INTERNAL_ERROR")
    assert details == {}
    assert "passwd" not in response.text
    assert "RuntimeError" not in response.text
    assert "secret internals" in caplog.text  # the log keeps what the answer hides
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="abi_asgi"):
        forged = await client.get("/api/v1/things/x%0AERROR%20forged%20line/explode")
    error(forged, 500, "INTERNAL_ERROR")
    (record,) = [r for r in caplog.records if r.name.startswith("abi_asgi")]
    message = record.getMessage()
    assert "\n" not in message  # the decoded line break cannot start a forged log line
    assert "x\\nERROR forged line" in message


def test_two_operations_on_one_method_and_path_are_refused(idle_engine: Engine) -> None:
    """create_app refuses a table binding one method and path twice."""
    first = OPERATIONS["get_workflow"]
    clash = attrs.evolve(first, name="get_workflow_again")
    OPERATIONS["get_workflow_again"] = clash
    try:
        with pytest.raises(ValueError, match="both bind GET"):
            create_app(idle_engine)
    finally:
        OPERATIONS.pop("get_workflow_again")


@pytest.mark.parametrize("bad", [-1, True, 1.5])
def test_max_body_bytes_is_checked(idle_engine: Engine, bad: Any) -> None:
    """create_app refuses a negative or non-integer max_body_bytes."""
    with pytest.raises((TypeError, ValueError)):
        create_app(idle_engine, max_body_bytes=bad)


# -- lifespan -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lifespan_starts_and_stops_an_idle_engine(idle_engine: Engine) -> None:
    """The app's lifespan enters the engine on startup and leaves it on shutdown."""
    app = create_app(idle_engine)
    assert not idle_engine.running
    async with app.router.lifespan_context(app):
        assert idle_engine.running
    assert not idle_engine.running


@pytest.mark.anyio
async def test_lifespan_leaves_a_running_engine_alone(engine: Engine) -> None:
    """When the host already runs the engine, the lifespan neither re-enters nor stops it."""
    app = create_app(engine)
    async with app.router.lifespan_context(app):
        assert engine.running
    assert engine.running


@pytest.mark.anyio
async def test_lifespan_without_manage_engine(idle_engine: Engine) -> None:
    """manage_engine=False never starts the engine."""
    app = create_app(idle_engine, manage_engine=False)
    async with app.router.lifespan_context(app):
        assert not idle_engine.running


@given(st.text(max_size=400))
def test_loggable_text_is_one_bounded_printable_line(text: str) -> None:
    """Whatever a request carries, what is logged of it is printable (no line break or
    control character), bounded, and unchanged when it was printable and short."""
    logged = loggable(text)
    assert logged.isprintable()
    assert len(logged) <= MAX_LOGGED + 3
    if text.isprintable() and len(text) <= MAX_LOGGED:
        assert logged == text
