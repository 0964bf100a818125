"""REST operations of signed inbound triggers: CRUD (scope ``workflows:write``) and
``POST /triggers/{id}/invoke``, which needs no token but a valid signature
(:mod:`abi_engine.trigger_signing`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import (
    PAGE_QUERY,
    ApiRequest,
    body_object,
    operation,
    page_json,
)
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.execution_views import execution_json
from abi_engine.models import DeleteResult, Execution, Scope
from abi_engine.models_triggers import Trigger, TriggerRequest
from abi_engine.triggers import TRIGGER_ID_PATTERN

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

_TAG = "triggers"
_PATH = {"trigger_id": {"type": "string", "pattern": TRIGGER_ID_PATTERN}}
_NOT_FOUND = ("NOT_FOUND",)


@operation(
    method="PUT",
    path="/triggers/{trigger_id}",
    path_schemas=_PATH,
    scope=Scope.WORKFLOWS_WRITE,
    summary=(
        "Create or replace a signed inbound trigger (a generated secret is shown whole"
        " in this answer only)"
    ),
    request_model=TriggerRequest,
    response_model=Trigger,
    tag=_TAG,
    errors=("INVALID_REQUEST", "WORKFLOW_NOT_FOUND"),
)
async def put_trigger(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    trigger = await engine.triggers.put(
        request.path["trigger_id"], body_object(request), actor=actor.user_id
    )
    return unstructure(trigger)


@operation(
    method="GET",
    path="/triggers",
    scope=Scope.WORKFLOWS_READ,
    summary="List inbound triggers by id (secrets masked)",
    response_model=Trigger,
    paginated=True,
    query=PAGE_QUERY,
    tag=_TAG,
    errors=("INVALID_REQUEST",),
)
async def list_triggers(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.triggers.list(page=q.get("page", 1), page_size=q.get("page_size", 10)),
        engine,
    )


@operation(
    method="GET",
    path="/triggers/{trigger_id}",
    path_schemas=_PATH,
    scope=Scope.WORKFLOWS_READ,
    summary="Get an inbound trigger (secret masked)",
    response_model=Trigger,
    tag=_TAG,
    errors=_NOT_FOUND,
)
async def get_trigger(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.triggers.get(request.path["trigger_id"]))


@operation(
    method="DELETE",
    path="/triggers/{trigger_id}",
    path_schemas=_PATH,
    scope=Scope.WORKFLOWS_WRITE,
    summary="Delete an inbound trigger",
    response_model=DeleteResult,
    tag=_TAG,
    errors=_NOT_FOUND,
)
async def delete_trigger(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    trigger_id = request.path["trigger_id"]
    await engine.triggers.delete(trigger_id)
    return unstructure(DeleteResult(id=trigger_id))


@operation(
    method="POST",
    path="/triggers/{trigger_id}/invoke",
    path_schemas=_PATH,
    scope=None,
    public=True,
    summary=(
        "Start the trigger's workflow (no token: a valid signature; a repeated"
        " delivery id answers the execution it started)"
    ),
    status_code=202,
    response_model=Execution,
    tag=_TAG,
    errors=("UNAUTHORIZED", "INVALID_REQUEST", "PAYLOAD_TOO_LARGE", "INVALID_STATE"),
)
async def invoke_trigger(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Needs no token. Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    `webhook-signature`) or the trigger's own header (`hmac_sha256`, `stripe`); a
    timestamp more than 5 minutes from now, or a bad or missing signature, answers 401
    `UNAUTHORIZED` (an unknown trigger too). The body (JSON, at most 256 KiB) is mapped
    to the execution's parameters. Rate-limited by client address."""
    execution = await engine.triggers.invoke(
        request.path["trigger_id"], request.headers, request.raw or b""
    )
    return execution_json(execution)
