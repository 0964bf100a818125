"""The schedules' resources as attrs classes (``/api/v1/workflow_schedules``).

Like the rest of :mod:`abi_engine.models` (which re-exports every name here),
each is turned into JSON by the one converter; every field is present,
``null`` when empty.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

from abi_engine.models_status import ExecutionStatus

__all__ = [
    "BackfillItem",
    "FiringFailure",
    "FoldPolicy",
    "GapPolicy",
    "IntervalUnit",
    "LastExecution",
    "MisfirePolicy",
    "OverlapPolicy",
    "ResumeMode",
    "Schedule",
    "ScheduleBackfill",
    "ScheduleHistoryEntry",
    "ScheduleOccurrence",
    "SchedulePreview",
    "ScheduleSummary",
    "ScheduleType",
]


class ScheduleType(enum.StrEnum):
    CRON = "cron"
    INTERVAL = "interval"
    FIXED_TIME = "fixed_time"
    RRULE = "rrule"


class IntervalUnit(enum.StrEnum):
    SECONDS = "seconds"
    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"


class MisfirePolicy(enum.StrEnum):
    """What a schedule does about due times missed while no engine ran.

    ``skip``: none of them run; ``run_once``: one run now stands for all of
    them; ``catch_up``: each missed time runs, up to ``catch_up_limit`` (the
    latest ones). A due time late by less than ``misfire_grace_seconds`` is
    not missed: it simply runs.
    """

    SKIP = "skip"
    RUN_ONCE = "run_once"
    CATCH_UP = "catch_up"


class ResumeMode(enum.StrEnum):
    """What enabling a paused schedule does about the due times that passed while paused.

    ``from_now``: none run, the schedule goes on from its next due time;
    ``run_once``: one run now stands for them (if there was any);
    ``catch_up``: the latest of them run, up to the schedule's ``catch_up_limit``.
    """

    FROM_NOW = "from_now"
    RUN_ONCE = "run_once"
    CATCH_UP = "catch_up"


class GapPolicy(enum.StrEnum):
    """A wall time of a cron or rrule schedule that does not exist (spring-forward gap):
    ``shift`` runs it at the end of the gap, ``skip`` does not run it."""

    SHIFT = "shift"
    SKIP = "skip"


class FoldPolicy(enum.StrEnum):
    """A wall time of a cron or rrule schedule that happens twice (fall-back fold):
    ``first`` runs it at its first pass, ``last`` at its second, ``both`` at each."""

    FIRST = "first"
    LAST = "last"
    BOTH = "both"


class OverlapPolicy(enum.StrEnum):
    """What a schedule does when its previous run is still going at the next due time.

    ``skip``: that due time is skipped (and recorded); ``allow``: run anyway;
    ``queue``: run once the previous run has ended (at most one waits).
    """

    SKIP = "skip"
    ALLOW = "allow"
    QUEUE = "queue"


@attrs.define(kw_only=True)
class FiringFailure:
    """A due time at which a schedule could not start an execution.

    ``at``: when it was recorded; ``due_at``: the due time; ``code`` and
    ``message``: the error that kept the execution from being created (as
    the API would answer it, e.g. ``INVALID_PARAMETERS``).
    """

    at: datetime
    due_at: datetime | None = None
    code: str
    message: str


@attrs.define(kw_only=True)
class LastExecution:
    """The execution a schedule started most recently."""

    execution_id: str
    status: ExecutionStatus
    started_at: datetime | None = None
    completed_at: datetime | None = None


@attrs.define(kw_only=True)
class Schedule:
    """A schedule that starts executions of a workflow.

    ``schedule_type`` decides which fields apply: ``cron_expression`` (cron),
    ``interval_value`` + ``interval_unit`` (interval, counted from
    ``start_time``), ``execution_time`` (fixed_time, fires once, then shows
    ``status`` ``completed``). ``timezone`` is an IANA name; cron runs on its
    wall clock. ``next_execution`` is ``None`` while disabled or done.
    ``failed_firings`` counts the due times at which no execution could be
    started (parameters the workflow's type refuses, a required integration or
    template missing...); ``last_failure`` tells the last one (``None`` before
    any). Each is also a ``failed`` line of the history and a
    ``schedule.failed`` event. ``failed_count`` and ``last_error`` are the
    same as ``failed_firings`` and ``last_failure`` (a due time of an inactive
    workflow counts too); ``missed_count`` counts the due times the misfire
    policy did not run (each firing that missed some emits
    ``schedule.missed``). ``consecutive_failures`` counts failed firings
    since an execution last started; at ``max_consecutive_failures`` (``None``:
    never) the schedule pauses itself. A paused (disabled) schedule tells
    ``paused_by`` (the user who disabled it; ``None`` when the engine did),
    ``paused_reason`` and ``paused_at``. Every type may end: no due time
    after ``end_time``, at most ``max_runs`` executions (``runs_count`` counts
    those started); then ``status`` is ``completed``. ``jitter_seconds``
    delays each run by a pseudo-random amount below it, the same for a due
    time in every process (``next_execution`` shows the delayed instant).
    ``exclude_dates`` (``YYYY-MM-DD`` in the schedule's zone) are days whose
    due times do not run (history ``skipped_excluded``). ``on_gap`` and
    ``on_fold`` choose what a cron wall time does in a daylight-saving gap or
    fold (see :class:`GapPolicy`, :class:`FoldPolicy`). An ``rrule`` schedule
    runs the RFC 5545 rule ``rrule`` from ``start_time`` (its DTSTART) on the
    zone's wall clock, less the wall times of ``exclude_rrule``.
    """

    id: str
    workflow_id: str
    workflow_name: str | None = None
    name: str
    description: str | None = None
    schedule_type: ScheduleType
    cron_expression: str | None = None
    interval_value: int | None = None
    interval_unit: IntervalUnit | None = None
    execution_time: datetime | None = None
    start_time: datetime | None = None
    parameters: dict[str, Any] = attrs.Factory(dict)
    enabled: bool = True
    timezone: str = "UTC"
    status: str = "active"
    next_execution: datetime | None = None
    last_execution: LastExecution | None = None
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    misfire_grace_seconds: float = 60.0
    catch_up_limit: int = 10
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    #: The priority of its executions, 0 to 9 (higher first; see docs/flow-control.md).
    priority: int = 5
    failed_firings: int = 0
    last_failure: FiringFailure | None = None
    failed_count: int = 0
    missed_count: int = 0
    last_error: FiringFailure | None = None
    consecutive_failures: int = 0
    max_consecutive_failures: int | None = None
    paused_by: str | None = None
    paused_reason: str | None = None
    paused_at: datetime | None = None
    end_time: datetime | None = None
    max_runs: int | None = None
    runs_count: int = 0
    jitter_seconds: float = 0.0
    exclude_dates: list[str] = attrs.Factory(list)
    on_gap: GapPolicy = GapPolicy.SHIFT
    on_fold: FoldPolicy = FoldPolicy.FIRST
    rrule: str | None = None
    exclude_rrule: str | None = None
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None


@attrs.define(kw_only=True)
class ScheduleSummary:
    """A schedule as list endpoints show it."""

    id: str
    workflow_id: str
    workflow_name: str | None = None
    name: str
    description: str | None = None
    schedule_type: ScheduleType
    cron_expression: str | None = None
    interval_value: int | None = None
    interval_unit: IntervalUnit | None = None
    execution_time: datetime | None = None
    enabled: bool
    timezone: str = "UTC"
    status: str = "active"
    next_execution: datetime | None = None
    failed_firings: int = 0
    failed_count: int = 0
    missed_count: int = 0
    paused_reason: str | None = None
    created_at: datetime
    updated_at: datetime


@attrs.define(kw_only=True)
class ScheduleOccurrence:
    """One coming due time of a schedule (a preview).

    ``due_at`` in UTC; ``local_time`` the same instant on the wall clock of the
    schedule's zone (RFC 3339 with its offset); ``shifted_by_gap``: the cron
    wall time did not exist (spring-forward gap) and runs at the end of the
    gap; ``repeated_by_fold``: the wall time happens twice (fall-back fold)
    and runs at its first pass only. ``run_at``: when the run starts (``due_at``
    delayed by the schedule's jitter; equal without one).
    """

    due_at: datetime
    local_time: str
    run_at: datetime
    shifted_by_gap: bool = False
    repeated_by_fold: bool = False


@attrs.define(kw_only=True)
class BackfillItem:
    """A due time of a backfill and the execution started for it (``None`` in a dry run)."""

    due_at: datetime
    execution_id: str | None = None


@attrs.define(kw_only=True)
class ScheduleBackfill:
    """What ``POST /workflow_schedules/{id}/backfill`` ran (or, ``dry_run``, would run):
    the due times of ``start`` to ``end``, oldest first, at most ``max_runs`` of them
    (``truncated``: the range has more)."""

    schedule_id: str
    dry_run: bool
    start: datetime
    end: datetime
    items: list[BackfillItem]
    truncated: bool = False


@attrs.define(kw_only=True)
class SchedulePreview:
    """The next due times of a schedule (saved or not), oldest first.

    ``schedule_id`` is ``None`` for an unsaved body; ``timezone`` is the
    schedule's zone; ``items`` hold at most the ``count`` asked for (fewer
    when the schedule ends: a fixed time has one).
    """

    schedule_id: str | None = None
    timezone: str
    items: list[ScheduleOccurrence]


@attrs.define(kw_only=True)
class ScheduleHistoryEntry:
    """What happened at one due time of a schedule.

    ``outcome``: ``fired``, ``queued`` (overlap policy queue),
    ``skipped_overlap``, ``skipped_disabled``, ``skipped_inactive``,
    ``skipped_misfire``, ``failed`` (the execution could not be created),
    ``workflow_deleted``, ``skipped_excluded`` (on an excluded date),
    ``paused`` (by the engine, after
    ``max_consecutive_failures``), ``resumed`` (enabled again; ``detail`` says
    how, and which due times passed while paused); ``detail`` says more.
    """

    due_at: datetime | None = None
    recorded_at: datetime
    outcome: str
    execution_id: str | None = None
    detail: str | None = None
