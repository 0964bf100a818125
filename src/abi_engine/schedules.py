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
from datetime import UTC, date, datetime
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
from abi_engine.ids import new_id, utcnow
from abi_engine.limits import DESCRIPTION, NAME, Json, Number, Text
from abi_engine.models import (
    DeleteResult,
    FoldPolicy,
    GapPolicy,
    IntervalUnit,
    MisfirePolicy,
    OverlapPolicy,
    Page,
    ResumeMode,
    Schedule,
    ScheduleBackfill,
    ScheduleHistoryEntry,
    SchedulePreview,
    ScheduleSummary,
    ScheduleType,
    Workflow,
)
from abi_engine.models_backfills import BackfillRun
from abi_engine.schedule_backfill import BackfillService
from abi_engine.schedule_lifecycle import pause_or_resume, timing_of
from abi_engine.schedule_lifecycle import preview as preview_of
from abi_engine.schedule_math import (
    INTERVAL_UNITS,
    compile_cron,
    jittered,
    next_cron,
    next_interval,
    zone,
)
from abi_engine.schedule_rrule import compile_rrule
from abi_engine.schedule_views import _ANCHORED, _summary, _view, schedule_json
from abi_engine.services import Service, check_flag, check_int, check_page
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

__all__ = ["ScheduleRequest", "ScheduleService", "schedule_json"]

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
MAX_FAILURES = Number(minimum=1, maximum=1_000_000)
MAX_RUNS = Number(minimum=1, maximum=1_000_000_000)
JITTER = Number(minimum=0, maximum=86400)
EXCLUDED = Json(max_bytes=16_384)
REASON = Text(min_length=1, max_length=500)
RULE = Text(min_length=1, max_length=1024)


@attrs.define(kw_only=True)
class ScheduleRequest:
    """The body of ``POST /workflows/{id}/schedules`` (and, merged, of ``PUT``)."""

    name: Annotated[str, NAME]
    description: Annotated[str, DESCRIPTION] | None = None
    schedule_type: ScheduleType
    cron_expression: Annotated[str, CRON] | None = None
    #: An RFC 5545 rule (``FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0``), from ``start_time``.
    rrule: Annotated[str, RULE] | None = None
    #: A rule of wall times the ``rrule`` leaves out (same ``DTSTART``).
    exclude_rrule: Annotated[str, RULE] | None = None
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
    #: Dates (``YYYY-MM-DD``, in the schedule's zone) whose due times do not run.
    exclude_dates: Annotated[list[str], EXCLUDED] = attrs.Factory(list)
    #: Each run starts up to this many seconds after its due time (stable per due time).
    jitter_seconds: Annotated[float, JITTER] = 0.0
    #: No due time after ``end_time``; at most ``max_runs`` executions (``None``: no bound).
    end_time: datetime | None = None
    max_runs: Annotated[int, MAX_RUNS] | None = None
    #: Failed firings in a row after which the schedule pauses itself (``None``: never).
    max_consecutive_failures: Annotated[int, MAX_FAILURES] | None = None
    #: Daylight-saving choices of a cron schedule: a gap's wall time ``shift``-ed to the
    #: end of the gap or ``skip``-ped; a fold's wall time at its ``first`` pass, ``last``
    #: pass or ``both``.
    on_gap: GapPolicy = GapPolicy.SHIFT
    on_fold: FoldPolicy = FoldPolicy.FIRST
    #: Why it is disabled (kept while disabled, shown as ``paused_reason``).
    paused_reason: Annotated[str, REASON] | None = None
    #: When it is enabled again: what about the due times passed while paused
    #: (``from_now`` when not given). Not stored.
    resume: ResumeMode | None = None
    #: The priority of its executions, 0 to 9 (higher first).
    priority: Annotated[int, Number(minimum=0, maximum=9)] = 5


UPDATABLE = tuple(a.name for a in attrs.fields(ScheduleRequest))

#: Due times a preview lists at most.
MAX_PREVIEW = 100


@attrs.define(kw_only=True)
class SchedulePreviewRequest(ScheduleRequest):
    """The body of ``POST /workflow_schedules/preview``: a schedule as created (``name``
    optional), ``workflow_id`` to check its ``parameters`` against (optional), and
    ``count`` (1 to 100) due times to list."""

    name: Annotated[str, NAME] = "preview"
    workflow_id: Annotated[str, Text(min_length=1, max_length=200)] | None = None
    count: Annotated[int, Number(minimum=1, maximum=MAX_PREVIEW)] = 10


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
        _check_exclusion(req, now)
    elif req.schedule_type is ScheduleType.RRULE:
        _check_rule(req, now)
    elif req.schedule_type is ScheduleType.INTERVAL:
        _check_exclusion(req, now)
        if req.interval_value is None:
            raise _invalid("interval_value", "required for an interval schedule")
        if req.interval_value <= 0:
            raise _invalid("interval_value", "must be a positive integer")
        if req.interval_unit is None:
            raise _invalid("interval_unit", "required: seconds, minutes, hours or days")
        if req.interval_value * INTERVAL_UNITS[req.interval_unit.value] > 366 * 86400 * 10:
            raise _invalid("interval_value", "at most ten years")
    else:
        _check_exclusion(req, now)
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
    _check_dates(req.exclude_dates)
    if req.end_time is not None:
        if creating and req.end_time <= now:
            raise _invalid("end_time", "must be in the future")
        if req.start_time is not None and req.end_time <= req.start_time:
            raise _invalid("end_time", "must be after start_time")


def _check_rule(req: ScheduleRequest, now: datetime) -> None:
    """``rrule`` (required) and ``exclude_rrule`` parse (from ``start_time``, else now)."""
    if req.rrule is None:
        raise _invalid("rrule", "required for an rrule schedule")
    start = req.start_time or now
    if not _EARLIEST <= start <= _LATEST:
        raise _invalid("start_time", "between 1970 and 2200 for an rrule schedule")
    try:
        compile_rrule(req.rrule, None, req.timezone, start)
    except ValueError as exc:
        raise _invalid("rrule", str(exc)) from None
    if req.exclude_rrule is not None:
        try:
            compile_rrule(req.rrule, req.exclude_rrule, req.timezone, start)
        except ValueError as exc:
            raise _invalid("exclude_rrule", str(exc)) from None


def _check_exclusion(req: ScheduleRequest, now: datetime) -> None:
    """A cron, interval or fixed-time schedule's ``exclude_rrule`` parses (from
    ``start_time``, else now, as an rrule schedule's)."""
    if req.exclude_rrule is None:
        return
    start = req.start_time or now
    if not _EARLIEST <= start <= _LATEST:
        raise _invalid("start_time", "between 1970 and 2200 with an exclude_rrule")
    try:
        compile_rrule(req.exclude_rrule, None, req.timezone, start)
    except ValueError as exc:
        raise _invalid("exclude_rrule", str(exc)) from None


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _check_fires(record: ScheduleRecord, now: datetime) -> None:
    """An ``rrule`` schedule whose rule (``COUNT``, ``UNTIL``, exclusions...) never fires
    again is refused, as a fixed time in the past is."""
    if (
        record.schedule_type == ScheduleType.RRULE
        and record.next_due is None
        and next_after(record, now) is None
    ):
        raise _invalid("rrule", "the rule has no due time after now")


def _check_dates(dates: list[str]) -> None:
    """``exclude_dates``: at most 1000 dates written ``YYYY-MM-DD``."""
    if len(dates) > 1000:
        raise _invalid("exclude_dates", "at most 1000 dates")
    for i, text in enumerate(dates):
        try:
            ok = len(text) == 10 and date.fromisoformat(text).isoformat() == text
        except ValueError:
            ok = False
        if not ok:
            raise _invalid(f"exclude_dates[{i}]", "a date written YYYY-MM-DD")


def next_after(record: ScheduleRecord, after: datetime) -> datetime | None:
    """The schedule's first due time strictly after ``after`` (``None``: never again).

    ``timing(record).next_after(after)``, without building the ``Timing``: every
    create and update calls it.
    """
    if record.schedule_type == ScheduleType.CRON:
        return next_cron(
            record.cron_expression or "", record.timezone, after, record.on_gap, record.on_fold
        )
    if record.schedule_type == ScheduleType.INTERVAL:
        seconds = (record.interval_value or 1) * INTERVAL_UNITS[record.interval_unit or "seconds"]
        return next_interval(record.anchor_at, seconds, after)
    if record.schedule_type == ScheduleType.RRULE:
        return timing_of(record).next_after(after)
    if record.execution_time is not None and record.execution_time > after:
        return record.execution_time
    return None


def _next_within(record: ScheduleRecord, after: datetime) -> datetime | None:
    """:func:`next_after`, within the schedule's ``end_time`` and ``max_runs``."""
    if record.max_runs is not None and record.runs_count >= record.max_runs:
        return None
    due = next_after(record, after)
    if due is not None and record.end_time is not None and due > record.end_time:
        return None
    return due


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
        #: Backfills as durable jobs (the engine runs :meth:`BackfillService.run`).
        self.backfills = BackfillService(store, executions, events)

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
            rrule=req.rrule if req.schedule_type is ScheduleType.RRULE else None,
            exclude_rrule=req.exclude_rrule,
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
            max_consecutive_failures=req.max_consecutive_failures,
            end_time=req.end_time,
            max_runs=req.max_runs,
            runs_count=base.runs_count if base else 0,
            jitter_seconds=req.jitter_seconds,
            exclude_dates=sorted(set(req.exclude_dates)),
            on_gap=req.on_gap.value,
            on_fold=req.on_fold.value,
        )
        record.next_due = _next_within(record, now)
        if record.jitter_seconds:
            record.next_due = jittered(
                timing_of(record), record.id, record.next_due, record.jitter_seconds
            )
        record.completed = record.next_due is None and (
            record.end_time is not None
            or record.max_runs is not None
            or record.schedule_type == ScheduleType.RRULE
        )
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
        _check_fires(record, now)
        record.created_by = actor.user_id if actor else None
        record.workflow_name = workflow.name
        if not record.enabled:  # created paused
            record.paused_by, record.paused_at = record.created_by, now
            record.paused_reason = req.paused_reason
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

    async def update(
        self, schedule_id: str, data: Mapping[str, Any], *, actor: Principal | None = None
    ) -> Schedule:
        """Apply a PUT body: given fields replace current ones; timing changes recompute ``next_execution``.

        The write is a compare-and-set on the version read: when a firing (or
        another edit) commits in between, the body is applied again to the
        schedule as it then is, so the firing's due time and last execution
        stay. ``InvalidState`` only if it keeps losing ``WRITE_ATTEMPTS`` times.

        Disabling records ``paused_by`` (``actor``), ``paused_reason`` (from the
        body) and ``paused_at``; enabling applies ``resume`` (``from_now``,
        ``run_once``, ``catch_up``) to the due times passed while paused. Each is
        a line of the history (``resumed``, saying what passed while paused).
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
            history = pause_or_resume(current, record, data, now, actor)
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
                    reset_failures=record.enabled and not current.enabled,
                    history=history,
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
        creating = bool(changed & {"execution_time", "schedule_type", "rrule", "exclude_rrule"})
        _check(req, now, creating=creating)
        record = self._record(req, base=current, workflow_id=current.workflow_id, now=now)
        if creating or "start_time" in changed:
            _check_fires(record, now)
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
                "end_time",
                "max_runs",
                "jitter_seconds",
                "on_gap",
                "on_fold",
                "rrule",
                "exclude_rrule",
            }
        )
        if (
            not timing_changed
            and current.next_due is not None
            and not (req.enabled and not current.enabled)
        ):
            record.next_due = current.next_due
            record.completed = False
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
        record.paused_by, record.paused_reason = current.paused_by, current.paused_reason
        record.paused_at, record.resume_policy = current.paused_at, current.resume_policy
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

    async def preview(self, schedule_id: str, *, count: Any = 10) -> SchedulePreview:
        """The schedule's next ``count`` (1 to 100) due times, from its next due time (from
        now when it is parked: what enabling it would give)."""
        wanted = check_int(count, "count", 1, MAX_PREVIEW)
        record = await self._load(schedule_id)
        first = None if record.completed else record.next_due or next_after(record, utcnow())
        return preview_of(record, first, wanted)

    async def preview_unsaved(self, data: Mapping[str, Any]) -> SchedulePreview:
        """The next due times of a schedule not saved: ``data`` is checked as
        :meth:`create` checks it (and its ``parameters`` against ``workflow_id``, if given)."""
        req = structure(data, SchedulePreviewRequest, error=InvalidSchedule)
        now = utcnow()
        _check(req, now, creating=True)
        if req.workflow_id is not None:
            await self.check_parameters(req.workflow_id, req.parameters)
        record = self._record(req, base=None, workflow_id=req.workflow_id or "", now=now)
        _check_fires(record, now)
        listed = preview_of(record, record.next_due, req.count)
        listed.schedule_id = None
        return listed

    async def backfill(
        self, schedule_id: str, data: Mapping[str, Any], *, actor: Principal | None = None
    ) -> ScheduleBackfill | BackfillRun:
        """Run the due times of a past range (``start`` to ``end``), at most ``max_runs``
        (1 to 1000), as a background job (its :class:`BackfillRun`, ``running``);
        ``dry_run`` lists them at once. See :mod:`abi_engine.schedule_backfill`."""
        record = await self._load(schedule_id)
        return await self.backfills.request(record, data, actor)

    async def get_backfill(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """A backfill of the schedule, with its progress."""
        await self._load(schedule_id)
        return await self.backfills.get(schedule_id, backfill_id)

    async def cancel_backfill(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """Stop a running backfill before its next due time (what started stays)."""
        await self._load(schedule_id)
        return await self.backfills.cancel(schedule_id, backfill_id)

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
        start_time=record.anchor_at if record.schedule_type in _ANCHORED else None,
        rrule=record.rrule,
        exclude_rrule=record.exclude_rrule,
        parameters=record.parameters,
        enabled=record.enabled,
        timezone=record.timezone,
        misfire_policy=MisfirePolicy(record.misfire_policy),
        misfire_grace_seconds=record.misfire_grace_seconds,
        catch_up_limit=record.catch_up_limit,
        overlap_policy=OverlapPolicy(record.overlap_policy),
        max_consecutive_failures=record.max_consecutive_failures,
        paused_reason=None if record.enabled else record.paused_reason,
        end_time=record.end_time,
        max_runs=record.max_runs,
        jitter_seconds=record.jitter_seconds,
        exclude_dates=list(record.exclude_dates),
        on_gap=GapPolicy(record.on_gap),
        on_fold=FoldPolicy(record.on_fold),
        priority=record.priority,
    )
