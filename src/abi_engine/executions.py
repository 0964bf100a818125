"""Executions: start (sync or async), cancel; the checks before a start in
:mod:`abi_engine.execution_requests`, reading in :mod:`abi_engine.execution_reading`,
signals in :mod:`abi_engine.execution_signals`."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from abi_engine.auth import Principal
from abi_engine.coalesce import ReadCoalescer
from abi_engine.errors import (
    AbiError,
    ExecutionNotFound,
    ExecutionTimeout,
    InvalidParameters,
    InvalidState,
)
from abi_engine.events import Event, OutboxEvent
from abi_engine.execution_batches import ExecutionBatches
from abi_engine.execution_flow import ExecutionFlow
from abi_engine.execution_reading import ExecutionReading
from abi_engine.execution_requests import (
    Compiled,
    ExecutionRequests,
    check_priority,
    waited_answer,
)
from abi_engine.execution_signals import ExecutionSignals
from abi_engine.execution_threads import ExecutionThreadDoor
from abi_engine.execution_views import build_execution, execution_json
from abi_engine.ids import new_id, utcnow
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    Workflow,
)
from abi_engine.runtime.execution import Prepared
from abi_engine.runtime.runner import Runtime
from abi_engine.services import Service
from abi_engine.storage._codec import dumps
from abi_engine.storage.base import Store
from abi_engine.storage.records import (
    CancelExecution,
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

__all__ = ["ExecutionService"]


class ExecutionService(
    ExecutionReading,
    ExecutionRequests,
    ExecutionBatches,
    ExecutionFlow,
    ExecutionSignals,
    ExecutionThreadDoor,
    Service,
):
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
        self._cache: dict[str, Compiled] = {}
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
        ``parent_execution_id``: the execution whose step starts this one
        (:meth:`start_child`), told when it ends. ``scheduled_for``: the logical due
        time of a schedule's run (a backfill). ``priority`` (0 to 9, default 5):
        queued asynchronous executions of higher priority start first, aged so
        that lower priority cannot starve (a synchronous one goes first).
        """
        check_priority(priority, "priority")
        params, timeout = self._check_request(
            parameters, wait=wait, timeout_seconds=timeout_seconds, callback_url=callback_url,
            callback_secret=callback_secret, idempotency_key=idempotency_key,
        )  # fmt: skip
        options = {
            "callback_url": callback_url, "callback_secret": callback_secret,
            "idempotency_key": idempotency_key, "schedule_id": schedule_id, "actor": actor,
            "traceparent": traceparent, "parent_execution_id": parent_execution_id,
            "scheduled_for": scheduled_for, "priority": priority,
        }  # fmt: skip
        # A first attempt trusts the cached workflow (the insert checks its version in its
        # own transaction); a replay of an idempotency key reads the store anyway.
        trusted = idempotency_key is None
        while True:
            try:
                return await self._accept(workflow_id, params, wait, timeout, options, trusted)
            except WorkflowChanged:  # since the request was checked: check it again
                trusted = False

    async def _accept(
        self,
        workflow_id: str,
        params: Mapping[str, Any],
        wait: bool,
        timeout: float | None,
        options: dict[str, Any],
        trusted: bool = False,
    ) -> Execution:
        """``execute`` of a checked request, against the workflow's current version.

        ``trusted``: the cached compiled workflow when it may be used without reading the
        workflow's version (:meth:`_compiled_in_thread`): the insert refuses it if that
        version is not current any more (:class:`WorkflowChanged`, then checked afresh),
        and so does a refusal of the parameters by it (a newer version may accept them).
        """
        compiled = self._compiled_in_thread(workflow_id) if trusted else None
        if compiled is not None:
            try:
                parsed = compiled.workflow_type.parse_parameters(params, compiled.config)
            except AbiError:
                raise WorkflowChanged("Checked against a cached version") from None
        else:
            compiled = await self.compiled(workflow_id)
            key = options["idempotency_key"]
            if replay := await self._replayed(
                compiled.workflow.id, key, wait=wait, timeout=timeout
            ):
                return replay
            await self._check_runnable(compiled)
            parsed = compiled.workflow_type.parse_parameters(params, compiled.config)
        reservation = None if wait else self._runtime.reserve()
        try:
            return await self._start(
                compiled.paused, compiled.workflow, compiled.workflow_type, compiled.config,
                compiled.specs, parsed, params, wait=wait, timeout=timeout,
                reservation=reservation, **options,
            )  # fmt: skip
        finally:
            if reservation is not None:
                reservation.release()

    async def _replayed(
        self, workflow_id: str, idempotency_key: str | None, *, wait: bool, timeout: float | None
    ) -> Execution | None:
        """The execution an earlier start with the same idempotency key created, if any."""
        if idempotency_key is None:
            return None
        existing = await self._store.find_execution_by_key(workflow_id, idempotency_key)
        if existing is None:
            return None
        return await self._settle(existing, wait=wait, timeout=timeout, replay=True)

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
        record = self._new_record(
            paused, workflow, specs, params, wait=wait, timeout=timeout,
            callback_url=callback_url, callback_secret=callback_secret,
            idempotency_key=idempotency_key, schedule_id=schedule_id, actor=actor,
            traceparent=traceparent, parent_execution_id=parent_execution_id,
            scheduled_for=scheduled_for, priority=priority,
        )  # fmt: skip
        self._runtime.grant(record)
        claimed, events = self._claim_at_once(record, workflow, wait=wait, paused=paused)
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
        inserted = await self._insert(record, events, hand_over, workflow.updated_at)
        if not inserted:  # the same idempotency key won a race
            existing = await self._store.find_execution_by_key(workflow.id, idempotency_key or "")
            if existing is None:
                raise InvalidState("The execution could not be created; retry")
            return await self._settle(existing, wait=wait, timeout=timeout, replay=True)
        if accepted is not None:
            return accepted
        return await self._settle(record.id, wait=True, timeout=timeout)

    def _new_record(
        self,
        paused: bool,
        workflow: Workflow,
        specs: builtins.list[StepSpec],
        params: Mapping[str, Any],
        *,
        wait: bool,
        timeout: float | None,
        callback_url: str | None,
        callback_secret: str | None,
        idempotency_key: str | None,
        schedule_id: str | None,
        actor: Principal | None,
        traceparent: str | None,
        parent_execution_id: str | None,
        scheduled_for: datetime | None,
        priority: int | None,
    ) -> ExecutionRecord:
        """The record of a new execution, queued (held ``paused`` while its workflow is)."""
        now = utcnow()
        tracing = self._runtime.tracing
        configuration_json, plan_json = self._texts(workflow, specs)
        return ExecutionRecord(
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
            configuration_json=configuration_json,
            plan_json=plan_json,
        )

    def _texts(
        self, workflow: Workflow, specs: builtins.list[StepSpec]
    ) -> tuple[str | None, str | None]:
        """The JSON of ``workflow``'s configuration and of its plan (``specs``' names),
        written once per compiled version and kept with it (#18); ``None`` for a
        workflow that is not the cached version (the insert writes its own)."""
        compiled = self._cache.get(workflow.id)
        if compiled is None or compiled.workflow is not workflow or compiled.specs is not specs:
            return None, None
        texts = compiled.texts
        if texts is None:
            try:
                texts = (dumps(workflow.configuration), dumps([s.name for s in specs]))
            except (TypeError, ValueError):  # (stored as JSON: never seen)
                return None, None
            compiled.texts = texts
        return texts

    def _claim_at_once(
        self,
        record: ExecutionRecord,
        workflow: Workflow,
        *,
        wait: bool,
        paused: bool,
        reservation: Any = None,
    ) -> tuple[bool, tuple[OutboxEvent, ...]]:
        """Whether the new execution is stored already running, and its start's events.

        A synchronous execution that starts at once is: one commit fewer on the
        latency path. (Not while its workflow is paused, nor when its limits decide
        whether it starts: the store holds it queued, or grants it within them.)
        """
        if paused or _limited(workflow):
            return False, ()
        if not (self._runtime.sync_slot_free() if wait else _worker_held(reservation)):
            return False, ()
        record.status = ExecutionStatus.RUNNING
        record.started_at = record.created_at
        return True, self._runtime.started_events(record)

    async def _insert(
        self,
        record: ExecutionRecord,
        events: tuple[OutboxEvent, ...],
        then: Callable[[Any], None],
        version: datetime,
    ) -> Any:
        """Commit a new execution (``then`` runs at the commit) of the workflow at
        ``version`` (:class:`WorkflowChanged` when it is not any more); bad parameters
        JSON refused."""
        op = InsertExecution(record=record, events=events, workflow_version=version)
        try:
            inserted = await self._runtime.commit(op, execution_id=record.id, then=then)
        except (TypeError, ValueError):  # parameters JSON cannot hold (NaN, sets, objects)
            raise InvalidParameters(
                "'parameters' must be JSON: objects, arrays, strings, finite numbers,"
                " booleans and null",
                {"field": "parameters"},
            ) from None
        if inserted is None:
            raise WorkflowChanged(
                "The workflow changed while the execution was being created; retry",
                {"workflow_id": record.workflow_id, "reason": "workflow_changed"},
            )
        return inserted

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
                view = await self._unended(execution_id, timeout, replay=replay)
            return waited_answer(view, timeout)
        return await self.get(execution_id)

    async def _unended(
        self, execution_id: str, timeout: float | None, *, replay: bool
    ) -> Execution:
        """The execution whose caller waited ``timeout`` in vain: ended ``timed_out`` now
        (unless it ended or waits meanwhile; a ``replay`` only stops waiting)."""
        view = await self.get(execution_id)
        if not view.status.finished and view.status is not ExecutionStatus.WAITING:
            if replay:
                raise ExecutionTimeout(
                    f"Execution {execution_id} did not finish within {timeout:g} s; it goes on",
                    {
                        "execution_id": execution_id,
                        "timeout_seconds": timeout,
                        "status": view.status.value,
                    },
                )
            view = await self._time_out(execution_id)
        return view

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


class WorkflowChanged(InvalidState):
    """An execution was not stored: its workflow changed (updated, paused or resumed,
    deactivated, deleted) between the request's check and its insert. ``execute``
    (and ``execute_many``, for the items not stored) checks the request again."""


def _unstructured(execution: Execution) -> dict[str, Any]:

    data: dict[str, Any] = execution_json(execution)
    return data


def _worker_held(reservation: Any) -> bool:
    """Whether ``reservation`` (an asynchronous start's queue place) holds an idle worker
    for it now: the execution is then stored running at once, as a synchronous one."""
    return reservation is not None and bool(reservation.hold_worker())


def _limited(workflow: Workflow) -> bool:
    """Whether the store decides when ``workflow``'s executions start (#16: concurrency
    limits, a rate limit, a debounce): a synchronous one is not stored running at once."""
    return (
        workflow.max_concurrency is not None
        or workflow.concurrency is not None
        or workflow.rate_limit is not None
        or workflow.debounce is not None
    )
