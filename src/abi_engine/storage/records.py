"""Internal records of the execution runtime and the write operations on them.

The runtime never writes row by row: it hands the store a batch of write
operations (:class:`WriteOp` subclasses), which the store applies in one
transaction (group commit). Each operation that a concurrent change can make
moot is *conditional* and reports whether it applied.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from abi_engine.events import OutboxEvent
from abi_engine.models import ExecutionStatus, StepStatus

__all__ = [
    "AGAIN",
    "PAUSED",
    "TIMEOUT_SUFFIX",
    "CancelExecution",
    "CheckpointStep",
    "ClaimExecution",
    "DeliverCorrelatedSignal",
    "DeliverSignal",
    "ExecutionQuery",
    "ExecutionRecord",
    "FinishExecution",
    "HandOff",
    "HandedOff",
    "InsertEvents",
    "InsertExecution",
    "InsertRerun",
    "PauseExecution",
    "PauseWorkflow",
    "ReleaseExecutions",
    "ResumeExecution",
    "StepRecord",
    "SuspendExecution",
    "WriteOp",
    "stream_key",
]

#: Suffix of the signal recorded when a wait for signal ``name`` times out.
TIMEOUT_SUFFIX = "#timeout"


def stream_key(name: str, number: int) -> str:
    """The name under which the ``number``-th (from 1) signal ``name`` delivered to an
    execution is kept: ``name`` for the first, ``name#<number>`` after it."""
    return name if number <= 1 else f"{name}#{number}"


class _Again:
    """The result of an op that finds its own effect already stored: a retry of an op
    whose first commit succeeded though its caller saw an error (a lost answer).
    True, like an op that applied; its events are not written a second time."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "AGAIN"


#: See :class:`_Again`.
AGAIN = _Again()

#: The result of a checkpoint that applied and paused its execution (a pause was
#: asked while the step ran): the run stops there, holding nothing.
PAUSED = "paused"


def applied(result: Any) -> bool:
    """Whether an op's result means it applied now (so its events are written)."""
    return (
        result is not False
        and result is not None
        and result is not AGAIN
        and not isinstance(result, BaseException)
    )


@attrs.define(kw_only=True)
class ExecutionRecord:
    """Everything stored about an execution (the API shows a part of it).

    ``plan`` lists the step names known when the execution was created;
    ``configuration`` is the workflow's configuration at that time, so a
    resumed execution runs exactly what was started. ``priority`` 0 is a
    synchronous caller waiting; an asynchronous one has ``10 - p`` for its
    requested priority ``p`` (0 to 9, higher first: see :func:`stored_priority`),
    so lower runs first. ``owner`` is the
    runtime node that holds the execution, under claim token ``claim``, until
    ``lease_until``.
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
    #: The W3C ``traceparent`` every run's span descends from (``None``: not traced).
    trace_context: str | None = None
    schedule_id: str | None = None
    created_by: str | None = None
    idempotency_key: str | None = None
    priority: int = 1
    timeout_at: datetime | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    #: The fencing token of the claim that holds it (see :class:`ClaimExecution`).
    claim: int | None = None
    waiting_for: str | None = None
    wake_at: datetime | None = None
    workflow_name: str | None = None
    #: The execution this one reruns (#16).
    rerun_of: str | None = None
    #: A pause was asked while it ran: it pauses at its next step boundary.
    pause_requested: bool = False
    #: Why it waits queued (``paused``: its workflow is paused); ``None``: for a worker.
    queued_reason: str | None = None
    #: When it was queued last, if not at ``created_at`` (resumed).
    queued_since: datetime | None = None
    #: The execution whose step started this one (``ctx.run_workflow``), told when it ends.
    parent_execution_id: str | None = None
    #: The due time of the schedule that started it (``None``: not started by a schedule).
    scheduled_for: datetime | None = None
    #: The value of its workflow's concurrency key (set when inserted, #16).
    concurrency_key: str | None = None
    #: Whether its workflow limits concurrency (read with it, not stored): its end
    #: frees a slot another execution may wait for.
    limited: bool = False
    #: The value of its workflow's rate limit key, and when the limit let it start (#16).
    rate_key: str | None = None
    rate_granted_at: datetime | None = None
    #: The stored executions its insert ended by debounce (not stored: known to the
    #: transaction that inserts it, which writes their ``execution.skipped``, #16).
    replaced: tuple[str, ...] = ()
    #: The value of its workflow's debounce key; the execution that replaced it (#16).
    debounce_key: str | None = None
    debounced_by: str | None = None
    #: When a queued execution held by a rate limit or a debounce may be granted.
    not_before: datetime | None = None
    #: ``configuration`` and ``plan`` as JSON, when known already (the texts of the
    #: workflow's version, kept with its compiled form: #18); not compared, not read back.
    configuration_json: str | None = attrs.field(default=None, eq=False, repr=False)
    plan_json: str | None = attrs.field(default=None, eq=False, repr=False)


#: The priority (0 to 9, higher runs first) of an execution that asks for none.
DEFAULT_PRIORITY = 5


def stored_priority(priority: int | None, *, sync: bool = False) -> int:
    """The ``priority`` column of an execution: 0 for a synchronous caller waiting
    (first, always), else ``10 - priority`` (1 for priority 9 ... 10 for priority 0)."""
    if sync:
        return 0
    return 10 - (DEFAULT_PRIORITY if priority is None else priority)


def requested_priority(stored: int) -> int | None:
    """The priority an execution was requested with (``None`` for a synchronous one)."""
    return None if stored <= 0 else max(0, min(9, 10 - stored))


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
    #: The execution whose stored step this one reuses (a rerun's steps before its start).
    reused_from: str | None = None


@attrs.frozen(kw_only=True)
class ExecutionQuery:
    """Filters and page of an execution listing (newest first)."""

    page: int = 1
    page_size: int = 10
    workflow_id: str | None = None
    #: One status (``status``) or several (``statuses``: any of them).
    status: ExecutionStatus | None = None
    statuses: tuple[ExecutionStatus, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    schedule_id: str | None = None
    created_by: str | None = None
    #: Only waiting executions whose wait is an approval's decision (``approval``, ``approval:<n>``).
    awaiting_approval: bool = False
    #: Only the reruns of this execution (#16).
    rerun_of: str | None = None
    #: Only the children of this execution (started by its steps).
    parent_execution_id: str | None = None

    def status_values(self) -> tuple[str, ...]:
        """The statuses asked for, as stored (empty: any)."""
        wanted = (*self.statuses, *(() if self.status is None else (self.status,)))
        return tuple(dict.fromkeys(s.value for s in wanted))


@attrs.frozen(kw_only=True)
class WriteOp:
    """Base of the write operations; ``events`` are written in the same transaction.

    ``found``: events the store found while applying the op, written beside
    ``events`` and heard with them: an ``execution.skipped`` for each execution
    the op's inserts ended by debounce (#16). Set by the attempt that applies.
    """

    events: tuple[OutboxEvent, ...] = ()
    found: list[OutboxEvent] = attrs.field(factory=list, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class InsertExecution(WriteOp):
    """Insert a new execution. Applies ``False`` when its idempotency key is taken.

    Idempotent: applied again (a retry after a commit whose outcome was lost),
    it finds its own row by id and applies ``True``.

    ``workflow_version``: the version (``updated_at``) of the active workflow the
    request was checked against; the op applies ``None`` (nothing stored) when the
    workflow is no longer at it in the insert's transaction (changed, paused,
    deactivated or deleted since): the caller checks the request again.
    """

    record: ExecutionRecord
    workflow_version: datetime | None = None


@attrs.frozen(kw_only=True)
class InsertRerun(WriteOp):
    """Insert a rerun (``record.rerun_of`` set) with the steps it reuses, stored as
    checkpointed (``reused_from`` the original), so its run starts after them.
    Applies like :class:`InsertExecution`."""

    record: ExecutionRecord
    steps: tuple[StepRecord, ...] = ()


@attrs.frozen(kw_only=True)
class PauseExecution(WriteOp):
    """Pause an execution: a queued one at once (``"paused"``: its claim is dropped, so
    no grant of it can be used), a running one at its next step boundary
    (``"requested"``); ``"paused"`` again for one already paused; ``False`` for
    anything else (waiting, ended, missing)."""

    execution_id: str
    paused_at: datetime


@attrs.frozen(kw_only=True)
class ResumeExecution(WriteOp):
    """Resume a paused execution (queued again, without owner: the recovery poller
    grants it), or withdraw the pause asked of a running one. Answers the status it
    leaves (``"queued"``, ``"running"``), ``False`` when it was not paused or pausing."""

    execution_id: str
    queued_since: datetime


@attrs.frozen(kw_only=True)
class PauseWorkflow(WriteOp):
    """Pause (``paused``) or resume a workflow at ``at``: while paused, the executions
    inserted for it wait queued (``queued_reason`` ``paused``, no owner); resuming
    releases them. Applies the number of executions held or released, ``None`` when
    the workflow does not exist."""

    workflow_id: str
    paused: bool
    at: datetime


@attrs.frozen(kw_only=True)
class ClaimExecution(WriteOp):
    """Turn the grant ``grant`` of a queued (or taken over) execution into a run.

    A compare-and-set on the claim token: applies only while the row's claim
    is ``grant`` (or already ``token``: a retry), then the execution is
    ``running`` under ``token`` for ``owner`` until ``lease_until``. A grant
    is used once: a second worker holding the same grant loses.
    """

    execution_id: str
    grant: int
    token: int
    owner: str
    lease_until: datetime
    started_at: datetime


@attrs.frozen(kw_only=True)
class CheckpointStep(WriteOp):
    """Store a finished step, if the execution still runs under claim ``token``."""

    step: StepRecord
    token: int


@attrs.frozen(kw_only=True)
class SaveProgress(WriteOp):
    """Keep how far a running step got (``payload``, JSON) under ``name``, replacing
    what was kept before; applies ``False`` unless the execution runs under ``token``.

    Kept with the execution's signals under a name no signal can have
    (``#progress:<step index>``), read back when the step runs again.
    """

    execution_id: str
    token: int
    name: str
    payload_json: str
    saved_at: datetime


@attrs.frozen(kw_only=True)
class FinishExecution(WriteOp):
    """End an execution (and update its workflow's stats) unless it already ended.

    With ``token`` set, applies only while the execution runs under that claim
    (or, for a retry, when this very finish already applied: same status,
    claim and ``completed_at``). ``step`` is the last step's record, written
    in the same transaction.
    """

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    completed_at: datetime
    duration_ms: int
    result: Any = None
    error: dict[str, Any] | None = None
    token: int | None = None
    step: StepRecord | None = None
    result_json: str | None = None
    #: Grant the slot this finish frees in its own transaction (#16); its result is
    #: then a :class:`HandedOff` (a store that cannot answers ``True`` as ever).
    hand_off: HandOff | None = None


@attrs.frozen(kw_only=True)
class HandOff:
    """What a finish that frees a concurrency slot asks of its transaction: grant
    ``owner`` the executions of its workflow waiting for a slot (as ``claim_freed``
    would, at most ``room`` of them, of the workflow ``types`` it runs; ``None``:
    any), so the next one is granted in the commit that ends this one."""

    owner: str
    lease_until: datetime
    room: int
    types: tuple[str, ...] | None = None


@attrs.frozen
class HandedOff:
    """The result of a finish that applied with a :class:`HandOff` (true, like
    ``True``): the executions granted ``(id, priority, token)``; ``decided`` false
    when its transaction could not take the workflow's grant lock at once (another
    transaction grants for it: the node then claims the freed slot on its own);
    ``due`` how long until one a rate limit holds may start (``None``: none);
    ``records`` the executions granted, as stored by the grant (the node runs them
    without reading them again)."""

    granted: tuple[tuple[str, int, int], ...] = ()
    decided: bool = True
    due: timedelta | None = None
    records: tuple[ExecutionRecord, ...] = attrs.field(default=(), eq=False, repr=False)


@attrs.frozen(kw_only=True)
class SuspendExecution(WriteOp):
    """Park an execution running under ``token`` as ``waiting`` for a signal (or until
    ``wake_at``).

    The execution's own timeout ends here (unless ``keep_timeout``: a durable
    sleep): it bounds running time, and a wait is bounded by its own
    ``wake_at``. Applies ``"ready"`` instead when the signal has already
    arrived (the step then runs again at once), ``False`` when the claim was
    lost. The claim token stays on the row (ownership ends with the
    status), so a retry of the same suspension applies ``True`` again.
    """

    execution_id: str
    token: int
    waiting_for: str
    wake_at: datetime | None = None
    step: StepRecord | None = None
    #: A durable sleep keeps the execution's timeout (it is running time).
    keep_timeout: bool = False
    #: The wait's correlation key as ``"<signal name>#<key>"`` (see
    #: :class:`DeliverCorrelatedSignal`): a signal kept for it is consumed here.
    correlation: str | None = None


@attrs.frozen(kw_only=True)
class DeliverSignal(WriteOp):
    """Record signal ``name`` and queue the execution if it waits for it.

    Applies ``"queued"`` when the execution was waiting for it, ``"stored"``
    when kept for later, ``None`` when the execution has ended or the signal
    was already given. A queued execution is granted, in the same
    transaction, to ``grant_owner`` under claim ``grant_token`` until
    ``lease_until`` (the node that will run it; none: any node's recovery
    takes it). A retry finds its own signal (same ``created_at``) and
    applies as the first time did.

    The n-th signal of a name (n >= 2) is stored as ``<name>#<n>``: a wait for
    a stream of signals reads them in order (see ``StepContext.wait_for_signal``).
    """

    execution_id: str
    name: str
    payload: Any
    created_at: datetime
    require_waiting: bool = False
    grant_owner: str | None = None
    grant_token: int | None = None
    lease_until: datetime | None = None


@attrs.frozen(kw_only=True)
class DeliverCorrelatedSignal(WriteOp):
    """Deliver signal ``name`` to the execution waiting on ``correlation_key`` (the
    one waiting longest), or keep it until ``expires_at`` for the first wait with
    that key.

    Applies ``("queued", execution_id)`` when delivered (the execution granted
    as by :class:`DeliverSignal`), ``("pending", None)`` when kept. ``signal_id``
    identifies it: a retry finds it and applies as the first time did.
    """

    signal_id: str
    name: str
    correlation_key: str
    payload: Any
    created_at: datetime
    expires_at: datetime
    grant_owner: str | None = None
    grant_token: int | None = None
    lease_until: datetime | None = None


@attrs.frozen(kw_only=True)
class CancelExecution(WriteOp):
    """End a queued, running or waiting execution as ``cancelled`` or ``timed_out``.

    With ``token`` (the runtime ending its own run at the execution's
    deadline), applies only while it runs under that claim. A retry of an
    applied cancellation (same status and ``completed_at``) applies ``True``.
    """

    execution_id: str
    workflow_id: str
    status: ExecutionStatus
    completed_at: datetime
    error: dict[str, Any] | None = None
    step: StepRecord | None = None
    token: int | None = None


@attrs.frozen(kw_only=True)
class ReleaseExecutions(WriteOp):
    """Hand back the executions held under ``claims`` (``(execution id, token)``):
    each one still queued or running under its token becomes ``queued`` with
    no owner and no claim, for any node to take at once. Applies the count."""

    claims: tuple[tuple[str, int], ...]


@attrs.frozen(kw_only=True)
class InsertEvents(WriteOp):
    """Only write ``events`` to the outbox."""
