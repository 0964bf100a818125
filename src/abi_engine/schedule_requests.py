"""What a schedule is asked to be: the request bodies of create, update and preview,
their checks, and the record they become (with its next due time).

:class:`~abi_engine.schedules.ScheduleService` applies them; the views of a
stored schedule are in :mod:`abi_engine.schedule_views`.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Annotated, Any

import attrs

from abi_engine.errors import InvalidSchedule
from abi_engine.ids import new_id
from abi_engine.limits import DESCRIPTION, NAME, Json, Number, Text
from abi_engine.models import (
    FoldPolicy,
    GapPolicy,
    IntervalUnit,
    MisfirePolicy,
    OverlapPolicy,
    ResumeMode,
    ScheduleType,
)
from abi_engine.schedule_cron import compile_cron
from abi_engine.schedule_lifecycle import timing_of
from abi_engine.schedule_math import (
    INTERVAL_UNITS,
    jittered,
    next_by_rule,
    next_cron,
    next_interval,
    zone,
)
from abi_engine.schedule_rrule import compile_rrule, rule_walls
from abi_engine.schedule_views import definition
from abi_engine.storage.records_schedules import ScheduleRecord

__all__ = [
    "MAX_CATCH_UP",
    "MAX_PREVIEW",
    "UPDATABLE",
    "SchedulePreviewRequest",
    "ScheduleRequest",
    "as_request",
    "check_fires",
    "check_request",
    "next_after",
    "next_within",
    "to_record",
]

MAX_CATCH_UP = 1000


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


def check_request(req: ScheduleRequest, now: datetime, *, creating: bool) -> None:
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


def check_fires(record: ScheduleRecord, now: datetime) -> None:
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
        walls = rule_walls(record)
        if walls is None:
            return None
        return next_by_rule(walls, record.timezone, after, record.on_gap, record.on_fold)
    if record.execution_time is not None and record.execution_time > after:
        return record.execution_time
    return None


def next_within(record: ScheduleRecord, after: datetime) -> datetime | None:
    """:func:`next_after`, within the schedule's ``end_time`` and ``max_runs``."""
    if record.max_runs is not None and record.runs_count >= record.max_runs:
        return None
    due = next_after(record, after)
    if due is not None and record.end_time is not None and due > record.end_time:
        return None
    return due


def to_record(
    req: ScheduleRequest, *, base: ScheduleRecord | None, workflow_id: str, now: datetime
) -> ScheduleRecord:
    """The record a create (``base`` ``None``) or an update of ``base`` writes, its next
    due time computed."""
    anchor = req.start_time or (base.anchor_at if base else now)
    kind = req.schedule_type
    record = ScheduleRecord(
        id=base.id if base else new_id("sched_"),
        workflow_id=workflow_id,
        name=req.name,
        description=req.description,
        schedule_type=kind._value_,  # (an enum's .value is a property: 3x slower)
        cron_expression=req.cron_expression if kind is ScheduleType.CRON else None,
        rrule=req.rrule if kind is ScheduleType.RRULE else None,
        exclude_rrule=req.exclude_rrule,
        interval_value=req.interval_value if kind is ScheduleType.INTERVAL else None,
        interval_unit=req.interval_unit._value_
        if req.interval_unit and kind is ScheduleType.INTERVAL
        else None,
        execution_time=req.execution_time if kind is ScheduleType.FIXED_TIME else None,
        anchor_at=anchor,
        timezone=req.timezone,
        parameters=req.parameters,
        enabled=req.enabled,
        misfire_policy=req.misfire_policy._value_,
        misfire_grace_seconds=req.misfire_grace_seconds,
        catch_up_limit=req.catch_up_limit,
        overlap_policy=req.overlap_policy._value_,
        priority=req.priority,
        created_at=base.created_at if base else now,
        updated_at=now,
        created_by=base.created_by if base else None,
        max_consecutive_failures=req.max_consecutive_failures,
        end_time=req.end_time,
        max_runs=req.max_runs,
        runs_count=base.runs_count if base else 0,
        jitter_seconds=req.jitter_seconds,
        exclude_dates=sorted(set(req.exclude_dates)) if req.exclude_dates else [],
        on_gap=req.on_gap._value_,
        on_fold=req.on_fold._value_,
    )
    record.next_due = next_within(record, now)
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


def as_request(record: ScheduleRecord) -> ScheduleRequest:
    """The request that would create the schedule as stored (an update merges into it)."""
    return ScheduleRequest(**definition(record))
