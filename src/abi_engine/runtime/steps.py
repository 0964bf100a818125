"""Running one execution: load it, run its steps, checkpoint each, suspend or finish.

:class:`RunsExecutions` is mixed into :class:`~abi_engine.runtime.runner.Runtime`;
it holds no state of its own. Every write of a run is a compare-and-set on the
run's claim token (:meth:`_write`); a run that lost its claim stops at once
(:class:`~abi_engine.runtime.execution.Lost`) and writes nothing more.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from abi_engine.events import OutboxEvent
from abi_engine.execution_views import (
    execution_json,
    started_view,
    step_event_data,
)
from abi_engine.ids import utcnow
from abi_engine.models import (
    ExecutionStatus,
    StepStatus,
)
from abi_engine.runtime.checkpoints import WritesRuns
from abi_engine.runtime.execution import (
    SUSPENDED,
    Failure,
    Lost,
    Prepared,
    ProgressTooLarge,
    ResultTooLarge,
    milliseconds,
    sized_json,
)
from abi_engine.storage._codec import loads as _loads
from abi_engine.storage._fencing import new_claim
from abi_engine.storage.records import (
    PAUSED,
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    SaveProgress,
    StepRecord,
)
from abi_engine.types import (
    PROGRESS_PREFIX,
    ExecutionLost,
    StepContext,
    StepSpec,
    Suspend,
)

if TYPE_CHECKING:
    pass

__all__ = ["RunsExecutions"]

log = logging.getLogger("abi_engine.executor")

T = TypeVar("T")


class RunsExecutions(WritesRuns):
    """The running of one execution (its steps), for :class:`~abi_engine.runtime.runner.Runtime`."""

    #: ``ctx.services`` and the host it was made of (:meth:`_legacy_services`).
    _services: tuple[Any, Any] | None = None

    async def _load(self, execution_id: str, grant: int) -> Prepared | None:
        """The execution to run, claimed by this node under a fresh run token (``None``
        when there is nothing to run here)."""
        prepared = self._prepared.pop(execution_id, None)
        if prepared is not None and prepared.claimed and prepared.record.claim == grant:
            prepared.token = grant  # inserted running under its run token
            prepared.fresh = True
            return prepared
        handed = self._handed.pop(execution_id, None)  # (only under this very grant)
        record = (
            prepared.record
            if prepared is not None
            else handed[1]
            if handed is not None and handed[0] == grant
            else await self._read(self.store.get_execution, execution_id, token=grant)
        )
        if record is None or record.status.finished:
            self.claims.let_go(execution_id, grant)
            return None
        if record.workflow_type not in self.workflow_types:
            # Not a type this node runs (a node of another version took it?): hand it back.
            log.warning(
                "execution %s: workflow type %r is not registered here; handed back",
                execution_id,
                record.workflow_type,
            )
            self._hand_back(execution_id, grant)
            return None
        fresh = record.started_at is None
        token = await self._claim(record, grant, fresh=fresh)
        if token is None:
            return None
        if prepared is not None:
            prepared.token, prepared.fresh = token, fresh
            return prepared
        return await self._parsed(record, token, fresh=fresh)

    async def _claim(self, record: ExecutionRecord, grant: int, *, fresh: bool) -> int | None:
        """Claim the execution for this node under a fresh run token, and return it
        (``None``: let go, another node holds it now)."""
        execution_id = record.id
        record.started_at = record.started_at or utcnow()
        record.status = ExecutionStatus.RUNNING
        token = new_claim()
        self.claims.expect(execution_id, token)  # handed back too if we stop meanwhile
        try:
            claimed = await self._write(
                ClaimExecution(
                    execution_id=execution_id,
                    grant=grant,
                    token=token,
                    owner=self.node_id,
                    lease_until=self.lease(),
                    started_at=record.started_at,
                    events=self.started_events(record) if fresh else (),
                ),
                execution_id,
                grant,
            )
        except Exception:
            self.claims.let_go(execution_id, token)  # answered: no longer on its way
            raise
        if not claimed or not self.claims.swap(execution_id, grant, token):
            self.claims.let_go(execution_id, token)
            self.claims.let_go(execution_id, grant)
            return None
        self._run_tokens[execution_id] = token
        record.claim = token
        return token

    async def _parsed(self, record: ExecutionRecord, token: int, *, fresh: bool) -> Prepared | None:
        """A claimed execution read from the store, its configuration, parameters and steps
        parsed (``None``: it failed, since its type refuses them now)."""
        wtype = self.workflow_types[record.workflow_type]
        loaded = Prepared(record=record, workflow_type=wtype, config=None, params=None, specs=[])
        loaded.token, loaded.fresh = token, fresh
        try:
            loaded.config = wtype.parse_configuration(record.configuration)
            loaded.params = wtype.parse_parameters(record.parameters, loaded.config)
            loaded.specs = wtype.steps(loaded.config)
        except Exception as exc:
            await self._finish_failed(record, loaded, exc, step=None, steps_done=[])
            return None
        return loaded

    def started_events(self, record: ExecutionRecord) -> tuple[OutboxEvent, ...]:
        """The ``workflow.executed`` event of an execution that starts, if anyone wants it."""
        if not self._wants("workflow.executed", record):
            return ()
        event = self.events.execution_event(
            "workflow.executed",
            record.id,
            lambda: execution_json(started_view(record)),
            at=record.started_at or utcnow(),
        )
        return (event,)

    async def _connect(self, prepared: Prepared) -> None:
        """Load the connections (with secrets) of the workflow's integrations for the steps."""
        record, token = prepared.record, prepared.token
        ids = prepared.integration_ids
        if ids is None:
            workflow = await self._read(
                lambda _id, wf=record.workflow_id: self.store.get_workflow(wf),
                record.id,
                token=token,
            )
            ids = tuple(i.id for i in workflow.integrations) if workflow else ()
        for integration_id in ids:
            connection = await self._read(
                lambda _id, i=integration_id: self.store.get_integration(i), record.id, token=token
            )
            if connection is not None:
                prepared.integrations[integration_id] = connection

    async def _execute(self, execution_id: str, grant: int) -> None:
        prepared = await self._load(execution_id, grant)
        if prepared is None:
            return
        if prepared.fresh and self.metrics is not None:
            self.metrics.execution_started(prepared.record.workflow_type)
        if self.tracing is None:
            await self._run_loaded(prepared)
        else:
            with self.tracing.execution(prepared.record):
                await self._run_loaded(prepared)
        if prepared.record.limited:  # its slot is free: what waits for one starts now
            handed = prepared.handed_off
            if handed is not None and handed.decided:  # granted by the finish's commit
                self.take_granted(handed.granted, handed.due, handed.records)
                return
            try:
                await self.slot_freed(prepared.record.workflow_id)
            except Exception:  # the poller finds it
                log.debug("could not look for executions waiting for a slot", exc_info=True)

    async def _run_loaded(self, prepared: Prepared) -> None:
        """Run a loaded execution's remaining steps, to its end or its next wait."""
        record = prepared.record
        execution_id = record.id
        # Nothing stored yet: no steps, signals or progress to read (but a rerun's
        # reused steps, stored with it).
        fresh = prepared.fresh
        if prepared.integration_ids != ():  # (none to load: no coroutine made for nothing)
            await self._connect(prepared)
        token = prepared.token
        done: list[StepRecord] = (
            []
            if fresh and record.rerun_of is None
            else await self._read(self.store.get_steps, execution_id, token=token)
        )
        signals: dict[str, Any] = (
            {} if fresh else await self._read(self.store.get_signals, execution_id, token=token)
        )
        if record.timeout_at is not None and record.timeout_at <= utcnow():
            await self._finish_timed_out(prepared, done, None)
            return
        if execution_id in self._cancelled:
            # Cancelled (or lost) before any step: none starts (a cancelled scope would
            # still call the first step, up to its first await, when nothing awaited
            # since: an execution stored running by execute_many reaches it so).
            self._notify(execution_id, None)
            return
        scope = anyio.CancelScope()
        if record.timeout_at is not None:
            remaining = (record.timeout_at - utcnow()).total_seconds()
            scope.deadline = anyio.current_time() + remaining
        self._scopes[execution_id] = scope
        running: list[StepRecord | None] = [None]
        with scope:
            try:
                await self._run_steps(prepared, done, signals, running, resumed=not fresh)
            except Lost:
                raise
            except Exception as exc:
                # Outside any step (a plugin's skip_if, say): the same error comes back at
                # every recovery, so the execution ends failed instead of looping.
                log.debug("execution %s failed outside its steps", execution_id, exc_info=exc)
                await self._finish_failed(record, prepared, exc, step=None, steps_done=done)
            return
        # Only reached when the scope was cancelled: a cancellation or the timeout.
        if execution_id in self._cancelled:
            self._notify(execution_id, None)
            return
        await self._finish_timed_out(prepared, done, running[0])

    async def _run_steps(
        self,
        prepared: Prepared,
        done: list[StepRecord],
        signals: dict[str, Any],
        running: list[StepRecord | None],
        *,
        resumed: bool = False,
    ) -> None:
        """Run the steps after ``done``.

        ``resumed``: the execution ran before (it waited, or its process
        stopped); the step it was in then started when the step before it
        ended (or the execution started), as the execution's view showed it,
        so that is the step's ``started_at``: its duration covers the wait.
        """
        record = prepared.record
        resume_at: datetime | None = None
        if resumed:
            resume_at = (done[-1].completed_at if done else None) or record.started_at
        results = {s.name: s.result for s in done if s.status is StepStatus.COMPLETED}
        last_result: Any = _last_result(done)
        specs = prepared.specs
        for index in range(len(done), len(specs)):
            if self._stopping:
                return
            spec = specs[index]
            is_last = index == len(specs) - 1
            started = resume_at or utcnow()
            resume_at = None
            if spec.skip_if is not None and spec.skip_if(record.configuration, record.parameters):
                skipped = _skipped_step(record.id, index, spec.name, started)
                if not await self._step_ended(prepared, done, skipped, last_result, (), is_last):
                    return
                continue
            step = StepRecord(
                execution_id=record.id,
                index=index,
                name=spec.name,
                status=StepStatus.RUNNING,
                started_at=started,
            )
            running[0] = step
            attempt = self._attempt if self.tracing is None else self._traced_attempt
            outcome = await attempt(prepared, spec, step, results, signals)
            if outcome is SUSPENDED:
                return
            if isinstance(outcome, Failure):
                await self._finish_failed(record, prepared, outcome.exc, step=step, steps_done=done)
                return
            result = self._completed(record, step, outcome, started)
            running[0] = None
            results[spec.name] = last_result = result
            step_events = self._completed_events(record, step)
            if not await self._step_ended(prepared, done, step, result, step_events, is_last):
                return
        # Nothing left to run: no steps at all, or every step done already (the type
        # has fewer steps than when the execution started).
        await self._finish_completed(prepared, done, None, last_result)

    def _completed_events(
        self, record: ExecutionRecord, step: StepRecord
    ) -> tuple[OutboxEvent, ...]:
        """The ``execution.step_completed`` event of ``step``, if anyone wants it."""
        if self._wants("execution.step_completed", record):
            return (self._step_event(record, step),)
        return ()

    async def _traced_attempt(
        self,
        prepared: Prepared,
        spec: StepSpec,
        step: StepRecord,
        results: dict[str, Any],
        signals: dict[str, Any],
    ) -> Any:
        """:meth:`_attempt`, in a span of its own when tracing is on."""
        if self.tracing is None:
            return await self._attempt(prepared, spec, step, results, signals)
        with self.tracing.step(prepared.record, spec.name, step.index) as span:
            outcome = await self._attempt(prepared, spec, step, results, signals)
            span.set_attribute("abi.outcome", _outcome_name(outcome))
            return outcome

    def _completed(
        self, record: ExecutionRecord, step: StepRecord, outcome: Any, started: datetime
    ) -> Any:
        """Mark ``step`` completed with the attempt's ``(result, result_json)``; the result."""
        result, step.result_json = outcome
        finished = utcnow()
        step.status = StepStatus.COMPLETED
        step.completed_at = finished
        step.duration_ms = milliseconds(finished - started)
        step.result = result
        self._count_step(record, step)
        return result

    async def _step_ended(
        self,
        prepared: Prepared,
        done: list[StepRecord],
        step: StepRecord,
        result: Any,
        events: tuple[OutboxEvent, ...],
        is_last: bool,
    ) -> bool:
        """Store a step that ended (completed or skipped); ``True`` when the next one runs.

        The last step's write ends the execution with it (one commit); any
        other is checkpointed before the next step starts.
        """
        if is_last:
            await self._finish_completed(prepared, done, step, result, *events)
            return False
        token = prepared.token
        applied = await self._write(
            CheckpointStep(step=step, token=token, events=events), step.execution_id, token
        )
        if not applied or applied == PAUSED:  # paused at this boundary: the run stops
            self._lost(prepared)
            return False
        done.append(step)
        return True

    async def _attempt(
        self,
        prepared: Prepared,
        spec: StepSpec,
        step: StepRecord,
        results: dict[str, Any],
        signals: dict[str, Any],
    ) -> Any:
        record = prepared.record
        save_progress = partial(self._save_progress, prepared, step.index, signals)
        attempt = 0
        while True:
            attempt += 1
            step.attempts = attempt
            ctx = self._context(prepared, spec, step, results, signals, save_progress)
            try:
                if spec.timeout_seconds is not None:
                    with anyio.fail_after(spec.timeout_seconds):
                        result = await spec.fn(ctx)
                else:
                    result = await spec.fn(ctx)
                return result, sized_json(
                    result,
                    self.limits.max_result_bytes,
                    f"The result of step {spec.name!r}",
                    ResultTooLarge,
                )
            except Suspend as suspend:
                state = await self._suspend(prepared, suspend)
                if state == "ready":
                    signals.update(
                        await self._read(self.store.get_signals, record.id, token=prepared.token)
                    )
                    attempt -= 1
                    continue
                return SUSPENDED
            except ExecutionLost:  # another engine runs it now, or it was cancelled
                return SUSPENDED
            except (ResultTooLarge, ProgressTooLarge) as exc:  # the same would come back
                return Failure(exc)
            except Exception as exc:
                if attempt >= spec.retry.attempts:
                    return Failure(exc)
                await anyio.sleep(spec.retry.delay_before(attempt + 1))

    def _context(
        self,
        prepared: Prepared,
        spec: StepSpec,
        step: StepRecord,
        results: dict[str, Any],
        signals: dict[str, Any],
        save_progress: Any,
    ) -> StepContext:
        """What the step's function receives at this attempt (``step.attempts``)."""
        record = prepared.record
        visible: dict[str, Any] = {}
        progress = None
        if signals:  # a copy: progress saved later must not show up as a signal
            progress = signals.get(f"{PROGRESS_PREFIX}{step.index}")
            visible = {k: v for k, v in signals.items() if not k.startswith("#")}
        return StepContext(
            execution_id=record.id,
            workflow_id=record.workflow_id,
            step_name=spec.name,
            parameters=record.parameters,
            configuration=record.configuration,
            params=prepared.params,
            config=prepared.config,
            results=results,
            signals=visible,
            integrations=prepared.integrations,
            attempt=step.attempts,
            host=self.host,
            services=self._legacy_services(),  # deprecated
            progress=progress,
            scheduled_for=record.scheduled_for,
            progress_saver=save_progress,
        )

    def _legacy_services(self) -> Any:
        """``ctx.services`` (deprecated): the host's, made once per host (read-only)."""
        host = self.host
        if host is None:
            return {}
        cached = self._services
        if cached is None or cached[0] is not host:
            cached = self._services = (host, host.legacy_services)
        return cached[1]

    async def _save_progress(
        self, prepared: Prepared, index: int, signals: dict[str, Any], value: Any
    ) -> Any:
        """``StepContext.save_progress`` of step ``index``: kept with the signals, committed;
        returns the value as stored (what a run after a restart reads)."""
        limit = self.limits.max_progress_bytes
        try:
            text = sized_json(value, limit, "The progress", ProgressTooLarge)
        except ProgressTooLarge:
            raise
        except (TypeError, ValueError) as exc:
            raise ValueError(f"progress must be JSON: {exc}") from None
        name = f"{PROGRESS_PREFIX}{index}"
        execution_id = prepared.record.id
        op = SaveProgress(
            execution_id=execution_id,
            token=prepared.token,
            name=name,
            payload_json=text,
            saved_at=utcnow(),
        )
        try:
            saved = await self._write(op, execution_id, prepared.token)
        except Lost:
            saved = False
        if not saved:
            self._lost(prepared)
            raise ExecutionLost(f"execution {execution_id} is no longer run by this engine")
        stored = _loads(text)
        signals[name] = stored
        return stored

    def _step_event(self, record: ExecutionRecord, step: StepRecord) -> OutboxEvent:
        return self.events.execution_event(
            "execution.step_completed",
            record.id,
            lambda: step_event_data(record, step),
            at=step.completed_at or utcnow(),
            step_index=step.index,
        )


def _outcome_name(outcome: Any) -> str:
    """A step attempt's outcome as a span attribute: completed, failed or suspended."""
    if outcome is SUSPENDED:
        return "suspended"
    return "failed" if isinstance(outcome, Failure) else "completed"


def _skipped_step(execution_id: str, index: int, name: str, at: datetime) -> StepRecord:
    """A step skipped by its ``skip_if`` at ``at``."""
    return StepRecord(
        execution_id=execution_id,
        index=index,
        name=name,
        status=StepStatus.SKIPPED,
        started_at=at,
        completed_at=at,
        duration_ms=0,
    )


def _last_result(done: list[StepRecord]) -> Any:
    """The result of the last completed step of ``done`` (``None`` before any)."""
    last: Any = None
    for s in done:
        if s.status is StepStatus.COMPLETED:
            last = s.result
    return last
