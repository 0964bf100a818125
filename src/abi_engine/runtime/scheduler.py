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
from datetime import datetime
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from abi_engine.converter import unstructure
from abi_engine.errors import AbiError, IntegrationMissing, WorkflowNotFound
from abi_engine.events import Event, EventPolicy, OutboxEvent
from abi_engine.ids import format_time, utcnow
from abi_engine.models import Workflow
from abi_engine.runtime.execution import Prepared
from abi_engine.runtime.firing import (
    bounded,
    completes,
    consecutive,
    decide,
    failure_changes,
    fired_line,
    firing,
    history_line,
    inactive_failure,
    missed_due,
    new_execution,
    next_due_after,
    not_excluded,
    timing,
)
from abi_engine.runtime.metrics import FIRING_OUTCOMES
from abi_engine.runtime.runner import Runtime
from abi_engine.schedule_math import logical_due
from abi_engine.schedule_rules import Missed, Note
from abi_engine.storage.aio import AsyncStore
from abi_engine.storage.records import ExecutionRecord
from abi_engine.storage.records_schedules import FireSchedule, HistoryRecord, ScheduleRecord
from abi_engine.types import WorkflowType

__all__ = ["PLAN_AHEAD", "Scheduler", "WorkflowCatalog"]

log = logging.getLogger("abi_engine.scheduler")

#: How long before a due time the loop plans its firings (committed at the due time).
PLAN_AHEAD = 0.05


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
        if record.workflow_deleted:
            note = Note(
                first, "workflow_deleted", "the workflow was deleted; the schedule is disabled"
            )
            gone = (history_line(record, note, now),)
            return firing(record, next_due=None, pending_runs=0, enabled=False, history=gone), []
        missed, excluded = not_excluded(record, missed_due(record, first, now), now)
        decision = decide(record, missed, first)
        history = [*excluded, *(history_line(record, note, now) for note in decision.notes)]
        fire_times, next_due = bounded(record, list(decision.fire), decision.next_due)
        executions, prepared, failed = await self._prepare(
            record, fire_times, now, history, compiled
        )
        next_due = next_due_after(record, next_due, len(executions))
        failed, failed_times = inactive_failure(record, decision, missed, failed, fire_times)
        fired_at = [h.due_at or now for h in history if h.outcome == "fired"]
        completed = completes(record, next_due)
        changes = failure_changes(record, failed, failed_times, now)
        if failed is not None and failed_times and missed.count > len(failed_times):
            changes["failures"] = missed.count  # every due time of the inactive workflow
        changes.update(consecutive(record, executions, changes, now, history))
        next_due = None if changes.get("enabled") is False else next_due
        op = firing(
            record,
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
        changes = failure_changes(record, failed, due, now)
        changes.update(consecutive(record, executions, changes, now, history))
        return firing(
            record,
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
            workflow, wtype, config, specs, params = await self._runnable(record, compiled)
        except AbiError as exc:
            detail = f"{exc.code}: {exc.message}"[:500]
            history.extend(
                history_line(record, Note(due, "failed", detail), now) for due in fire_times
            )
            return executions, prepared, exc
        for due in fire_times:
            trace = None if runtime.tracing is None else runtime.tracing.context_for(None)
            execution = new_execution(record, workflow, specs, due, now, trace)
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
            history.append(fired_line(record, due, execution.id, now))
        return executions, prepared, None

    async def _runnable(
        self, record: ScheduleRecord, compiled: dict[str, Any]
    ) -> tuple[Workflow, WorkflowType, Any, Any, Any]:
        """The schedule's workflow (compiled once a tick), its type, configuration, steps
        and the parsed parameters; raises the error that keeps it from running."""
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
        return workflow, wtype, config, specs, wtype.parse_parameters(record.parameters, config)

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
