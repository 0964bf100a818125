"""The scheduler loop: each due time of each schedule fired exactly once.

The loop sleeps until the earliest ``next_due`` (an indexed column), reads
only the schedules that are due, asks :mod:`abi_engine.schedule_rules` what
to do with their due times (misfire and overlap policies), and commits each
firing as a compare-and-set on the schedule's ``version`` (and ``next_due``)
in the same transaction as the executions it starts: two processes on one
database never both fire a due time, and a crash never loses one. The
executions go to the runtime; the schedules' CRUD is
:class:`abi_engine.schedules.ScheduleService`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskStatus

from abi_engine.converter import unstructure
from abi_engine.errors import AbiError, IntegrationMissing, InvalidState, WorkflowNotFound
from abi_engine.events import Event, EventPolicy, OutboxEvent
from abi_engine.ids import format_time, new_id, utcnow
from abi_engine.models import ExecutionStatus, ScheduleType, Workflow, WorkflowStatus
from abi_engine.runtime.execution import Prepared
from abi_engine.runtime.metrics import FIRING_OUTCOMES
from abi_engine.runtime.runner import Runtime
from abi_engine.schedule_exclusions import excluded_reason, has_exclusions
from abi_engine.schedule_math import INTERVAL_UNITS, Timing, jittered, logical_due
from abi_engine.schedule_rrule import rule_walls
from abi_engine.schedule_rules import Missed, Note, decide_due, plan_missed
from abi_engine.storage.aio import AsyncStore
from abi_engine.storage.records import (
    ExecutionRecord,
    FireSchedule,
    HistoryRecord,
    ScheduleRecord,
    stored_priority,
)
from abi_engine.types import WorkflowType

__all__ = ["MIN_GRACE_SECONDS", "PLAN_AHEAD", "Scheduler", "WorkflowCatalog", "timing"]

log = logging.getLogger("abi_engine.scheduler")

#: How long before a due time the loop plans its firings (committed at the due time).
PLAN_AHEAD = 0.05
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


class WorkflowCatalog(Protocol):
    """What the scheduler asks of the workflows (``engine.workflows``)."""

    def workflow_type(self, name: str) -> WorkflowType: ...

    def template_ids(self, workflow: Workflow) -> Iterable[str]: ...


class Scheduler:
    """Fires due schedules (``engine.scheduler``): started and stopped by the engine.

    :param store: the store, awaitable.
    :param runtime: where the executions it starts run.
    :param workflows: the workflow types and templates of workflows.
    :param check_templates: raises when a workflow's managed templates are missing
        (``engine.executions.check_templates``).
    :param events: the event policy (``schedule.triggered`` and ``schedule.failed``).
    """

    def __init__(
        self,
        store: AsyncStore,
        runtime: Runtime,
        *,
        workflows: WorkflowCatalog,
        check_templates: Callable[[str, Collection[str]], Awaitable[None]],
        events: EventPolicy,
        max_sleep: float = 1.0,
        batch: int = 500,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._workflows = workflows
        self._check_templates = check_templates
        self._event_policy = events
        self._max_sleep = max_sleep
        self._batch = batch
        self._wakeup = anyio.Event()
        #: Executions started by this scheduler since it was built.
        self.fired = 0

    def wake(self) -> None:
        """Make the loop look at the schedules again now."""
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The scheduler loop; runs until cancelled."""
        task_status.started()
        while True:
            self._wakeup = anyio.Event()
            try:
                upcoming = await self._store.next_schedule_due()
                now = utcnow()
                far = upcoming is None or (upcoming - now).total_seconds() > PLAN_AHEAD
                if far and len(await self._store.queued_schedules_ready(1)):
                    busy = await self.tick(now)  # a queued run whose predecessor ended
                    continue
                if far:
                    delay = self._max_sleep
                    if upcoming is not None:
                        delay = min(delay, (upcoming - now).total_seconds() - PLAN_AHEAD)
                    with anyio.move_on_after(max(0.0, delay)):
                        await self._wakeup.wait()
                    continue
                # Plan the due time's firings now, commit them at the due instant:
                # the work of planning does not make the executions late.
                assert upcoming is not None
                busy = await self.tick(max(upcoming, now), wait_until_due=True)
            except Exception:
                log.exception("scheduler tick failed")
                busy = False
                await anyio.sleep(min(self._max_sleep, 0.1))
            if busy:
                await anyio.lowlevel.checkpoint()

    async def tick(self, now: datetime | None = None, *, wait_until_due: bool = False) -> bool:
        """Fire what is due at ``now``; ``True`` when more may be waiting.

        With ``wait_until_due`` (``now`` slightly ahead), plan first, then
        sleep until ``now`` before committing the firings.
        """
        now = now or utcnow()
        due = await self._store.due_schedules(now, self._batch)
        ready = await self._store.queued_schedules_ready(self._batch)
        compiled: dict[str, Any] = {}  # each workflow is read and parsed once per tick
        plans = []
        for record in due:
            plans.append(await self._plan_due(record, now, compiled))
            await anyio.lowlevel.checkpoint()  # a long tick never holds the loop for long
        for record in ready:
            plans.append(await self._plan_queued(record, now, compiled))
            await anyio.lowlevel.checkpoint()
        if plans:
            if wait_until_due:
                ahead = (now - utcnow()).total_seconds()
                if ahead > 0:
                    await anyio.sleep(ahead)
            results = await self._runtime.committer.submit_many([op for op, _ in plans])
            for (op, prepared), applied in zip(plans, results, strict=True):
                if applied is True:
                    self._count(op)
                    _log_firing(op)
                if applied is True:
                    for item in prepared:
                        self.fired += 1
                        if not self._runtime.submit(item, sync=False):
                            # Handed back to the store: recovery runs it once there is room.
                            log.warning("queue full; schedule %s execution waits", op.schedule_id)
        return len(due) >= self._batch or len(ready) >= self._batch

    def _count(self, op: FireSchedule) -> None:
        """Count a committed firing's due times by outcome, and how late those that
        started an execution started."""
        metrics = self._runtime.metrics
        if metrics is None:
            return
        now = utcnow()
        for entry in op.history:
            outcome = FIRING_OUTCOMES.get(entry.outcome, "skipped")
            metrics.firing(outcome)
            if outcome == "started" and entry.due_at is not None:
                metrics.schedule_lateness.observe(max(0.0, (now - entry.due_at).total_seconds()))

    async def _plan_due(
        self, record: ScheduleRecord, now: datetime, compiled: dict[str, Any]
    ) -> tuple[FireSchedule, list[Prepared]]:
        """The firing of a due schedule: what :func:`~abi_engine.schedule_rules.decide_due`
        says, with the executions it starts, as one compare-and-set write."""
        stored = record.next_due  # (the run's start: the due time plus its jitter)
        assert stored is not None
        first = logical_due(timing(record), stored, record.jitter_seconds)

        def fire(**changes: Any) -> FireSchedule:
            return FireSchedule(
                schedule_id=record.id,
                expected_version=record.version,
                expected_next_due=stored,
                expected_pending=record.pending_runs,
                **changes,
            )

        if record.workflow_deleted:
            note = Note(
                first, "workflow_deleted", "the workflow was deleted; the schedule is disabled"
            )
            gone = (_history(record, note, now),)
            return fire(next_due=None, pending_runs=0, enabled=False, history=gone), []
        # A running loop reaches a due time a few ms late; that is never a misfire.
        grace = timedelta(seconds=max(record.misfire_grace_seconds, MIN_GRACE_SECONDS))
        if record.resume_policy:  # due times passed while paused are never "on time"
            grace = timedelta(seconds=MIN_GRACE_SECONDS)
        grace += timedelta(seconds=record.jitter_seconds)  # a delayed run is not late
        # Bounded work, however long the downtime: the due times are counted, not listed.
        missed = plan_missed(
            timing(record),
            first,
            now,
            grace=grace,
            # A resume (run_once, catch_up) decides once about the due times passed while paused.
            policy=record.resume_policy or record.misfire_policy,
            catch_up_limit=record.catch_up_limit,
        )
        missed, excluded = _not_excluded(record, missed, now)
        decision = decide_due(
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
        history = [_history(record, note, now) for note in decision.notes]
        history[:0] = excluded
        fire_times, next_due = _bounded(record, list(decision.fire), decision.next_due)
        executions, prepared, failed = await self._prepare(
            record, fire_times, now, history, compiled
        )
        if record.max_runs is not None and record.runs_count + len(executions) >= record.max_runs:
            next_due = None  # max_runs reached: done
        next_due = jittered(timing(record), record.id, next_due, record.jitter_seconds)
        failed_times: Sequence[datetime] = fire_times
        if any(note.outcome == "skipped_inactive" for note in decision.notes):
            # Never silent: a due time of an inactive workflow is a firing that failed.
            failed = InvalidState(
                f"Workflow {record.workflow_id!r} is inactive; the due time did not run",
                {"workflow_id": record.workflow_id},
            )
            failed_times = [missed.last] * min(missed.count, 1)
        fired_at = [h.due_at or now for h in history if h.outcome == "fired"]
        completed = next_due is None and (
            record.schedule_type in (ScheduleType.FIXED_TIME, ScheduleType.RRULE)
            or record.end_time is not None
            or record.max_runs is not None
        )
        changes = _failure_changes(record, failed, failed_times, now)
        if failed is not None and failed_times and missed.count > len(failed_times):
            changes["failures"] = missed.count  # every due time of the inactive workflow
        changes.update(_consecutive(record, executions, changes, now, history))
        next_due = None if changes.get("enabled") is False else next_due
        op = fire(
            next_due=next_due,
            pending_runs=decision.pending_runs,
            completed=completed,
            executions=tuple(executions),
            history=tuple(history),
            missed=missed.skipped if record.enabled and not record.resume_policy else 0,
            resumed=record.resume_policy is not None,
            runs=len(executions),
            events=(
                *self._triggered(record, executions, fired_at, now),
                *self._failed(record, failed, failed_times, now),
                *self._missed(record, missed, first, now),
            ),
            **changes,
        )
        return op, prepared

    async def _plan_queued(
        self, record: ScheduleRecord, now: datetime, compiled: dict[str, Any]
    ) -> tuple[FireSchedule, list[Prepared]]:
        history: list[HistoryRecord] = []
        due = [now]
        if record.max_runs is not None and record.runs_count >= record.max_runs:
            due = []  # (max_runs reached while it waited)
        executions, prepared, failed = await self._prepare(record, due, now, history, compiled)
        changes = _failure_changes(record, failed, due, now)
        changes.update(_consecutive(record, executions, changes, now, history))
        return FireSchedule(
            schedule_id=record.id,
            expected_version=record.version,
            expected_next_due=record.next_due,
            expected_pending=record.pending_runs,
            next_due=None if changes.get("enabled") is False else record.next_due,
            pending_runs=record.pending_runs - 1,
            completed=record.completed,
            executions=tuple(executions),
            history=tuple(history),
            runs=len(executions),
            events=(
                *self._triggered(record, executions, [now] * len(executions), now),
                *self._failed(record, failed, [now], now),
            ),
            **changes,
        ), prepared

    async def _prepare(
        self,
        record: ScheduleRecord,
        fire_times: list[datetime],
        now: datetime,
        history: list[HistoryRecord],
        compiled: dict[str, Any],
    ) -> tuple[list[ExecutionRecord], list[Prepared], AbiError | None]:
        """The executions of ``fire_times``, or the error that keeps them from starting."""
        executions: list[ExecutionRecord] = []
        prepared: list[Prepared] = []
        if not fire_times:
            return executions, prepared, None
        runtime = self._runtime
        try:
            if record.workflow_id not in compiled:
                try:
                    compiled[record.workflow_id] = await self._compile(record.workflow_id)
                except AbiError as exc:
                    compiled[record.workflow_id] = exc
            found = compiled[record.workflow_id]
            if isinstance(found, AbiError):
                raise found
            workflow, wtype, config, specs, template_ids = found
            if template_ids:
                await self._check_templates(workflow.id, template_ids)
            params = wtype.parse_parameters(record.parameters, config)
        except AbiError as exc:
            detail = f"{exc.code}: {exc.message}"[:500]
            history.extend(_history(record, Note(due, "failed", detail), now) for due in fire_times)
            return executions, prepared, exc
        for due in fire_times:
            execution = ExecutionRecord(
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
                trace_context=None
                if runtime.tracing is None
                else runtime.tracing.context_for(None),
                scheduled_for=due,
            )
            runtime.grant(execution)
            executions.append(execution)
            prepared.append(
                Prepared(
                    record=execution,
                    workflow_type=wtype,
                    config=config,
                    params=params,
                    specs=specs,
                    integration_ids=tuple(i.id for i in workflow.integrations),
                )
            )
            history.append(
                HistoryRecord(
                    schedule_id=record.id,
                    due_at=due,
                    recorded_at=now,
                    outcome="fired",
                    execution_id=execution.id,
                )
            )
        return executions, prepared, None

    async def _compile(self, workflow_id: str) -> tuple[Any, Any, Any, Any, Any]:
        """The workflow, its type, parsed configuration, steps and template ids; raises when
        it cannot run."""
        workflow = await self._store.get_workflow(workflow_id)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        wtype = self._workflows.workflow_type(workflow.type)
        config = wtype.parse_configuration(workflow.configuration)
        specs = wtype.steps(config)
        if any(i.required for i in workflow.integrations):
            connected = await self._store.existing_integration_ids(
                [i.id for i in workflow.integrations]
            )
            missing = [i.id for i in workflow.integrations if i.required and i.id not in connected]
            if missing:
                raise IntegrationMissing(  # as executing the workflow would answer
                    f"Required integration {missing[0]!r} is not connected",
                    {"workflow_id": workflow.id, "integration_id": missing[0], "missing": missing},
                )
        template_ids = tuple(self._workflows.template_ids(workflow))
        return workflow, wtype, config, specs, template_ids

    def _triggered(
        self,
        record: ScheduleRecord,
        executions: Sequence[ExecutionRecord],
        due: Sequence[datetime],
        at: datetime,
    ) -> tuple[OutboxEvent, ...]:
        """The ``schedule.triggered`` events of executions started for due times ``due``."""
        events: list[OutboxEvent] = []
        for execution, due_at in zip(executions, due, strict=True):

            def build(execution_id: str = execution.id, due_at: datetime = due_at) -> Event:
                return Event(
                    type="schedule.triggered",
                    data={
                        "schedule_id": record.id,
                        "workflow_id": record.workflow_id,
                        "execution_id": execution_id,
                        "due_at": unstructure(due_at),
                    },
                    timestamp=at,
                )

            events.append(self._event_policy.deferred("schedule.triggered", build))
        return tuple(events)

    def _failed(
        self,
        record: ScheduleRecord,
        error: AbiError | None,
        due: Sequence[datetime],
        at: datetime,
    ) -> tuple[OutboxEvent, ...]:
        """The ``schedule.failed`` events of due times that could not start an execution."""
        if error is None:
            return ()
        events: list[OutboxEvent] = []
        for due_at in due:

            def build(due_at: datetime = due_at) -> Event:
                return Event(
                    type="schedule.failed",
                    data={
                        "schedule_id": record.id,
                        "workflow_id": record.workflow_id,
                        "due_at": unstructure(due_at),
                        "error": error.to_dict(),
                    },
                    timestamp=at,
                )

            events.append(self._event_policy.deferred("schedule.failed", build))
        return tuple(events)

    def _missed(
        self, record: ScheduleRecord, missed: Missed, first: datetime, at: datetime
    ) -> tuple[OutboxEvent, ...]:
        """The ``schedule.missed`` event of due times the misfire policy did not run (one
        event per firing, however many: they are counted, not listed)."""
        if not missed.skipped or not record.enabled or record.resume_policy:
            return ()  # (due times passed while paused are told by the history)

        def build() -> Event:
            return Event(
                type="schedule.missed",
                data={
                    "schedule_id": record.id,
                    "workflow_id": record.workflow_id,
                    "first_due_at": unstructure(first),
                    "count": missed.skipped,
                    "misfire_policy": record.misfire_policy,
                },
                timestamp=at,
            )

        return (self._event_policy.deferred("schedule.missed", build),)


def _bounded(
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


def _not_excluded(
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
            notes.append(_history(record, Note(due, "skipped_excluded", reason), now))
        else:
            kept.append(due)
    return attrs.evolve(missed, fire=tuple(kept)), notes


def _log_firing(op: FireSchedule) -> None:
    """One warning line per firing that could not start its execution(s), or missed some."""
    failure = op.last_failure
    if op.failures and failure:
        log.warning(
            "schedule %s: due time %s could not start an execution of %s%s: %s: %s",
            op.schedule_id,
            failure.get("due_at"),
            failure.get("workflow_id"),
            "" if op.failures == 1 else f" ({op.failures} due times)",
            failure["code"],
            failure["message"],
            extra={
                "schedule_id": op.schedule_id,
                "workflow_id": failure.get("workflow_id"),
                "due_at": failure.get("due_at"),
                "error": {"code": failure["code"], "message": failure["message"]},
            },
        )
    if op.missed:
        log.warning(
            "schedule %s: %d due time(s) from %s missed (misfire policy)",
            op.schedule_id,
            op.missed,
            format_time(op.expected_next_due) if op.expected_next_due else None,
            extra={"schedule_id": op.schedule_id, "missed": op.missed},
        )
    if op.paused_reason:
        log.warning(
            "schedule %s paused: %s",
            op.schedule_id,
            op.paused_reason,
            extra={"schedule_id": op.schedule_id},
        )


def _consecutive(
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


def _history(record: ScheduleRecord, note: Note, now: datetime) -> HistoryRecord:
    return HistoryRecord(
        schedule_id=record.id,
        due_at=note.due_at,
        recorded_at=now,
        outcome=note.outcome,
        detail=note.detail,
    )


def _failure_changes(
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
