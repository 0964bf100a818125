""":class:`~abi.workflows.WorkflowExecutor`: run workflows and follow their executions."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from abi._client import (
    WAIT_REQUEST_SECONDS,
    Record,
    _check_id,
    _Client,
    _drop_none,
    _structure,
)
from abi_engine.errors import (
    ExecutionNotFound,
    ExecutionTimeout,
    InvalidRequest,
    WorkflowNotFound,
)
from abi_engine.models import (
    Execution,
    ExecutionSummary,
    Page,
    SignalDelivery,
)


class WorkflowExecutor(_Client):
    """Run workflows and follow their executions.

    :param access_token: the bearer token to act with (scopes
        ``executions:read`` / ``executions:write``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take; keep it above the
        ``timeout_seconds`` of executions you wait for.
    """

    def execute_workflow(
        self,
        workflow_id: str,
        parameters: Mapping[str, Any] | None = None,
        execution_options: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Execution:
        """Run the workflow; with ``{"wait_for_completion": True}`` return it finished.

        :param parameters: the execution's parameters, checked by the workflow's type.
        :param execution_options: ``timeout_seconds``, ``wait_for_completion`` and
            ``priority`` (0 to 9, higher first; it orders queued asynchronous work).
        :param idempotency_key: sent as the ``Idempotency-Key`` header; a repeated
            key returns the execution it started.
        :raises ExecutionTimeout: waited longer than ``timeout_seconds``.
        :raises InvalidState: the workflow is not active.
        :raises IntegrationMissing: a required integration is not connected.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        body = _drop_none({"parameters": parameters, "execution_options": execution_options})
        data = self._transport.request(
            "execute_workflow", path=path, body=body, headers=_idempotency(idempotency_key)
        )
        return _structure(data, Execution)

    def execute_workflow_async(
        self,
        workflow_id: str,
        parameters: Mapping[str, Any] | None = None,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        idempotency_key: str | None = None,
        priority: int | None = None,
    ) -> Execution:
        """Queue an execution and return at once (status ``queued`` or ``running``).

        :param callback_url: receives ``execution.completed``, ``execution.failed`` or
            ``execution.skipped`` (replaced by debounce).
        :param callback_secret: a ``whsec_`` secret the callback is signed with.
        :param idempotency_key: sent as the ``Idempotency-Key`` header.
        :param priority: 0 to 9 (default 5): queued executions of higher priority
            start first, aged so that lower priority cannot starve.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        body = _drop_none(
            {
                "parameters": parameters,
                "callback_url": callback_url,
                "callback_secret": callback_secret,
                "priority": priority,
            }
        )
        data = self._transport.request(
            "execute_workflow_async",
            path=path,
            body=body,
            headers=_idempotency(idempotency_key),
        )
        return _structure(data, Execution)

    def wait_for_execution(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Block until the execution has ended, then return it (no polling needed).

        Returns once the execution is ``completed``, ``failed``, ``timed_out``,
        ``cancelled`` or ``skipped`` (debounced), or ``waiting`` for a signal or an
        approval (a durable sleep is running time: it keeps waiting), whatever the outcome: a
        failed execution is returned, not raised. It long-polls
        ``GET /workflow_executions/{id}/wait`` (each request held at most 30 s,
        and less than this client's ``timeout``), in-process through the same
        operation.

        :param timeout: seconds to wait at most; ``None`` waits as long as it takes.
        :raises ExecutionTimeout: ``timeout`` passed first; the execution goes on
            (``details["status"]`` says where it stands).
        :raises ExecutionNotFound: no such execution.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout < math.inf  # NaN and infinity too
        ):
            raise InvalidRequest("'timeout' must be a number of seconds >= 0", {"field": "timeout"})
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = max(1.0, min(WAIT_REQUEST_SECONDS, self._timeout - 5.0))
        while True:
            remaining = chunk if deadline is None else deadline - time.monotonic()
            hold = min(chunk, remaining)
            if hold > 0:
                status, data = self._transport.request_with_status(
                    "wait_for_execution",
                    path=path,
                    # whole milliseconds, at least one: the server refuses 0
                    query={"timeout_seconds": max(0.001, math.ceil(hold * 1000) / 1000)},
                )
                settled = status == 200  # 202: the request's time passed first
            else:
                data = self._transport.request("get_execution", path=path)
                settled = False
            execution = _structure(data, Execution)
            if settled or execution.status.finished:
                return execution
            if deadline is not None and time.monotonic() >= deadline:
                raise ExecutionTimeout(
                    f"Execution {execution.execution_id} did not end within {timeout:g} s;"
                    f" it goes on ({execution.status.value})",
                    {
                        "execution_id": execution.execution_id,
                        "timeout_seconds": timeout,
                        "status": execution.status.value,
                    },
                )

    def get_execution_status(self, execution_id: str) -> Execution:
        """The execution with its steps, result or error.

        :raises ExecutionNotFound: no such execution.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        return _structure(self._transport.request("get_execution", path=path), Execution)

    def list_executions(
        self,
        workflow_id: str | None = None,
        status: str | Sequence[str] | None = None,
        start_date: str | datetime | None = None,
        end_date: str | datetime | None = None,
        page: int = 1,
        page_size: int = 10,
        schedule_id: str | None = None,
        created_by: str | None = None,
        rerun_of: str | None = None,
    ) -> Page[ExecutionSummary]:
        """One page of executions, newest first, filtered.

        :param status: one status, or several (executions in any of them).
        :param start_date: executions requested at or after this time (RFC 3339).
        :param end_date: executions requested at or before this time (RFC 3339).
        :param schedule_id: executions started by this schedule.
        :param created_by: executions requested by this user id.
        :param rerun_of: the reruns of this execution.
        :raises InvalidRequest: an unknown status, a malformed time or page.
        """
        query = {
            "workflow_id": workflow_id,
            "status": status,
            "start_date": start_date,
            "end_date": end_date,
            "page": page,
            "page_size": page_size,
            "schedule_id": schedule_id,
            "created_by": created_by,
            "rerun_of": rerun_of,
        }
        data = self._transport.request("list_executions", query=query)
        return _structure(data, Page[ExecutionSummary])

    def cancel_execution(self, execution_id: str) -> Execution:
        """Cancel a queued, running or waiting execution.

        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution has already finished.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        return _structure(self._transport.request("cancel_execution", path=path), Execution)

    def rerun_execution(
        self,
        execution_id: str,
        from_step: str | int | None = None,
        configuration: str = "pinned",
        parameters: Mapping[str, Any] | None = None,
    ) -> Execution:
        """Start a new execution repeating an ended one from ``from_step`` (a step
        name or index; default: its first step that did not complete); the steps
        before it reuse the original's stored results and do not run again.

        :param configuration: ``pinned`` (the original's configuration) or
            ``current`` (the workflow's now).
        :param parameters: replace the original's parameters.
        :returns: the new execution, queued, ``rerun_of`` the original.
        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the original has not ended.
        :raises InvalidRequest: ``from_step`` is no step, or needs a result the
            original lacks.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        body = _drop_none(
            {"from_step": from_step, "configuration": configuration, "parameters": parameters}
        )
        data = self._transport.request("rerun_execution", path=path, body=body)
        return _structure(data, Execution)

    def rerun_executions(
        self,
        workflow_id: str | None = None,
        status: Sequence[str] | None = None,
        created_after: str | datetime | None = None,
        created_before: str | datetime | None = None,
        dry_run: bool = False,
        limit: int = 100,
        configuration: str = "pinned",
    ) -> Record:
        """Rerun the ended executions a filter matches (newest first, at most
        ``limit``, up to 1,000), each from its first step that did not complete;
        with ``dry_run`` only list them.

        :param status: the statuses taken (default failed, timed_out, cancelled).
        :returns: ``dry_run``, ``matched`` (how many match in all) and ``items``:
            per execution, ``execution_id`` and ``rerun_execution_id`` (or ``error``).
        :raises InvalidRequest: a bad filter or limit.
        """
        when = {
            name: value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
            for name, value in (
                ("created_after", created_after),
                ("created_before", created_before),
            )
        }
        body = {
            "filter": _drop_none({"workflow_id": workflow_id, "status": status, **when}),
            "dry_run": dry_run,
            "limit": limit,
            "configuration": configuration,
        }
        return Record(self._transport.request("rerun_executions", body=body))

    def pause_execution(self, execution_id: str) -> Execution:
        """Pause a queued execution at once, a running one at its next step boundary.

        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution waits or has ended.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        return _structure(self._transport.request("pause_execution", path=path), Execution)

    def resume_execution(self, execution_id: str) -> Execution:
        """Resume a paused execution: it goes on after its last finished step.

        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution is not paused.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        return _structure(self._transport.request("resume_execution", path=path), Execution)

    def pause_workflow(self, workflow_id: str) -> Record:
        """Pause a workflow: its new executions are accepted and wait queued
        (``queued_reason`` ``paused``) until :meth:`resume_workflow`.

        :returns: ``workflow_id``, ``paused``, ``paused_at``, ``changed_executions``.
        :raises WorkflowNotFound: no such workflow.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        return Record(self._transport.request("pause_workflow", path=path))

    def resume_workflow(self, workflow_id: str) -> Record:
        """Resume a paused workflow: the executions it held start.

        :raises WorkflowNotFound: no such workflow.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        return Record(self._transport.request("resume_workflow", path=path))

    def approve_execution(
        self,
        execution_id: str,
        comment: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Execution:
        """Approve an execution waiting for an approval; it carries on.

        :param comment: recorded with the decision.
        :param data: JSON the approval step receives with the decision.
        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution waits for no approval.
        """
        return self._decide("approve_execution", execution_id, comment, data)

    def reject_execution(
        self,
        execution_id: str,
        comment: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Execution:
        """Reject an execution waiting for an approval.

        :param comment: recorded with the decision.
        :param data: JSON the approval step receives with the decision.
        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution waits for no approval.
        """
        return self._decide("reject_execution", execution_id, comment, data)

    def signal_execution(self, execution_id: str, name: str, payload: Any = None) -> Execution:
        """Deliver the signal ``name`` (with ``payload``) to an execution.

        It resumes the execution when it waits for ``name``; an unfinished one
        that does not (yet) keeps it for its next wait for ``name``.

        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution has finished.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        body = {"name": name, "payload": payload}
        data = self._transport.request("signal_execution", path=path, body=body)
        return _structure(data, Execution)

    def send_signal(
        self,
        name: str,
        correlation_key: str,
        payload: Any = None,
        *,
        ttl_seconds: float | None = None,
    ) -> SignalDelivery:
        """Deliver the signal ``name`` to the execution waiting on ``correlation_key``, or
        keep it (``status`` ``pending``, ``ttl_seconds``: a day by default) for the
        first wait on that key.

        :raises InvalidRequest: a bad name, key, payload or ``ttl_seconds``.
        """
        body = _drop_none(
            {
                "name": name,
                "correlation_key": correlation_key,
                "payload": payload,
                "ttl_seconds": ttl_seconds,
            }
        )
        return _structure(self._transport.request("send_signal", body=body), SignalDelivery)

    def _decide(
        self,
        op_name: str,
        execution_id: str,
        comment: str | None,
        data: Mapping[str, Any] | None,
    ) -> Execution:
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        body = _drop_none({"comment": comment, "data": data})
        return _structure(self._transport.request(op_name, path=path, body=body), Execution)


def _idempotency(key: str | None) -> dict[str, str]:
    return {} if key is None else {"idempotency-key": key}
