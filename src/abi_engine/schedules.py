"""Schedules: create, read, update, delete (``engine.schedules``).

The loop that fires them is :class:`abi_engine.runtime.scheduler.Scheduler`:
each firing is a compare-and-set on the schedule's ``version`` (and
``next_due``) committed in the same transaction as the executions it starts,
so two processes on one database never both fire a due time, and a crash
never loses one. Every other write of a schedule (update, delete) is a compare-and-set on
the version it read too, retried from a fresh read when it loses: an edit
never writes back a due time that a firing moved meanwhile.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import (
    InvalidRequest,
    InvalidSchedule,
    InvalidState,
    ScheduleNotFound,
    WorkflowNotFound,
)
from abi_engine.events import Event, EventPolicy, OutboxEvent
from abi_engine.ids import utcnow
from abi_engine.models import (
    DeleteResult,
    Page,
    Schedule,
    ScheduleBackfill,
    ScheduleHistoryEntry,
    SchedulePreview,
    ScheduleSummary,
    Workflow,
)
from abi_engine.models_backfills import BackfillRun
from abi_engine.schedule_backfill import BackfillService
from abi_engine.schedule_lifecycle import pause_or_resume
from abi_engine.schedule_lifecycle import preview as preview_of
from abi_engine.schedule_requests import (
    MAX_PREVIEW,
    UPDATABLE,
    SchedulePreviewRequest,
    ScheduleRequest,
    as_request,
    check_fires,
    check_request,
    next_after,
    to_record,
)
from abi_engine.schedule_views import _summary, _view, schedule_json
from abi_engine.services import Service, check_flag, check_int, check_page
from abi_engine.storage.records_schedules import (
    DeleteSchedule,
    InsertSchedule,
    ScheduleQuery,
    ScheduleRecord,
    UpdateSchedule,
)

if TYPE_CHECKING:
    from abi_engine.executions import ExecutionService
    from abi_engine.notification_templates import NotificationTemplateService
    from abi_engine.runtime.commit import GroupCommitter
    from abi_engine.storage.base import Store

__all__ = ["ScheduleService"]

log = logging.getLogger("abi_engine.scheduler")

#: Attempts of an update or delete that keeps losing its compare-and-set to other writes.
WRITE_ATTEMPTS = 50


class ScheduleService(Service):
    """The business rules of schedules (``engine.schedules``); the loop firing them is
    :class:`~abi_engine.runtime.scheduler.Scheduler` (``engine.scheduler``)."""

    def __init__(
        self,
        store: Store,
        committer: GroupCommitter,
        *,
        executions: ExecutionService,
        templates: NotificationTemplateService,
        events: EventPolicy,
        wake: Callable[[], None],
    ) -> None:
        super().__init__(store)
        self._committer = committer
        self._executions = executions
        self._templates = templates
        self._event_policy = events
        self._wake = wake
        #: Backfills as durable jobs (the engine runs :meth:`BackfillService.run`).
        self.backfills = BackfillService(store, executions, events)

    def _events(
        self, kind: str, schedule: Schedule | ScheduleRecord, at: datetime
    ) -> tuple[OutboxEvent, ...]:
        """The event of a change that happens ``at``: built now for ``abi_event`` hooks,
        else deferred to the write transaction (built only if a subscription wants it)."""

        def build() -> Event:
            view = _view(schedule) if isinstance(schedule, ScheduleRecord) else schedule
            return Event(type=kind, data=schedule_json(view), timestamp=at)

        return (self._event_policy.deferred(kind, build),)

    # -- CRUD -------------------------------------------------------------------------------

    async def create(
        self,
        workflow_id: str,
        data: Mapping[str, Any] | ScheduleRequest,
        *,
        actor: Principal | None = None,
    ) -> Schedule:
        """Create a schedule of an existing workflow; ``InvalidSchedule`` names what is wrong."""
        req = (
            data
            if isinstance(data, ScheduleRequest)
            else structure(data, ScheduleRequest, error=InvalidSchedule)
        )
        if not isinstance(workflow_id, str) or not workflow_id:
            raise WorkflowNotFound(str(workflow_id))
        now = utcnow()
        check_request(req, now, creating=True)
        record = to_record(req, base=None, workflow_id=workflow_id, now=now)
        check_fires(record, now)
        record.created_by = actor.user_id if actor else None
        if not record.enabled:  # created paused
            record.paused_by, record.paused_at = record.created_by, now
            record.paused_reason = req.paused_reason
        # The parameters are checked against the workflow as this process last read it;
        # the insert's transaction checks that it still is at that version (else: read it
        # again, check again), so no read of its version is needed before.
        for attempt in range(WRITE_ATTEMPTS):
            workflow = await self.check_parameters(
                workflow_id, req.parameters, cached_ok=attempt == 0
            )
            record.workflow_name = workflow.name
            view = _view(record)
            created = await self._committer.submit(
                InsertSchedule(
                    record=record,
                    events=self._events("schedule.created", view, now),
                    workflow_version=workflow.updated_at,
                )
            )
            if created:
                self._wake()
                return view
        raise WorkflowNotFound(workflow_id)

    async def check_parameters(
        self, workflow_id: str, parameters: Any, *, cached_ok: bool = False
    ) -> Workflow:
        """Check a schedule's ``parameters`` as an execution of the workflow would; return it.

        So a schedule never fires parameters its workflow's type refuses:
        ``InvalidParameters`` (400, wrong shape) or ``ParameterValidationError``
        (422, wrong values) at once, instead of a failed firing at each due time.
        """
        # The workflow parsed once per version (the cache executions use).
        compiled = await self._executions.compiled(workflow_id, cached_ok=cached_ok)
        if compiled.template_ids:  # read, so the type checks the placeholders of those found
            await self._templates.find(compiled.template_ids)
        compiled.workflow_type.parse_parameters(parameters, compiled.config)
        return compiled.workflow

    async def _load(self, schedule_id: Any) -> ScheduleRecord:
        if not isinstance(schedule_id, str):
            raise ScheduleNotFound(str(schedule_id))
        record = await self._store.get_schedule(schedule_id)
        if record is None:
            raise ScheduleNotFound(schedule_id)
        return record

    async def get(self, schedule_id: str) -> Schedule:
        """The schedule with ``workflow_name``, ``next_execution`` and ``last_execution``."""
        return _view(await self._load(schedule_id))

    async def list(
        self,
        *,
        workflow_id: str | None = None,
        enabled: Any = None,
        page: Any = 1,
        page_size: Any = 10,
    ) -> Page[ScheduleSummary]:
        """One page of schedules, newest first."""
        page, page_size = check_page(page, page_size)
        enabled = check_flag(enabled, "enabled")
        records, total = await self._store.list_schedules(
            ScheduleQuery(page=page, page_size=page_size, workflow_id=workflow_id, enabled=enabled),
        )
        return Page.build([_summary(r) for r in records], page, page_size, total)

    async def update(
        self, schedule_id: str, data: Mapping[str, Any], *, actor: Principal | None = None
    ) -> Schedule:
        """Apply a PUT body: given fields replace current ones; timing changes recompute ``next_execution``.

        The write is a compare-and-set on the version read: when a firing (or
        another edit) commits in between, the body is applied again to the
        schedule as it then is, so the firing's due time and last execution
        stay. ``InvalidState`` only if it keeps losing ``WRITE_ATTEMPTS`` times.

        Disabling records ``paused_by`` (``actor``), ``paused_reason`` (from the
        body) and ``paused_at``; enabling applies ``resume`` (``from_now``,
        ``run_once``, ``catch_up``) to the due times passed while paused. Each is
        a line of the history (``resumed``, saying what passed while paused).
        """
        if not isinstance(data, Mapping):
            raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
        for attempt in range(WRITE_ATTEMPTS):
            current = await self._load(schedule_id)
            unknown = sorted(set(data) - set(UPDATABLE))
            if unknown:
                raise InvalidRequest(
                    f"Unknown or read-only field(s): {', '.join(unknown)}", {"field": unknown[0]}
                )
            now = utcnow()
            record = self._updated(current, data, now)
            history = pause_or_resume(current, record, data, now, actor)
            if attempt == 0 and record.parameters != current.parameters:
                # (parameters echoed unchanged, as a client sending back what it read, are
                # not checked again: like a repeated cron expression, only a change counts)
                await self.check_parameters(record.workflow_id, record.parameters)
            view = _view(record)
            applied = await self._committer.submit(
                UpdateSchedule(
                    record=record,
                    expected_version=current.version,
                    events=self._events("schedule.updated", view, now),
                    reset_failures=record.enabled and not current.enabled,
                    history=history,
                )
            )
            if applied:
                self._wake()
                return view
            await _backoff(attempt)
        raise _kept_changing(schedule_id, "updated")

    def _updated(
        self, current: ScheduleRecord, data: Mapping[str, Any], now: datetime
    ) -> ScheduleRecord:
        """``current`` with the body applied (what the update writes, if nothing changed since)."""
        before = as_request(current)
        merged = {k: v for k, v in unstructure(before).items() if v is not None}
        merged.update(data)
        req = structure(merged, ScheduleRequest, error=InvalidSchedule)
        # Only what changes counts: a body echoing the current values (GET, edit, PUT)
        # neither re-checks a past execution_time nor moves the due time.
        changed = {k for k in UPDATABLE if getattr(req, k) != getattr(before, k)}
        creating = bool(changed & {"execution_time", "schedule_type", "rrule", "exclude_rrule"})
        check_request(req, now, creating=creating)
        record = to_record(req, base=current, workflow_id=current.workflow_id, now=now)
        if creating or "start_time" in changed:
            check_fires(record, now)
        timing_changed = bool(
            changed
            & {
                "schedule_type",
                "cron_expression",
                "interval_value",
                "interval_unit",
                "execution_time",
                "start_time",
                "timezone",
                "end_time",
                "max_runs",
                "jitter_seconds",
                "on_gap",
                "on_fold",
                "rrule",
                "exclude_rrule",
            }
        )
        if (
            not timing_changed
            and current.next_due is not None
            and not (req.enabled and not current.enabled)
        ):
            record.next_due = current.next_due
            record.completed = False
        if not timing_changed and current.completed:
            record.completed, record.next_due = True, None
        record.workflow_name = current.workflow_name
        record.last_execution_id = current.last_execution_id
        record.last_status = current.last_status
        record.last_started_at, record.last_completed_at = (
            current.last_started_at,
            current.last_completed_at,
        )
        record.pending_runs = current.pending_runs
        record.version = current.version + 1
        record.paused_by, record.paused_reason = current.paused_by, current.paused_reason
        record.paused_at, record.resume_policy = current.paused_at, current.resume_policy
        return record

    async def delete(self, schedule_id: str) -> DeleteResult:
        """Delete a schedule (its past executions stay).

        A compare-and-set on the version read, like :meth:`update`, so the
        ``schedule.deleted`` event shows the schedule as it was deleted.
        """
        for attempt in range(WRITE_ATTEMPTS):
            current = await self._load(schedule_id)
            applied = await self._committer.submit(
                DeleteSchedule(
                    schedule_id=schedule_id,
                    expected_version=current.version,
                    events=self._events("schedule.deleted", current, utcnow()),
                )
            )
            if applied:
                return DeleteResult(id=schedule_id, deleted=True)
            await _backoff(attempt)
        raise _kept_changing(schedule_id, "deleted")

    async def preview(self, schedule_id: str, *, count: Any = 10) -> SchedulePreview:
        """The schedule's next ``count`` (1 to 100) due times, from its next due time (from
        now when it is parked: what enabling it would give)."""
        wanted = check_int(count, "count", 1, MAX_PREVIEW)
        record = await self._load(schedule_id)
        first = None if record.completed else record.next_due or next_after(record, utcnow())
        return preview_of(record, first, wanted)

    async def preview_unsaved(self, data: Mapping[str, Any]) -> SchedulePreview:
        """The next due times of a schedule not saved: ``data`` is checked as
        :meth:`create` checks it (and its ``parameters`` against ``workflow_id``, if given)."""
        req = structure(data, SchedulePreviewRequest, error=InvalidSchedule)
        now = utcnow()
        check_request(req, now, creating=True)
        if req.workflow_id is not None:
            await self.check_parameters(req.workflow_id, req.parameters)
        record = to_record(req, base=None, workflow_id=req.workflow_id or "", now=now)
        check_fires(record, now)
        listed = preview_of(record, record.next_due, req.count)
        listed.schedule_id = None
        return listed

    async def backfill(
        self, schedule_id: str, data: Mapping[str, Any], *, actor: Principal | None = None
    ) -> ScheduleBackfill | BackfillRun:
        """Run the due times of a past range (``start`` to ``end``), at most ``max_runs``
        (1 to 1000), as a background job (its :class:`BackfillRun`, ``running``);
        ``dry_run`` lists them at once. See :mod:`abi_engine.schedule_backfill`."""
        record = await self._load(schedule_id)
        return await self.backfills.request(record, data, actor)

    async def get_backfill(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """A backfill of the schedule, with its progress."""
        await self._load(schedule_id)
        return await self.backfills.get(schedule_id, backfill_id)

    async def list_backfills(
        self, schedule_id: str, *, page: Any = 1, page_size: Any = 10, status: Any = None
    ) -> Page[BackfillRun]:
        """One page of the schedule's backfills, newest first; ``status`` keeps those in it
        (``running``, ``completed``, ``cancelled``, ``failed``)."""
        await self._load(schedule_id)
        return await self.backfills.list(schedule_id, page=page, page_size=page_size, status=status)

    async def cancel_backfill(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """Stop a running backfill before its next due time (what started stays)."""
        await self._load(schedule_id)
        return await self.backfills.cancel(schedule_id, backfill_id)

    async def history(
        self, schedule_id: str, *, page: Any = 1, page_size: Any = 10
    ) -> Page[ScheduleHistoryEntry]:
        """What happened at each due time, newest first (the last 200 are kept)."""
        await self._load(schedule_id)
        page, page_size = check_page(page, page_size)
        rows, total = await self._store.schedule_history(schedule_id, page, page_size)
        items = [
            ScheduleHistoryEntry(
                due_at=r.due_at,
                recorded_at=r.recorded_at,
                outcome=r.outcome,
                execution_id=r.execution_id,
                detail=r.detail,
            )
            for r in rows
        ]
        return Page.build(items, page, page_size, total)


async def _backoff(attempt: int) -> None:
    """Before trying a lost compare-and-set again: at once, then a short random wait."""
    if attempt:
        await anyio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))


def _kept_changing(schedule_id: str, what: str) -> InvalidState:
    return InvalidState(
        f"Schedule {schedule_id} kept changing while it was being {what}; try again",
        {"schedule_id": schedule_id, "attempts": WRITE_ATTEMPTS},
    )
