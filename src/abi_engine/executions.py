"""Executions: start (sync or async), get, list, cancel; signals in :mod:`abi_engine.execution_signals`."""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from abi_engine.auth import Principal
from abi_engine.coalesce import ReadCoalescer
from abi_engine.errors import (
    EngineNotRunning,
    ExecutionNotFound,
    ExecutionTimeout,
    IntegrationMissing,
    InvalidParameters,
    InvalidRequest,
    InvalidState,
    WorkflowExecutionError,
    WorkflowNotFound,
)
from abi_engine.events import Event, OutboxEvent
from abi_engine.execution_batches import ExecutionBatches
from abi_engine.execution_flow import ExecutionFlow
from abi_engine.execution_signals import ExecutionSignals
from abi_engine.execution_views import build_execution, execution_json
from abi_engine.ids import new_id, parse_time, utcnow
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    ExecutionSummary,
    Page,
    Workflow,
    WorkflowStatus,
)
from abi_engine.netguard import check_url
from abi_engine.runtime.execution import Prepared
from abi_engine.runtime.runner import Runtime, settled
from abi_engine.services import Service, check_flag, check_page
from abi_engine.storage.base import Store
from abi_engine.storage.records import (
    CancelExecution,
    ExecutionQuery,
    ExecutionRecord,
    InsertExecution,
    stored_priority,
)
from abi_engine.types import (
    StepSpec,
    WorkflowType,
)

if TYPE_CHECKING:
    from abi_engine.integrations import IntegrationService
    from abi_engine.notification_templates import NotificationTemplateService
    from abi_engine.workflows import WorkflowService

__all__ = ["MAX_TIMEOUT_SECONDS", "ExecutionCount", "ExecutionService"]


class ExecutionCount(NamedTuple):
    """``executions`` of one status requested in the bucket from ``bucket_start``."""

    bucket_start: datetime
    status: ExecutionStatus
    executions: int


MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_KEY = 255


def _timeout(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"'{field}' must be a number of seconds", {"field": field})
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise InvalidRequest(
            f"'{field}' must be more than 0 and at most {MAX_TIMEOUT_SECONDS}", {"field": field}
        )
    return float(value)


_CACHE_SIZE = 1024


@attrs.define(kw_only=True)
class _Compiled:
    workflow: Workflow
    workflow_type: WorkflowType
    config: Any
    specs: list[StepSpec]
    #: The managed notification templates the configuration names.
    template_ids: tuple[str, ...] = ()
    #: The workflow is paused: its new executions wait queued (#16).
    paused: bool = False


class ExecutionService(ExecutionBatches, ExecutionFlow, ExecutionSignals, Service):
    """The business rules of executions (``engine.executions``)."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        *,
        workflows: WorkflowService,
        integrations: IntegrationService,
        templates: NotificationTemplateService,
        allow_private_urls: Callable[[], bool],
    ) -> None:
        super().__init__(store)
        self._runtime = runtime
        self._workflows = workflows
        self._integrations = integrations
        self._templates = templates
        self._allow_private_urls = allow_private_urls
        self._cache: dict[str, _Compiled] = {}
        # Over the network, the version checks of concurrent starts share round trips.
        self._versions: ReadCoalescer[str, datetime | None] | None = (
            ReadCoalescer(self._store.workflow_version) if store.blocking else None
        )

    # -- starting --------------------------------------------------------------------------

    async def execute(
        self,
        workflow_id: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout_seconds: float | None = None,
        callback_url: str | None = None,
        callback_secret: str | None = None,
        idempotency_key: str | None = None,
        schedule_id: str | None = None,
        actor: Principal | None = None,
        traceparent: str | None = None,
        parent_execution_id: str | None = None,
        scheduled_for: datetime | None = None,
        priority: int | None = None,
    ) -> Execution:
        """Start an execution of an active workflow.

        With ``wait`` (a synchronous execution) return once it has ended,
        raising :class:`ExecutionTimeout` when ``timeout_seconds`` (default
        ``RuntimeSettings.default_sync_timeout``) passes first (the execution
        then ends ``timed_out``) and :class:`WorkflowExecutionError` when it
        failed. An execution that suspends (``waiting``) is returned as it
        stands. Without ``wait`` return at once (``queued`` or ``running``).
        The same ``idempotency_key`` for the same workflow returns the first
        execution again. With tracing on, a W3C ``traceparent`` (the caller's
        span) becomes the parent of the execution's spans.
        ``parent_execution_id``: the execution whose step starts
        this one (:meth:`start_child`), told when it ends. ``scheduled_for``: the
        logical due time of a schedule's run (a backfill).
        ``priority`` (0 to 9,
        default 5): queued asynchronous executions of higher priority start first,
        aged so that lower priority cannot starve (a synchronous one goes first).
        """
        check_priority(priority, "priority")
        params, timeout = self._check_request(
            parameters,
            wait=wait,
            timeout_seconds=timeout_seconds,
            callback_url=callback_url,
            callback_secret=callback_secret,
            idempotency_key=idempotency_key,
        )
        compiled = await self.compiled(workflow_id)
        workflow = compiled.workflow
        if idempotency_key is not None:
            existing = await self._store.find_execution_by_key(workflow.id, idempotency_key)
            if existing is not None:
                return await self._settle(existing, wait=wait, timeout=timeout, replay=True)
        await self._check_runnable(compiled)
        wtype, config, specs = compiled.workflow_type, compiled.config, compiled.specs
        parsed = wtype.parse_parameters(params, config)
        reservation = None if wait else self._runtime.reserve()
        try:
            return await self._start(
                compiled.paused,
                workflow,
                wtype,
                config,
                specs,
                parsed,
                params,
                wait=wait,
                timeout=timeout,
                callback_url=callback_url,
                callback_secret=callback_secret,
                idempotency_key=idempotency_key,
                schedule_id=schedule_id,
                actor=actor,
                reservation=reservation,
                traceparent=traceparent,
                parent_execution_id=parent_execution_id,
                scheduled_for=scheduled_for,
                priority=priority,
            )
        finally:
            if reservation is not None:
                reservation.release()

    def _check_running(self) -> None:
        if not self._runtime.running:
            raise not_running()

    def _check_request(
        self,
        parameters: Mapping[str, Any] | None,
        *,
        wait: bool,
        timeout_seconds: float | None,
        callback_url: str | None,
        callback_secret: str | None,
        idempotency_key: str | None,
    ) -> tuple[Mapping[str, Any], float | None]:
        """The request's parameters and timeout, once every option is checked."""
        if not self._runtime.running:
            raise not_running()
        params = {} if parameters is None else parameters
        if not isinstance(params, Mapping):
            raise InvalidParameters("'parameters' must be an object", {"field": "parameters"})
        timeout = _timeout(timeout_seconds, "execution_options.timeout_seconds")
        if wait and timeout is None:
            timeout = self._runtime.settings.default_sync_timeout
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= MAX_KEY
        ):
            raise InvalidRequest(
                f"The idempotency key must be 1 to {MAX_KEY} characters",
                {"field": "idempotency_key"},
            )
        if callback_url is not None:
            check_url(
                callback_url,
                field="callback_url",
                allow_private=self._allow_private_urls(),
            )
        if callback_secret is not None and (
            not isinstance(callback_secret, str)
            or not callback_secret.startswith("whsec_")
            or len(callback_secret) < 12
        ):
            raise InvalidRequest(
                "'callback_secret' must be a 'whsec_' secret", {"field": "callback_secret"}
            )
        return params, timeout

    async def _check_runnable(self, compiled: _Compiled) -> None:
        """Refuse a workflow that is inactive, lacks a required integration or a template."""
        workflow = compiled.workflow
        if workflow.status is not WorkflowStatus.ACTIVE:
            raise InvalidState(
                f"Workflow {workflow.id!r} is inactive; activate it before executing",
                {"workflow_id": workflow.id, "status": workflow.status.value},
            )
        required = [i.id for i in workflow.integrations if i.required]
        if required:
            connected = await self._integrations.connected(required)
            missing = [i for i in required if i not in connected]
            if missing:
                raise IntegrationMissing(
                    f"Required integration {missing[0]!r} is not connected",
                    {"workflow_id": workflow.id, "integration_id": missing[0], "missing": missing},
                )
        if compiled.template_ids:
            await self.check_templates(workflow.id, compiled.template_ids)

    async def _start(
        self,
        paused: bool,
        workflow: Workflow,
        wtype: WorkflowType,
        config: Any,
        specs: builtins.list[StepSpec],
        parsed: Any,
        params: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float | None,
        callback_url: str | None,
        callback_secret: str | None,
        idempotency_key: str | None,
        schedule_id: str | None,
        actor: Principal | None,
        reservation: Any,
        traceparent: str | None = None,
        parent_execution_id: str | None = None,
        scheduled_for: datetime | None = None,
        priority: int | None = None,
    ) -> Execution:
        now = utcnow()
        tracing = self._runtime.tracing
        record = ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=workflow.id,
            workflow_type=workflow.type,
            workflow_name=workflow.name,
            status=ExecutionStatus.QUEUED,
            parameters=dict(params),
            configuration=workflow.configuration,
            plan=[s.name for s in specs],
            created_at=now,
            callback_url=callback_url,
            callback_secret=callback_secret,
            schedule_id=schedule_id,
            created_by=actor.user_id if actor else None,
            idempotency_key=idempotency_key,
            priority=stored_priority(priority, sync=wait),
            timeout_at=now + timedelta(seconds=timeout) if timeout else None,
            queued_reason="paused" if paused else None,
            trace_context=tracing.context_for(traceparent) if tracing is not None else None,
            parent_execution_id=parent_execution_id,
            scheduled_for=scheduled_for,
        )
        self._runtime.grant(record)
        # A synchronous execution that starts at once is stored already running:
        # one commit fewer on the latency path. (Not while its workflow is paused:
        # the store holds it queued.)
        claimed = wait and not paused and self._runtime.sync_slot_free()
        events: tuple[OutboxEvent, ...] = ()
        if claimed:
            record.status = ExecutionStatus.RUNNING
            record.started_at = now
            events = self._runtime.started_events(record)
        prepared = Prepared(
            record=record,
            workflow_type=wtype,
            config=config,
            params=parsed,
            specs=specs,
            integration_ids=tuple(i.id for i in workflow.integrations),
            claimed=claimed,
        )

        def hand_over(inserted: Any) -> None:
            # Called by the committer at the commit: a caller cancelled meanwhile (a client
            # gone, a task group closing) cannot leave it stored but not running.
            if inserted:
                self._runtime.submit(prepared, sync=wait, reservation=reservation)

        # The answer of an asynchronous start is the execution as stored: taken now,
        # since the runtime owns (and changes) the record from the commit on.
        accepted = None if wait else build_execution(record, [])
        inserted = await self._insert(record, events, hand_over)
        if not inserted:  # the same idempotency key won a race
            existing = await self._store.find_execution_by_key(workflow.id, idempotency_key or "")
            if existing is None:
                raise InvalidState("The execution could not be created; retry")
            return await self._settle(existing, wait=wait, timeout=timeout, replay=True)
        if accepted is not None:
            return accepted
        return await self._settle(record.id, wait=True, timeout=timeout)

    async def _insert(
        self, record: ExecutionRecord, events: tuple[OutboxEvent, ...], then: Callable[[Any], None]
    ) -> Any:
        """Commit a new execution (``then`` runs at the commit); bad parameters JSON refused."""
        try:
            return await self._runtime.commit(
                InsertExecution(record=record, events=events), execution_id=record.id, then=then
            )
        except (TypeError, ValueError):  # parameters JSON cannot hold (NaN, sets, objects)
            raise InvalidParameters(
                "'parameters' must be JSON: objects, arrays, strings, finite numbers,"
                " booleans and null",
                {"field": "parameters"},
            ) from None

    async def compiled(self, workflow_id: Any) -> _Compiled:
        """The workflow with its parsed configuration and steps, cached while unchanged."""
        if not isinstance(workflow_id, str):
            raise WorkflowNotFound(str(workflow_id))
        if self._versions is not None:
            version = await self._versions.read(workflow_id)
        else:
            version = await self._store.workflow_version(workflow_id)
        if version is None:
            self._cache.pop(workflow_id, None)
            raise WorkflowNotFound(workflow_id)
        cached = self._cache.get(workflow_id)
        if cached is not None and cached.workflow.updated_at == version:
            return cached
        workflow = await self._store.get_workflow(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        wtype = self._workflows.workflow_type(workflow.type)
        config = wtype.parse_configuration(workflow.configuration)
        compiled = _Compiled(
            workflow=workflow,
            workflow_type=wtype,
            config=config,
            specs=wtype.steps(config),
            template_ids=tuple(self._workflows.template_ids(workflow)),
            paused=await self._store.workflow_paused_at(workflow_id) is not None,
        )
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache[workflow_id] = compiled
        return compiled

    async def check_templates(self, workflow_id: str, template_ids: Collection[str]) -> None:
        """``InvalidState`` (409) naming the first of ``template_ids`` that does not exist.

        Reads the templates, so the workflow type's synchronous checks that
        follow see them (``engine.notification_templates.cached``).
        """
        missing = await self._templates.missing(template_ids)
        if missing:
            raise InvalidState(
                f"Notification template {missing[0]!r} does not exist; create it with"
                f" PUT /api/v1/notification_templates/{missing[0]}",
                {
                    "workflow_id": workflow_id,
                    "reason": "template_missing",
                    "template_id": missing[0],
                    "missing": missing,
                },
            )

    async def _settle(
        self, execution_id: str, *, wait: bool, timeout: float | None, replay: bool = False
    ) -> Execution:
        """The answer of ``execute``: the execution once it ended (``wait``) or as it stands.

        ``replay``: the execution was started by an earlier call with the same
        idempotency key; this call's timeout only ends its own wait (504), never
        the execution.
        """
        if wait:
            grace = None if timeout is None else timeout + 0.25
            view = await self._runtime.wait(execution_id, grace)
            if view is None:
                view = await self.get(execution_id)
                if not view.status.finished and view.status is not ExecutionStatus.WAITING:
                    if replay:
                        raise ExecutionTimeout(
                            f"Execution {execution_id} did not finish within {timeout:g} s;"
                            " it goes on",
                            {
                                "execution_id": execution_id,
                                "timeout_seconds": timeout,
                                "status": view.status.value,
                            },
                        )
                    view = await self._time_out(execution_id)
            if view.status is ExecutionStatus.TIMED_OUT:
                raise ExecutionTimeout(
                    f"Execution {execution_id} did not finish within {timeout:g} s"
                    if timeout
                    else f"Execution {execution_id} timed out",
                    {"execution_id": execution_id, "timeout_seconds": timeout},
                )
            if view.status is ExecutionStatus.FAILED:
                error = view.error
                raise WorkflowExecutionError(
                    f"Execution {execution_id} failed"
                    + (f" in step {error.step!r}: {error.message}" if error and error.step else ""),
                    {
                        "execution_id": execution_id,
                        "step": error.step if error else None,
                        "error_type": error.type if error else None,
                        "error_message": error.message if error else None,
                    },
                )
            return view
        return await self.get(execution_id)

    async def _time_out(self, execution_id: str) -> Execution:
        """End an execution whose deadline (``timeout_at``) passed while its caller waited
        but no run ended it (it never started, or its node is gone)."""
        record = await self._store.get_execution(execution_id)
        if (
            record is not None
            and not record.status.finished
            and record.timeout_at is not None
            and record.timeout_at <= utcnow()
        ):
            now = utcnow()
            view = build_execution(record, [])
            view.status = ExecutionStatus.TIMED_OUT
            view.completed_at = now
            await self._runtime.commit(
                CancelExecution(
                    execution_id=execution_id,
                    workflow_id=record.workflow_id,
                    status=ExecutionStatus.TIMED_OUT,
                    completed_at=now,
                    error={"code": "EXECUTION_TIMEOUT", "message": "The execution timed out"},
                    events=(Event(type="execution.failed", data=_unstructured(view)),),
                ),
                execution_id=execution_id,
            )
            self._runtime.cancel_local(execution_id)
        return await self.get(execution_id)

    # -- reading ---------------------------------------------------------------------------

    async def get(self, execution_id: str) -> Execution:
        """The execution with its steps."""
        if not isinstance(execution_id, str):
            raise ExecutionNotFound(str(execution_id))
        record = await self._store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFound(execution_id)
        steps = await self._store.get_steps(execution_id)
        return build_execution(record, steps)

    async def list(
        self,
        *,
        workflow_id: str | None = None,
        status: str | Sequence[str] | None = None,
        start_date: Any = None,
        end_date: Any = None,
        page: Any = 1,
        page_size: Any = 10,
        schedule_id: str | None = None,
        created_by: str | None = None,
        awaiting_approval: Any = False,
        rerun_of: str | None = None,
        parent_execution_id: str | None = None,
    ) -> Page[ExecutionSummary]:
        """One page of executions, newest first.

        ``status`` is one status or several (any of them); ``schedule_id`` the
        schedule that started them; ``created_by`` the user who requested them;
        ``start_date`` / ``end_date`` bound when they were requested
        (``created_at``, inclusive); ``awaiting_approval`` keeps only the waiting
        executions whose wait is an approval's decision; ``rerun_of`` the reruns
        of that execution (#16); ``parent_execution_id`` the children of that one.
        """
        page, page_size = check_page(page, page_size)
        statuses = _statuses(status)
        for name, text in (
            ("workflow_id", workflow_id),
            ("schedule_id", schedule_id),
            ("created_by", created_by),
            ("rerun_of", rerun_of),
            ("parent_execution_id", parent_execution_id),
        ):
            if text is not None and not isinstance(text, str):
                raise InvalidRequest(f"'{name}' must be a string", {"field": name})
        bounds = [_bound("start_date", start_date), _bound("end_date", end_date)]
        query = ExecutionQuery(
            page=page,
            page_size=page_size,
            workflow_id=workflow_id,
            statuses=tuple(statuses),
            start=bounds[0],
            end=bounds[1],
            schedule_id=schedule_id,
            created_by=created_by,
            awaiting_approval=bool(check_flag(awaiting_approval, "awaiting_approval")),
            rerun_of=rerun_of,
            parent_execution_id=parent_execution_id,
        )
        records, total = await self._store.list_executions(query)
        items = [
            ExecutionSummary(
                execution_id=r.id,
                workflow_id=r.workflow_id,
                workflow_name=r.workflow_name,
                status=r.status,
                started_at=r.started_at,
                completed_at=r.completed_at,
                duration_ms=r.duration_ms,
            )
            for r in records
        ]
        return Page.build(items, page, page_size, total)

    async def counts(
        self, start: datetime, end: datetime, bucket_seconds: int
    ) -> builtins.list[ExecutionCount]:
        """Executions requested in ``[start, end)`` counted per status and per
        ``bucket_seconds`` interval from ``start`` (one indexed query; empty
        buckets and statuses left out), oldest bucket first."""
        if isinstance(bucket_seconds, bool) or not isinstance(bucket_seconds, int):
            raise InvalidRequest("'bucket_seconds' must be an integer", {"field": "bucket_seconds"})
        if bucket_seconds <= 0 or end <= start:
            raise InvalidRequest(
                "Counts need a positive bucket and a start before the end",
                {"field": "bucket_seconds" if bucket_seconds <= 0 else "start"},
            )
        rows = await self._store.execution_counts(start, end, bucket_seconds * 1000)
        step = timedelta(seconds=bucket_seconds)
        return sorted(
            ExecutionCount(start + bucket * step, ExecutionStatus(status), count)
            for bucket, status, count in rows
        )

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Wait until the execution ends or waits (or ``timeout``), then return it."""
        return (await self.wait_settled(execution_id, timeout))[0]

    async def wait_settled(
        self, execution_id: str, timeout: float | None = None
    ) -> tuple[Execution, bool]:
        """Like :meth:`wait`, and whether it settled: ``True`` once the execution has
        ended or waits for a signal (a durable sleep is running time: not settled),
        ``False`` when ``timeout`` passed first."""
        record = (
            await self._store.get_execution(execution_id) if isinstance(execution_id, str) else None
        )
        if record is None:
            raise ExecutionNotFound(str(execution_id))
        if settled(record):  # one read (with its steps) when it ended already
            return build_execution(record, await self._store.get_steps(execution_id)), True
        view = await self._runtime.wait(execution_id, timeout)
        if view is not None:
            return view, True
        return await self.get(execution_id), False

    # -- changing ----------------------------------------------------------------------------

    async def cancel(self, execution_id: str) -> Execution:
        """Cancel a queued, running or waiting execution; ``InvalidState`` once it has ended."""
        record = (
            await self._store.get_execution(execution_id) if isinstance(execution_id, str) else None
        )
        if record is None:
            raise ExecutionNotFound(str(execution_id))
        current = build_execution(record, await self._store.get_steps(execution_id))
        if current.status.finished:
            raise InvalidState(
                f"Execution {execution_id} has already ended ({current.status.value})",
                {"execution_id": execution_id, "status": current.status.value},
            )
        now = utcnow()
        current.status = ExecutionStatus.CANCELLED
        current.completed_at = now
        applied = await self._runtime.commit(
            CancelExecution(
                execution_id=execution_id,
                workflow_id=current.workflow_id,
                status=ExecutionStatus.CANCELLED,
                completed_at=now,
                error={"code": "CANCELLED", "message": "The execution was cancelled"},
                events=(Event(type="execution.failed", data=_unstructured(current)),),
            ),
            execution_id=execution_id,
        )
        if not applied:
            latest = await self.get(execution_id)
            raise InvalidState(
                f"Execution {execution_id} has already ended ({latest.status.value})",
                {"execution_id": execution_id, "status": latest.status.value},
            )
        self._runtime.cancel_local(execution_id)
        if self._runtime.metrics is not None:
            self._runtime.metrics.execution_finished(record.workflow_type, "cancelled")
        await self.cancel_children(execution_id)
        return await self.get(execution_id)


def not_running() -> EngineNotRunning:
    """The error of an execution asked of an engine that was never started."""
    return EngineNotRunning(
        "The engine is not running, so nothing can be executed. A host application that"
        " mounts abi_asgi.create_app(engine) must start the engine in its own lifespan:"
        " `async with engine: yield` (Starlette does not run a mounted app's lifespan; see"
        " 'Mounting the API in your ASGI application' in docs/deployment.md). Embedded,"
        " use `async with engine:` or engine.start_blocking()",
        {"engine": "not_running"},
    )


def _unstructured(execution: Execution) -> dict[str, Any]:

    data: dict[str, Any] = execution_json(execution)
    return data


def _statuses(status: str | Sequence[str] | None) -> list[ExecutionStatus]:
    """The statuses a list filters on (one or several); ``InvalidRequest`` naming a bad one."""
    statuses: list[ExecutionStatus] = []
    for value in [status] if isinstance(status, str) else (status or ()):
        try:
            statuses.append(ExecutionStatus(value))
        except ValueError:
            raise InvalidRequest(
                f"'status' must be one of {', '.join(s.value for s in ExecutionStatus)},"
                f" got {str(value)[:40]!r}",
                {"field": "status"},
            ) from None
    return statuses


def _bound(name: str, value: Any) -> datetime | None:
    """A time bound of a list (RFC 3339 text or a datetime); ``InvalidRequest`` otherwise."""
    if value is None:
        return None
    try:
        return parse_time(value) if isinstance(value, str) else value
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an RFC 3339 time", {"field": name}) from None


def check_priority(priority: Any, field: str) -> None:
    """Refuse a ``priority`` that is not an integer from 0 to 9 (``None``: the default)."""
    if priority is None:
        return
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidRequest("'priority' must be an integer from 0 to 9", {"field": field})
