""""""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Annotated, Any

import attrs

from abi_engine.api._quota import queued_budget
from abi_engine.api.operations import (
    PAGE_QUERY,
    Accepted,
    ApiRequest,
    QueryParam,
    body_object,
    operation,
    page_json,
    quota_exceeded,
)
from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import InvalidRequest
from abi_engine.execution_requests import MAX_TIMEOUT_SECONDS
from abi_engine.execution_signals import MAX_CORRELATED_TTL_SECONDS
from abi_engine.execution_views import execution_json
from abi_engine.limits import IDEMPOTENCY_KEY, URL, Json, Number, Text
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    Scope,
    SignalDelivery,
)

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

# -- executions ----------------------------------------------------------------------------

#: Field limits of the request bodies below (see :mod:`abi_engine.limits`).
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
CORRELATION_KEY = Text(min_length=1, max_length=200)
SIGNAL_TTL = Number(minimum=1, maximum=MAX_CORRELATED_TTL_SECONDS)
COMMENT = Text(max_length=2_000)
PRIORITY = Number(minimum=0, maximum=9)
DECISION_DATA = Json(max_bytes=16_384, max_keys=64)


@attrs.define(kw_only=True)
class ExecutionOptions:
    """``execution_options`` of an execute request."""

    timeout_seconds: Annotated[float, TIMEOUT] | None = None
    wait_for_completion: bool = True
    #: 0 to 9, higher first (default 5); orders queued asynchronous executions, aged.
    priority: Annotated[int, PRIORITY] | None = None


@attrs.define(kw_only=True)
class ExecuteRequest:
    """The body of ``POST /workflows/{id}/execute``."""

    parameters: Annotated[dict[str, Any], PARAMETERS] = attrs.Factory(dict)
    execution_options: ExecutionOptions = attrs.Factory(ExecutionOptions)
    idempotency_key: Annotated[str, IDEMPOTENCY_KEY] | None = None
    #: The same as ``execution_options.priority`` (which wins when both are given).
    priority: Annotated[int, PRIORITY] | None = None


@attrs.define(kw_only=True)
class ExecuteAsyncRequest:
    """The body of ``POST /workflows/{id}/execute_async``."""

    parameters: Annotated[dict[str, Any], PARAMETERS] = attrs.Factory(dict)
    callback_url: Annotated[str, URL] | None = None
    callback_secret: Annotated[str, CALLBACK_SECRET] | None = None
    execution_options: ExecutionOptions | None = None
    idempotency_key: Annotated[str, IDEMPOTENCY_KEY] | None = None
    #: 0 to 9, higher first (default 5); ``execution_options.priority`` wins if given.
    priority: Annotated[int, PRIORITY] | None = None


@asynccontextmanager
async def _queued_place(engine: Engine, actor: Principal) -> AsyncIterator[None]:
    """Refuse when ``actor``'s user has ``max_queued_executions_per_user`` queued already
    (counted now and then: see :mod:`abi_engine.api._quota`); else hold the place taken
    until the execution is stored (counts made meanwhile see it)."""
    limit = engine.limits.max_queued_executions_per_user
    if limit is None:
        yield
        return
    budget = queued_budget(engine)
    if await budget.take(actor.user_id, limit) is not None:
        raise quota_exceeded(
            "queued_executions",
            "max_queued_executions_per_user",
            limit,
            "wait until some have started",
        )
    try:
        yield
    finally:
        budget.done(actor.user_id)


def _idempotency_key(request: ApiRequest, body_key: str | None) -> str | None:
    header = request.headers.get("idempotency-key")
    return header if header is not None else body_key


def _priority(options: ExecutionOptions | None, top: int | None) -> int | None:
    return options.priority if options is not None and options.priority is not None else top


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
    QueryParam(
        name="traceparent",
        schema={"type": "string"},
        description=(
            "A W3C trace context: with tracing on (the otel extra), the parent of the"
            " execution's spans, kept with the execution across restarts"
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
    place = nullcontext() if options.wait_for_completion else _queued_place(engine, actor)
    async with place:
        execution = await engine.executions.execute(
            request.path["workflow_id"],
            body.parameters,
            wait=options.wait_for_completion,
            timeout_seconds=options.timeout_seconds,
            idempotency_key=_idempotency_key(request, body.idempotency_key),
            actor=actor,
            traceparent=request.headers.get("traceparent"),
            priority=_priority(body.execution_options, body.priority),
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
    async with _queued_place(engine, actor):
        execution = await engine.executions.execute(
            request.path["workflow_id"],
            body.parameters,
            wait=False,
            timeout_seconds=(
                body.execution_options.timeout_seconds if body.execution_options else None
            ),
            callback_url=body.callback_url,
            callback_secret=body.callback_secret,
            idempotency_key=_idempotency_key(request, body.idempotency_key),
            actor=actor,
            traceparent=request.headers.get("traceparent"),
            priority=_priority(body.execution_options, body.priority),
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
            name="awaiting_approval",
            schema={"type": "boolean"},
            description="Only waiting executions whose wait is an approval's decision",
        ),
        QueryParam(
            name="rerun_of",
            schema={"type": "string"},
            description="The reruns of this execution",
        ),
        QueryParam(
            name="parent_execution_id",
            schema={"type": "string"},
            description="The children of this execution (started by its steps)",
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
        *PAGE_QUERY,
    ),
    tag="executions",
    errors=("INVALID_REQUEST",),
)
async def list_executions(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.executions.list(
            workflow_id=q.get("workflow_id"),
            status=q.get("status"),
            schedule_id=q.get("schedule_id"),
            created_by=q.get("created_by"),
            awaiting_approval=q.get("awaiting_approval", False),
            rerun_of=q.get("rerun_of"),
            parent_execution_id=q.get("parent_execution_id"),
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
    summary="Deliver a signal to an execution (kept until a step waits for it if none does yet)",
    request_model=SignalRequest,
    response_model=Execution,
    tag="executions",
    errors=("EXECUTION_NOT_FOUND", "INVALID_STATE"),
)
async def signal_execution(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(body_object(request), SignalRequest)
    execution = await engine.executions.signal(
        request.path["execution_id"], body.name, body.payload, sender=actor.user_id
    )
    return _execution_json(execution)


@attrs.define(kw_only=True)
class CorrelatedSignalRequest:
    """The body of ``POST /signals``."""

    name: Annotated[str, SIGNAL_NAME]
    correlation_key: Annotated[str, CORRELATION_KEY]
    payload: Annotated[Any, SIGNAL_PAYLOAD] = None
    ttl_seconds: Annotated[float, SIGNAL_TTL] | None = None


@operation(
    method="POST",
    path="/signals",
    scope=Scope.EXECUTIONS_WRITE,
    summary="Deliver a signal to the execution waiting on a correlation key",
    request_model=CorrelatedSignalRequest,
    response_model=SignalDelivery,
    tag="executions",
    errors=("INVALID_REQUEST",),
    accepted_description=(
        "No execution waits on the key yet: the signal is kept (status pending) until"
        " expires_at for the first wait on it"
    ),
)
async def send_signal(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(body_object(request), CorrelatedSignalRequest)
    delivery = await engine.executions.send_signal(
        body.name, body.correlation_key, body.payload, ttl_seconds=body.ttl_seconds
    )
    data = unstructure(delivery)
    return data if delivery.execution_id is not None else Accepted(data)


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
