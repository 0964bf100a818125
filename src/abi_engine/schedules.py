"""Schedules: create, read, update, delete (``engine.schedules``).

The loop that fires them is :class:`abi_engine.runtime.scheduler.Scheduler`:
each firing is a compare-and-set on the schedule's ``version`` (and
``next_due``) committed in the same transaction as the executions it starts,
so two processes on one database never both fire a due time, and a crash
never loses one. Every other write of a schedule (update, delete) is a compare-and-set on
the version it read too, retried from a fresh read when it loses: an edit
never writes back a due time that a firing moved meanwhile.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.lowlevel
import attrs

from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import (
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
)
from abi_engine.schedule_math import (
    INTERVAL_UNITS,
    compile_cron,
    next_cron,
    next_interval,
    zone,
)
from abi_engine.services import Service, check_flag, check_page
from abi_engine.storage.records import (
    DeleteSchedule,
    InsertSchedule,
    ScheduleQuery,
    ScheduleRecord,
    UpdateSchedule,
)

if TYPE_CHECKING:
    from abi_engine.executions import ExecutionService
    from abi_engine.notification_templates import NotificationTemplateService
    from abi_engine.runtime.commit import GroupCommitter
    from abi_engine.storage.base import Store

__all__ = ["ScheduleRequest", "ScheduleService"]

log = logging.getLogger("abi_engine.scheduler")

MAX_CATCH_UP = 1000
#: Attempts of an update or delete that keeps losing its compare-and-set to other writes.
WRITE_ATTEMPTS = 50


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
    #: The priority of its executions, 0 to 9 (higher first).
    priority: Annotated[int, Number(minimum=0, maximum=9)] = 5


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
        priority=record.priority,
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
    data["priority"] = s.priority
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
    """The business rules of schedules (``engine.schedules``); the loop firing them is
    :class:`~abi_engine.runtime.scheduler.Scheduler` (``engine.scheduler``)."""

    def __init__(
        self,
        store: Store,
        committer: GroupCommitter,
        *,
        executions: ExecutionService,
        templates: NotificationTemplateService,
        events: EventPolicy,
        wake: Callable[[], None],
    ) -> None:
        super().__init__(store)
        self._committer = committer
        self._executions = executions
        self._templates = templates
        self._event_policy = events
        self._wake = wake

    def _events(
        self, kind: str, schedule: Schedule | ScheduleRecord, at: datetime
    ) -> tuple[OutboxEvent, ...]:
        """The event of a change that happens ``at``: built now for ``abi_event`` hooks,
        else deferred to the write transaction (built only if a subscription wants it)."""

        def build() -> Event:
            view = _view(schedule) if isinstance(schedule, ScheduleRecord) else schedule
            return Event(type=kind, data=schedule_json(view), timestamp=at)

        return (self._event_policy.deferred(kind, build),)

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
            priority=req.priority,
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
        created = await self._committer.submit(
            InsertSchedule(record=record, events=self._events("schedule.created", view, now))
        )
        if not created:
            raise WorkflowNotFound(workflow_id)
        self._wake()
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
        enabled = check_flag(enabled, "enabled")
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
            applied = await self._committer.submit(
                UpdateSchedule(
                    record=record,
                    expected_version=current.version,
                    events=self._events("schedule.updated", view, now),
                )
            )
            if applied:
                self._wake()
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
            applied = await self._committer.submit(
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


async def _backoff(attempt: int) -> None:
    """Before trying a lost compare-and-set again: at once, then a short random wait."""
    if attempt:
        await anyio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _kept_changing(schedule_id: str, what: str) -> InvalidState:
    return InvalidState(
        f"Schedule {schedule_id} kept changing while it was being {what}; try again",
        {"schedule_id": schedule_id, "attempts": WRITE_ATTEMPTS},
    )


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
        priority=record.priority,
    )
