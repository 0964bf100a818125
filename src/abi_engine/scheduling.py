"""Schedules: create, read, update, delete, and the loop that fires them.

The loop sleeps until the earliest ``next_due`` (an indexed column), reads
only the schedules that are due, and fires each due time exactly once: the
firing is a compare-and-set on the schedule's ``version`` (and ``next_due``)
committed in the same transaction as the executions it starts, so two
processes on one database never both fire a due time, and a crash never loses
one. Every other write of a schedule (update, delete) is a compare-and-set on
the version it read too, retried from a fresh read when it loses: an edit
never writes back a due time that a firing moved meanwhile.
"""

from __future__ import annotations

import builtins
import logging
import math
import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskStatus

from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import (
    AbiError,
    IntegrationMissing,
    InvalidRequest,
    InvalidSchedule,
    InvalidState,
    ScheduleNotFound,
    WorkflowNotFound,
)
from abi_engine.events import Event, EventPolicy, OutboxEvent
from abi_engine.ids import format_time, new_id, parse_time, utcnow
from abi_engine.limits import DESCRIPTION, NAME, Json, Number, Text
from abi_engine.models import (
    DeleteResult,
    ExecutionStatus,
    FiringFailure,
    IntervalUnit,
    LastExecution,
    MisfirePolicy,
    OverlapPolicy,
    Page,
    Schedule,
    ScheduleHistoryEntry,
    ScheduleSummary,
    ScheduleType,
    Workflow,
    WorkflowStatus,
)
from abi_engine.runtime.execution import Prepared
from abi_engine.schedule_math import (
    INTERVAL_UNITS,
    Timing,
    compile_cron,
    next_cron,
    next_interval,
    plan_missed,
    zone,
)
from abi_engine.services import Service, check_page
from abi_engine.storage.records import (
    DeleteSchedule,
    ExecutionRecord,
    FireSchedule,
    HistoryRecord,
    InsertSchedule,
    ScheduleQuery,
    ScheduleRecord,
    UpdateSchedule,
)

if TYPE_CHECKING:
    from abi_engine.executions import ExecutionService
    from abi_engine.notification_templates import NotificationTemplateService
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.base import Store
    from abi_engine.workflows import WorkflowService

__all__ = ["ScheduleRequest", "ScheduleService"]

log = logging.getLogger("abi_engine.scheduler")

MAX_CATCH_UP = 1000
#: How long before a due time the loop plans its firings (committed at the due time).
PLAN_AHEAD = 0.05
#: Lateness always tolerated, whatever ``misfire_grace_seconds`` says.
MIN_GRACE_SECONDS = 1.0
#: Attempts of an update or delete that keeps losing its compare-and-set to other writes.
WRITE_ATTEMPTS = 50
_UNFINISHED = {"queued", "running", "waiting"}


#: Field limits of :class:`ScheduleRequest` (see :mod:`abi_engine.limits`).
CRON = Text(min_length=1, max_length=256)
INTERVAL = Number(minimum=1, maximum=10 * 366 * 86400)
SCHEDULE_PARAMETERS = Json(max_bytes=65_536)
TIMEZONE = Text(min_length=1, max_length=64)
MISFIRE_GRACE = Number(minimum=0, maximum=7 * 86400)
CATCH_UP = Number(minimum=1, maximum=MAX_CATCH_UP)


@attrs.define(kw_only=True)
class ScheduleRequest:
    """The body of ``POST /workflows/{id}/schedules`` (and, merged, of ``PUT``)."""

    name: Annotated[str, NAME]
    description: Annotated[str, DESCRIPTION] | None = None
    schedule_type: ScheduleType
    cron_expression: Annotated[str, CRON] | None = None
    interval_value: Annotated[int, INTERVAL] | None = None
    interval_unit: IntervalUnit | None = None
    execution_time: datetime | None = None
    start_time: datetime | None = None
    parameters: Annotated[dict[str, Any], SCHEDULE_PARAMETERS] = attrs.Factory(dict)
    enabled: bool = True
    timezone: Annotated[str, TIMEZONE] = "UTC"
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    misfire_grace_seconds: Annotated[float, MISFIRE_GRACE] = 60.0
    catch_up_limit: Annotated[int, CATCH_UP] = 10
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP


UPDATABLE = tuple(a.name for a in attrs.fields(ScheduleRequest))


def _invalid(field: str, message: str) -> InvalidSchedule:
    return InvalidSchedule(
        f"Invalid value for '{field}': {message}", {"field": field, "reason": message}
    )


def _check(req: ScheduleRequest, now: datetime, *, creating: bool) -> None:
    """Rules on values; raise ``InvalidSchedule`` naming the field and the reason."""
    if not req.name.strip() or len(req.name) > 200:
        raise _invalid("name", "must be 1 to 200 characters")
    try:
        zone(req.timezone)
    except ValueError as exc:
        raise _invalid("timezone", str(exc)) from None
    if req.schedule_type is ScheduleType.CRON:
        if req.cron_expression is None:
            raise _invalid("cron_expression", "required for a cron schedule")
        try:
            compile_cron(req.cron_expression)
        except ValueError as exc:
            raise _invalid("cron_expression", str(exc)) from None
    elif req.schedule_type is ScheduleType.INTERVAL:
        if req.interval_value is None:
            raise _invalid("interval_value", "required for an interval schedule")
        if req.interval_value <= 0:
            raise _invalid("interval_value", "must be a positive integer")
        if req.interval_unit is None:
            raise _invalid("interval_unit", "required: seconds, minutes, hours or days")
        if req.interval_value * INTERVAL_UNITS[req.interval_unit.value] > 366 * 86400 * 10:
            raise _invalid("interval_value", "at most ten years")
    else:
        if req.execution_time is None:
            raise _invalid("execution_time", "required for a fixed_time schedule")
        if creating and req.execution_time <= now:
            raise _invalid("execution_time", "must be in the future")
    if not (
        math.isfinite(req.misfire_grace_seconds) and 0 <= req.misfire_grace_seconds <= 86400 * 7
    ):
        raise _invalid("misfire_grace_seconds", "must be between 0 and 604800")
    if not 1 <= req.catch_up_limit <= MAX_CATCH_UP:
        raise _invalid("catch_up_limit", f"must be between 1 and {MAX_CATCH_UP}")


def timing(record: ScheduleRecord) -> Timing:
    """When the schedule is due (see :mod:`abi_engine.schedule_math`)."""
    return Timing(
        kind=record.schedule_type,
        cron_expression=record.cron_expression or "",
        timezone=record.timezone,
        anchor=record.anchor_at,
        every_seconds=(record.interval_value or 1)
        * INTERVAL_UNITS[record.interval_unit or "seconds"],
        at=record.execution_time,
    )


def next_after(record: ScheduleRecord, after: datetime) -> datetime | None:
    """The schedule's first due time strictly after ``after`` (``None``: never again).

    ``timing(record).next_after(after)``, without building the ``Timing``: every
    create and update calls it.
    """
    if record.schedule_type == ScheduleType.CRON:
        return next_cron(record.cron_expression or "", record.timezone, after)
    if record.schedule_type == ScheduleType.INTERVAL:
        seconds = (record.interval_value or 1) * INTERVAL_UNITS[record.interval_unit or "seconds"]
        return next_interval(record.anchor_at, seconds, after)
    if record.execution_time is not None and record.execution_time > after:
        return record.execution_time
    return None


def _view(record: ScheduleRecord) -> Schedule:
    last = None
    if record.last_execution_id and record.last_status:
        last = LastExecution(
            execution_id=record.last_execution_id,
            status=ExecutionStatus(record.last_status),
            started_at=record.last_started_at,
            completed_at=record.last_completed_at,
        )
    failure = None
    if record.last_failure:
        failure = FiringFailure(
            at=parse_time(record.last_failure["at"]),
            due_at=parse_time(record.last_failure["due_at"])
            if record.last_failure.get("due_at")
            else None,
            code=record.last_failure["code"],
            message=record.last_failure["message"],
        )
    return Schedule(
        id=record.id,
        workflow_id=record.workflow_id,
        workflow_name=record.workflow_name,
        name=record.name,
        description=record.description,
        schedule_type=ScheduleType(record.schedule_type),
        cron_expression=record.cron_expression,
        interval_value=record.interval_value,
        interval_unit=IntervalUnit(record.interval_unit) if record.interval_unit else None,
        execution_time=record.execution_time,
        start_time=record.anchor_at if record.schedule_type == ScheduleType.INTERVAL else None,
        parameters=record.parameters,
        enabled=record.enabled,
        timezone=record.timezone,
        status=_status(record),
        next_execution=record.next_due if record.enabled else None,
        last_execution=last,
        misfire_policy=MisfirePolicy(record.misfire_policy),
        misfire_grace_seconds=record.misfire_grace_seconds,
        catch_up_limit=record.catch_up_limit,
        overlap_policy=OverlapPolicy(record.overlap_policy),
        failed_firings=record.failed_firings,
        last_failure=failure,
        created_at=record.created_at,
        updated_at=record.updated_at,
        created_by=record.created_by,
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def schedule_json(s: Schedule) -> dict[str, Any]:
    """``unstructure(schedule)``, written out (answers and events); a test compares the two."""
    data: dict[str, Any] = {"id": s.id, "workflow_id": s.workflow_id}
    data["workflow_name"] = s.workflow_name
    data["name"] = s.name
    data["description"] = s.description
    data["schedule_type"] = s.schedule_type.value
    data["cron_expression"] = s.cron_expression
    data["interval_value"] = s.interval_value
    data["interval_unit"] = None if s.interval_unit is None else s.interval_unit.value
    data["execution_time"] = _time(s.execution_time)
    data["start_time"] = _time(s.start_time)
    data["parameters"] = s.parameters
    data["enabled"] = s.enabled
    data["timezone"] = s.timezone
    data["status"] = s.status
    data["next_execution"] = _time(s.next_execution)
    last = s.last_execution
    data["last_execution"] = (
        None
        if last is None
        else {
            "execution_id": last.execution_id,
            "status": last.status.value,
            "started_at": _time(last.started_at),
            "completed_at": _time(last.completed_at),
        }
    )
    data["misfire_policy"] = s.misfire_policy.value
    data["misfire_grace_seconds"] = s.misfire_grace_seconds
    data["catch_up_limit"] = s.catch_up_limit
    data["overlap_policy"] = s.overlap_policy.value
    data["failed_firings"] = s.failed_firings
    failure = s.last_failure
    data["last_failure"] = (
        None
        if failure is None
        else {
            "at": format_time(failure.at),
            "due_at": _time(failure.due_at),
            "code": failure.code,
            "message": failure.message,
        }
    )
    data["created_at"] = format_time(s.created_at)
    data["updated_at"] = format_time(s.updated_at)
    data["created_by"] = s.created_by
    return data


def _status(record: ScheduleRecord) -> str:
    if record.completed:
        return "completed"
    return "active" if record.enabled else "disabled"


def _summary(record: ScheduleRecord) -> ScheduleSummary:
    view = _view(record)
    return ScheduleSummary(
        id=view.id,
        workflow_id=view.workflow_id,
        workflow_name=view.workflow_name,
        name=view.name,
        description=view.description,
        schedule_type=view.schedule_type,
        cron_expression=view.cron_expression,
        interval_value=view.interval_value,
        interval_unit=view.interval_unit,
        execution_time=view.execution_time,
        enabled=view.enabled,
        timezone=view.timezone,
        status=view.status,
        next_execution=view.next_execution,
        failed_firings=view.failed_firings,
        created_at=view.created_at,
        updated_at=view.updated_at,
    )


class ScheduleService(Service):
    """The business rules of schedules (``engine.schedules``) and their firing loop."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        *,
        executions: ExecutionService,
        workflows: WorkflowService,
        templates: NotificationTemplateService,
        events: EventPolicy,
        max_sleep: float = 1.0,
        batch: int = 500,
    ) -> None:
        super().__init__(store)
        self._runtime = runtime
        self._executions = executions
        self._workflows = workflows
        self._templates = templates
        self._event_policy = events
        self._max_sleep = max_sleep
        self._batch = batch
        self._wakeup = anyio.Event()
        self.fired = 0

    def _events(
        self, kind: str, schedule: Schedule | ScheduleRecord, at: datetime
    ) -> tuple[OutboxEvent, ...]:
        """The event of a change that happens ``at``: built now for ``abi_event`` hooks,
        else deferred to the write transaction (built only if a subscription wants it)."""

        def build() -> Event:
            view = _view(schedule) if isinstance(schedule, ScheduleRecord) else schedule
            return Event(type=kind, data=schedule_json(view), timestamp=at)

        return (self._event_policy.deferred(kind, build),)

    def _triggered(
        self,
        record: ScheduleRecord,
        executions: Sequence[ExecutionRecord],
        due: Sequence[datetime],
        at: datetime,
    ) -> tuple[OutboxEvent, ...]:
        """The ``schedule.triggered`` events of executions started for due times ``due``."""
        events: builtins.list[OutboxEvent] = []
        for execution, due_at in zip(executions, due, strict=True):

            def build(execution_id: str = execution.id, due_at: datetime = due_at) -> Event:
                return Event(
                    type="schedule.triggered",
                    data={
                        "schedule_id": record.id,
                        "workflow_id": record.workflow_id,
                        "execution_id": execution_id,
                        "due_at": unstructure(due_at),
                    },
                    timestamp=at,
                )

            events.append(self._event_policy.deferred("schedule.triggered", build))
        return tuple(events)

    def _failed(
        self,
        record: ScheduleRecord,
        error: AbiError | None,
        due: Sequence[datetime],
        at: datetime,
    ) -> tuple[OutboxEvent, ...]:
        """The ``schedule.failed`` events of due times that could not start an execution."""
        if error is None:
            return ()
        events: builtins.list[OutboxEvent] = []
        for due_at in due:

            def build(due_at: datetime = due_at) -> Event:
                return Event(
                    type="schedule.failed",
                    data={
                        "schedule_id": record.id,
                        "workflow_id": record.workflow_id,
                        "due_at": unstructure(due_at),
                        "error": error.to_dict(),
                    },
                    timestamp=at,
                )

            events.append(self._event_policy.deferred("schedule.failed", build))
        return tuple(events)

    # -- CRUD -------------------------------------------------------------------------------

    def _record(
        self, req: ScheduleRequest, *, base: ScheduleRecord | None, workflow_id: str, now: datetime
    ) -> ScheduleRecord:
        anchor = req.start_time or (base.anchor_at if base else now)
        record = ScheduleRecord(
            id=base.id if base else new_id("sched_"),
            workflow_id=workflow_id,
            name=req.name,
            description=req.description,
            schedule_type=req.schedule_type.value,
            cron_expression=req.cron_expression if req.schedule_type is ScheduleType.CRON else None,
            interval_value=req.interval_value
            if req.schedule_type is ScheduleType.INTERVAL
            else None,
            interval_unit=req.interval_unit.value
            if req.interval_unit and req.schedule_type is ScheduleType.INTERVAL
            else None,
            execution_time=req.execution_time
            if req.schedule_type is ScheduleType.FIXED_TIME
            else None,
            anchor_at=anchor,
            timezone=req.timezone,
            parameters=req.parameters,
            enabled=req.enabled,
            misfire_policy=req.misfire_policy.value,
            misfire_grace_seconds=req.misfire_grace_seconds,
            catch_up_limit=req.catch_up_limit,
            overlap_policy=req.overlap_policy.value,
            created_at=base.created_at if base else now,
            updated_at=now,
            created_by=base.created_by if base else None,
        )
        record.next_due = next_after(record, now)
        return record

    async def create(
        self,
        workflow_id: str,
        data: Mapping[str, Any] | ScheduleRequest,
        *,
        actor: Principal | None = None,
    ) -> Schedule:
        """Create a schedule of an existing workflow; ``InvalidSchedule`` names what is wrong."""
        req = (
            data
            if isinstance(data, ScheduleRequest)
            else structure(data, ScheduleRequest, error=InvalidSchedule)
        )
        if not isinstance(workflow_id, str) or not workflow_id:
            raise WorkflowNotFound(str(workflow_id))
        now = utcnow()
        _check(req, now, creating=True)
        workflow = await self.check_parameters(workflow_id, req.parameters)
        record = self._record(req, base=None, workflow_id=workflow_id, now=now)
        record.created_by = actor.user_id if actor else None
        record.workflow_name = workflow.name
        view = _view(record)
        # The workflow's existence is checked again inside the insert's transaction.
        created = await self._runtime.committer.submit(
            InsertSchedule(record=record, events=self._events("schedule.created", view, now))
        )
        if not created:
            raise WorkflowNotFound(workflow_id)
        self._wakeup.set()
        return view

    async def check_parameters(self, workflow_id: str, parameters: Any) -> Workflow:
        """Check a schedule's ``parameters`` as an execution of the workflow would; return it.

        So a schedule never fires parameters its workflow's type refuses:
        ``InvalidParameters`` (400, wrong shape) or ``ParameterValidationError``
        (422, wrong values) at once, instead of a failed firing at each due time.
        """
        # The workflow parsed once per version (the cache executions use).
        compiled = await self._executions.compiled(workflow_id)
        if compiled.template_ids:  # read, so the type checks the placeholders of those found
            await self._templates.find(compiled.template_ids)
        compiled.workflow_type.parse_parameters(parameters, compiled.config)
        return compiled.workflow

    async def _load(self, schedule_id: Any) -> ScheduleRecord:
        if not isinstance(schedule_id, str):
            raise ScheduleNotFound(str(schedule_id))
        record = await self._store.get_schedule(schedule_id)
        if record is None:
            raise ScheduleNotFound(schedule_id)
        return record

    async def get(self, schedule_id: str) -> Schedule:
        """The schedule with ``workflow_name``, ``next_execution`` and ``last_execution``."""
        return _view(await self._load(schedule_id))

    async def list(
        self,
        *,
        workflow_id: str | None = None,
        enabled: Any = None,
        page: Any = 1,
        page_size: Any = 10,
    ) -> Page[ScheduleSummary]:
        """One page of schedules, newest first."""
        page, page_size = check_page(page, page_size)
        if isinstance(enabled, str):
            lowered = enabled.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise InvalidRequest("'enabled' must be true or false", {"field": "enabled"})
            enabled = lowered in ("true", "1")
        elif enabled is not None and not isinstance(enabled, bool):
            raise InvalidRequest("'enabled' must be true or false", {"field": "enabled"})
        records, total = await self._store.list_schedules(
            ScheduleQuery(page=page, page_size=page_size, workflow_id=workflow_id, enabled=enabled),
        )
        return Page.build([_summary(r) for r in records], page, page_size, total)

    async def update(self, schedule_id: str, data: Mapping[str, Any]) -> Schedule:
        """Apply a PUT body: given fields replace current ones; timing changes recompute ``next_execution``.

        The write is a compare-and-set on the version read: when a firing (or
        another edit) commits in between, the body is applied again to the
        schedule as it then is, so the firing's due time and last execution
        stay. ``InvalidState`` only if it keeps losing ``WRITE_ATTEMPTS`` times.
        """
        if not isinstance(data, Mapping):
            raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
        for attempt in range(WRITE_ATTEMPTS):
            current = await self._load(schedule_id)
            unknown = sorted(set(data) - set(UPDATABLE))
            if unknown:
                raise InvalidRequest(
                    f"Unknown or read-only field(s): {', '.join(unknown)}", {"field": unknown[0]}
                )
            now = utcnow()
            record = self._updated(current, data, now)
            if attempt == 0 and record.parameters != current.parameters:
                # (parameters echoed unchanged, as a client sending back what it read, are
                # not checked again: like a repeated cron expression, only a change counts)
                await self.check_parameters(record.workflow_id, record.parameters)
            view = _view(record)
            applied = await self._runtime.committer.submit(
                UpdateSchedule(
                    record=record,
                    expected_version=current.version,
                    events=self._events("schedule.updated", view, now),
                )
            )
            if applied:
                self._wakeup.set()
                return view
            await _backoff(attempt)
        raise _kept_changing(schedule_id, "updated")

    def _updated(
        self, current: ScheduleRecord, data: Mapping[str, Any], now: datetime
    ) -> ScheduleRecord:
        """``current`` with the body applied (what the update writes, if nothing changed since)."""
        before = _as_request(current)
        merged = {k: v for k, v in unstructure(before).items() if v is not None}
        merged.update(data)
        req = structure(merged, ScheduleRequest, error=InvalidSchedule)
        # Only what changes counts: a body echoing the current values (GET, edit, PUT)
        # neither re-checks a past execution_time nor moves the due time.
        changed = {k for k in UPDATABLE if getattr(req, k) != getattr(before, k)}
        _check(req, now, creating=bool(changed & {"execution_time", "schedule_type"}))
        record = self._record(req, base=current, workflow_id=current.workflow_id, now=now)
        timing_changed = bool(
            changed
            & {
                "schedule_type",
                "cron_expression",
                "interval_value",
                "interval_unit",
                "execution_time",
                "start_time",
                "timezone",
            }
        )
        if (
            not timing_changed
            and current.next_due is not None
            and not (req.enabled and not current.enabled)
        ):
            record.next_due = current.next_due
        if not timing_changed and current.completed:
            record.completed, record.next_due = True, None
        record.workflow_name = current.workflow_name
        record.last_execution_id = current.last_execution_id
        record.last_status = current.last_status
        record.last_started_at, record.last_completed_at = (
            current.last_started_at,
            current.last_completed_at,
        )
        record.pending_runs = current.pending_runs
        record.version = current.version + 1
        return record

    async def delete(self, schedule_id: str) -> DeleteResult:
        """Delete a schedule (its past executions stay).

        A compare-and-set on the version read, like :meth:`update`, so the
        ``schedule.deleted`` event shows the schedule as it was deleted.
        """
        for attempt in range(WRITE_ATTEMPTS):
            current = await self._load(schedule_id)
            applied = await self._runtime.committer.submit(
                DeleteSchedule(
                    schedule_id=schedule_id,
                    expected_version=current.version,
                    events=self._events("schedule.deleted", current, utcnow()),
                )
            )
            if applied:
                return DeleteResult(id=schedule_id, deleted=True)
            await _backoff(attempt)
        raise _kept_changing(schedule_id, "deleted")

    async def history(
        self, schedule_id: str, *, page: Any = 1, page_size: Any = 10
    ) -> Page[ScheduleHistoryEntry]:
        """What happened at each due time, newest first (the last 200 are kept)."""
        await self._load(schedule_id)
        page, page_size = check_page(page, page_size)
        rows, total = await self._store.schedule_history(schedule_id, page, page_size)
        items = [
            ScheduleHistoryEntry(
                due_at=r.due_at,
                recorded_at=r.recorded_at,
                outcome=r.outcome,
                execution_id=r.execution_id,
                detail=r.detail,
            )
            for r in rows
        ]
        return Page.build(items, page, page_size, total)

    # -- firing -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look at the schedules again now."""
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The scheduler loop; runs until cancelled."""
        task_status.started()
        while True:
            self._wakeup = anyio.Event()
            try:
                upcoming = await self._store.next_schedule_due()
                now = utcnow()
                far = upcoming is None or (upcoming - now).total_seconds() > PLAN_AHEAD
                if far and len(await self._store.queued_schedules_ready(1)):
                    busy = await self.tick(now)  # a queued run whose predecessor ended
                    continue
                if far:
                    delay = self._max_sleep
                    if upcoming is not None:
                        delay = min(delay, (upcoming - now).total_seconds() - PLAN_AHEAD)
                    with anyio.move_on_after(max(0.0, delay)):
                        await self._wakeup.wait()
                    continue
                # Plan the due time's firings now, commit them at the due instant:
                # the work of planning does not make the executions late.
                assert upcoming is not None
                busy = await self.tick(max(upcoming, now), wait_until_due=True)
            except Exception:
                log.exception("scheduler tick failed")
                busy = False
                await anyio.sleep(min(self._max_sleep, 0.1))
            if busy:
                await anyio.lowlevel.checkpoint()

    async def tick(self, now: datetime | None = None, *, wait_until_due: bool = False) -> bool:
        """Fire what is due at ``now``; ``True`` when more may be waiting.

        With ``wait_until_due`` (``now`` slightly ahead), plan first, then
        sleep until ``now`` before committing the firings.
        """
        now = now or utcnow()
        due = await self._store.due_schedules(now, self._batch)
        ready = await self._store.queued_schedules_ready(self._batch)
        compiled: dict[str, Any] = {}  # each workflow is read and parsed once per tick
        plans = []
        for record in due:
            plans.append(await self._plan_due(record, now, compiled))
            await anyio.lowlevel.checkpoint()  # a long tick never holds the loop for long
        for record in ready:
            plans.append(await self._plan_queued(record, now, compiled))
            await anyio.lowlevel.checkpoint()
        if plans:
            if wait_until_due:
                ahead = (now - utcnow()).total_seconds()
                if ahead > 0:
                    await anyio.sleep(ahead)
            results = await self._runtime.committer.submit_many([op for op, _ in plans])
            for (op, prepared), applied in zip(plans, results, strict=True):
                if applied is True and op.failures and op.last_failure:
                    failure = op.last_failure
                    log.warning(
                        "schedule %s: %d due time(s) could not start an execution of %s: %s: %s",
                        op.schedule_id,
                        op.failures,
                        failure.get("workflow_id"),
                        failure["code"],
                        failure["message"],
                    )
                if applied is True:
                    for item in prepared:
                        self.fired += 1
                        if not self._runtime.submit(item, sync=False):
                            # Handed back to the store: recovery runs it once there is room.
                            log.warning("queue full; schedule %s execution waits", op.schedule_id)
        return len(due) >= self._batch or len(ready) >= self._batch

    async def _plan_due(
        self, record: ScheduleRecord, now: datetime, compiled: dict[str, Any]
    ) -> tuple[FireSchedule, builtins.list[Prepared]]:
        first = record.next_due
        assert first is not None
        history: builtins.list[HistoryRecord] = []

        def note(due_at: datetime | None, outcome: str, detail: str | None = None) -> None:
            history.append(
                HistoryRecord(
                    schedule_id=record.id,
                    due_at=due_at,
                    recorded_at=now,
                    outcome=outcome,
                    detail=detail,
                )
            )

        def fire(**changes: Any) -> FireSchedule:
            return FireSchedule(
                schedule_id=record.id,
                expected_version=record.version,
                expected_next_due=first,
                expected_pending=record.pending_runs,
                **changes,
            )

        if record.workflow_deleted:
            note(first, "workflow_deleted", "the workflow was deleted; the schedule is disabled")
            op = fire(next_due=None, pending_runs=0, enabled=False, history=tuple(history))
            return op, []
        # A running loop reaches a due time a few ms late; that is never a misfire.
        grace = timedelta(seconds=max(record.misfire_grace_seconds, MIN_GRACE_SECONDS))
        # Bounded work, however long the downtime: the due times are counted, not listed.
        missed = plan_missed(
            timing(record),
            first,
            now,
            grace=grace,
            policy=record.misfire_policy,
            catch_up_limit=record.catch_up_limit,
        )
        next_due = missed.next_due
        fire_times: builtins.list[datetime] = []
        pending = record.pending_runs
        if not record.enabled:
            note(
                missed.last,
                "skipped_disabled",
                _count_detail(missed.count, "the schedule is disabled"),
            )
            # Parked until enabled again (which computes a fresh due time), so a disabled
            # schedule costs no tick and no history line at each of its due times.
            next_due = None
        elif record.workflow_status != WorkflowStatus.ACTIVE.value:
            note(
                missed.last,
                "skipped_inactive",
                _count_detail(missed.count, "the workflow is inactive"),
            )
            next_due = missed.following
        else:
            fire_times = list(missed.fire)
            if missed.skipped:
                note(
                    first,
                    "skipped_misfire",
                    f"{missed.skipped} due time(s) missed ({record.misfire_policy})",
                )
            if fire_times and record.last_status in _UNFINISHED:
                overlap = record.overlap_policy
                if overlap == OverlapPolicy.SKIP.value:
                    note(
                        fire_times[-1],
                        "skipped_overlap",
                        f"execution {record.last_execution_id} still {record.last_status}",
                    )
                    fire_times = []
                elif overlap == OverlapPolicy.QUEUE.value:
                    if pending == 0:
                        pending = 1
                        note(
                            fire_times[-1],
                            "queued",
                            f"runs after execution {record.last_execution_id}",
                        )
                    else:
                        note(fire_times[-1], "skipped_overlap", "a run is already queued")
                    fire_times = []
        completed = next_due is None and record.schedule_type == ScheduleType.FIXED_TIME
        executions, prepared, failed = await self._prepare(
            record, fire_times, now, history, compiled
        )
        fired_at = [h.due_at or now for h in history if h.outcome == "fired"]
        op = fire(
            next_due=next_due,
            pending_runs=pending,
            completed=completed,
            executions=tuple(executions),
            history=tuple(history),
            events=(
                *self._triggered(record, executions, fired_at, now),
                *self._failed(record, failed, fire_times, now),
            ),
            **_failure_changes(record, failed, fire_times, now),
        )
        return op, prepared

    async def _plan_queued(
        self, record: ScheduleRecord, now: datetime, compiled: dict[str, Any]
    ) -> tuple[FireSchedule, builtins.list[Prepared]]:
        history: builtins.list[HistoryRecord] = []
        executions, prepared, failed = await self._prepare(record, [now], now, history, compiled)
        return FireSchedule(
            schedule_id=record.id,
            expected_version=record.version,
            expected_next_due=record.next_due,
            expected_pending=record.pending_runs,
            next_due=record.next_due,
            pending_runs=record.pending_runs - 1,
            completed=record.completed,
            executions=tuple(executions),
            history=tuple(history),
            events=(
                *self._triggered(record, executions, [now] * len(executions), now),
                *self._failed(record, failed, [now], now),
            ),
            **_failure_changes(record, failed, [now], now),
        ), prepared

    async def _prepare(
        self,
        record: ScheduleRecord,
        fire_times: builtins.list[datetime],
        now: datetime,
        history: builtins.list[HistoryRecord],
        compiled: dict[str, Any],
    ) -> tuple[builtins.list[ExecutionRecord], builtins.list[Prepared], AbiError | None]:
        """The executions of ``fire_times``, or the error that keeps them from starting."""
        executions: builtins.list[ExecutionRecord] = []
        prepared: builtins.list[Prepared] = []
        if not fire_times:
            return executions, prepared, None
        runtime = self._runtime
        try:
            if record.workflow_id not in compiled:
                try:
                    compiled[record.workflow_id] = await self._compile(record.workflow_id)
                except AbiError as exc:
                    compiled[record.workflow_id] = exc
            found = compiled[record.workflow_id]
            if isinstance(found, AbiError):
                raise found
            workflow, wtype, config, specs, template_ids = found
            if template_ids:
                await self._executions.check_templates(workflow.id, template_ids)
            params = wtype.parse_parameters(record.parameters, config)
        except AbiError as exc:
            for due in fire_times:
                history.append(
                    HistoryRecord(
                        schedule_id=record.id,
                        due_at=due,
                        recorded_at=now,
                        outcome="failed",
                        detail=f"{exc.code}: {exc.message}"[:500],
                    )
                )
            return executions, prepared, exc
        for due in fire_times:
            execution = ExecutionRecord(
                id=new_id("exec_"),
                workflow_id=workflow.id,
                workflow_type=workflow.type,
                workflow_name=workflow.name,
                status=ExecutionStatus.QUEUED,
                parameters=dict(record.parameters),
                configuration=workflow.configuration,
                plan=[s.name for s in specs],
                created_at=now,
                schedule_id=record.id,
                created_by=record.created_by,
                priority=1,
            )
            runtime.grant(execution)
            executions.append(execution)
            prepared.append(
                Prepared(
                    record=execution,
                    workflow_type=wtype,
                    config=config,
                    params=params,
                    specs=specs,
                    integration_ids=tuple(i.id for i in workflow.integrations),
                )
            )
            history.append(
                HistoryRecord(
                    schedule_id=record.id,
                    due_at=due,
                    recorded_at=now,
                    outcome="fired",
                    execution_id=execution.id,
                )
            )
        return executions, prepared, None

    async def _compile(self, workflow_id: str) -> tuple[Any, Any, Any, Any, Any]:
        """The workflow, its type, parsed configuration, steps and template ids; raises when
        it cannot run."""
        workflow = await self._store.get_workflow(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        wtype = self._workflows.workflow_type(workflow.type)
        config = wtype.parse_configuration(workflow.configuration)
        specs = wtype.steps(config)
        if any(i.required for i in workflow.integrations):
            connected = await self._store.existing_integration_ids(
                [i.id for i in workflow.integrations]
            )
            missing = [i.id for i in workflow.integrations if i.required and i.id not in connected]
            if missing:
                raise IntegrationMissing(  # as executing the workflow would answer
                    f"Required integration {missing[0]!r} is not connected",
                    {"workflow_id": workflow.id, "integration_id": missing[0], "missing": missing},
                )
        template_ids = tuple(self._workflows.template_ids(workflow))
        return workflow, wtype, config, specs, template_ids


async def _backoff(attempt: int) -> None:
    """Before trying a lost compare-and-set again: at once, then a short random wait."""
    if attempt:
        await anyio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _kept_changing(schedule_id: str, what: str) -> InvalidState:
    return InvalidState(
        f"Schedule {schedule_id} kept changing while it was being {what}; try again",
        {"schedule_id": schedule_id, "attempts": WRITE_ATTEMPTS},
    )


def _failure_changes(
    record: ScheduleRecord, error: AbiError | None, due: Sequence[datetime], at: datetime
) -> dict[str, Any]:
    """The ``failures`` and ``last_failure`` of a firing op (nothing when it started its runs)."""
    if error is None or not due:
        return {}
    return {
        "failures": len(due),
        "last_failure": {
            "at": format_time(at),
            "due_at": format_time(due[-1]),
            "code": error.code,
            "message": error.message[:500],
            "workflow_id": record.workflow_id,
        },
    }


def _count_detail(count: int, reason: str) -> str:
    return reason if count == 1 else f"{reason} ({count} due times)"


def _as_request(record: ScheduleRecord) -> ScheduleRequest:
    return ScheduleRequest(
        name=record.name,
        description=record.description,
        schedule_type=ScheduleType(record.schedule_type),
        cron_expression=record.cron_expression,
        interval_value=record.interval_value,
        interval_unit=IntervalUnit(record.interval_unit) if record.interval_unit else None,
        execution_time=record.execution_time,
        start_time=record.anchor_at if record.schedule_type == ScheduleType.INTERVAL else None,
        parameters=record.parameters,
        enabled=record.enabled,
        timezone=record.timezone,
        misfire_policy=MisfirePolicy(record.misfire_policy),
        misfire_grace_seconds=record.misfire_grace_seconds,
        catch_up_limit=record.catch_up_limit,
        overlap_policy=OverlapPolicy(record.overlap_policy),
    )
