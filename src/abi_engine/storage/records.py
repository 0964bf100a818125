"""Internal records of the execution runtime and the write operations on them.

The runtime never writes row by row: it hands the store a batch of write
operations (:class:`WriteOp` subclasses), which the store applies in one
transaction (group commit). Each operation that a concurrent change can make
moot is *conditional* and reports whether it applied.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from abi_engine.events import OutboxEvent
from abi_engine.models import ExecutionStatus, StepStatus

__all__ = [
    "TIMEOUT_SUFFIX",
    "CancelExecution",
    "CheckpointStep",
    "ClaimExecution",
    "DeliverSignal",
    "ExecutionQuery",
    "ExecutionRecord",
    "FinishExecution",
    "InsertEvents",
    "InsertExecution",
    "ReleaseExecutions",
    "StepRecord",
    "SuspendExecution",
    "WriteOp",
]

#: Suffix of the signal recorded when a wait for signal ``name`` times out.
TIMEOUT_SUFFIX = "#timeout"


@attrs.define(kw_only=True)
class ExecutionRecord:
    """Everything stored about an execution (the API shows a part of it).

    ``plan`` lists the step names known when the execution was created;
    ``configuration`` is the workflow's configuration at that time, so a
    resumed execution runs exactly what was started. ``priority`` 0 is a
    synchronous caller waiting, 1 an asynchronous one. ``owner`` is the
    runtime node that holds the execution until ``lease_until``.
    """

    id: str
    workflow_id: str
    workflow_type: str
    status: ExecutionStatus
    parameters: dict[str, Any] = attrs.Factory(dict)
    configuration: dict[str, Any] = attrs.Factory(dict)
    plan: list[str] = attrs.Factory(list)
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    callback_url: str | None = None
    callback_secret: str | None = None
    schedule_id: str | None = None
    created_by: str | None = None
    idempotency_key: str | None = None
    priority: int = 1
    timeout_at: datetime | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    waiting_for: str | None = None
    wake_at: datetime | None = None
    workflow_name: str | None = None


@attrs.define(kw_only=True)
class StepRecord:
    """A step as checkpointed: written once it has finished (or was skipped)."""

    execution_id: str
    index: int
    name: str
    status: StepStatus
    started_at: datetime | None = None
    completed_at: datetime | None = None
    duration_ms: int | None = None
    attempts: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    #: ``result`` already serialized to JSON (saves serializing twice).
    result_json: str | None = None


@attrs.frozen(kw_only=True)
class ExecutionQuery:
    """Filters and page of an execution listing (newest first)."""

    page: int = 1
    page_size: int = 10
    workflow_id: str | None = None
    status: ExecutionStatus | None = None
    start: datetime | None = None
    end: datetime | None = None


@attrs.frozen(kw_only=True)
class WriteOp:
    """Base of the write operations; ``events`` are written in the same transaction."""

    events: tuple[OutboxEvent, ...] = ()


@attrs.frozen(kw_only=True)
class InsertExecution(WriteOp):
    """Insert a new execution. Applies ``False`` when its idempotency key is taken."""

    record: ExecutionRecord


@attrs.frozen(kw_only=True)
class ClaimExecution(WriteOp):
    """Mark an execution ``running`` for ``owner`` (if queued, or running and owned)."""

    execution_id: str
    owner: str
    lease_until: datetime
    started_at: datetime


@attrs.frozen(kw_only=True)
class CheckpointStep(WriteOp):
    """Store a finished step, if ``owner`` still runs the execution."""

    step: StepRecord
    owner: str
    lease_until: datetime


@attrs.frozen(kw_only=True)
class SaveProgress(WriteOp):
    """Keep how far a running step got (``payload``, JSON) under ``name``, replacing
    what was kept before; applies ``False`` unless ``owner`` runs the execution.

    Kept with the execution's signals under a name no signal can have
    (``#progress:<step index>``), read back when the step runs again.
    """

    execution_id: str
    owner: str
    name: str
    payload_json: str
    saved_at: datetime


@attrs.frozen(kw_only=True)
class FinishExecution(WriteOp):
    """End an execution (and update its workflow's stats) unless it already ended.

    With ``owner`` set, applies only while that owner runs it. ``step`` is the
    last step's record, written in the same transaction.
    """

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    completed_at: datetime
    duration_ms: int
    result: Any = None
    error: dict[str, Any] | None = None
    owner: str | None = None
    step: StepRecord | None = None
    result_json: str | None = None


@attrs.frozen(kw_only=True)
class SuspendExecution(WriteOp):
    """Park a running execution as ``waiting`` for a signal (or until ``wake_at``).

    The execution's own timeout ends here (unless ``keep_timeout``: a durable
    sleep): it bounds running time, and a wait is bounded by its own ``wake_at``. Applies ``"ready"`` instead when the
    signal has already arrived (the step then runs again at once)."""

    execution_id: str
    owner: str
    waiting_for: str
    wake_at: datetime | None = None
    step: StepRecord | None = None
    #: A durable sleep keeps the execution's timeout (it is running time).
    keep_timeout: bool = False


@attrs.frozen(kw_only=True)
class DeliverSignal(WriteOp):
    """Record signal ``name`` and queue the execution if it waits for it.

    Applies ``"queued"`` when the execution was waiting for it, ``"stored"``
    when kept for later, ``None`` when the execution has ended or the signal
    was already given.
    """

    execution_id: str
    name: str
    payload: Any
    created_at: datetime
    require_waiting: bool = False


@attrs.frozen(kw_only=True)
class CancelExecution(WriteOp):
    """End a queued, running or waiting execution as ``cancelled`` or ``timed_out``."""

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    completed_at: datetime
    error: dict[str, Any] | None = None
    step: StepRecord | None = None


@attrs.frozen(kw_only=True)
class ReleaseExecutions(WriteOp):
    """Hand back every unfinished execution ``owner`` holds (status ``queued``)."""

    owner: str


@attrs.frozen(kw_only=True)
class InsertEvents(WriteOp):
    """Only write ``events`` to the outbox."""


# -- schedules ---------------------------------------------------------------------------


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
    """Insert a new schedule; applies ``False`` when its workflow does not exist."""

    record: ScheduleRecord


@attrs.frozen(kw_only=True)
class UpdateSchedule(WriteOp):
    """Replace a schedule's definition and due time, if it is still at ``expected_version``.

    Applies ``False`` when the schedule does not exist or was written since
    (fired, edited): the caller reads it again and recomputes, so a firing
    committed in between is never undone.
    """

    record: ScheduleRecord
    expected_version: int


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
