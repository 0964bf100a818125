"""Execution rows as records: the columns and decoder both stores share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage._codec import from_ms, loads
from abi_engine.storage.records import (
    ExecutionRecord,
)

_EXEC_COLUMNS = (
    "e.id, e.workflow_id, e.workflow_type, e.status, e.parameters, e.configuration, e.plan,"
    " e.created_at, e.started_at, e.completed_at, e.duration_ms, e.result, e.error,"
    " e.callback_url, e.callback_secret, e.schedule_id, e.created_by, e.idempotency_key,"
    " e.priority, e.timeout_at, e.owner, e.lease_until, e.waiting_for, e.wake_at, w.name,"
    " e.rerun_of, e.pause_requested, e.queued_reason, e.queued_since, e.trace_context,"
    " e.parent_execution_id, e.scheduled_for, e.concurrency_key,"
    " (w.max_concurrency IS NOT NULL OR w.concurrency_limit IS NOT NULL),"
    " e.rate_key, e.rate_granted_at, e.debounce_key, e.debounced_by, e.not_before"
)


_FROM = "FROM executions e LEFT JOIN workflows w ON w.id = e.workflow_id"

#: The statuses by their stored value (a look-up: calling the enum runs Python code).
EXECUTION_STATUSES = {status.value: status for status in ExecutionStatus}
STEP_STATUSES = {status.value: status for status in StepStatus}


_UNFINISHED = "('queued', 'running', 'waiting', 'paused')"


def _row_to_record(row: Sequence[Any]) -> ExecutionRecord:
    # (a column most often NULL is not handed to a function: a wait reads one per call, #18)
    return ExecutionRecord(
        id=row[0],
        workflow_id=row[1],
        workflow_type=row[2],
        status=EXECUTION_STATUSES.get(row[3]) or ExecutionStatus(row[3]),
        parameters=loads(row[4]),
        configuration=loads(row[5]),
        plan=loads(row[6]),
        created_at=from_ms(row[7]),  # type: ignore[arg-type]
        started_at=None if row[8] is None else from_ms(row[8]),
        completed_at=None if row[9] is None else from_ms(row[9]),
        duration_ms=row[10],
        result=None if row[11] is None else loads(row[11]),
        error=None if row[12] is None else loads(row[12]),
        callback_url=row[13],
        callback_secret=row[14],
        schedule_id=row[15],
        created_by=row[16],
        idempotency_key=row[17],
        priority=row[18],
        timeout_at=None if row[19] is None else from_ms(row[19]),
        owner=row[20],
        lease_until=None if row[21] is None else from_ms(row[21]),
        waiting_for=row[22],
        wake_at=None if row[23] is None else from_ms(row[23]),
        workflow_name=row[24],
        rerun_of=row[25],
        pause_requested=bool(row[26]),
        queued_reason=row[27],
        queued_since=None if row[28] is None else from_ms(row[28]),
        trace_context=row[29],
        parent_execution_id=row[30],
        scheduled_for=None if row[31] is None else from_ms(row[31]),
        concurrency_key=row[32],
        limited=bool(row[33]),
        rate_key=row[34],
        rate_granted_at=None if row[35] is None else from_ms(row[35]),
        debounce_key=row[36],
        debounced_by=row[37],
        not_before=None if row[38] is None else from_ms(row[38]),
    )
