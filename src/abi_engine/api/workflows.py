""""""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import (
    PAGE_QUERY,
    WORKFLOW_ERRORS,
    ApiRequest,
    Encoded,
    QueryParam,
    body_object,
    bounded_page,
    json_bytes,
    operation,
)
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.models import (
    ActivationResult,
    DeleteResult,
    Scope,
    Workflow,
    WorkflowConcurrency,
    WorkflowSummary,
)
from abi_engine.workflows import WorkflowRequest

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []


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
    workflow = await engine.workflows.create(body_object(request), actor=actor)
    return unstructure(workflow)


@operation(
    method="GET",
    path="/workflows",
    scope=Scope.WORKFLOWS_READ,
    summary="List workflows",
    response_model=WorkflowSummary,
    paginated=True,
    query=(
        *PAGE_QUERY,
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


#: Workflows whose answer is kept encoded, per engine (the oldest dropped past it).
_ANSWERS_KEPT = 1_000
_ANSWERS: weakref.WeakKeyDictionary[Engine, dict[str, tuple[Workflow, Encoded]]] = (
    weakref.WeakKeyDictionary()
)


async def _get_workflow_encoded(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """``get_workflow``'s answer as JSON: the one sent last for this workflow when the
    workflow read now equals the one it was made of (every field: version, stats,
    integration and template statuses), else made and kept. (#18: the model's
    unstructuring and the JSON encoding were half of the request's cost.)"""
    workflow = await engine.workflows.get(request.path["workflow_id"])
    answers = _ANSWERS.get(engine)
    if answers is None:
        answers = _ANSWERS.setdefault(engine, {})
    kept = answers.get(workflow.id)
    if kept is not None and kept[0] == workflow:
        return kept[1]
    encoded = Encoded(json_bytes(unstructure(workflow)))
    if kept is None and len(answers) >= _ANSWERS_KEPT:
        answers.pop(next(iter(answers)))
    answers[workflow.id] = (workflow, encoded)
    return encoded


@operation(
    method="GET",
    path="/workflows/{workflow_id}",
    scope=Scope.WORKFLOWS_READ,
    summary="Get a workflow",
    response_model=Workflow,
    errors=WORKFLOW_ERRORS,
    encoded_handler=_get_workflow_encoded,
)
async def get_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.get(request.path["workflow_id"]))


@operation(
    method="GET",
    path="/workflows/{workflow_id}/concurrency",
    scope=Scope.WORKFLOWS_READ,
    summary="A workflow's concurrency limits and who holds its slots now",
    response_model=WorkflowConcurrency,
    errors=WORKFLOW_ERRORS,
)
async def get_workflow_concurrency(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """``max_concurrency`` and ``concurrency`` (the limit per key), and ``slots``: the
    executions holding one now (granted to a worker, or running, under a live lease),
    each with its ``key``, ``status`` and ``since``, oldest first."""
    return unstructure(await engine.workflows.concurrency(request.path["workflow_id"]))


@operation(
    method="PUT",
    path="/workflows/{workflow_id}",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Update a workflow (given fields replace current ones; type cannot change)",
    request_model=WorkflowRequest,
    response_model=Workflow,
    errors=(*WORKFLOW_ERRORS, "INVALID_WORKFLOW_CONFIG", "INVALID_REQUEST"),
)
async def update_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    workflow = await engine.workflows.update(
        request.path["workflow_id"], body_object(request), actor=actor
    )
    return unstructure(workflow)


@operation(
    method="POST",
    path="/workflows/{workflow_id}/activate",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Activate a workflow",
    response_model=ActivationResult,
    errors=(*WORKFLOW_ERRORS, "INVALID_STATE"),
)
async def activate_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.activate(request.path["workflow_id"]))


@operation(
    method="POST",
    path="/workflows/{workflow_id}/deactivate",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Deactivate a workflow",
    response_model=ActivationResult,
    errors=(*WORKFLOW_ERRORS, "INVALID_STATE"),
)
async def deactivate_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.deactivate(request.path["workflow_id"]))


@operation(
    method="DELETE",
    path="/workflows/{workflow_id}",
    scope=Scope.WORKFLOWS_WRITE,
    summary="Delete a workflow",
    response_model=DeleteResult,
    errors=WORKFLOW_ERRORS,
)
async def delete_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.workflows.delete(request.path["workflow_id"]))
