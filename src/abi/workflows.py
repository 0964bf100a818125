"""The seed's Python API: workflows, executions and schedules, synchronously.

Each class takes ``access_token=`` and finds the engine in this order:

1. ``engine=``: an in-process :class:`abi_engine.Engine` (the caller owns it),
   or ``base_url=``: a remote REST API, the root under which ``/api/v1`` lives;
2. the environment: ``ABI_ENGINE_URL`` (remote), else ``ABI_ENGINE_DB`` (embedded);
3. an embedded engine on ``./abi-engine.db``.

In-process and remote calls give the same objects (the models of
:mod:`abi_engine.models`) and raise the same exceptions
(:mod:`abi_engine.errors`): both run the operations of the REST API by name
and turn the same JSON into objects. Embedded engines are shared by every
object of the process that uses the same database, start in a background
thread on first use, and are closed when the interpreter exits. Lists return
a :class:`~abi_engine.models.Page` with ``.items`` and ``.pagination``.

Example::

    from abi.workflows import WorkflowManager, WorkflowConfig

    manager = WorkflowManager(access_token=token)
    workflow = manager.create_workflow(
        WorkflowConfig(name="Nightly report", type="custom", configuration={...})
    )
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import attrs

from abi._embedded import DEFAULT_DB, embedded_engine
from abi._transport import EngineConnectionError, LocalTransport, RemoteTransport, Transport
from abi_engine.converter import structure, unstructure
from abi_engine.errors import (
    AbiError,
    ExecutionNotFound,
    ExecutionTimeout,
    InternalError,
    InvalidRequest,
    NotFound,
    ScheduleNotFound,
    TemplateNotFound,
    WebhookNotFound,
    WorkflowNotFound,
)
from abi_engine.models import (
    ActivationResult,
    DeleteResult,
    Execution,
    ExecutionSummary,
    NotificationTemplate,
    Page,
    Schedule,
    ScheduleSummary,
    Workflow,
    WorkflowConcurrency,
    WorkflowSummary,
    WorkflowTypeInfo,
)
from abi_engine.models_webhooks import Delivery, Webhook

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = [
    "EngineConnectionError",
    "Record",
    "WebhookManager",
    "WorkflowConfig",
    "WorkflowExecutor",
    "WorkflowManager",
    "WorkflowScheduler",
]

T = TypeVar("T")

#: Seconds a remote call may take before it fails (covers waiting executions).
DEFAULT_TIMEOUT = 300.0
#: The longest :meth:`WorkflowExecutor.wait_for_execution` holds one request.
WAIT_REQUEST_SECONDS = 30.0


@attrs.define(kw_only=True)
class WorkflowConfig:
    """What :meth:`WorkflowManager.create_workflow` needs to create a workflow.

    Fields: ``name``, ``description``, ``type`` (a registered workflow type),
    ``configuration`` (checked by the type), ``integrations`` (``{"id":
    "int_...", "required": bool}`` mappings), ``metadata`` (free-form;
    ``metadata["department"]`` can be filtered on), ``max_concurrency`` (how
    many of its executions may run at once) and ``concurrency`` (a limit per
    key: ``{"key": "parameters.customer_id", "limit": 1}``); see
    docs/flow-control.md.
    """

    name: str
    description: str | None = None
    type: str
    configuration: dict[str, Any] = attrs.Factory(dict)
    integrations: list[Any] = attrs.Factory(list)
    metadata: dict[str, Any] = attrs.Factory(dict)
    max_concurrency: int | None = None
    concurrency: Mapping[str, Any] | None = None


class Record:
    """A resource the engine has no model class for yet, with its JSON fields as attributes.

    Its fields read (and assign) as attributes; :meth:`to_dict` gives the
    JSON back. :meth:`WorkflowScheduler.update_schedule` accepts one too.
    """

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._data[name] = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (a copy)."""
        return dict(self._data)


def _connect(
    access_token: str | None,
    engine: Engine | None,
    base_url: str | None,
    timeout: float,
) -> Transport:
    """Pick the transport in the contract's order (see the module docstring)."""
    if engine is not None and base_url is not None:
        raise ValueError("Give either engine= or base_url=, not both")
    if engine is not None:
        return LocalTransport(engine, access_token)
    if base_url is not None:
        return RemoteTransport(base_url, access_token, timeout=timeout)
    url = os.environ.get("ABI_ENGINE_URL")
    if url:
        return RemoteTransport(url, access_token, timeout=timeout)
    db = os.environ.get("ABI_ENGINE_DB") or DEFAULT_DB
    return LocalTransport(embedded_engine(db), access_token)


def _check_id(value: Any, not_found: Callable[[str], AbiError]) -> str:
    """An id usable in a URL path; anything else is not found, locally and remotely alike."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value:
        raise not_found(str(value))
    return value


def _structure(data: Any, cls: type[T]) -> T:
    """Turn an operation's JSON answer into ``cls``; a wrong shape is an ``InternalError``."""
    return structure(data, cls, error=InternalError)


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _integration_spec(item: Any) -> Any:
    if attrs.has(type(item)):
        return {"id": item.id, "required": item.required}
    return item


class _Client:
    """What the three facade classes share: engine resolution, transport, closing."""

    def __init__(
        self,
        access_token: str | None = None,
        *,
        engine: Engine | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._transport = _connect(access_token, engine, base_url, timeout)
        self._timeout = timeout

    def close(self) -> None:
        """Release the HTTP connections of a remote client.

        An engine given with ``engine=`` is never closed here, and embedded
        engines are closed at interpreter exit.
        """
        self._transport.close()

    def get_metrics(self) -> str:
        """The engine's metrics in the Prometheus text format (``GET /api/v1/metrics``;
        the token needs the ``metrics:read`` scope). See docs/operations.md."""
        return str(self._transport.request("get_metrics"))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class WorkflowManager(_Client):
    """Create, read, list, update, activate, deactivate and delete workflows.

    :param access_token: the bearer token to act with (scopes
        ``workflows:read`` / ``workflows:write``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def create_workflow(self, config: WorkflowConfig | Mapping[str, Any]) -> Workflow:
        """Create an ``inactive`` workflow and return it.

        :param config: a :class:`WorkflowConfig` or the REST request body as a mapping.
        :raises InvalidWorkflowConfig: unknown type or configuration the type refuses.
        :raises InvalidRequest: missing or malformed fields.
        """
        if isinstance(config, WorkflowConfig):
            body: Any = {
                "name": config.name,
                "description": config.description,
                "type": config.type,
                "configuration": config.configuration,
                "integrations": [_integration_spec(i) for i in config.integrations],
                "metadata": config.metadata,
                "max_concurrency": config.max_concurrency,
                "concurrency": None if config.concurrency is None else dict(config.concurrency),
            }
        else:
            body = config
        return _structure(self._transport.request("create_workflow", body=body), Workflow)

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The workflow with this id.

        :raises WorkflowNotFound: no such workflow (or it was deleted).
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        return _structure(self._transport.request("get_workflow", path=path), Workflow)

    def list_workflows(
        self,
        status: str | None = None,
        type: str | None = None,
        department: str | None = None,
        page: int = 1,
        page_size: int = 10,
        sort_by: str | None = None,
        sort_order: str | None = None,
    ) -> Page[WorkflowSummary]:
        """One page of workflows, newest first unless ``sort_by``/``sort_order`` say otherwise.

        :param status: ``"active"`` or ``"inactive"``.
        :param type: a workflow type name.
        :param department: matches ``metadata["department"]``.
        :param page: the page number, from 1.
        :param page_size: items per page, 1 to 100.
        :param sort_by: ``created_at``, ``updated_at`` or ``name``.
        :param sort_order: ``asc`` or ``desc``.
        :raises InvalidRequest: a filter, page or sort value out of range.
        """
        query = {
            "status": status,
            "type": type,
            "department": department,
            "page": page,
            "page_size": page_size,
            "sort_by": sort_by,
            "sort_order": sort_order,
        }
        data = self._transport.request("list_workflows", query=query)
        return _structure(data, Page[WorkflowSummary])

    def update_workflow(self, workflow: Workflow) -> Workflow:
        """Save a changed workflow: its name, description, configuration, integrations,
        metadata, ``max_concurrency`` and ``concurrency``.

        Change the fields of a workflow got from this API, then pass it here.
        Its ``type`` cannot change.

        :raises WorkflowNotFound: the workflow no longer exists.
        :raises InvalidWorkflowConfig: the type refuses the new configuration.
        """
        path = {"workflow_id": _check_id(workflow.id, WorkflowNotFound)}
        body = {
            "name": workflow.name,
            "description": workflow.description,
            "type": workflow.type,
            "configuration": workflow.configuration,
            "integrations": [_integration_spec(i) for i in workflow.integrations],
            "metadata": workflow.metadata,
            "max_concurrency": workflow.max_concurrency,
            "concurrency": unstructure(workflow.concurrency),
        }
        data = self._transport.request("update_workflow", path=path, body=body)
        return _structure(data, Workflow)

    def get_workflow_concurrency(self, workflow_id: str) -> WorkflowConcurrency:
        """The workflow's concurrency limits and the executions holding its slots now
        (``slots``: ``execution_id``, ``key``, ``status``, ``since``).

        :raises WorkflowNotFound: no such workflow.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("get_workflow_concurrency", path=path)
        return _structure(data, WorkflowConcurrency)

    def activate_workflow(self, workflow_id: str) -> ActivationResult:
        """Make the workflow executable.

        :raises WorkflowNotFound: no such workflow.
        :raises InvalidState: the workflow is already active.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("activate_workflow", path=path)
        return _structure(data, ActivationResult)

    def deactivate_workflow(self, workflow_id: str) -> ActivationResult:
        """Stop the workflow from being executed or scheduled.

        :raises WorkflowNotFound: no such workflow.
        :raises InvalidState: the workflow is already inactive.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("deactivate_workflow", path=path)
        return _structure(data, ActivationResult)

    def delete_workflow(self, workflow_id: str) -> DeleteResult:
        """Delete the workflow; its past executions stay readable.

        :raises WorkflowNotFound: no such workflow.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        data = self._transport.request("delete_workflow", path=path)
        return _structure(data, DeleteResult)

    def list_workflow_types(self, page: int = 1, page_size: int = 100) -> Page[WorkflowTypeInfo]:
        """The installed workflow types, by name, with their configuration and parameters
        JSON Schemas and their documentation link."""
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_workflow_types", query=query)
        return _structure(data, Page[WorkflowTypeInfo])

    # -- notification templates ------------------------------------------------------------

    def put_notification_template(
        self,
        template_id: str,
        body: str,
        subject: str | None = None,
        description: str | None = None,
    ) -> NotificationTemplate:
        """Create or replace the notification template ``template_id``.

        Workflows whose configuration names it (``"templates": {"email":
        "template_123"}``) show it ``available`` and can be executed.

        :raises InvalidRequest: a bad id, or a body/subject the notification type
            cannot read (``details["field"]``).
        :raises InvalidState: a plugin registered a template of that id.
        """
        path = {"template_id": _check_id(template_id, _template_not_found)}
        body_json = _drop_none({"body": body, "subject": subject, "description": description})
        data = self._transport.request("put_notification_template", path=path, body=body_json)
        return _structure(data, NotificationTemplate)

    def get_notification_template(self, template_id: str) -> NotificationTemplate:
        """The template with this id.

        :raises TemplateNotFound: no such template (``NOT_FOUND``).
        """
        path = {"template_id": _check_id(template_id, _template_not_found)}
        data = self._transport.request("get_notification_template", path=path)
        return _structure(data, NotificationTemplate)

    def list_notification_templates(
        self, page: int = 1, page_size: int = 10
    ) -> Page[NotificationTemplate]:
        """One page of notification templates, by id."""
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_notification_templates", query=query)
        return _structure(data, Page[NotificationTemplate])

    def delete_notification_template(self, template_id: str) -> DeleteResult:
        """Delete the template; workflows naming it show it ``pending`` again.

        :raises TemplateNotFound: no such template (``NOT_FOUND``).
        """
        path = {"template_id": _check_id(template_id, _template_not_found)}
        data = self._transport.request("delete_notification_template", path=path)
        return _structure(data, DeleteResult)


def _template_not_found(template_id: str) -> AbiError:
    return TemplateNotFound(template_id)


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

        :param callback_url: receives ``execution.completed`` or ``execution.failed``.
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

        Returns once the execution is ``completed``, ``failed``, ``timed_out``
        or ``cancelled``, or ``waiting`` for a signal or an approval (a durable
        sleep is running time: it keeps waiting), whatever the outcome: a
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
        """Deliver the signal ``name`` (with ``payload``) to an execution waiting for it.

        :raises ExecutionNotFound: no such execution.
        :raises InvalidState: the execution waits for no such signal.
        """
        path = {"execution_id": _check_id(execution_id, ExecutionNotFound)}
        body = {"name": name, "payload": payload}
        data = self._transport.request("signal_execution", path=path, body=body)
        return _structure(data, Execution)

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


#: Schedule fields :meth:`WorkflowScheduler.update_schedule` sends back.
SCHEDULE_FIELDS: Sequence[str] = (
    "name",
    "description",
    "schedule_type",
    "cron_expression",
    "interval_value",
    "interval_unit",
    "execution_time",
    "start_time",
    "parameters",
    "enabled",
    "timezone",
    "misfire_policy",
    "misfire_grace_seconds",
    "catch_up_limit",
    "overlap_policy",
    "priority",
)


class WorkflowScheduler(_Client):
    """Run workflows on a schedule: cron expressions, intervals or one fixed time.

    Schedules are :class:`~abi_engine.models.Schedule` objects (lists hold
    :class:`~abi_engine.models.ScheduleSummary` items); change one's fields and
    pass it to :meth:`update_schedule` to save it.

    :param access_token: the bearer token to act with (scopes
        ``schedules:read`` / ``schedules:write``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def create_schedule(
        self,
        workflow_id: str,
        name: str,
        schedule_type: str,
        cron_expression: str | None = None,
        interval_value: int | None = None,
        interval_unit: str | None = None,
        execution_time: str | datetime | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        enabled: bool = True,
        timezone: str = "UTC",
        **extra: Any,
    ) -> Schedule:
        """Create a schedule for the workflow and return it (with ``next_execution``).

        :param schedule_type: ``cron``, ``interval`` or ``fixed_time``.
        :param extra: further fields of the REST request body.
        :raises InvalidSchedule: the schedule's definition is invalid.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        if isinstance(execution_time, datetime):
            execution_time = unstructure(execution_time)
        body = _drop_none(
            {
                "name": name,
                "description": description,
                "schedule_type": schedule_type,
                "cron_expression": cron_expression,
                "interval_value": interval_value,
                "interval_unit": interval_unit,
                "execution_time": execution_time,
                "parameters": parameters,
                "enabled": enabled,
                "timezone": timezone,
                **extra,
            }
        )
        return _structure(
            self._transport.request("create_schedule", path=path, body=body), Schedule
        )

    def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule with this id.

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        return _structure(self._transport.request("get_schedule", path=path), Schedule)

    def list_schedules(
        self,
        workflow_id: str | None = None,
        enabled: bool | None = None,
        page: int = 1,
        page_size: int = 10,
    ) -> Page[ScheduleSummary]:
        """One page of schedules, filtered by workflow and whether they are enabled."""
        query = {
            "workflow_id": workflow_id,
            "enabled": enabled,
            "page": page,
            "page_size": page_size,
        }
        return _structure(
            self._transport.request("list_schedules", query=query), Page[ScheduleSummary]
        )

    def update_schedule(self, schedule: Schedule | Record) -> Schedule:
        """Save a changed schedule (its fields in :data:`SCHEDULE_FIELDS` that are set).

        Fields that did not change leave the schedule as it is (an unchanged
        cron expression keeps its next due time).

        :raises ScheduleNotFound: the schedule no longer exists.
        :raises InvalidSchedule: the new definition is invalid.
        """
        path = {"schedule_id": _check_id(getattr(schedule, "id", None), ScheduleNotFound)}
        fields = schedule.to_dict() if isinstance(schedule, Record) else unstructure(schedule)
        body = _drop_none({name: fields.get(name) for name in SCHEDULE_FIELDS})
        return _structure(
            self._transport.request("update_schedule", path=path, body=body), Schedule
        )

    def delete_schedule(self, schedule_id: str) -> DeleteResult:
        """Delete the schedule; it fires no more.

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        return _structure(self._transport.request("delete_schedule", path=path), DeleteResult)


def _delivery_not_found(delivery_id: str) -> AbiError:
    error = NotFound(None, f"Delivery {delivery_id!r} not found")
    error.details["delivery_id"] = delivery_id
    return error


class WebhookManager(_Client):
    """Subscribe URLs to events, follow their deliveries and replay them.

    Deliveries are signed as the Standard Webhooks specification says; see
    ``docs/webhooks.md`` for verifying them.

    :param access_token: the bearer token to act with (scope ``webhooks:admin``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def create_webhook(
        self,
        url: str,
        events: Sequence[str],
        secret: str | None = None,
        description: str | None = None,
        enabled: bool = True,
    ) -> Webhook:
        """Subscribe ``url`` to ``events``; the answer holds the secret whole, this once.

        :param secret: a ``whsec_`` secret; without one the engine makes one.
        :raises InvalidRequest: a bad URL, unknown event type (``events[i]``) or bad secret.
        """
        body = _drop_none(
            {
                "url": url,
                "events": list(events),
                "secret": secret,
                "description": description,
                "enabled": enabled,
            }
        )
        return _structure(self._transport.request("create_webhook", body=body), Webhook)

    def get_webhook(self, webhook_id: str) -> Webhook:
        """The subscription (its secret masked).

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        return _structure(self._transport.request("get_webhook", path=path), Webhook)

    def list_webhooks(self, page: int = 1, page_size: int = 10) -> Page[Webhook]:
        """One page of subscriptions, newest first."""
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_webhooks", query=query)
        return _structure(data, Page[Webhook])

    def update_webhook(self, webhook_id: str, **fields: Any) -> Webhook:
        """Change a subscription: the fields given replace the current ones.

        Fields: ``url``, ``events``, ``description``, ``enabled``, ``secret``,
        or ``rotate_secret=True`` (the new secret is in the answer, this once).

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        data = self._transport.request("update_webhook", path=path, body=fields)
        return _structure(data, Webhook)

    def delete_webhook(self, webhook_id: str) -> DeleteResult:
        """Remove the subscription and its deliveries.

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        return _structure(self._transport.request("delete_webhook", path=path), DeleteResult)

    def list_deliveries(
        self, webhook_id: str, page: int = 1, page_size: int = 10
    ) -> Page[Delivery]:
        """One page of the webhook's deliveries, newest event first, with every attempt.

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_webhook_deliveries", path=path, query=query)
        return _structure(data, Page[Delivery])

    def redeliver(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Send a finished delivery again (same ``webhook-id``, fresh retry schedule).

        :raises WebhookNotFound: no such webhook.
        :raises NotFound: the webhook has no such delivery.
        :raises InvalidState: the delivery is still pending, or the webhook is disabled.
        """
        path = {
            "webhook_id": _check_id(webhook_id, WebhookNotFound),
            "delivery_id": _check_id(delivery_id, _delivery_not_found),
        }
        data = self._transport.request("redeliver_webhook_delivery", path=path)
        return _structure(data, Delivery)
