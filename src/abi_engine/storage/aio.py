"""The store, awaitable: ``await store.get_workflow(workflow_id)``.

:class:`AsyncStore` wraps a :class:`~abi_engine.storage.base.Store` (whose
methods are synchronous) with one awaitable method per store method, same
name, same parameters. A call runs inline when the store's calls are quick
local reads and writes (SQLite), in a worker thread when they block on the
network (``store.blocking``, PostgreSQL), so no service stalls the event loop
and every store call in a service reads as what it is. :attr:`AsyncStore.sync`
is the wrapped store, for the few callers that are synchronous themselves.

The methods mirror the protocol one for one (``tests/test_layering.py``
checks it): a method added to :class:`Store` is added here too.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from abi_engine.storage._waiting import WouldWait, set_impatient
from abi_engine.storage.base import OwnedKind, Store, StoredEvent, WorkflowQuery

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence
    from datetime import datetime

    from abi_engine.events import Event, OutboxEvent
    from abi_engine.models import (
        Integration,
        NotificationTemplate,
        Token,
        User,
        Workflow,
    )
    from abi_engine.models_audit import AuditDraft, AuditEntry, AuditQuery
    from abi_engine.models_triggers import Trigger
    from abi_engine.models_webhooks import Delivery
    from abi_engine.storage.records import ExecutionQuery, ExecutionRecord, StepRecord, WriteOp
    from abi_engine.storage.records_backfills import BackfillProgress, BackfillRecord
    from abi_engine.storage.records_schedules import HistoryRecord, ScheduleQuery, ScheduleRecord
    from abi_engine.storage.records_webhooks import AttemptOutcome, DeliveryJob, WebhookRecord


__all__ = ["AsyncStore", "call_store"]

T = TypeVar("T")

#: Worker threads for the calls handed over because another writer holds the database
#: (:class:`~abi_engine.storage._waiting.WouldWait`): they queue for its lock one after
#: the other, so a few are enough, and they no longer take every thread of the default
#: limiter meanwhile (webhook DNS look-ups, plugins' work waited for the other writer).
_HANDED_OVER_THREADS = 4
_handed_over: RunVar[anyio.CapacityLimiter] = RunVar("abi_engine_handed_over")


def _handed_over_limiter() -> anyio.CapacityLimiter:
    """This event loop's limiter of the threads calls are handed over to."""
    try:
        return _handed_over.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(_HANDED_OVER_THREADS)
        _handed_over.set(limiter)
        return limiter


async def call_store(store: Store, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)``, a call on ``store``, without stalling the event loop.

    Inline for a store whose calls are quick local reads and writes (SQLite),
    in a worker thread for one that blocks on the network (``store.blocking``,
    PostgreSQL). An inline call whose write would wait for another writer of the
    database raises :class:`~abi_engine.storage._waiting.WouldWait` before writing
    anything, and runs again in a worker thread.
    """
    if store.blocking:
        return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))
    # Inline, but never waiting for another writer of the database (another process):
    # a call that would is run again in a thread, where waiting stalls nobody.
    previous = set_impatient(True)
    try:
        return fn(*args, **kwargs)
    except WouldWait:
        pass
    finally:
        set_impatient(previous)
    call = partial(fn, *args, **kwargs)
    return await anyio.to_thread.run_sync(call, limiter=_handed_over_limiter())


class AsyncStore:
    """A :class:`Store` whose every call is awaited (inline, or in a thread when blocking)."""

    __slots__ = ("sync",)

    def __init__(self, store: Store) -> None:
        #: The wrapped store, for synchronous callers.
        self.sync: Store = store

    @property
    def blocking(self) -> bool:
        """Whether calls run in a worker thread (the wrapped store blocks on I/O)."""
        return self.sync.blocking

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await call_store(self.sync, fn, *args, **kwargs)

    async def schema_version(self) -> int:
        """The version of the last applied migration."""
        return await self._run(self.sync.schema_version)

    async def ensure_user(self, user_id: str, created_at: datetime) -> User:
        """Return the user, creating it when missing."""
        return await self._run(self.sync.ensure_user, user_id, created_at)

    async def insert_token(
        self, token: Token, token_hash: str, *, max_live: int | None = None
    ) -> bool:
        """Store a token by its hash (the token itself is never stored); whether it was stored."""
        return await self._run(self.sync.insert_token, token, token_hash, max_live=max_live)

    async def get_token(self, token_hash: str) -> Token | None:
        """The live (not revoked) token whose hash is ``token_hash``, or ``None``."""
        return await self._run(self.sync.get_token, token_hash)

    async def list_tokens(self, user_id: str | None = None) -> list[Token]:
        """Live tokens (of ``user_id`` when given), newest first."""
        return await self._run(self.sync.list_tokens, user_id)

    async def list_user_tokens(
        self, user_id: str, page: int, page_size: int
    ) -> tuple[list[Token], int]:
        """One page of ``user_id``'s live tokens, newest first, and their total count."""
        return await self._run(self.sync.list_user_tokens, user_id, page, page_size)

    async def revoke_token(
        self, token_id: str, revoked_at: datetime, user_id: str | None = None
    ) -> list[str]:
        """Revoke a live token and every live token descended from it, in one transaction."""
        return await self._run(self.sync.revoke_token, token_id, revoked_at, user_id)

    async def insert_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> None:
        """Insert a new workflow (its ``integrations`` without status)."""
        return await self._run(self.sync.insert_workflow, workflow, events)

    async def get_workflow(self, workflow_id: str) -> Workflow | None:
        """The workflow (not deleted), with stats; integration statuses not filled."""
        return await self._run(self.sync.get_workflow, workflow_id)

    async def workflow_version(self, workflow_id: str) -> datetime | None:
        """The ``updated_at`` of a live workflow (a cheap freshness check), or ``None``."""
        return await self._run(self.sync.workflow_version, workflow_id)

    async def workflow_paused_at(self, workflow_id: str) -> datetime | None:
        """When a workflow was paused (its new executions wait queued), ``None`` when it
        is not paused (or does not exist)."""
        return await self._run(self.sync.workflow_paused_at, workflow_id)

    async def slots_wanted(self, workflow_id: str) -> bool:
        """Whether executions of the workflow wait queued for a concurrency slot."""
        return await self._run(self.sync.slots_wanted, workflow_id)

    async def concurrency_slots(
        self, workflow_id: str
    ) -> list[tuple[str, str | None, datetime, str]]:
        """The executions of a workflow holding a concurrency slot (see the Store)."""
        return await self._run(self.sync.concurrency_slots, workflow_id)

    async def update_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> bool:
        """Replace a workflow's mutable fields; ``False`` if it does not exist."""
        return await self._run(self.sync.update_workflow, workflow, events)

    async def delete_workflow(
        self, workflow_id: str, deleted_at: datetime, events: Sequence[Event] = ()
    ) -> bool:
        """Delete a workflow (kept for the history of its executions); ``False`` if missing."""
        return await self._run(self.sync.delete_workflow, workflow_id, deleted_at, events)

    async def list_workflows(self, query: WorkflowQuery) -> tuple[list[Workflow], int]:
        """One page of workflows and the total count matching the filters."""
        return await self._run(self.sync.list_workflows, query)

    async def put_integration(self, integration: Integration) -> bool:
        """Insert or replace a connection; ``True`` if it was created."""
        return await self._run(self.sync.put_integration, integration)

    async def get_integration(self, integration_id: str) -> Integration | None:
        """The connection, or ``None``."""
        return await self._run(self.sync.get_integration, integration_id)

    async def list_integrations(self, page: int, page_size: int) -> tuple[list[Integration], int]:
        """One page of connections (by id) and the total."""
        return await self._run(self.sync.list_integrations, page, page_size)

    async def count_owned(self, kind: OwnedKind, user_id: str, limit: int) -> int:
        """How many ``kind`` rows ``user_id`` holds (``schedules``, ``webhooks`` it created, ``queued_executions`` it requested), counting no further than ``limit``."""
        return await self._run(self.sync.count_owned, kind, user_id, limit)

    async def delete_integration(self, integration_id: str) -> bool:
        """Remove a connection; ``False`` if it did not exist."""
        return await self._run(self.sync.delete_integration, integration_id)

    async def existing_integration_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have a connection."""
        return await self._run(self.sync.existing_integration_ids, ids)

    async def put_template(self, template: NotificationTemplate) -> bool:
        """Insert or replace a template (its ``created_at`` kept); ``True`` if it was created."""
        return await self._run(self.sync.put_template, template)

    async def get_template(self, template_id: str) -> NotificationTemplate | None:
        """The template, or ``None``."""
        return await self._run(self.sync.get_template, template_id)

    async def list_templates(
        self, page: int, page_size: int
    ) -> tuple[list[NotificationTemplate], int]:
        """One page of templates (by id) and the total."""
        return await self._run(self.sync.list_templates, page, page_size)

    async def delete_template(self, template_id: str) -> bool:
        """Remove a template; ``False`` if it did not exist."""
        return await self._run(self.sync.delete_template, template_id)

    async def find_templates(self, ids: Iterable[str]) -> dict[str, NotificationTemplate]:
        """The templates among ``ids`` that exist, by id (one query)."""
        return await self._run(self.sync.find_templates, ids)

    async def put_trigger(self, trigger: Trigger) -> bool:
        """Insert or replace a trigger (its ``created_at`` kept); ``True`` if it was created."""
        return await self._run(self.sync.put_trigger, trigger)

    async def get_trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger (secret whole), or ``None``."""
        return await self._run(self.sync.get_trigger, trigger_id)

    async def list_triggers(self, page: int, page_size: int) -> tuple[list[Trigger], int]:
        """One page of triggers (by id) and the total."""
        return await self._run(self.sync.list_triggers, page, page_size)

    async def delete_trigger(self, trigger_id: str) -> bool:
        """Remove a trigger; ``False`` if it did not exist."""
        return await self._run(self.sync.delete_trigger, trigger_id)

    async def insert_backfill(self, record: BackfillRecord) -> None:
        """Store a new backfill (its due times listed)."""
        return await self._run(self.sync.insert_backfill, record)

    async def get_backfill(self, backfill_id: str) -> BackfillRecord | None:
        """The backfill, or ``None``."""
        return await self._run(self.sync.get_backfill, backfill_id)

    async def list_backfills(
        self, schedule_id: str, status: str | None, page: int, page_size: int
    ) -> tuple[list[BackfillRecord], int]:
        """One page of the schedule's backfills (in ``status`` when given), newest first,
        and how many there are."""
        return await self._run(self.sync.list_backfills, schedule_id, status, page, page_size)

    async def claim_backfills(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[BackfillRecord]:
        """Take at most ``limit`` running backfills no process holds (or whose lease ran out
        before ``now``) for ``owner`` until ``lease_until``."""
        return await self._run(self.sync.claim_backfills, owner, now, lease_until, limit)

    async def save_backfill_progress(self, progress: BackfillProgress) -> bool:
        """Write one step of a running backfill its owner holds; ``False`` when it no longer
        runs (cancelled) or is no longer held by that owner."""
        return await self._run(self.sync.save_backfill_progress, progress)

    async def cancel_backfill(self, backfill_id: str, now: datetime) -> bool:
        """Mark a running backfill ``cancelled``; ``False`` when it is not running."""
        return await self._run(self.sync.cancel_backfill, backfill_id, now)

    async def release_backfills(self, owner: str) -> int:
        """Give back the running backfills ``owner`` holds (it stops); how many."""
        return await self._run(self.sync.release_backfills, owner)

    async def insert_events(self, events: Sequence[OutboxEvent]) -> None:
        """Append events to the outbox on their own."""
        return await self._run(self.sync.insert_events, events)

    async def events_after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        """Outbox events with a position greater than ``seq``, oldest first."""
        return await self._run(self.sync.events_after, seq, limit)

    async def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply write operations in one transaction (group commit)."""
        return await self._run(self.sync.apply, ops)

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The execution (with its workflow's name), or ``None``."""
        return await self._run(self.sync.get_execution, execution_id)

    async def get_steps(self, execution_id: str) -> list[StepRecord]:
        """The checkpointed steps of an execution, in order."""
        return await self._run(self.sync.get_steps, execution_id)

    async def get_signals(self, execution_id: str) -> dict[str, Any]:
        """Signals delivered to an execution, by name."""
        return await self._run(self.sync.get_signals, execution_id)

    async def execution_counts(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> list[tuple[int, str, int]]:
        """Executions requested in ``[start, end)`` counted per time bucket and status."""
        return await self._run(self.sync.execution_counts, start, end, bucket_ms)

    async def queued_stats(self) -> tuple[int, datetime | None]:
        """How many executions are queued, and when the oldest of them was requested."""
        return await self._run(self.sync.queued_stats)

    async def find_execution_by_key(self, workflow_id: str, key: str) -> str | None:
        """The execution id created with this idempotency key, or ``None``."""
        return await self._run(self.sync.find_execution_by_key, workflow_id, key)

    async def list_executions(self, query: ExecutionQuery) -> tuple[list[ExecutionRecord], int]:
        """One page of executions, newest first, and the total matching."""
        return await self._run(self.sync.list_executions, query)

    async def claim_recoverable(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        types: Collection[str] | None = None,
        dead: Collection[str] = (),
    ) -> list[tuple[str, int, int]]:
        """Atomically grant ``owner`` unfinished executions that no node holds."""
        return await self._run(
            self.sync.claim_recoverable, owner, now, lease_until, limit, types, dead
        )

    async def renew_leases(self, claims: Mapping[str, int], lease_until: datetime) -> list[str]:
        """Extend to ``lease_until`` the lease of each execution in ``claims`` (id -> claim token) that is still queued or running under that token."""
        return await self._run(self.sync.renew_leases, claims, lease_until)

    async def next_wake_at(self) -> datetime | None:
        """The earliest ``wake_at`` among waiting executions."""
        return await self._run(self.sync.next_wake_at)

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule with its workflow's name and status and its last execution."""
        return await self._run(self.sync.get_schedule, schedule_id)

    async def list_schedules(self, query: ScheduleQuery) -> tuple[list[ScheduleRecord], int]:
        """One page of schedules, newest first, and the total matching."""
        return await self._run(self.sync.list_schedules, query)

    async def due_schedules(self, now: datetime, limit: int) -> list[ScheduleRecord]:
        """Schedules whose next due time is at or before ``now``, earliest first."""
        return await self._run(self.sync.due_schedules, now, limit)

    async def queued_schedules_ready(self, limit: int) -> list[ScheduleRecord]:
        """Schedules with a queued run (overlap policy ``queue``) whose last execution ended."""
        return await self._run(self.sync.queued_schedules_ready, limit)

    async def next_schedule_due(self) -> datetime | None:
        """The earliest next due time of all schedules."""
        return await self._run(self.sync.next_schedule_due)

    async def schedule_history(
        self, schedule_id: str, page: int, page_size: int
    ) -> tuple[list[HistoryRecord], int]:
        """A schedule's history, newest first, and its length."""
        return await self._run(self.sync.schedule_history, schedule_id, page, page_size)

    async def insert_webhook(self, webhook: WebhookRecord) -> None:
        """Store a new subscription."""
        return await self._run(self.sync.insert_webhook, webhook)

    async def get_webhook(self, webhook_id: str) -> WebhookRecord | None:
        """The subscription (whole secrets included), or ``None``."""
        return await self._run(self.sync.get_webhook, webhook_id)

    async def update_webhook(self, webhook: WebhookRecord, now: datetime) -> bool:
        """Replace a subscription's fields; ``False`` if it does not exist."""
        return await self._run(self.sync.update_webhook, webhook, now)

    async def delete_webhook(self, webhook_id: str) -> bool:
        """Remove a subscription with its deliveries and attempts; ``False`` if missing."""
        return await self._run(self.sync.delete_webhook, webhook_id)

    async def list_webhooks(self, page: int, page_size: int) -> tuple[list[WebhookRecord], int]:
        """One page of subscriptions, newest first, and the total."""
        return await self._run(self.sync.list_webhooks, page, page_size)

    async def subscribed_event_types(self) -> set[str]:
        """The union of the event types of enabled subscriptions."""
        return await self._run(self.sync.subscribed_event_types)

    async def fan_out_pending(self) -> bool:
        """Whether the outbox holds events after the delivery cursor (a cheap read)."""
        return await self._run(self.sync.fan_out_pending)

    async def fan_out(self, now: datetime, limit: int, callback_types: Collection[str]) -> int:
        """Turn about ``limit`` events after the cursor into deliveries; advance the cursor."""
        return await self._run(self.sync.fan_out, now, limit, callback_types)

    async def deliveries_due(self, now: datetime) -> bool:
        """Whether a pending, unleased delivery is due at ``now`` (a cheap read)."""
        return await self._run(self.sync.deliveries_due, now)

    async def next_delivery_due(self, after: datetime) -> datetime | None:
        """The earliest due time of pending deliveries later than ``after``."""
        return await self._run(self.sync.next_delivery_due, after)

    async def claim_deliveries(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[DeliveryJob]:
        """Atomically lease up to ``limit`` due deliveries to ``owner``, earliest first."""
        return await self._run(self.sync.claim_deliveries, owner, now, lease_until, limit)

    async def record_attempts(self, owner: str, outcomes: Sequence[AttemptOutcome]) -> int:
        """Record attempts and move their deliveries on (lease released)."""
        return await self._run(self.sync.record_attempts, owner, outcomes)

    async def release_deliveries(self, owner: str) -> int:
        """Give up every lease ``owner`` holds (its deliveries are due again at once)."""
        return await self._run(self.sync.release_deliveries, owner)

    async def list_deliveries(
        self, webhook_id: str, page: int, page_size: int
    ) -> tuple[list[Delivery], int]:
        """One page of a webhook's deliveries with their attempts, newest event first."""
        return await self._run(self.sync.list_deliveries, webhook_id, page, page_size)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """A delivery with its attempts, or ``None``."""
        return await self._run(self.sync.get_delivery, delivery_id)

    async def callback_deliveries(self, execution_id: str) -> list[Delivery]:
        """The callback deliveries of an execution, with their attempts."""
        return await self._run(self.sync.callback_deliveries, execution_id)

    async def redeliver(self, delivery_id: str, now: datetime) -> bool:
        """Make a finished (succeeded or failed) delivery pending again, due at ``now``."""
        return await self._run(self.sync.redeliver, delivery_id, now)

    async def prune_deliveries(self, before: datetime) -> int:
        """Delete finished deliveries (and attempts) last changed before ``before``, and the outbox events older than ``before`` that were fanned out and that no delivery left refers to; return the number of deliveries deleted."""
        return await self._run(self.sync.prune_deliveries, before)

    async def append_audit(self, draft: AuditDraft) -> AuditEntry:
        """Append ``draft`` to the audit log, chained to the last entry."""
        return await self._run(self.sync.append_audit, draft)

    async def list_audit(self, query: AuditQuery) -> tuple[list[AuditEntry], int]:
        """A page of audit entries matching ``query``, newest first, and how many match."""
        return await self._run(self.sync.list_audit, query)

    async def audit_entries(self, after_id: int, limit: int) -> list[AuditEntry]:
        """Up to ``limit`` audit entries with ids above ``after_id``, oldest first."""
        return await self._run(self.sync.audit_entries, after_id, limit)

    async def audit_head(self) -> tuple[int, str]:
        """The last audit id and hash handed out."""
        return await self._run(self.sync.audit_head)

    async def prune_audit(self, before: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest audit entries recorded before ``before``."""
        return await self._run(self.sync.prune_audit, before, limit)

    async def prunable_executions(self, now: datetime) -> dict[str, int]:
        """How many executions each workflow has past its retention at ``now``."""
        return await self._run(self.sync.prunable_executions, now)

    async def prune_executions(self, now: datetime, limit: int) -> dict[str, int]:
        """Delete up to ``limit`` executions past their workflow's retention at ``now``."""
        return await self._run(self.sync.prune_executions, now, limit)

    async def reclaim_space(self, pages: int) -> int:
        """Give up to ``pages`` free pages back to the file system (SQLite)."""
        return await self._run(self.sync.reclaim_space, pages)
