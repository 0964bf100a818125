"""The operations of the REST API, independent of HTTP.

Each :class:`Operation` names its method, path (under ``/api/v1``), scope,
request and response shapes, and a handler taking JSON in and giving JSON out.
The ASGI adapter binds them to routes, the in-process Python API calls
:func:`call` directly, and the remote Python API speaks the same method and
path over HTTP, so all three behave the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.errors import InvalidRequest, NotFound
from abi_engine.models import (
    ActivationResult,
    DeleteResult,
    Integration,
    Scope,
    Workflow,
    WorkflowSummary,
)
from abi_engine.workflows import WorkflowRequest

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["OPERATIONS", "ApiRequest", "Operation", "QueryParam", "call", "operation"]


@attrs.frozen(kw_only=True)
class ApiRequest:
    """One call: path parameters, query parameters (strings), JSON body, headers."""

    path: Mapping[str, str] = attrs.Factory(dict)
    query: Mapping[str, Any] = attrs.Factory(dict)
    body: Any = None
    headers: Mapping[str, str] = attrs.Factory(dict)


Handler = Callable[["Engine", Principal, ApiRequest], Awaitable[Any]]


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
    ``paginated`` marks list answers (``{"items", "pagination"}``).
    """

    name: str
    method: str
    path: str
    scope: Scope | None
    summary: str
    handler: Handler
    status_code: int = 200
    request_model: Any = None
    response_model: Any = None
    paginated: bool = False
    query: tuple[QueryParam, ...] = ()
    tag: str = "workflows"
    errors: tuple[str, ...] = ()


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
    op = get_operation(name)
    if op.scope is not None:
        actor.require(op.scope)
    return await op.handler(engine, actor, request)


def _page(result: Any) -> dict[str, Any]:
    return {"items": unstructure(result.items), "pagination": unstructure(result.pagination)}


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
    QueryParam(name="page", schema={"type": "integer", "minimum": 1, "default": 1}),
    QueryParam(
        name="page_size",
        schema={"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
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
    return {
        "items": [_summary(w) for w in result.items],
        "pagination": unstructure(result.pagination),
    }


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


@attrs.define(kw_only=True)
class IntegrationRequest:
    """The body of ``PUT /api/v1/integrations/{id}``."""

    provider: str
    config: dict[str, Any] = attrs.Factory(dict)


@operation(
    method="PUT",
    path="/integrations/{integration_id}",
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Create or replace an integration connection",
    request_model=IntegrationRequest,
    response_model=Integration,
    tag="integrations",
    errors=("INVALID_REQUEST",),
)
async def put_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    from abi_engine.converter import structure

    body = structure(_body_object(request), IntegrationRequest)
    result = await engine.integrations.put(
        request.path["integration_id"], body.provider, body.config
    )
    return unstructure(result)


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
    return _page(await engine.integrations.list(q.get("page", 1), q.get("page_size", 10)))


@operation(
    method="GET",
    path="/integrations/{integration_id}",
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
