"""The storage interface every backend implements.

All SQL lives in the storage package. Every mutating method that causes an
event takes the events and writes them to the outbox in the *same
transaction* as the change, so a crash never loses one. Events may be
:class:`~abi_engine.events.DeferredEvent`: a backend writes those through
:func:`abi_engine.events.resolve`, with the event types enabled
subscriptions ask for *as read in that transaction*. Methods are
synchronous and short; a backend that blocks on the network sets
``blocking = True`` and the engine calls it from a worker thread.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from abi_engine.events import Event, OutboxEvent
from abi_engine.models import (
    Integration,
    NotificationTemplate,
    Token,
    User,
    Workflow,
    WorkflowStatus,
)
from abi_engine.models_audit import AuditDraft, AuditEntry, AuditQuery
from abi_engine.models_triggers import Trigger
from abi_engine.models_webhooks import Delivery
from abi_engine.storage.records import ExecutionQuery, ExecutionRecord, StepRecord, WriteOp
from abi_engine.storage.records_backfills import BackfillProgress, BackfillRecord
from abi_engine.storage.records_schedules import HistoryRecord, ScheduleQuery, ScheduleRecord
from abi_engine.storage.records_webhooks import AttemptOutcome, DeliveryJob, WebhookRecord

__all__ = ["OWNED_ROWS", "OwnedKind", "Store", "StoredEvent", "TokenLimitReached", "WorkflowQuery"]

WorkflowSort = Literal["created_at", "updated_at", "name"]
OwnedKind = Literal["schedules", "webhooks", "queued_executions"]
#: What :meth:`Store.count_owned` counts: the rows of each kind held by one user
#: (``{owner}`` is the backend's parameter placeholder, ``{queued_index}`` what makes
#: the backend read the partial index of queued executions); both backends share it.
OWNED_ROWS: dict[str, str] = {
    "schedules": "SELECT 1 FROM schedules WHERE created_by = {owner}",
    "webhooks": "SELECT 1 FROM webhooks WHERE created_by = {owner}",
    "queued_executions": (
        "SELECT 1 FROM executions {queued_index} WHERE created_by = {owner} AND status = 'queued'"
    ),
}


class TokenLimitReached(Exception):
    """``insert_token`` with ``max_live``: the user already holds that many live tokens."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the user already holds {limit} live tokens")
        self.limit = limit


@attrs.frozen(kw_only=True)
class WorkflowQuery:
    """Filters, order and page of a workflow listing."""

    page: int = 1
    page_size: int = 10
    sort_by: WorkflowSort = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    status: WorkflowStatus | None = None
    type: str | None = None
    department: str | None = None


@attrs.frozen(kw_only=True)
class StoredEvent:
    """An event as kept in the outbox, with its position."""

    seq: int
    event: OutboxEvent


@runtime_checkable
class Store(Protocol):
    """What the engine needs from storage.

    Implementations must be safe to call from many threads and tasks at once
    and never surface "database is locked": writes are serialized inside the
    store, reads run concurrently.
    """

    #: ``True`` when calls block on I/O long enough to deserve a worker thread.
    blocking: bool

    def close(self) -> None:
        """Release connections. Idempotent."""

    def schema_version(self) -> int:
        """The version of the last applied migration."""

    # -- users and tokens ------------------------------------------------------

    def ensure_user(self, user_id: str, created_at: datetime) -> User:
        """Return the user, creating it when missing."""

    def insert_token(self, token: Token, token_hash: str, *, max_live: int | None = None) -> bool:
        """Store a token by its hash (the token itself is never stored); whether it was stored.

        A token with a ``parent_id`` is stored only while that parent is a live
        token of the same user, checked in the same transaction (``False``
        otherwise: a revoked token mints nothing, even one racing its revocation).
        With ``max_live``, the user's live tokens (all of them, however created)
        are counted in the same transaction, safe against concurrent inserts:
        :class:`TokenLimitReached` when there are ``max_live`` or more already.
        """

    def get_token(self, token_hash: str) -> Token | None:
        """The live (not revoked) token whose hash is ``token_hash``, or ``None``."""

    def list_tokens(self, user_id: str | None = None) -> list[Token]:
        """Live tokens (of ``user_id`` when given), newest first."""

    def list_user_tokens(self, user_id: str, page: int, page_size: int) -> tuple[list[Token], int]:
        """One page of ``user_id``'s live tokens, newest first, and their total count."""

    def revoke_token(
        self, token_id: str, revoked_at: datetime, user_id: str | None = None
    ) -> list[str]:
        """Revoke a live token and every live token descended from it, in one transaction.

        Returns the ids revoked: ``token_id`` first, then its descendants
        (children, grandchildren... through ``parent_id``, revoked ones walked
        through); empty when there is no live token with that id (of
        ``user_id`` when given: another user's token is left alone, exactly
        like an unknown id).
        """

    # -- workflows -----------------------------------------------------------

    def insert_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> None:
        """Insert a new workflow (its ``integrations`` without status)."""

    def get_workflow(self, workflow_id: str) -> Workflow | None:
        """The workflow (not deleted), with stats; integration statuses not filled."""

    def workflow_version(self, workflow_id: str) -> datetime | None:
        """The ``updated_at`` of a live workflow (a cheap freshness check), or ``None``."""

    def workflow_paused_at(self, workflow_id: str) -> datetime | None:
        """When a workflow was paused (its new executions wait queued), ``None`` when it
        is not paused (or does not exist)."""

    def slots_wanted(self, workflow_id: str) -> bool:
        """Whether executions of the workflow wait queued for a concurrency slot."""
        return False

    def concurrency_slots(self, workflow_id: str) -> list[tuple[str, str | None, datetime, str]]:
        """The executions of a workflow holding a concurrency slot (queued or running
        under a live lease): ``(execution_id, concurrency_key, since, status)``."""
        raise NotImplementedError

    def update_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> bool:
        """Replace a workflow's mutable fields; ``False`` if it does not exist."""

    def delete_workflow(
        self, workflow_id: str, deleted_at: datetime, events: Sequence[Event] = ()
    ) -> bool:
        """Delete a workflow (kept for the history of its executions); ``False`` if missing."""

    def list_workflows(self, query: WorkflowQuery) -> tuple[list[Workflow], int]:
        """One page of workflows and the total count matching the filters."""

    # -- integrations ----------------------------------------------------------

    def put_integration(self, integration: Integration) -> bool:
        """Insert or replace a connection; ``True`` if it was created."""

    def get_integration(self, integration_id: str) -> Integration | None:
        """The connection, or ``None``."""

    def list_integrations(self, page: int, page_size: int) -> tuple[list[Integration], int]:
        """One page of connections (by id) and the total."""

    def count_owned(self, kind: OwnedKind, user_id: str, limit: int) -> int:
        """How many ``kind`` rows ``user_id`` holds (``schedules``, ``webhooks`` it
        created, ``queued_executions`` it requested), counting no further than ``limit``."""

    def delete_integration(self, integration_id: str) -> bool:
        """Remove a connection; ``False`` if it did not exist."""

    def existing_integration_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have a connection."""

    # -- notification templates ---------------------------------------------

    def put_template(self, template: NotificationTemplate) -> bool:
        """Insert or replace a template (its ``created_at`` kept); ``True`` if it was created."""

    def get_template(self, template_id: str) -> NotificationTemplate | None:
        """The template, or ``None``."""

    def list_templates(self, page: int, page_size: int) -> tuple[list[NotificationTemplate], int]:
        """One page of templates (by id) and the total."""

    def delete_template(self, template_id: str) -> bool:
        """Remove a template; ``False`` if it did not exist."""

    def find_templates(self, ids: Iterable[str]) -> dict[str, NotificationTemplate]:
        """The templates among ``ids`` that exist, by id (one query)."""

    # -- triggers ---------------------------------------------------------------

    def put_trigger(self, trigger: Trigger) -> bool:
        """Insert or replace a trigger (its ``created_at`` kept); ``True`` if it was created."""

    def get_trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger (secret whole), or ``None``."""

    def list_triggers(self, page: int, page_size: int) -> tuple[list[Trigger], int]:
        """One page of triggers (by id) and the total."""

    def delete_trigger(self, trigger_id: str) -> bool:
        """Remove a trigger; ``False`` if it did not exist."""

    # -- schedule backfills ------------------------------------------------------

    def insert_backfill(self, record: BackfillRecord) -> None:
        """Store a new backfill (its due times listed)."""

    def get_backfill(self, backfill_id: str) -> BackfillRecord | None:
        """The backfill, or ``None``."""

    def list_backfills(
        self, schedule_id: str, status: str | None, page: int, page_size: int
    ) -> tuple[list[BackfillRecord], int]:
        """One page of the schedule's backfills (in ``status`` when given), newest first,
        and how many there are; their ``due_times`` are not read (empty: ``run.total``
        counts them)."""

    def claim_backfills(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[BackfillRecord]:
        """Take at most ``limit`` running backfills no process holds (or whose lease ran out
        before ``now``) for ``owner`` until ``lease_until``."""

    def save_backfill_progress(self, progress: BackfillProgress) -> bool:
        """Write one step of a running backfill its owner holds; ``False`` when it no longer
        runs (cancelled) or is no longer held by that owner."""

    def cancel_backfill(self, backfill_id: str, now: datetime) -> bool:
        """Mark a running backfill ``cancelled``; ``False`` when it is not running."""

    def release_backfills(self, owner: str) -> int:
        """Give back the running backfills ``owner`` holds (it stops); how many."""

    # -- events (outbox) --------------------------------------------------------

    def insert_events(self, events: Sequence[OutboxEvent]) -> None:
        """Append events to the outbox on their own."""

    def events_after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        """Outbox events with a position greater than ``seq``, oldest first.

        Execution events kept by reference come back as
        :class:`~abi_engine.events.ExecutionEventRef`.
        """

    # -- executions ----------------------------------------------------------------

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply write operations in one transaction (group commit).

        Returns each op's result in order (``True``/``False`` for conditional
        ops, see :mod:`abi_engine.storage.records`). When the batch fails as a
        whole, each op is retried alone and a failing op's result is its
        exception.
        """

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution (with its workflow's name), or ``None``."""

    def get_steps(self, execution_id: str) -> list[StepRecord]:
        """The checkpointed steps of an execution, in order."""

    def get_signals(self, execution_id: str) -> dict[str, Any]:
        """Signals delivered to an execution, by name."""

    def find_execution_by_key(self, workflow_id: str, key: str) -> str | None:
        """The execution id created with this idempotency key, or ``None``."""

    def list_executions(self, query: ExecutionQuery) -> tuple[list[ExecutionRecord], int]:
        """One page of executions, newest first, and the total matching."""

    def execution_counts(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> list[tuple[int, str, int]]:
        """Executions requested in ``[start, end)`` counted per time bucket and status.

        Rows ``(bucket, status, count)``: ``bucket`` is the index of the
        ``bucket_ms`` long interval from ``start`` the execution was requested
        in; buckets and statuses without executions are left out. Served from
        the ``(status, created_at)`` index, never reading the rows.
        """

    def queued_stats(self) -> tuple[int, datetime | None]:
        """How many executions are queued, and when the oldest of them was requested
        (``None`` when none is). Served from the ``(status, created_at)`` index."""

    def claim_recoverable(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        types: Collection[str] | None = None,
        dead: Collection[str] = (),
    ) -> list[tuple[str, int, int]]:
        """Atomically grant ``owner`` unfinished executions that no node holds.

        Candidates are queued or running executions without an owner, whose
        lease has expired (in the database's clock; whoever owned them,
        ``owner`` included) or whose owner is in ``dead`` (nodes the store
        knows have ended, see ``dead_nodes``), and waiting ones whose
        ``wake_at`` has passed (a timeout signal is recorded for them). ``types`` restricts them to
        the workflow types ``owner`` can run. Each one gets a fresh claim
        token (see :mod:`abi_engine.storage._fencing`) and a lease until
        ``lease_until``. Returns ``(execution_id, priority, token)``. A
        PostgreSQL store implements this with ``FOR UPDATE SKIP LOCKED`` so
        many processes can claim at once without taking the same execution.
        A store may count in ``lease_takeovers`` (an int attribute) the granted
        executions that were running (taken over from a process whose lease
        ended); the runtime's metrics read it when it is there.
        """

    def renew_leases(self, claims: Mapping[str, int], lease_until: datetime) -> list[str]:
        """Extend to ``lease_until`` the lease of each execution in ``claims`` (id ->
        claim token) that is still queued or running under that token.

        Returns the ids that were not renewed: the holder has lost them (taken
        over, cancelled, ended) and must stop working on them. Safe to call
        from any thread.
        """

    def next_wake_at(self) -> datetime | None:
        """The earliest ``wake_at`` among waiting executions."""

    # -- schedules ------------------------------------------------------------------
    # Schedules are written through ``apply`` (InsertSchedule, UpdateSchedule,
    # DeleteSchedule, FireSchedule); each is a compare-and-set on the schedule's
    # ``version`` (FireSchedule also on its due time), which makes each due time
    # fire once across processes, whatever edits race with it.

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule with its workflow's name and status and its last execution."""

    def list_schedules(self, query: ScheduleQuery) -> tuple[list[ScheduleRecord], int]:
        """One page of schedules, newest first, and the total matching."""

    def due_schedules(self, now: datetime, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next due time is at or before ``now``, earliest first.

        Served by the index on ``next_due``: the cost does not grow with the
        number of schedules that are not due.
        """

    def queued_schedules_ready(self, limit: int) -> list[ScheduleRecord]:
        """Schedules with a queued run (overlap policy ``queue``) whose last execution ended."""

    def next_schedule_due(self) -> datetime | None:
        """The earliest next due time of all schedules."""

    def schedule_history(
        self, schedule_id: str, page: int, page_size: int
    ) -> tuple[list[HistoryRecord], int]:
        """A schedule's history, newest first, and its length."""

    # -- webhooks -----------------------------------------------------------------------
    # Subscriptions, and deliveries made from the outbox: one per (event, target),
    # where a target is a webhook or an execution's callback URL.

    def insert_webhook(self, webhook: WebhookRecord) -> None:
        """Store a new subscription."""

    def get_webhook(self, webhook_id: str) -> WebhookRecord | None:
        """The subscription (whole secrets included), or ``None``."""

    def update_webhook(self, webhook: WebhookRecord, now: datetime) -> bool:
        """Replace a subscription's fields; ``False`` if it does not exist.

        Disabling it parks its pending deliveries (no due time); enabling it
        again makes them due at ``now``. A change of its enabled state or event
        types takes effect in commit order: events committed before it are
        fanned out as the subscription was (see :meth:`fan_out`).
        """

    def delete_webhook(self, webhook_id: str) -> bool:
        """Remove a subscription with its deliveries and attempts; ``False`` if missing."""

    def list_webhooks(self, page: int, page_size: int) -> tuple[list[WebhookRecord], int]:
        """One page of subscriptions, newest first, and the total."""

    def subscribed_event_types(self) -> set[str]:
        """The union of the event types of enabled subscriptions."""

    def fan_out_pending(self) -> bool:
        """Whether the outbox holds events after the delivery cursor (a cheap read)."""

    def fan_out(self, now: datetime, limit: int, callback_types: Collection[str]) -> int:
        """Turn about ``limit`` events after the cursor into deliveries; advance the cursor.

        Outbox rows are taken whole (the reference events of one commit share
        a row), up to the row that brings the count to ``limit``.
        In one transaction: each event gets a delivery for every subscription
        that existed, was enabled and asked for its type when the event was
        committed, whatever it is now (one disabled since gets it parked),
        and, when its type is in ``callback_types`` and its execution has a
        callback URL, a callback delivery. Returns the number of events
        consumed (0 when the cursor is at the end). Concurrent callers never
        fan out one event twice.
        """

    def deliveries_due(self, now: datetime) -> bool:
        """Whether a pending, unleased delivery is due at ``now`` (a cheap read)."""

    def next_delivery_due(self, after: datetime) -> datetime | None:
        """The earliest due time of pending deliveries later than ``after``."""

    def claim_deliveries(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[DeliveryJob]:
        """Atomically lease up to ``limit`` due deliveries to ``owner``, earliest first.

        A delivery is due when pending, its due time has passed and no live
        lease holds it. Each job carries the target's URL and secrets as they
        are now, and a fresh claim token: a claim replaces any earlier one,
        even by the same owner.
        """

    def record_attempts(self, owner: str, outcomes: Sequence[AttemptOutcome]) -> int:
        """Record attempts and move their deliveries on (lease released).

        A delivery changes only while ``owner`` still holds it by the outcome's
        claim token; the attempt is recorded regardless (unless the delivery is
        gone), numbered one past the delivery's last attempt atomically (two
        processes recording attempts of one delivery get distinct numbers).
        An outcome whose claim was recorded already is skipped, so a write
        retried after an unknown commit outcome counts once. Returns how many
        deliveries changed.
        """

    def release_deliveries(self, owner: str) -> int:
        """Give up every lease ``owner`` holds (its deliveries are due again at once)."""

    def list_deliveries(
        self, webhook_id: str, page: int, page_size: int
    ) -> tuple[list[Delivery], int]:
        """One page of a webhook's deliveries with their attempts, newest event first."""

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        """A delivery with its attempts, or ``None``."""

    def callback_deliveries(self, execution_id: str) -> list[Delivery]:
        """The callback deliveries of an execution, with their attempts."""

    def redeliver(self, delivery_id: str, now: datetime) -> bool:
        """Make a finished (succeeded or failed) delivery pending again, due at ``now``.

        Its retry schedule starts over; earlier attempts stay recorded.
        ``False`` when the delivery is missing or still pending.
        """

    def prune_deliveries(self, before: datetime) -> int:
        """Delete finished deliveries (and attempts) last changed before ``before``, and the
        outbox events older than ``before`` that were fanned out and that no delivery left
        refers to; return the number of deliveries deleted."""

    # -- audit log --------------------------------------------------------------------

    def append_audit(self, draft: AuditDraft) -> AuditEntry:
        """Append ``draft`` to the audit log, chained to the last entry (its id the next
        one, its ``prev_hash`` the last entry's hash), one writer at a time across
        processes; the entry as stored."""

    def list_audit(self, query: AuditQuery) -> tuple[list[AuditEntry], int]:
        """A page of audit entries matching ``query``, newest first, and how many match."""

    def audit_entries(self, after_id: int, limit: int) -> list[AuditEntry]:
        """Up to ``limit`` audit entries with ids above ``after_id``, oldest first."""

    def audit_head(self) -> tuple[int, str]:
        """The last audit id and hash handed out (``(0, "")`` before the first entry)."""

    def prune_audit(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest audit entries, those before the first one
        recorded at or after ``before`` (the kept ones stay one chain); how many went."""

    # -- retention --------------------------------------------------------------------

    def prunable_executions(self, now: datetime) -> dict[str, int]:
        """How many executions each workflow (by id) has past its ``retention_days`` at
        ``now`` (finished that long ago)."""

    def prune_executions(self, now: datetime, limit: int) -> dict[str, int]:
        """Delete up to ``limit`` executions past their workflow's retention at ``now``,
        with their steps, signals and finished callback deliveries, in one transaction;
        how many went, by workflow id (empty: nothing left to prune)."""

    def reclaim_space(self, pages: int) -> int:
        """Give up to ``pages`` free pages back to the file system where the database does
        that on request (SQLite with incremental ``auto_vacuum``); the free pages before
        (0 where nothing is done)."""
