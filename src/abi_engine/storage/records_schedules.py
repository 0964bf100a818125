"""Internal records of schedules and the write operations on them (see
:mod:`abi_engine.storage.records`: a firing is one conditional write).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from abi_engine.storage.records import ExecutionRecord, WriteOp

__all__ = [
    "DeleteSchedule",
    "FireSchedule",
    "HistoryRecord",
    "InsertSchedule",
    "ScheduleQuery",
    "ScheduleRecord",
    "UpdateSchedule",
]


@attrs.define(kw_only=True)
class ScheduleRecord:
    """Everything stored about a schedule.

    ``next_due`` is the indexed due time the scheduler's tick reads (``None``
    when nothing is due: fixed time done); ``anchor_at`` is where intervals
    count from; ``pending_runs`` counts runs queued by the ``queue`` overlap
    policy; ``version`` counts the writes of the row (each write is a
    compare-and-set on the version it read, and adds one). The ``workflow_*``
    and ``last_*`` fields are read-only joins.
    """

    id: str
    workflow_id: str
    name: str
    description: str | None = None
    schedule_type: str
    cron_expression: str | None = None
    interval_value: int | None = None
    interval_unit: str | None = None
    execution_time: datetime | None = None
    anchor_at: datetime
    timezone: str = "UTC"
    parameters: dict[str, Any] = attrs.Factory(dict)
    enabled: bool = True
    next_due: datetime | None = None
    last_execution_id: str | None = None
    misfire_policy: str = "run_once"
    misfire_grace_seconds: float = 60.0
    catch_up_limit: int = 10
    overlap_policy: str = "skip"
    priority: int = 5
    pending_runs: int = 0
    completed: bool = False
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None
    version: int = 0
    workflow_name: str | None = None
    workflow_status: str | None = None
    workflow_deleted: bool = False
    last_status: str | None = None
    last_started_at: datetime | None = None
    last_completed_at: datetime | None = None
    #: Due times at which no execution could be started, and the last such failure
    #: (``{"at", "due_at", "code", "message"}``).
    failed_firings: int = 0
    last_failure: dict[str, Any] | None = None
    #: Due times the misfire policy did not run; failed firings in a row; the auto-pause limit.
    missed_count: int = 0
    consecutive_failures: int = 0
    max_consecutive_failures: int | None = None
    #: Who paused it (a user id; ``None``: the engine, or never), why and when.
    paused_by: str | None = None
    paused_reason: str | None = None
    paused_at: datetime | None = None
    #: Set by a resume (``run_once``, ``catch_up``): the misfire policy of the next firing.
    resume_policy: str | None = None
    #: No due time after ``end_time``; at most ``max_runs`` runs; runs started so far.
    end_time: datetime | None = None
    max_runs: int | None = None
    runs_count: int = 0
    #: Runs start up to this many seconds after their due time (``next_due`` is the
    #: delayed instant; the due time it stands for is the last one at or before it).
    jitter_seconds: float = 0.0
    #: Dates (``YYYY-MM-DD``, in the schedule's zone) whose due times do not run.
    exclude_dates: list[str] = attrs.Factory(list)
    #: Daylight-saving choices of a wall-clock schedule (see abi_engine.schedule_dst).
    on_gap: str = "shift"
    on_fold: str = "first"
    #: An RFC 5545 rule (schedule_type rrule) and the rule of wall times it leaves out.
    rrule: str | None = None
    exclude_rrule: str | None = None


@attrs.frozen(kw_only=True)
class HistoryRecord:
    """One line of a schedule's history."""

    schedule_id: str
    due_at: datetime | None
    recorded_at: datetime
    outcome: str
    execution_id: str | None = None
    detail: str | None = None


@attrs.frozen(kw_only=True)
class ScheduleQuery:
    """Filters and page of a schedule listing (newest first)."""

    page: int = 1
    page_size: int = 10
    workflow_id: str | None = None
    enabled: bool | None = None


@attrs.frozen(kw_only=True)
class InsertSchedule(WriteOp):
    """Insert a new schedule; applies ``False`` when its workflow does not exist (or, with
    ``workflow_version``, is no longer at that version: its parameters were checked
    against that one)."""

    record: ScheduleRecord
    workflow_version: datetime | None = None


@attrs.frozen(kw_only=True)
class UpdateSchedule(WriteOp):
    """Replace a schedule's definition and due time, if it is still at ``expected_version``.

    Applies ``False`` when the schedule does not exist or was written since
    (fired, edited): the caller reads it again and recomputes, so a firing
    committed in between is never undone.
    """

    record: ScheduleRecord
    expected_version: int
    #: Start counting failed firings in a row again (the schedule is enabled anew).
    reset_failures: bool = False
    #: History lines written with it (paused, resumed).
    history: tuple[HistoryRecord, ...] = ()


@attrs.frozen(kw_only=True)
class DeleteSchedule(WriteOp):
    """Delete a schedule and its history, if it is still at ``expected_version``.

    Applies ``False`` when it does not exist or was written since.
    """

    schedule_id: str
    expected_version: int


@attrs.frozen(kw_only=True)
class FireSchedule(WriteOp):
    """Advance a schedule past a due time and start its execution(s), exactly once.

    A compare-and-set on ``version`` (``expected_version``, the version the
    firing was planned from), ``next_due`` (``expected_next_due``) and
    ``pending_runs`` (``expected_pending``): of several processes firing the
    same due time, one applies, the others get ``False``; a firing planned
    before an edit committed gets ``False`` too (the next tick plans it again
    from the edited schedule). The executions and history lines are written
    in the same transaction. Applying an op whose executions are already
    stored (its own earlier commit) answers ``True`` again and writes nothing.
    """

    schedule_id: str
    expected_version: int
    expected_next_due: datetime | None
    expected_pending: int
    next_due: datetime | None
    pending_runs: int
    completed: bool = False
    enabled: bool | None = None
    executions: tuple[ExecutionRecord, ...] = ()
    history: tuple[HistoryRecord, ...] = ()
    #: Due times of this firing that could not start an execution (added to
    #: ``failed_firings``), and the last of them (replaces ``last_failure``).
    failures: int = 0
    last_failure: dict[str, Any] | None = None
    #: Due times the misfire policy did not run (added to ``missed_count``).
    missed: int = 0
    #: Failed firings in a row after this one (``0`` once an execution starts).
    consecutive_failures: int = 0
    #: Set when this firing pauses the schedule (``max_consecutive_failures`` reached).
    paused_reason: str | None = None
    paused_at: datetime | None = None
    #: This firing applied the resume policy (cleared for the next ones).
    resumed: bool = False
    #: Executions it starts (added to ``runs_count``).
    runs: int = 0
