"""What a firing of a due schedule writes, as pure functions of the schedule's record
and the clock: which due times run, are missed or skipped (the misfire and overlap
decisions of :mod:`abi_engine.schedule_rules`), the executions they start, the
history lines, the failure counters and the auto-pause.

:class:`~abi_engine.runtime.scheduler.Scheduler` reads, prepares and commits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from abi_engine.errors import AbiError, InvalidState
from abi_engine.ids import format_time, new_id
from abi_engine.models import ExecutionStatus, ScheduleType, Workflow, WorkflowStatus
from abi_engine.schedule_exclusions import excluded_reason, has_exclusions
from abi_engine.schedule_math import INTERVAL_UNITS, Timing, jittered
from abi_engine.schedule_rrule import rule_walls
from abi_engine.schedule_rules import DueDecision, Missed, Note, decide_due, plan_missed
from abi_engine.storage.records import ExecutionRecord, stored_priority
from abi_engine.storage.records_schedules import FireSchedule, HistoryRecord, ScheduleRecord
from abi_engine.types import StepSpec

__all__ = [
    "MIN_GRACE_SECONDS",
    "bounded",
    "completes",
    "consecutive",
    "decide",
    "failure_changes",
    "fired_line",
    "firing",
    "history_line",
    "inactive_failure",
    "missed_due",
    "new_execution",
    "next_due_after",
    "not_excluded",
    "timing",
]

#: Lateness always tolerated, whatever ``misfire_grace_seconds`` says.
MIN_GRACE_SECONDS = 1.0


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
        on_gap=record.on_gap,
        on_fold=record.on_fold,
        walls=rule_walls(record),
    )


def bounded(
    record: ScheduleRecord, fire: list[datetime], next_due: datetime | None
) -> tuple[list[datetime], datetime | None]:
    """The due times to fire and the next due time within ``end_time`` and ``max_runs``
    (``None``: the schedule is done)."""
    if record.end_time is not None:
        fire = [due for due in fire if due <= record.end_time]
        if next_due is not None and next_due > record.end_time:
            next_due = None
    if record.max_runs is not None:
        fire = fire[: max(0, record.max_runs - record.runs_count)]
    return fire, next_due


def not_excluded(
    record: ScheduleRecord, missed: Missed, now: datetime
) -> tuple[Missed, list[HistoryRecord]]:
    """``missed`` without the excluded due times (an excluded date in the schedule's zone, a
    wall time of its exclusion rule), and their ``skipped_excluded`` history lines."""
    if not has_exclusions(record) or not missed.fire or not record.enabled:
        return missed, []
    kept, notes = [], []
    for due in missed.fire:
        reason = excluded_reason(record, due)
        if reason is not None:
            notes.append(history_line(record, Note(due, "skipped_excluded", reason), now))
        else:
            kept.append(due)
    return attrs.evolve(missed, fire=tuple(kept)), notes


def consecutive(
    record: ScheduleRecord,
    executions: Sequence[ExecutionRecord],
    failed: dict[str, Any],
    at: datetime,
    history: list[HistoryRecord],
) -> dict[str, Any]:
    """The ``consecutive_failures`` a firing leaves (``failed``: its failure changes), and
    the auto-pause once they reach ``max_consecutive_failures``: ``enabled`` ``False``,
    ``paused_reason``, ``paused_at``, and a ``paused`` line of the history."""
    if executions:
        return {"consecutive_failures": 0}
    count = record.consecutive_failures + failed.get("failures", 0)
    changes: dict[str, Any] = {"consecutive_failures": count}
    limit = record.max_consecutive_failures
    if failed and limit is not None and count >= limit and record.enabled:
        reason = (
            f"{count} consecutive failed firings (max_consecutive_failures {limit}),"
            f" last: {failed['last_failure']['code']}"
        )
        changes.update(enabled=False, paused_at=at, paused_reason=reason)
        history.append(
            HistoryRecord(
                schedule_id=record.id, due_at=None, recorded_at=at, outcome="paused", detail=reason
            )
        )
    return changes


def history_line(record: ScheduleRecord, note: Note, now: datetime) -> HistoryRecord:
    return HistoryRecord(
        schedule_id=record.id,
        due_at=note.due_at,
        recorded_at=now,
        outcome=note.outcome,
        detail=note.detail,
    )


def failure_changes(
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


def firing(record: ScheduleRecord, **changes: Any) -> FireSchedule:
    """The compare-and-set write of a firing: ``changes`` applied if the schedule is still
    as read (its version, next due time and pending runs)."""
    return FireSchedule(
        schedule_id=record.id,
        expected_version=record.version,
        expected_next_due=record.next_due,
        expected_pending=record.pending_runs,
        **changes,
    )


def missed_due(record: ScheduleRecord, first: datetime, now: datetime) -> Missed:
    """The due times from ``first`` up to ``now``: those to run, and the late ones the
    misfire (or resume) policy leaves out, counted, not listed."""
    # A running loop reaches a due time a few ms late; that is never a misfire.
    grace = timedelta(seconds=max(record.misfire_grace_seconds, MIN_GRACE_SECONDS))
    if record.resume_policy:  # due times passed while paused are never "on time"
        grace = timedelta(seconds=MIN_GRACE_SECONDS)
    grace += timedelta(seconds=record.jitter_seconds)  # a delayed run is not late
    # Bounded work, however long the downtime: the due times are counted, not listed.
    return plan_missed(
        timing(record),
        first,
        now,
        grace=grace,
        # A resume (run_once, catch_up) decides once about the due times passed while paused.
        policy=record.resume_policy or record.misfire_policy,
        catch_up_limit=record.catch_up_limit,
    )


def decide(record: ScheduleRecord, missed: Missed, first: datetime) -> DueDecision:
    """What :func:`~abi_engine.schedule_rules.decide_due` says of the schedule's due times."""
    return decide_due(
        missed,
        first=first,
        enabled=record.enabled,
        workflow_active=record.workflow_status == WorkflowStatus.ACTIVE.value,
        misfire_policy=record.resume_policy or record.misfire_policy,
        overlap_policy=record.overlap_policy,
        last_status=record.last_status,
        last_execution_id=record.last_execution_id,
        pending_runs=record.pending_runs,
    )


def next_due_after(record: ScheduleRecord, next_due: datetime | None, runs: int) -> datetime | None:
    """The next due time once ``runs`` executions started (``None`` at ``max_runs``), jittered."""
    if record.max_runs is not None and record.runs_count + runs >= record.max_runs:
        next_due = None  # max_runs reached: done
    return jittered(timing(record), record.id, next_due, record.jitter_seconds)


def inactive_failure(
    record: ScheduleRecord,
    decision: DueDecision,
    missed: Missed,
    failed: AbiError | None,
    fire_times: Sequence[datetime],
) -> tuple[AbiError | None, Sequence[datetime]]:
    """The error of the firing and the due times it failed: never silent, a due time of
    an inactive workflow is a firing that failed."""
    if not any(note.outcome == "skipped_inactive" for note in decision.notes):
        return failed, fire_times
    error = InvalidState(
        f"Workflow {record.workflow_id!r} is inactive; the due time did not run",
        {"workflow_id": record.workflow_id},
    )
    return error, [missed.last] * min(missed.count, 1)


def completes(record: ScheduleRecord, next_due: datetime | None) -> bool:
    """Whether the schedule is done once it has no next due time."""
    return next_due is None and (
        record.schedule_type in (ScheduleType.FIXED_TIME, ScheduleType.RRULE)
        or record.end_time is not None
        or record.max_runs is not None
    )


def new_execution(
    record: ScheduleRecord,
    workflow: Workflow,
    specs: Sequence[StepSpec],
    due: datetime,
    now: datetime,
    trace_context: str | None,
) -> ExecutionRecord:
    """The queued execution the schedule starts for the due time ``due``."""
    return ExecutionRecord(
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
        priority=stored_priority(record.priority),
        trace_context=trace_context,
        scheduled_for=due,
    )


def fired_line(
    record: ScheduleRecord, due: datetime, execution_id: str, now: datetime
) -> HistoryRecord:
    """The ``fired`` line of the history: the due time started ``execution_id``."""
    return HistoryRecord(
        schedule_id=record.id,
        due_at=due,
        recorded_at=now,
        outcome="fired",
        execution_id=execution_id,
    )
