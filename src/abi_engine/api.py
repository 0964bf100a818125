"""The operations of the REST API, independent of HTTP.

Each :class:`Operation` names its method, path (under ``/api/v1``), scope,
request and response shapes, and a handler taking JSON in and giving JSON out.
The ASGI adapter binds them to routes, the in-process Python API calls
:func:`call` directly, and the remote Python API speaks the same method and
path over HTTP, so all three behave the same.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import attrs

from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import InvalidRequest, InvalidState, NotFound
from abi_engine.execution_views import execution_json
from abi_engine.executions import MAX_TIMEOUT_SECONDS
from abi_engine.limits import IDEMPOTENCY_KEY, URL, Json, Number, Text
from abi_engine.models import (
    ActivationResult,
    DeleteResult,
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    Integration,
    Pagination,
    Scope,
    Workflow,
    WorkflowSummary,
)
from abi_engine.services import MAX_PAGE, MAX_PAGE_SIZE
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import OwnedKind
from abi_engine.workflows import INTEGRATION_ID, WorkflowRequest

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = [
    "OPERATIONS",
    "Accepted",
    "ApiRequest",
    "Operation",
    "QueryParam",
    "bounded_page",
    "call",
    "call_with_status",
    "check_quota",
    "operation",
]


@attrs.frozen(kw_only=True)
class ApiRequest:
    """One call: path parameters, query parameters (strings), JSON body, headers."""

    path: Mapping[str, str] = attrs.Factory(dict)
    query: Mapping[str, Any] = attrs.Factory(dict)
    body: Any = None
    headers: Mapping[str, str] = attrs.Factory(dict)


Handler = Callable[["Engine", Principal, ApiRequest], Awaitable[Any]]


class Accepted:
    """A handler's answer that is not final: sent with status 202 instead of the usual one."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


@attrs.frozen(kw_only=True)
class QueryParam:
    """A documented query parameter (for OpenAPI)."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""


@attrs.frozen(kw_only=True)
class Operation:
    """One REST operation.

    ``request_model`` and ``response_model`` are the attrs classes (or
    ``list[...]``/``Page`` wrappers) the OpenAPI document describes;
    ``paginated`` marks list answers (``{"items", "pagination"}``);
    ``request_body_required=False`` documents a ``request_model`` body that may
    be left out (the handler then gets ``body=None``).
    """

    name: str
    method: str
    path: str
    scope: Scope | None
    summary: str
    handler: Handler
    status_code: int = 200
    request_model: Any = None
    request_body_required: bool = True
    response_model: Any = None
    paginated: bool = False
    query: tuple[QueryParam, ...] = ()
    tag: str = "workflows"
    errors: tuple[str, ...] = ()
    #: Request headers the operation reads (documented as header parameters).
    headers: tuple[QueryParam, ...] = ()
    #: JSON Schemas of path parameters that are more than any string, by name.
    path_schemas: Mapping[str, Mapping[str, Any]] = attrs.Factory(dict)
    #: When set, the operation may also answer 202 (its handler returns ``Accepted``).
    accepted_description: str | None = None


OPERATIONS: dict[str, Operation] = {}


def operation(**kwargs: Any) -> Callable[[Handler], Handler]:
    """Declare ``handler`` as an operation (see :class:`Operation`)."""

    def register(handler: Handler) -> Handler:
        name = handler.__name__
        OPERATIONS[name] = Operation(name=name, handler=handler, **kwargs)
        return handler

    return register


def get_operation(name: str) -> Operation:
    try:
        return OPERATIONS[name]
    except KeyError:
        raise NotFound(name, f"Unknown operation {name!r}") from None


async def call(engine: Engine, actor: Principal, name: str, request: ApiRequest) -> Any:
    """Run operation ``name`` for ``actor``: check its scope, return its JSON data."""
    return (await call_with_status(engine, actor, name, request))[1]


async def call_with_status(
    engine: Engine, actor: Principal, name: str, request: ApiRequest
) -> tuple[int, Any]:
    """Like :func:`call`, with the HTTP status the answer deserves."""
    op = get_operation(name)
    if op.scope is not None:
        actor.require(op.scope)
    request = _checked_query(op, request)
    data = await op.handler(engine, actor, request)
    if isinstance(data, Accepted):
        return 202, data.data
    return op.status_code, data


# As the adapter sends JSON (compact, ASCII): what a page's bytes are measured in.
_measure = json.JSONEncoder(separators=(",", ":"), default=str).encode


def bounded_page(items: list[Any], pagination: Pagination, max_bytes: int) -> dict[str, Any]:
    """The answer of a list: ``items`` (JSON-able) and their ``pagination``, at most
    ``max_bytes`` of items' JSON.

    A page whose items would be larger is answered with a smaller page size:
    the largest divisor of the requested ``page_size`` whose first items fit
    (one item at least). Because it divides the requested size, the page's
    first item is the first of a page of that size too, and the answer's
    ``pagination`` says which (``page``, ``page_size``, ``total_pages``): a
    client that asks next for ``page + 1`` at the answer's ``page_size`` gets
    the items that follow, without gaps or repeats.
    """
    data = {"items": items, "pagination": unstructure(pagination)}
    if len(items) <= 1 or len(_measure(items)) <= max_bytes:
        return data
    sizes = [len(_measure(item)) + 1 for item in items]  # and its comma
    size = pagination.page_size
    fits = next(
        d
        for d in range(min(size, len(items)), 0, -1)
        if size % d == 0 and (d == 1 or sum(sizes[:d]) + 1 <= max_bytes)
    )
    offset = (pagination.page - 1) * size
    total = pagination.total_items
    data["items"] = items[:fits]
    data["pagination"] = unstructure(
        Pagination(
            page=offset // fits + 1,
            page_size=fits,
            total_items=total,
            total_pages=(total + fits - 1) // fits,
        )
    )
    return data


def _page(result: Any, engine: Engine) -> dict[str, Any]:
    return bounded_page(unstructure(result.items), result.pagination, engine.limits.max_page_bytes)


async def check_quota(
    engine: Engine, actor: Principal, kind: OwnedKind, limit_name: str, advice: str
) -> None:
    """Raise 409 ``INVALID_STATE`` when ``actor``'s user already holds as many ``kind``
    rows as ``engine.limits.<limit_name>`` allows (``None``: no limit)."""
    limit = getattr(engine.limits, limit_name)
    if limit is None:
        return
    held = await call_store(engine.store, engine.store.count_owned, kind, actor.user_id, limit)
    if held >= limit:
        what = kind.replace("_", " ")
        raise InvalidState(
            f"The user already holds {limit} {what}, the most allowed ({limit_name}); {advice}",
            {"limit": limit_name, limit_name: limit},
        )


def _checked_query(op: Operation, request: ApiRequest) -> ApiRequest:
    """``request`` with its query checked against the operation's parameters.

    An unknown parameter is ``INVALID_REQUEST`` naming it (as an unknown body
    field is). A parameter given several times (a list of values) is refused
    unless its schema is an array; array parameters arrive as a list of
    strings, whether repeated (``status=a&status=b``) or comma-separated
    (``status=a,b``), each of them one of the items' ``enum`` (no empty value,
    no spaces).
    """
    if not request.query:
        return request
    declared = {q.name: q for q in op.query}
    unknown = sorted(set(request.query) - set(declared))
    if unknown:
        raise InvalidRequest(
            f"Unknown query parameter(s): {', '.join(unknown)}",
            {
                "field": unknown[0],
                "errors": [{"field": f, "message": "unknown query parameter"} for f in unknown],
                "allowed": sorted(declared),
            },
        )
    query: dict[str, Any] = {}
    for name, value in request.query.items():
        values = value if isinstance(value, list | tuple) else [value]
        if any("\x00" in str(item) for item in values):
            raise InvalidRequest(
                f"Query parameter '{name}': NUL characters (U+0000) are not allowed",
                {"field": name},
            )
        schema = declared[name].schema
        if schema.get("type") == "array":
            allowed = schema.get("items", {}).get("enum")
            parts = [part for item in values for part in str(item).split(",")]
            for part in parts:
                if not part or (allowed is not None and part not in allowed):
                    raise InvalidRequest(
                        f"Query parameter '{name}': {part!r} is not one of"
                        f" {', '.join(map(str, allowed or ()))}"
                        if part
                        else f"Query parameter '{name}' has an empty value",
                        {"field": name},
                    )
            query[name] = parts
        elif len(values) != 1:
            raise InvalidRequest(
                f"Query parameter '{name}' is given more than once", {"field": name}
            )
        else:
            query[name] = values[0]
    return attrs.evolve(request, query=query)


def _summary(workflow: Workflow) -> dict[str, Any]:
    return {
        "id": workflow.id,
        "name": workflow.name,
        "description": workflow.description,
        "type": workflow.type,
        "status": workflow.status.value,
        "metadata": workflow.metadata,
        "created_at": unstructure(workflow.created_at),
        "updated_at": unstructure(workflow.updated_at),
    }


def _body_object(request: ApiRequest) -> dict[str, Any]:
    if not isinstance(request.body, dict):
        raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
    return request.body


_PAGE_QUERY = (
    QueryParam(
        name="page",
        schema={"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
    ),
    QueryParam(
        name="page_size",
        schema={"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 10},
        description=(
            "Items per page; the answer's page_size may be smaller when the page would be"
            " larger than the engine's max_page_bytes (see Pagination)"
        ),
    ),
)

_WF_ERRORS = ("WORKFLOW_NOT_FOUND",)

# -- workflows -------------------------------------------------------------------------


@operation(
    method="POST",
    path="/workflows",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Create a workflow",
    status_code=201,
    request_model=WorkflowRequest,
    response_model=Workflow,
    errors=("INVALID_WORKFLOW_CONFIG", "INVALID_REQUEST"),
)
async def create_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    workflow = await engine.workflows.create(_body_object(request), actor=actor)
    return unstructure(workflow)


@operation(
    method="GET",
    path="/workflows",
    scope=Scope.WORKFLOWS_READ,
    summary="List workflows",
    response_model=WorkflowSummary,
    paginated=True,
    query=(
        *_PAGE_QUERY,
        QueryParam(
            name="sort_by",
            schema={"type": "string", "enum": ["created_at", "updated_at", "name"]},
        ),
        QueryParam(name="sort_order", schema={"type": "string", "enum": ["asc", "desc"]}),
        QueryParam(name="status", schema={"type": "string", "enum": ["active", "inactive"]}),
        QueryParam(name="type", schema={"type": "string"}),
        QueryParam(name="department", schema={"type": "string"}),
    ),
    errors=("INVALID_REQUEST",),
)
async def list_workflows(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    result = await engine.workflows.list(
        page=q.get("page", 1),
        page_size=q.get("page_size", 10),
        sort_by=q.get("sort_by", "created_at"),
        sort_order=q.get("sort_order", "desc"),
        status=q.get("status"),
        type=q.get("type"),
        department=q.get("department"),
    )
    return bounded_page(
        [_summary(w) for w in result.items], result.pagination, engine.limits.max_page_bytes
    )


@operation(
    method="GET",
    path="/workflows/{workflow_id}",
    scope=Scope.WORKFLOWS_READ,
    summary="Get a workflow",
    response_model=Workflow,
    errors=_WF_ERRORS,
)
async def get_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.get(request.path["workflow_id"]))


@operation(
    method="PUT",
    path="/workflows/{workflow_id}",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Update a workflow (given fields replace current ones; type cannot change)",
    request_model=WorkflowRequest,
    response_model=Workflow,
    errors=(*_WF_ERRORS, "INVALID_WORKFLOW_CONFIG", "INVALID_REQUEST"),
)
async def update_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    workflow = await engine.workflows.update(
        request.path["workflow_id"], _body_object(request), actor=actor
    )
    return unstructure(workflow)


@operation(
    method="POST",
    path="/workflows/{workflow_id}/activate",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Activate a workflow",
    response_model=ActivationResult,
    errors=(*_WF_ERRORS, "INVALID_STATE"),
)
async def activate_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.activate(request.path["workflow_id"]))


@operation(
    method="POST",
    path="/workflows/{workflow_id}/deactivate",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Deactivate a workflow",
    response_model=ActivationResult,
    errors=(*_WF_ERRORS, "INVALID_STATE"),
)
async def deactivate_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.deactivate(request.path["workflow_id"]))


@operation(
    method="DELETE",
    path="/workflows/{workflow_id}",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Delete a workflow",
    response_model=DeleteResult,
    errors=_WF_ERRORS,
)
async def delete_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.delete(request.path["workflow_id"]))


# -- integrations ------------------------------------------------------------------------


#: Field limits of the request bodies below (see :mod:`abi_engine.limits`).
PROVIDER = Text(min_length=1, max_length=100)
INTEGRATION_CONFIG = Json(max_bytes=16_384, max_keys=64)
TIMEOUT = Number(exclusive_minimum=0, maximum=MAX_TIMEOUT_SECONDS)
PARAMETERS = Json(max_bytes=262_144)
#: ``whsec_`` and 6 to 512 visible ASCII characters.
CALLBACK_SECRET = Text(
    max_length=518,
    pattern=r"^whsec_[!-~]{6,512}$",
    hint="must be 'whsec_' and 6 to 512 visible ASCII characters (no spaces)",
)
SIGNAL_NAME = Text(
    min_length=1, max_length=200, pattern=r"^[^#\x00]+$", hint="must not contain '#'"
)
SIGNAL_PAYLOAD = Json(max_bytes=65_536)
COMMENT = Text(max_length=2_000)
DECISION_DATA = Json(max_bytes=16_384, max_keys=64)
_INTEGRATION_PATH = {"integration_id": {"type": "string", **INTEGRATION_ID.json_schema()}}


@attrs.define(kw_only=True)
class IntegrationRequest:
    """The body of ``PUT /api/v1/integrations/{id}``."""

    provider: Annotated[str, PROVIDER]
    config: Annotated[dict[str, Any], INTEGRATION_CONFIG] = attrs.Factory(dict)


@operation(
    method="PUT",
    path="/integrations/{integration_id}",
    path_schemas=_INTEGRATION_PATH,
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Create or replace an integration connection",
    request_model=IntegrationRequest,
    response_model=Integration,
    tag="integrations",
    errors=("INVALID_REQUEST", "INVALID_STATE"),
)
async def put_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(_body_object(request), IntegrationRequest)
    await _check_integration_count(engine, request.path["integration_id"])
    result = await engine.integrations.put(
        request.path["integration_id"], body.provider, body.config
    )
    return unstructure(result)


async def _check_integration_count(engine: Engine, integration_id: str) -> None:
    """409 ``INVALID_STATE`` when a new connection would pass ``Limits.max_integrations``."""
    limit = engine.limits.max_integrations
    if limit is None:
        return
    held = (await engine.integrations.list(1, 1)).pagination.total_items
    if held >= limit and await engine.integrations.get_secret(integration_id) is None:
        raise InvalidState(
            f"The engine already holds {limit} integration connections, the most allowed"
            " (max_integrations); delete some first",
            {"limit": "max_integrations", "max_integrations": limit},
        )


@operation(
    method="GET",
    path="/integrations",
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="List integration connections",
    response_model=Integration,
    paginated=True,
    query=_PAGE_QUERY,
    tag="integrations",
)
async def list_integrations(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return _page(await engine.integrations.list(q.get("page", 1), q.get("page_size", 10)), engine)


@operation(
    method="GET",
    path="/integrations/{integration_id}",
    path_schemas=_INTEGRATION_PATH,
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Get an integration connection (secrets masked)",
    response_model=Integration,
    tag="integrations",
    errors=("NOT_FOUND",),
)
async def get_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.integrations.get(request.path["integration_id"]))


@operation(
    method="DELETE",
    path="/integrations/{integration_id}",
    path_schemas=_INTEGRATION_PATH,
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Delete an integration connection",
    response_model=DeleteResult,
    tag="integrations",
    errors=("NOT_FOUND",),
)
async def delete_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    integration_id = request.path["integration_id"]
    await engine.integrations.delete(integration_id)
    return {"id": integration_id, "deleted": True}


# -- executions ----------------------------------------------------------------------------


@attrs.define(kw_only=True)
class ExecutionOptions:
    """``execution_options`` of an execute request."""

    timeout_seconds: Annotated[float, TIMEOUT] | None = None
    wait_for_completion: bool = True


@attrs.define(kw_only=True)
class ExecuteRequest:
    """The body of ``POST /workflows/{id}/execute``."""

    parameters: Annotated[dict[str, Any], PARAMETERS] = attrs.Factory(dict)
    execution_options: ExecutionOptions = attrs.Factory(ExecutionOptions)
    idempotency_key: Annotated[str, IDEMPOTENCY_KEY] | None = None


@attrs.define(kw_only=True)
class ExecuteAsyncRequest:
    """The body of ``POST /workflows/{id}/execute_async``."""

    parameters: Annotated[dict[str, Any], PARAMETERS] = attrs.Factory(dict)
    callback_url: Annotated[str, URL] | None = None
    callback_secret: Annotated[str, CALLBACK_SECRET] | None = None
    execution_options: ExecutionOptions | None = None
    idempotency_key: Annotated[str, IDEMPOTENCY_KEY] | None = None


async def _check_queued(engine: Engine, actor: Principal) -> None:
    await check_quota(
        engine,
        actor,
        "queued_executions",
        "max_queued_executions_per_user",
        "wait until some have started",
    )


def _idempotency_key(request: ApiRequest, body_key: str | None) -> str | None:
    header = request.headers.get("idempotency-key")
    return header if header is not None else body_key


def _execution_json(execution: Execution) -> dict[str, Any]:
    data: dict[str, Any] = execution_json(execution)
    return data


_IDEMPOTENCY_HEADER = (
    QueryParam(
        name="Idempotency-Key",
        schema={"type": "string", **IDEMPOTENCY_KEY.json_schema()},
        description=(
            "The same key for the same workflow returns the first execution again"
            " (wins over the body's idempotency_key)"
        ),
    ),
)

_EXEC_ERRORS = (
    "WORKFLOW_NOT_FOUND",
    "INVALID_STATE",
    "INTEGRATION_MISSING",
    "INVALID_PARAMETERS",
    "PARAMETER_VALIDATION_ERROR",
    "ENGINE_NOT_RUNNING",
)


@operation(
    method="POST",
    path="/workflows/{workflow_id}/execute",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Execute a workflow and wait for its result",
    headers=_IDEMPOTENCY_HEADER,
    accepted_description="With wait_for_completion false: the execution as it stands",
    request_model=ExecuteRequest,
    response_model=Execution,
    tag="executions",
    errors=(*_EXEC_ERRORS, "WORKFLOW_EXECUTION_ERROR", "EXECUTION_TIMEOUT"),
)
async def execute_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(request.body if request.body is not None else {}, ExecuteRequest)
    options = body.execution_options
    if not options.wait_for_completion:
        await _check_queued(engine, actor)
    execution = await engine.executions.execute(
        request.path["workflow_id"],
        body.parameters,
        wait=options.wait_for_completion,
        timeout_seconds=options.timeout_seconds,
        idempotency_key=_idempotency_key(request, body.idempotency_key),
        actor=actor,
    )
    data = _execution_json(execution)
    if not options.wait_for_completion and not execution.status.finished:
        return Accepted(data)
    return data


@operation(
    method="POST",
    path="/workflows/{workflow_id}/execute_async",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Start a workflow execution and return at once",
    headers=_IDEMPOTENCY_HEADER,
    status_code=202,
    request_model=ExecuteAsyncRequest,
    response_model=Execution,
    tag="executions",
    errors=(*_EXEC_ERRORS, "QUEUE_FULL"),
)
async def execute_workflow_async(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(request.body if request.body is not None else {}, ExecuteAsyncRequest)
    await _check_queued(engine, actor)
    execution = await engine.executions.execute(
        request.path["workflow_id"],
        body.parameters,
        wait=False,
        timeout_seconds=body.execution_options.timeout_seconds if body.execution_options else None,
        callback_url=body.callback_url,
        callback_secret=body.callback_secret,
        idempotency_key=_idempotency_key(request, body.idempotency_key),
        actor=actor,
    )
    return _execution_json(execution)


@operation(
    method="GET",
    path="/workflow_executions/{execution_id}",
    scope=Scope.EXECUTIONS_READ,
    summary="Get an execution with its steps",
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND",),
)
async def get_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return _execution_json(await engine.executions.get(request.path["execution_id"]))


#: The longest a ``wait`` request holds (seconds); callers wanting longer ask again.
MAX_WAIT_SECONDS = 60.0
#: How long a ``wait`` request holds when it names no ``timeout_seconds``.
DEFAULT_WAIT_SECONDS = 30.0


def _wait_seconds(value: Any) -> float:
    if value is None:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_WAIT_SECONDS):
        raise InvalidRequest(
            f"'timeout_seconds' must be a number of seconds above 0 and at most"
            f" {MAX_WAIT_SECONDS:g}",
            {"field": "timeout_seconds"},
        )
    return seconds


@operation(
    method="GET",
    path="/workflow_executions/{execution_id}/wait",
    scope=Scope.EXECUTIONS_READ,
    summary="Wait until an execution ends or waits, at most timeout_seconds (long poll)",
    accepted_description="timeout_seconds passed first: the execution as it stands (ask again)",
    response_model=Execution,
    query=(
        QueryParam(
            name="timeout_seconds",
            schema={
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_WAIT_SECONDS,
                "default": DEFAULT_WAIT_SECONDS,
            },
            description="How long to hold the request at most",
        ),
    ),
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_REQUEST"),
)
async def wait_for_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Answers 200 as soon as the execution has ended (``completed``, ``failed``,
    ``timed_out``, ``cancelled``) or waits for a signal or an approval; 202
    with the execution as it stands (``queued``, ``running``, or ``waiting``
    in a durable sleep) when ``timeout_seconds`` passed first: ask again to
    keep waiting."""
    seconds = _wait_seconds(request.query.get("timeout_seconds"))
    execution, settled = await engine.executions.wait_settled(request.path["execution_id"], seconds)
    data = _execution_json(execution)
    return data if settled else Accepted(data)


@operation(
    method="GET",
    path="/workflow_executions",
    scope=Scope.EXECUTIONS_READ,
    summary="List executions, newest first",
    response_model=ExecutionSummary,
    paginated=True,
    query=(
        QueryParam(name="workflow_id", schema={"type": "string"}),
        QueryParam(
            name="status",
            schema={
                "type": "array",
                "items": {"type": "string", "enum": [s.value for s in ExecutionStatus]},
            },
            description="One status or several (status=failed&status=timed_out, or"
            " status=failed,timed_out): executions in any of them",
        ),
        QueryParam(
            name="schedule_id",
            schema={"type": "string"},
            description="Executions started by this schedule",
        ),
        QueryParam(
            name="created_by",
            schema={"type": "string"},
            description="Executions requested by this user (the schedule's creator for"
            " scheduled ones)",
        ),
        QueryParam(
            name="start_date",
            schema={"type": "string", "format": "date-time"},
            description="Executions requested at or after this time",
        ),
        QueryParam(
            name="end_date",
            schema={"type": "string", "format": "date-time"},
            description="Executions requested at or before this time",
        ),
        *_PAGE_QUERY,
    ),
    tag="executions",
    errors=("INVALID_REQUEST",),
)
async def list_executions(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return _page(
        await engine.executions.list(
            workflow_id=q.get("workflow_id"),
            status=q.get("status"),
            schedule_id=q.get("schedule_id"),
            created_by=q.get("created_by"),
            start_date=q.get("start_date"),
            end_date=q.get("end_date"),
            page=q.get("page", 1),
            page_size=q.get("page_size", 10),
        ),
        engine,
    )


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/cancel",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Cancel a queued, running or waiting execution",
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def cancel_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return _execution_json(await engine.executions.cancel(request.path["execution_id"]))


@attrs.define(kw_only=True)
class SignalRequest:
    """The body of ``POST /workflow_executions/{id}/signal``."""

    name: Annotated[str, SIGNAL_NAME]
    payload: Annotated[Any, SIGNAL_PAYLOAD] = None


@attrs.define(kw_only=True)
class DecisionRequest:
    """The body of ``approve`` and ``reject`` (both fields optional)."""

    comment: Annotated[str, COMMENT] | None = None
    data: Annotated[dict[str, Any], DECISION_DATA] | None = None


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/signal",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Deliver a signal to an execution waiting for it",
    request_model=SignalRequest,
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def signal_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(_body_object(request), SignalRequest)
    execution = await engine.executions.signal(
        request.path["execution_id"], body.name, body.payload, sender=actor.user_id
    )
    return _execution_json(execution)


async def _decide(engine: Engine, actor: Principal, request: ApiRequest, approved: bool) -> Any:
    body = structure(request.body if request.body is not None else {}, DecisionRequest)
    execution = await engine.executions.decide(
        request.path["execution_id"],
        approved,
        comment=body.comment,
        data=body.data,
        decided_by=actor.user_id,
    )
    return _execution_json(execution)


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/approve",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Approve an execution waiting for an approval",
    request_model=DecisionRequest,
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def approve_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return await _decide(engine, actor, request, approved=True)


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/reject",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Reject an execution waiting for an approval",
    request_model=DecisionRequest,
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def reject_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return await _decide(engine, actor, request, approved=False)


# Operations of other resources live in their own modules and register here.
from abi_engine import api_schedules as _api_schedules  # noqa: E402, F401
from abi_engine import api_templates as _api_templates  # noqa: E402, F401
from abi_engine import api_tokens as _api_tokens  # noqa: E402, F401
from abi_engine import api_webhooks as _api_webhooks  # noqa: E402, F401
