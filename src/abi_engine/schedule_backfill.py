"""Backfill: run the due times a schedule had in a past range (``POST .../backfill``).

Each due time of ``start`` to ``end`` (both included, on the schedule's own
timing, less its exclusions) starts one execution of the schedule's workflow
with its parameters, ``schedule_id`` set and ``scheduled_for`` its due time
(the logical time the run stands for). Each carries the idempotency key
``backfill:<schedule id>:<due time>``: that marks it as a backfill, and
running the same range again finds the executions already started instead
of starting them twice. Bounded: at most ``max_runs`` (1 to 1000) due times;
``dry_run`` lists them without starting anything.

A backfill that runs is a durable job (:class:`BackfillService`): its due
times are listed and stored when it is asked for (answered 202 with its id),
then a background task of the engine starts them one by one, writing its
position and counters after each. A process holds a backfill under a lease
renewed at each step; after a crash (or a stop) another process, or the
same one restarted, takes it over where it stood: the due time it was at
may have started its execution already, and its idempotency key finds it,
so no due time starts twice. A cancel stops it before its next due time.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.abc
import attrs

from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import (
    AbiError,
    BackfillNotFound,
    EngineNotRunning,
    InvalidRequest,
    InvalidState,
    QueueFull,
    ScheduleNotFound,
    WorkflowNotFound,
)
from abi_engine.events import Event, EventPolicy, OutboxEvent
from abi_engine.ids import format_time, new_id, utcnow
from abi_engine.limits import Number
from abi_engine.models import BackfillItem, OverlapPolicy, Page, ScheduleBackfill
from abi_engine.models_backfills import BackfillRun, BackfillStatus
from abi_engine.schedule_exclusions import excluded_reason
from abi_engine.schedule_lifecycle import timing_of
from abi_engine.schedule_rules import UNFINISHED
from abi_engine.services import Service, check_page
from abi_engine.storage._codec import from_ms, to_ms
from abi_engine.storage.records_backfills import BackfillProgress, BackfillRecord
from abi_engine.storage.records_schedules import ScheduleRecord

if TYPE_CHECKING:
    from abi_engine.executions import ExecutionService
    from abi_engine.storage.base import Store

__all__ = ["MAX_BACKFILL", "BackfillRequest", "BackfillService", "due_times"]

log = logging.getLogger("abi_engine.scheduler")

#: Due times one backfill runs at most.
MAX_BACKFILL = 1000


@attrs.define(kw_only=True)
class BackfillRequest:
    """The body of ``POST /workflow_schedules/{id}/backfill``."""

    start: datetime
    end: datetime
    dry_run: bool = False
    max_runs: Annotated[int, Number(minimum=1, maximum=MAX_BACKFILL)] = 100
    #: ``allow``: every due time starts now; ``skip``: none starts while an execution of
    #: the schedule is unfinished (409 INVALID_STATE).
    overlap_policy: OverlapPolicy = OverlapPolicy.ALLOW


def _request(data: Mapping[str, Any], now: datetime) -> BackfillRequest:
    if not isinstance(data, Mapping):
        raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
    req = structure(data, BackfillRequest, error=InvalidRequest)
    if req.start.year < 1970:
        raise InvalidRequest("'start' must be after 1970", {"field": "start"})
    if req.end <= req.start:
        raise InvalidRequest("'end' must be after 'start'", {"field": "end"})
    if req.end > now:
        raise InvalidRequest(
            "'end' must not be in the future (a backfill runs the past)", {"field": "end"}
        )
    if not 1 <= req.max_runs <= MAX_BACKFILL:
        raise InvalidRequest(f"'max_runs' must be 1 to {MAX_BACKFILL}", {"field": "max_runs"})
    if req.overlap_policy is OverlapPolicy.QUEUE:
        raise InvalidRequest(
            "a backfill's overlap_policy is allow or skip", {"field": "overlap_policy"}
        )
    return req


def due_times(
    record: ScheduleRecord, start: datetime, end: datetime, limit: int
) -> tuple[list[datetime], bool]:
    """The schedule's due times in ``[start, end]`` off its exclusions, at most ``limit``,
    and whether there are more."""
    timing = timing_of(record)
    found: list[datetime] = []
    due = timing.next_after(start - timedelta(microseconds=1))
    for _ in range(limit * 10 + 100):  # (excluded due times are passed over, boundedly)
        if due is None or due > end or len(found) > limit:
            break
        if excluded_reason(record, due) is None:
            found.append(due)
        due = timing.next_after(due)
    return found[:limit], len(found) > limit


def backfill_key(schedule_id: str, due: datetime) -> str:
    """The idempotency key of a due time's backfill execution."""
    return f"backfill:{schedule_id}:{format_time(due)}"


class BackfillService(Service):
    """Backfills as durable jobs: asked for, run in the background, read, cancelled.

    :meth:`run` is the engine's background task: it takes the running
    backfills no process holds (its own new ones at once, others' when their
    lease ran out) and runs each to its end.
    """

    #: How long a process holds a backfill without a step before another may take it.
    LEASE = timedelta(seconds=30)
    #: How often the loop looks for backfills left by a process that stopped.
    POLL_SECONDS = 10.0

    def __init__(self, store: Store, executions: ExecutionService, events: EventPolicy) -> None:
        super().__init__(store)
        self._executions = executions
        self._events = events
        self._owner = f"bfo_{uuid.uuid4().hex}"
        self._wakeup: anyio.Event | None = None  # (made in the loop's event loop)

    def wake(self) -> None:
        """Look for backfills to run now (a new one was stored)."""
        if self._wakeup is not None:
            self._wakeup.set()

    async def request(
        self, record: ScheduleRecord, data: Mapping[str, Any], actor: Principal | None
    ) -> ScheduleBackfill | BackfillRun:
        """A dry run's list at once, or a new running backfill (run in the background)."""
        req = _request(data, utcnow())
        # (stored in ms: the due times the job reads back, and their keys, are these)
        dues, truncated = due_times(record, req.start, req.end, req.max_runs)
        dues = [from_ms(to_ms(d)) for d in dues]  # type: ignore[misc]
        if req.dry_run:
            items = [BackfillItem(due_at=due) for due in dues]
            return ScheduleBackfill(
                schedule_id=record.id,
                dry_run=True,
                start=req.start,
                end=req.end,
                items=items,
                truncated=truncated,
            )
        if req.overlap_policy is OverlapPolicy.SKIP and record.last_status in UNFINISHED:
            raise InvalidState(
                f"Execution {record.last_execution_id} of the schedule is still"
                f" {record.last_status}; overlap_policy skip starts no backfill",
                {"schedule_id": record.id, "execution_id": record.last_execution_id},
            )
        await self._executions.compiled(record.workflow_id)  # (the workflow exists)
        now = utcnow()
        run = BackfillRun(
            id=new_id("bf_"),
            schedule_id=record.id,
            status=BackfillStatus.RUNNING if dues else BackfillStatus.COMPLETED,
            start=req.start,
            end=req.end,
            max_runs=req.max_runs,
            overlap_policy=req.overlap_policy.value,
            total=len(dues),
            truncated=truncated,
            created_by=actor.user_id if actor else None,
            created_at=now,
            updated_at=now,
            finished_at=None if dues else now,
        )
        # (no due times: it ends at once, and says so as one that ran would)
        events = () if dues else (self._ended(run, "completed", now),)
        await self._store.insert_backfill(BackfillRecord(run=run, due_times=dues, events=events))
        if events:
            self._events.emit(events)
        self.wake()
        return run

    async def get(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """The backfill ``backfill_id`` of schedule ``schedule_id`` with its progress."""
        if not isinstance(backfill_id, str) or not backfill_id:
            raise BackfillNotFound(str(backfill_id))
        record = await self._store.get_backfill(backfill_id)
        if record is None or record.run.schedule_id != schedule_id:
            raise BackfillNotFound(backfill_id)
        return record.run

    async def list(
        self, schedule_id: str, *, page: Any = 1, page_size: Any = 10, status: Any = None
    ) -> Page[BackfillRun]:
        """One page of the backfills of schedule ``schedule_id``, newest first (only those
        in ``status`` when given); ``InvalidRequest`` naming a bad ``page``, ``page_size``
        or ``status``."""
        page, page_size = check_page(page, page_size)
        records, total = await self._store.list_backfills(
            schedule_id, _status(status), page, page_size
        )
        return Page.build([r.run for r in records], page, page_size, total)

    async def cancel(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """Stop a running backfill before its next due time (what started stays);
        ``InvalidState`` when it is over already."""
        run = await self.get(schedule_id, backfill_id)
        if not await self._store.cancel_backfill(backfill_id, utcnow()):
            current = await self.get(schedule_id, backfill_id)
            raise InvalidState(
                f"Backfill {backfill_id} is {current.status.value}, not running",
                {"backfill_id": backfill_id, "status": current.status.value},
            )
        del run
        return await self.get(schedule_id, backfill_id)

    # -- the background job -------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the backfills no process holds, until cancelled."""
        task_status.started()
        try:
            await self._loop()
        finally:
            with anyio.CancelScope(shield=True):  # (another process, or a restart, goes on)
                await self._store.release_backfills(self._owner)

    async def _loop(self) -> None:
        self._wakeup = anyio.Event()
        async with anyio.create_task_group() as group:
            while True:
                now = utcnow()
                claimed = await self._store.claim_backfills(self._owner, now, now + self.LEASE, 10)
                for record in claimed:
                    group.start_soon(self._drive, record)
                with anyio.move_on_after(self.POLL_SECONDS):
                    await self._wakeup.wait()
                self._wakeup = anyio.Event()

    async def _drive(self, record: BackfillRecord) -> None:
        """Start the due times of ``record`` from its position on; stop when cancelled."""
        run, position = record.run, record.position
        while position < len(record.due_times):
            schedule = await self._store.get_schedule(run.schedule_id)
            if schedule is None:
                await self._save(record, position, "failed", "the schedule was deleted")
                return
            outcome, error = await self._start(schedule, record.due_times[position], run)
            if outcome == "fatal":
                await self._save(record, position, "failed", error)
                return
            if outcome == "stop":
                return  # the engine stops: the lease is given back, the next one goes on
            if outcome == "retry":  # the queue is full: wait for room, holding the lease
                await anyio.sleep(1.0)
                if not await self._save(record, position, "running"):
                    return
                continue
            setattr(run, outcome, getattr(run, outcome) + 1)
            run.last_error = error or run.last_error
            position += 1
            status = "completed" if position == len(record.due_times) else "running"
            if not await self._save(record, position, status):
                return  # cancelled, or taken over by another process
        if record.position == len(record.due_times):
            await self._save(record, record.position, "completed")

    async def _start(
        self, schedule: ScheduleRecord, due: datetime, run: BackfillRun
    ) -> tuple[str, str | None]:
        """Start the execution of one due time: ``started``, ``skipped`` (an earlier
        backfill started it), ``failed`` (with the error), or ``fatal`` (it cannot go on)."""
        key = backfill_key(schedule.id, due)
        existing = await self._store.find_execution_by_key(schedule.workflow_id, key)
        if existing is not None:
            found = await self._store.get_execution(existing)
            # (started by this backfill before a crash: it counts as started)
            mine = found is not None and found.created_at >= run.created_at
            return ("started" if mine else "skipped"), None
        try:
            await self._executions.execute(
                schedule.workflow_id,
                schedule.parameters,
                wait=False,
                schedule_id=schedule.id,
                idempotency_key=key,
                scheduled_for=due,
                priority=schedule.priority,
            )
        except (WorkflowNotFound, ScheduleNotFound) as exc:
            return "fatal", exc.message
        except QueueFull:
            return "retry", None
        except EngineNotRunning:
            return "stop", None
        except AbiError as exc:
            log.warning(
                "backfill %s: due time %s of schedule %s not started: %s",
                run.id,
                format_time(due),
                schedule.id,
                exc.message,
            )
            return "failed", f"{format_time(due)}: {exc.message}"
        return "started", None

    async def _save(
        self, record: BackfillRecord, position: int, status: str, error: str | None = None
    ) -> bool:
        run, now = record.run, utcnow()
        if error is not None:
            run.last_error = error
        finished = now if status != "running" else None
        events = () if finished is None else (self._ended(run, status, now),)
        saved = await self._store.save_backfill_progress(
            BackfillProgress(
                backfill_id=run.id,
                owner=self._owner,
                position=position,
                started=run.started,
                skipped=run.skipped,
                failed=run.failed,
                last_error=run.last_error,
                updated_at=now,
                lease_until=now + self.LEASE,
                status=status,
                finished_at=finished,
                events=events,
            )
        )
        if saved and events:
            self._events.emit(events)  # committed: to the abi_event hooks, the webhook worker
        return saved

    def _ended(self, run: BackfillRun, status: str, now: datetime) -> OutboxEvent:
        """``schedule.backfill_completed``: the backfill as it ended (``completed``, or
        ``failed``), built only when someone listens."""

        def build() -> Event:
            ended = attrs.evolve(
                run, status=BackfillStatus(status), updated_at=now, finished_at=now
            )
            return Event(type="schedule.backfill_completed", data=unstructure(ended), timestamp=now)

        return self._events.deferred("schedule.backfill_completed", build)


def _status(value: Any) -> str | None:
    """A backfill status filter (``None``: all); ``InvalidRequest`` naming ``status``."""
    if value is None:
        return None
    try:
        return BackfillStatus(value).value
    except ValueError:
        raise InvalidRequest(
            f"'status' must be one of {', '.join(s.value for s in BackfillStatus)},"
            f" got {str(value)[:40]!r}",
            {"field": "status"},
        ) from None
