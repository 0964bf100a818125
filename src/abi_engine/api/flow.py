"""Operations of reruns, pause and resume (#16): ``/workflow_executions/.../rerun``,
``/pause``, ``/resume``, and the bulk ``/workflow_executions/rerun``."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import attrs

from abi_engine.api.operations import ApiRequest, body_object, operation
from abi_engine.auth import Principal
from abi_engine.converter import structure
from abi_engine.execution_flow import MAX_BULK_RERUN
from abi_engine.execution_views import execution_json
from abi_engine.ids import format_time
from abi_engine.limits import Constraint, Json, Number
from abi_engine.models import Execution, ExecutionStatus, Scope

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []


@attrs.frozen
class StepRef(Constraint):
    """A step's name (1 to 200 characters) or its index from 0 (``null``: the default)."""

    def check(self, value: Any) -> None:
        if value is None or (isinstance(value, str) and 0 < len(value) <= 200):
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and value >= 0 and float(value).is_integer():  # JSON's integers include 2.0
            return
        raise ValueError("must be a step name (1 to 200 characters) or a step index from 0")

    def json_schema(self) -> dict[str, Any]:
        return {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 200},
                {"type": "integer", "minimum": 0},
                {"type": "null"},
            ]
        }


PARAMETERS = Json(max_bytes=262_144)
#: The statuses a bulk rerun may take: only an ended execution can be rerun.
EndedStatus = Literal["completed", "failed", "timed_out", "cancelled", "skipped"]
LIMIT = Number(minimum=1, maximum=MAX_BULK_RERUN)


@attrs.define(kw_only=True)
class RerunRequest:
    """The body of ``POST /workflow_executions/{id}/rerun`` (every field optional).

    ``from_step``: a step name or index (default: the first step that did not
    complete); ``configuration``: ``pinned`` (the original's snapshot) or
    ``current`` (the workflow's now); ``parameters`` replace the original's.
    """

    from_step: Annotated[Any, StepRef()] = None
    configuration: Literal["pinned", "current"] = "pinned"
    parameters: Annotated[dict[str, Any], PARAMETERS] | None = None


@attrs.define(kw_only=True)
class RerunFilter:
    """Which ended executions a bulk rerun takes (``status`` default: failed,
    timed_out, cancelled; ``created_*``: when they were requested, inclusive)."""

    workflow_id: str | None = None
    status: list[EndedStatus] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@attrs.define(kw_only=True)
class BulkRerunRequest:
    """The body of ``POST /workflow_executions/rerun``."""

    filter: RerunFilter = attrs.Factory(RerunFilter)
    dry_run: bool = False
    limit: Annotated[int, LIMIT] = 100
    configuration: Literal["pinned", "current"] = "pinned"


@attrs.define(kw_only=True)
class BulkRerunError:
    """Why one execution of a bulk rerun was not rerun (an error code and message)."""

    code: str
    message: str


@attrs.define(kw_only=True)
class BulkRerunItem:
    """One execution a bulk rerun took: the rerun started (``null`` in a dry run or
    when ``error`` says why not)."""

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    rerun_execution_id: str | None = None
    error: BulkRerunError | None = None


@attrs.define(kw_only=True)
class BulkRerunResult:
    """What a bulk rerun started (or, ``dry_run``, would start), newest first;
    ``matched``: how many executions the filter matches in all (beyond ``limit`` too)."""

    dry_run: bool
    matched: int
    items: list[BulkRerunItem]


_ERRORS = ("EXECUTION_NOT_FOUND", "INVALID_STATE", "INVALID_REQUEST")


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/rerun",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Rerun an ended execution from a step, reusing the results of the steps before it",
    status_code=202,
    request_model=RerunRequest,
    request_body_required=False,
    response_model=Execution,
    tag="executions",
    errors=(
        *_ERRORS,
        "WORKFLOW_NOT_FOUND",
        "INTEGRATION_MISSING",
        "INVALID_PARAMETERS",
        "PARAMETER_VALIDATION_ERROR",
        "QUEUE_FULL",
        "ENGINE_NOT_RUNNING",
    ),
)
async def rerun_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Answers 202 with the new execution (``queued``, ``rerun_of`` the original);
    its steps before ``from_step`` show the original's results, ``reused_from``
    naming it. 409 while the original has not ended; 400 naming ``from_step``
    for a step that does not exist or needs a result the original lacks."""
    body = structure(request.body if request.body is not None else {}, RerunRequest)
    from_step = body.from_step
    if isinstance(from_step, float):
        from_step = int(from_step)
    execution = await engine.executions.rerun(
        request.path["execution_id"],
        from_step=from_step,
        configuration=body.configuration,
        parameters=body.parameters,
        actor=actor,
    )
    return execution_json(execution)


@operation(
    method="POST",
    path="/workflow_executions/rerun",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Rerun the ended executions a filter matches (or list them: dry_run)",
    request_model=BulkRerunRequest,
    request_body_required=False,
    response_model=BulkRerunResult,
    tag="executions",
    errors=("INVALID_REQUEST", "ENGINE_NOT_RUNNING"),
)
async def rerun_executions(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Each execution taken is rerun from its first step that did not complete;
    one that cannot be (its workflow deleted or inactive, say) is listed with
    its ``error`` and the others go on."""
    body = structure(request.body if request.body is not None else {}, BulkRerunRequest)
    f = body.filter
    return await engine.executions.rerun_many(
        workflow_id=f.workflow_id,
        status=f.status,
        created_after=f.created_after,
        created_before=f.created_before,
        dry_run=body.dry_run,
        limit=body.limit,
        configuration=body.configuration,
        actor=actor,
    )


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/pause",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Pause a queued or running execution (a running one at its next step boundary)",
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def pause_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """A queued execution is ``paused`` at once; a running one finishes its current
    step, then pauses (it shows ``running`` until then); a waiting one (a durable
    sleep, a signal, a child) pauses at the step boundary after its wait ends (it
    shows ``waiting`` until then). A paused execution holds no worker, stays
    paused across restarts, keeps the signals sent to it meanwhile and can be
    cancelled. 409 for one that has ended."""
    if request.body is not None:
        body_object(request)
    return execution_json(await engine.executions.pause(request.path["execution_id"]))


@operation(
    method="POST",
    path="/workflow_executions/{execution_id}/resume",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Resume a paused execution",
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def resume_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """The execution is queued again and goes on after its last finished step; a
    pause asked of a running execution that has not taken effect yet is withdrawn.
    409 for an execution that is not paused."""
    if request.body is not None:
        body_object(request)
    return execution_json(await engine.executions.resume(request.path["execution_id"]))


@attrs.define(kw_only=True)
class WorkflowPause:
    """A workflow's pause: ``paused`` and since when; ``changed_executions``: the queued
    executions this call held (pause) or released (resume)."""

    workflow_id: str
    paused: bool
    paused_at: datetime | None = None
    changed_executions: int = 0


async def _pause_workflow(engine: Engine, request: ApiRequest, paused: bool) -> Any:
    if request.body is not None:
        body_object(request)
    view = await engine.executions.pause_workflow(request.path["workflow_id"], paused)
    return {
        "workflow_id": view.workflow_id,
        "paused": view.paused,
        "paused_at": None if view.paused_at is None else format_time(view.paused_at),
        "changed_executions": view.changed_executions,
    }


@operation(
    method="POST",
    path="/workflows/{workflow_id}/pause",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Pause a workflow: its new executions are accepted and wait queued",
    response_model=WorkflowPause,
    tag="executions",
    errors=("WORKFLOW_NOT_FOUND",),
)
async def pause_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """While paused, every new execution of the workflow (requested, scheduled,
    rerun) is accepted and waits ``queued`` with ``queued_reason`` ``paused``, as
    do those queued without a worker yet; running executions go on. Pausing a
    paused workflow changes nothing."""
    return await _pause_workflow(engine, request, True)


@operation(
    method="POST",
    path="/workflows/{workflow_id}/resume",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Resume a paused workflow: the executions it held start",
    response_model=WorkflowPause,
    tag="executions",
    errors=("WORKFLOW_NOT_FOUND",),
)
async def resume_workflow(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """The executions the pause held are queued for the workers again (oldest
    first); resuming a workflow that is not paused changes nothing."""
    return await _pause_workflow(engine, request, False)
