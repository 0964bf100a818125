"""Schedule rows as records: the columns and decoder both stores share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abi_engine.storage._codec import from_ms, loads
from abi_engine.storage.records_schedules import ScheduleRecord

#: History lines kept per schedule (older ones are pruned as new ones come).
HISTORY_KEPT = 200


_COLUMNS = (
    "s.id, s.workflow_id, s.name, s.description, s.schedule_type, s.cron_expression,"
    " s.interval_value, s.interval_unit, s.execution_time, s.anchor_at, s.timezone,"
    " s.parameters, s.enabled, s.next_due, s.last_execution_id, s.misfire_policy,"
    " s.misfire_grace_seconds, s.catch_up_limit, s.overlap_policy, s.pending_runs,"
    " s.completed, s.created_at, s.updated_at, s.created_by,"
    " w.name, w.status, w.deleted_at, e.status, e.started_at, e.completed_at, s.version,"
    " s.failed_firings, s.last_failure, s.missed_count, s.consecutive_failures,"
    " s.max_consecutive_failures, s.paused_by, s.paused_reason, s.paused_at,"
    " s.resume_policy, s.end_time, s.max_runs, s.runs_count,"
    " s.jitter_seconds, s.exclude_dates, s.on_gap, s.on_fold,"
    " s.rrule, s.exclude_rrule, s.priority"
)


_FROM = (
    "FROM schedules s LEFT JOIN workflows w ON w.id = s.workflow_id"
    " LEFT JOIN executions e ON e.id = s.last_execution_id"
)


_TERMINAL = "('completed', 'failed', 'timed_out', 'cancelled', 'skipped')"


def _row(row: Sequence[Any]) -> ScheduleRecord:
    return ScheduleRecord(
        id=row[0],
        workflow_id=row[1],
        name=row[2],
        description=row[3],
        schedule_type=row[4],
        cron_expression=row[5],
        interval_value=row[6],
        interval_unit=row[7],
        execution_time=from_ms(row[8]),
        anchor_at=from_ms(row[9]),  # type: ignore[arg-type]
        timezone=row[10],
        parameters=loads(row[11]),
        enabled=bool(row[12]),
        next_due=from_ms(row[13]),
        last_execution_id=row[14],
        misfire_policy=row[15],
        misfire_grace_seconds=row[16],
        catch_up_limit=row[17],
        overlap_policy=row[18],
        pending_runs=row[19],
        completed=bool(row[20]),
        created_at=from_ms(row[21]),  # type: ignore[arg-type]
        updated_at=from_ms(row[22]),  # type: ignore[arg-type]
        created_by=row[23],
        workflow_name=row[24],
        workflow_status=row[25],
        workflow_deleted=row[24] is None or row[26] is not None,
        last_status=row[27],
        last_started_at=from_ms(row[28]),
        last_completed_at=from_ms(row[29]),
        version=row[30],
        failed_firings=row[31] or 0,
        last_failure=loads(row[32]) if row[32] else None,
        missed_count=row[33] or 0,
        consecutive_failures=row[34] or 0,
        max_consecutive_failures=row[35],
        paused_by=row[36],
        paused_reason=row[37],
        paused_at=from_ms(row[38]),
        resume_policy=row[39],
        end_time=from_ms(row[40]),
        max_runs=row[41],
        runs_count=row[42] or 0,
        jitter_seconds=row[43] or 0.0,
        exclude_dates=loads(row[44]) if row[44] else [],
        on_gap=row[45] or "shift",
        on_fold=row[46] or "first",
        rrule=row[47],
        exclude_rrule=row[48],
        priority=row[49],
    )
