"""The execute operations answered in a synchronous caller's thread (issue #18).

The seed's embedded API (:mod:`abi.workflows`, through ``LocalTransport``) runs
operations with :meth:`Engine.call`; ``execute_workflow`` and ``execute_workflow_async``
take the synchronous door there (:mod:`abi_engine.execution_threads`): the request is
checked and the execution committed in the caller's thread, and with
``wait_for_completion`` waited for there, without handing a coroutine to the event
loop. What needs the loop (an idempotency key to look up, a trace context, a queued
place that needs counting) goes through the operation's handler as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api._quota import made_budget
from abi_engine.api.executions import (
    ExecuteAsyncRequest,
    ExecuteRequest,
    _execution_json,
    _idempotency_key,
    _priority,
)
from abi_engine.api.operations import IN_THREAD, Accepted, ApiRequest
from abi_engine.auth import Principal
from abi_engine.converter import structure
from abi_engine.models import Execution

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []


def _execute_workflow_in_thread(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """``execute_workflow`` answered in a synchronous caller's thread (the seed's
    embedded API, issue #18), or ``None`` when it needs the loop."""
    body = structure(request.body if request.body is not None else {}, ExecuteRequest)
    options = body.execution_options
    wait = options.wait_for_completion
    execution = _in_thread(
        engine, actor, request, body.idempotency_key, wait=wait,
        parameters=body.parameters, timeout_seconds=options.timeout_seconds,
        priority=_priority(options, body.priority),
    )  # fmt: skip
    if execution is None:
        return None
    data = _execution_json(execution)
    if not wait and not execution.status.finished:
        return Accepted(data)
    return data


def _execute_workflow_async_in_thread(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """``execute_workflow_async`` answered in a synchronous caller's thread, or ``None``."""
    body = structure(request.body if request.body is not None else {}, ExecuteAsyncRequest)
    options = body.execution_options
    execution = _in_thread(
        engine, actor, request, body.idempotency_key, wait=False, parameters=body.parameters,
        timeout_seconds=options.timeout_seconds if options else None,
        callback_url=body.callback_url, callback_secret=body.callback_secret,
        priority=_priority(options, body.priority),
    )  # fmt: skip
    return None if execution is None else _execution_json(execution)


def _in_thread(
    engine: Engine,
    actor: Principal,
    request: ApiRequest,
    body_key: str | None,
    *,
    wait: bool,
    parameters: Any,
    **options: Any,
) -> Execution | None:
    """``engine.executions.execute_in_thread`` for an operation: not with an idempotency
    key or a trace context (the loop looks up replays, starts spans), and an
    asynchronous one only with a queued place left from a recent count (the loop
    counts them)."""
    if _idempotency_key(request, body_key) is not None or "traceparent" in request.headers:
        return None
    budget = None
    if not wait and engine.limits.max_queued_executions_per_user is not None:
        budget = made_budget(engine)
        if budget is None or not budget.take_now(actor.user_id):
            return None
    try:
        return engine.executions.execute_in_thread(
            request.path["workflow_id"], parameters, wait=wait, actor=actor, **options
        )
    finally:
        if budget is not None:
            budget.done(actor.user_id)


IN_THREAD["execute_workflow"] = _execute_workflow_in_thread
IN_THREAD["execute_workflow_async"] = _execute_workflow_async_in_thread
