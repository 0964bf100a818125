"""REST operations of schedules (registered into :data:`abi_engine.api.OPERATIONS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import (
    PAGE_QUERY,
    Accepted,
    ApiRequest,
    QueryParam,
    body_object,
    check_quota,
    operation,
    page_json,
)
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.models import (
    DeleteResult,
    Schedule,
    ScheduleBackfill,
    ScheduleHistoryEntry,
    SchedulePreview,
    ScheduleSummary,
    Scope,
)
from abi_engine.models_backfills import BackfillRun, BackfillStatus
from abi_engine.schedule_backfill import BackfillRequest
from abi_engine.schedule_requests import SchedulePreviewRequest, ScheduleRequest
from abi_engine.schedule_views import schedule_json

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []


@operation(
    method="POST",
    path="/workflows/{workflow_id}/schedules",
    scope=Scope.SCHEDULES_WRITE,
    summary="Create a schedule that executes a workflow (cron, interval or fixed time)",
    status_code=201,
    request_model=ScheduleRequest,
    response_model=Schedule,
    tag="schedules",
    errors=(
        "WORKFLOW_NOT_FOUND",
        "INVALID_SCHEDULE",
        "INVALID_PARAMETERS",
        "PARAMETER_VALIDATION_ERROR",
        "INVALID_STATE",
    ),
)
async def create_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    await check_quota(engine, actor, "schedules", "max_schedules_per_user", "delete some first")
    schedule = await engine.schedules.create(
        request.path["workflow_id"], body_object(request), actor=actor
    )
    return schedule_json(schedule)


@operation(
    method="GET",
    path="/workflow_schedules/{schedule_id}",
    scope=Scope.SCHEDULES_READ,
    summary="Get a schedule with its next and last execution",
    response_model=Schedule,
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND",),
)
async def get_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return schedule_json(await engine.schedules.get(request.path["schedule_id"]))


@operation(
    method="GET",
    path="/workflow_schedules",
    scope=Scope.SCHEDULES_READ,
    summary="List schedules, newest first",
    response_model=ScheduleSummary,
    paginated=True,
    query=(
        QueryParam(name="workflow_id", schema={"type": "string"}),
        QueryParam(name="enabled", schema={"type": "boolean"}),
        *PAGE_QUERY,
    ),
    tag="schedules",
    errors=("INVALID_REQUEST",),
)
async def list_schedules(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.schedules.list(
            workflow_id=q.get("workflow_id"),
            enabled=q.get("enabled"),
            page=q.get("page", 1),
            page_size=q.get("page_size", 10),
        ),
        engine,
    )


@operation(
    method="PUT",
    path="/workflow_schedules/{schedule_id}",
    scope=Scope.SCHEDULES_WRITE,
    summary="Update a schedule (given fields replace current ones)",
    request_model=ScheduleRequest,
    response_model=Schedule,
    tag="schedules",
    errors=(
        "SCHEDULE_NOT_FOUND",
        "INVALID_SCHEDULE",
        "INVALID_REQUEST",
        "INVALID_STATE",
        "INVALID_PARAMETERS",
        "PARAMETER_VALIDATION_ERROR",
    ),
)
async def update_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    schedule = await engine.schedules.update(
        request.path["schedule_id"], body_object(request), actor=actor
    )
    return schedule_json(schedule)


@operation(
    method="DELETE",
    path="/workflow_schedules/{schedule_id}",
    scope=Scope.SCHEDULES_WRITE,
    summary="Delete a schedule",
    response_model=DeleteResult,
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND", "INVALID_STATE"),
)
async def delete_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.schedules.delete(request.path["schedule_id"]))


@operation(
    method="GET",
    path="/workflow_schedules/{schedule_id}/history",
    scope=Scope.SCHEDULES_READ,
    summary="What happened at each due time of a schedule, newest first",
    response_model=ScheduleHistoryEntry,
    paginated=True,
    query=PAGE_QUERY,
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND",),
)
async def schedule_history(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.schedules.history(
            request.path["schedule_id"], page=q.get("page", 1), page_size=q.get("page_size", 10)
        ),
        engine,
    )


@operation(
    method="GET",
    path="/workflow_schedules/{schedule_id}/preview",
    scope=Scope.SCHEDULES_READ,
    summary="The next due times of a schedule, in UTC and in its zone, with DST flags",
    response_model=SchedulePreview,
    query=(
        QueryParam(
            name="count",
            schema={"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            description="How many due times to list (1 to 100).",
        ),
    ),
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND", "INVALID_REQUEST"),
)
async def preview_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(
        await engine.schedules.preview(
            request.path["schedule_id"], count=request.query.get("count", 10)
        )
    )


@operation(
    method="POST",
    path="/workflow_schedules/preview",
    scope=Scope.SCHEDULES_READ,
    summary="The next due times of an unsaved schedule body (checked as a create is)",
    request_model=SchedulePreviewRequest,
    response_model=SchedulePreview,
    tag="schedules",
    errors=(
        "INVALID_SCHEDULE",
        "INVALID_REQUEST",
        "WORKFLOW_NOT_FOUND",
        "INVALID_PARAMETERS",
        "PARAMETER_VALIDATION_ERROR",
    ),
)
async def preview_unsaved_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.schedules.preview_unsaved(body_object(request)))


@operation(
    method="POST",
    path="/workflow_schedules/{schedule_id}/backfill",
    scope=Scope.SCHEDULES_WRITE,
    summary="Run the due times of a past range (each execution knows its due time);"
    " a dry run lists them",
    request_model=BackfillRequest,
    response_model=ScheduleBackfill,
    accepted_description="The backfill runs in the background: poll its progress at"
    " /workflow_schedules/{schedule_id}/backfills/{backfill_id}",
    accepted_model=BackfillRun,
    tag="schedules",
    errors=(
        "SCHEDULE_NOT_FOUND",
        "INVALID_REQUEST",
        "INVALID_STATE",
        "WORKFLOW_NOT_FOUND",
    ),
)
async def backfill_schedule(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    answer = await engine.schedules.backfill(
        request.path["schedule_id"], body_object(request), actor=actor
    )
    if isinstance(answer, BackfillRun):
        return Accepted(unstructure(answer))
    return unstructure(answer)


@operation(
    method="GET",
    path="/workflow_schedules/{schedule_id}/backfills/{backfill_id}",
    scope=Scope.SCHEDULES_READ,
    summary="A backfill of a schedule and its progress",
    response_model=BackfillRun,
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND", "NOT_FOUND"),
)
async def get_schedule_backfill(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    path = request.path
    return unstructure(
        await engine.schedules.get_backfill(path["schedule_id"], path["backfill_id"])
    )


@operation(
    method="GET",
    path="/workflow_schedules/{schedule_id}/backfills",
    scope=Scope.SCHEDULES_READ,
    summary="The backfills of a schedule with their progress, newest first",
    response_model=BackfillRun,
    paginated=True,
    query=(
        QueryParam(
            name="status",
            schema={"type": "string", "enum": [s.value for s in BackfillStatus]},
            description="Only the backfills in this status",
        ),
        *PAGE_QUERY,
    ),
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND", "INVALID_REQUEST"),
)
async def list_schedule_backfills(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.schedules.list_backfills(
            request.path["schedule_id"],
            page=q.get("page", 1),
            page_size=q.get("page_size", 10),
            status=q.get("status"),
        ),
        engine,
    )


@operation(
    method="POST",
    path="/workflow_schedules/{schedule_id}/backfills/{backfill_id}/cancel",
    scope=Scope.SCHEDULES_WRITE,
    summary="Stop a running backfill before its next due time (what started stays)",
    response_model=BackfillRun,
    tag="schedules",
    errors=("SCHEDULE_NOT_FOUND", "NOT_FOUND", "INVALID_STATE"),
)
async def cancel_schedule_backfill(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    path = request.path
    return unstructure(
        await engine.schedules.cancel_backfill(path["schedule_id"], path["backfill_id"])
    )
