"""The durable execution runtime: workers, steps, checkpoints, recovery.

Every state change of an execution is a write operation committed (in
batches, see :mod:`abi_engine._commit`) before the runtime moves on: a step's
result is stored before the next step starts, so after a crash an execution
resumes from its last finished step and no finished step runs twice.

Work comes from two lanes. Synchronous callers (someone waits) run at once
under their own capacity limit; asynchronous executions go through a bounded
queue served by a fixed pool of workers. A flood of asynchronous work can
therefore never starve a synchronous caller.

Each runtime is a *node* (``host:pid:nonce``). It holds the executions it runs
under a lease it renews; a poller takes over executions whose node died or
whose lease expired, and wakes waiting executions whose timer is due.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from abi_engine._commit import GroupCommitter
from abi_engine.errors import QueueFull
from abi_engine.events import Event, ExecutionEventRef, OutboxEvent
from abi_engine.execution_views import (
    build_execution,
    execution_json,
    started_view,
    step_event_data,
)
from abi_engine.ids import utcnow
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    StepStatus,
)
from abi_engine.services import call_store
from abi_engine.storage._codec import dumps as _dumps
from abi_engine.storage._codec import loads as _loads
from abi_engine.storage.records import (
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    SaveProgress,
    StepRecord,
    SuspendExecution,
)
from abi_engine.types import (
    PROGRESS_PREFIX,
    SLEEP_PREFIX,
    ExecutionLost,
    StepContext,
    StepSpec,
    Suspend,
    WorkflowType,
)

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["Prepared", "Runtime", "RuntimeSettings", "build_execution", "execution_json"]

log = logging.getLogger("abi_engine.executor")

_SECRETISH = re.compile(
    r"(whsec_[A-Za-z0-9+/=_-]+|abi_[A-Za-z0-9_-]{20,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+)"
)
MAX_ERROR_MESSAGE = 1000


@attrs.define(kw_only=True)
class RuntimeSettings:
    """Tuning of the runtime.

    ``workers``: the asynchronous pool; ``sync_workers``: how many synchronous
    executions run at once; ``queue_size``: the bound of the asynchronous
    queue (``QueueFull`` beyond); ``lease_seconds``: how long a node holds an
    execution without renewing; ``poll_interval``: how often the node looks
    for work to recover and timers that are due; ``shutdown_grace``: how long
    stopping waits for running steps before interrupting them;
    ``default_sync_timeout``: the timeout of a synchronous execution that
    gives none.
    """

    workers: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    sync_workers: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    queue_size: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))
    lease_seconds: float = 30.0
    poll_interval: float = 0.5
    shutdown_grace: float = 5.0
    default_sync_timeout: float = 30.0


@attrs.define(kw_only=True)
class Prepared:
    """An execution made in this process, ready to run without reloading."""

    record: ExecutionRecord
    workflow_type: WorkflowType
    config: Any
    params: Any
    specs: list[StepSpec]
    #: The workflow's integration ids (``None``: not known yet, look them up).
    integration_ids: tuple[str, ...] | None = None
    #: Inserted already ``running`` and held by this node (no claim needed).
    claimed: bool = False
    integrations: dict[str, Any] = attrs.Factory(dict)


class _Reservation:
    """A place held in the asynchronous queue (see :meth:`Runtime.reserve`)."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self._runtime: Runtime | None = runtime

    def release(self) -> None:
        if self._runtime is not None:
            self._runtime._reserved -= 1
            self._runtime = None


class _Waiter:
    __slots__ = ("done", "execution")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.execution: Execution | None = None


def redact(message: str, secrets_: tuple[str, ...] = ()) -> str:
    """A message fit to store: known secrets and token-like strings masked, bounded."""
    for secret in secrets_:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "********")
    message = _SECRETISH.sub("********", message)
    return message[:MAX_ERROR_MESSAGE]


#: Node ids of the runtimes running in this process (several engines may share a database).
_LIVE_NODES: set[str] = set()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runtime:
    """Runs executions for one engine. Started and stopped by the engine."""

    def __init__(self, engine: Engine, settings: RuntimeSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or RuntimeSettings()
        self.store = engine.store
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.committer = GroupCommitter(engine.store, engine.emit)
        self._send, self._receive = anyio.create_memory_object_stream[str](self.settings.queue_size)
        self._sync_limiter = anyio.CapacityLimiter(self.settings.sync_workers)
        self._prepared: dict[str, Prepared] = {}
        self._reserved = 0
        self._waiters: dict[str, _Waiter] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._cancelled: set[str] = set()
        self._inflight: set[str] = set()
        self._tg: TaskGroup | None = None
        self._stopping = False
        self._idle = anyio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._tg is not None and not self._stopping

    @property
    def in_flight(self) -> int:
        """How many executions run in this process now (its load; webhooks yield to it)."""
        return len(self._inflight)

    def _lease(self) -> datetime:
        return utcnow() + timedelta(seconds=self.settings.lease_seconds)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the committer, workers, poller and heartbeat; run until cancelled."""
        _LIVE_NODES.add(self.node_id)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.committer.run)
                self._tg = tg
                for _ in range(self.settings.workers):
                    tg.start_soon(self._worker, self._receive.clone())
                tg.start_soon(self._poller)
                tg.start_soon(self._heartbeat)
                task_status.started()
        finally:
            _LIVE_NODES.discard(self.node_id)

    async def stop(self) -> None:
        """Stop taking work; let running steps finish (up to ``shutdown_grace``)."""
        self._stopping = True
        if self._inflight:
            self._idle = anyio.Event()
            with anyio.move_on_after(self.settings.shutdown_grace):
                await self._idle.wait()

    def close(self) -> None:
        """Close the work queue for good (the engine is being closed)."""
        self._send.close()
        self._receive.close()

    async def release(self) -> None:
        """Hand back what this node still holds, so a restart resumes it at once."""
        from abi_engine.storage.records import ReleaseExecutions

        try:
            with anyio.CancelScope(shield=True):  # runs while the engine is being cancelled
                await call_store(
                    self.store, self.store.apply, [ReleaseExecutions(owner=self.node_id)]
                )
        except Exception:
            log.exception("could not release executions of %s", self.node_id)

    def is_dead(self, owner: str) -> bool:
        """Whether the node ``owner`` is known to be gone (same host, process ended)."""
        try:
            host, pid_text, _nonce = owner.rsplit(":", 2)
            pid = int(pid_text)
        except ValueError:
            return False
        if host != socket.gethostname():
            return False
        if pid == os.getpid():  # another engine of this process: dead once it stopped
            return owner not in _LIVE_NODES
        return not _pid_alive(pid)

    # -- submitting -------------------------------------------------------------------------

    def reserve(self) -> _Reservation:
        """Reserve a place in the asynchronous queue, or raise ``QueueFull``.

        Reserving before the execution is stored means a refused caller leaves
        nothing behind. :meth:`submit` uses the reservation; release it
        (``reservation.release()``, idempotent) when it was not used.
        """
        stats = self._send.statistics()
        if stats.current_buffer_used + self._reserved >= stats.max_buffer_size:
            raise QueueFull(
                f"The execution queue is full ({self.settings.queue_size} waiting); retry later",
                {"queue_size": self.settings.queue_size},
            )
        self._reserved += 1
        return _Reservation(self)

    def submit(
        self, prepared: Prepared, *, sync: bool, reservation: _Reservation | None = None
    ) -> None:
        """Run a just-inserted execution: at once when ``sync``, else through the queue.

        ``reservation``: the place taken with :meth:`reserve` for it.
        """
        execution_id = prepared.record.id
        self._prepared[execution_id] = prepared
        if reservation is not None:
            reservation.release()
        self.enqueue(execution_id, sync=sync)

    def enqueue(self, execution_id: str, *, sync: bool = False) -> None:
        """Schedule a stored execution to run here."""
        if self._tg is None:
            raise RuntimeError("The engine is not running: use `async with engine:`")
        if sync:
            self._tg.start_soon(self._run_sync, execution_id)
            return
        try:
            self._send.send_nowait(execution_id)
        except anyio.WouldBlock:
            self._prepared.pop(execution_id, None)
            raise QueueFull(
                f"The execution queue is full ({self.settings.queue_size} waiting); retry later",
                {"queue_size": self.settings.queue_size},
            ) from None

    async def wait(self, execution_id: str, timeout: float | None) -> Execution | None:
        """Wait until the execution ends or waits (or ``timeout``); its view or ``None``.

        Also notices executions ended (or parked) by another process, by polling the store.
        """
        waiter = self._waiters.get(execution_id)
        if waiter is None:
            waiter = self._waiters[execution_id] = _Waiter()
        deadline = math.inf if timeout is None else anyio.current_time() + timeout
        # Not running here: it may have ended already, so look at the store first.
        look_first = execution_id not in self._prepared and execution_id not in self._inflight
        try:
            while True:
                if not look_first:
                    remaining = deadline - anyio.current_time()
                    if remaining <= 0:
                        return None
                    with anyio.move_on_after(
                        min(remaining, max(self.settings.poll_interval, 0.05))
                    ):
                        await waiter.done.wait()
                    if waiter.done.is_set():
                        return waiter.execution
                look_first = False
                record = await call_store(self.store, self.store.get_execution, execution_id)
                if record is not None and (
                    record.status.finished
                    or (
                        record.status is ExecutionStatus.WAITING
                        # a durable sleep is still running time, not an answer
                        and not (record.waiting_for or "").startswith(SLEEP_PREFIX)
                    )
                ):
                    steps = await call_store(self.store, self.store.get_steps, execution_id)
                    return build_execution(record, steps)
        finally:
            if self._waiters.get(execution_id) is waiter:
                del self._waiters[execution_id]

    def _notify(self, execution_id: str, execution: Execution | None) -> None:
        waiter = self._waiters.get(execution_id)
        if waiter is not None:
            waiter.execution = execution
            waiter.done.set()

    def cancel_local(self, execution_id: str) -> None:
        """Interrupt the execution if it runs in this node (its record is already ended)."""
        scope = self._scopes.get(execution_id)
        if scope is not None:
            self._cancelled.add(execution_id)
            scope.cancel()

    # -- loops ----------------------------------------------------------------------------

    async def _worker(self, receive: Any) -> None:
        async with receive:
            async for execution_id in receive:
                await self._guarded(execution_id)

    async def _run_sync(self, execution_id: str) -> None:
        async with self._sync_limiter:
            await self._guarded(execution_id)

    async def _guarded(self, execution_id: str) -> None:
        if self._stopping:
            self._prepared.pop(execution_id, None)
            return
        self._inflight.add(execution_id)
        try:
            await self._execute(execution_id)
        except Exception:
            log.exception("execution %s crashed the runtime; it will be recovered", execution_id)
        finally:
            self._inflight.discard(execution_id)
            self._scopes.pop(execution_id, None)
            self._cancelled.discard(execution_id)
            if self._stopping and not self._inflight:
                self._idle.set()

    async def _poller(self) -> None:
        while True:
            if not self._stopping:
                try:
                    await self._recover_once()
                except Exception:
                    log.exception("recovery poll failed")
            await anyio.sleep(self.settings.poll_interval)

    async def _recover_once(self) -> int:
        stats = self._send.statistics()
        room = stats.max_buffer_size - stats.current_buffer_used
        if room <= 0:
            return 0
        claimed = await call_store(
            self.store,
            self.store.claim_recoverable,
            self.node_id,
            utcnow(),
            self._lease(),
            int(min(room, 500)),
            self.is_dead,
        )
        for execution_id, _priority in claimed:
            if execution_id in self._inflight:
                continue
            try:
                self._send.send_nowait(execution_id)
            except anyio.WouldBlock:
                break
        return len(claimed)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(max(self.settings.lease_seconds / 3, 0.05))
            try:
                await call_store(self.store, self.store.renew_leases, self.node_id, self._lease())
            except Exception:
                log.exception("lease renewal failed")

    # -- running one execution ---------------------------------------------------------------

    async def _load(self, execution_id: str) -> Prepared | None:
        prepared = self._prepared.pop(execution_id, None)
        if prepared is not None:
            return prepared
        record = await call_store(self.store, self.store.get_execution, execution_id)
        if record is None or record.status.finished:
            return None
        wtype = self.engine.workflow_types.get(record.workflow_type)
        try:
            if wtype is None:
                raise LookupError(f"workflow type {record.workflow_type!r} is not registered")
            config = wtype.parse_configuration(record.configuration)
            params = wtype.parse_parameters(record.parameters, config)
            specs = wtype.steps(config)
        except Exception as exc:
            await self._finish_failed(record, None, exc, step=None, steps_done=[])
            return None
        return Prepared(
            record=record, workflow_type=wtype, config=config, params=params, specs=specs
        )

    def started_events(self, record: ExecutionRecord) -> tuple[OutboxEvent, ...]:
        """The ``workflow.executed`` event of an execution that starts, if anyone wants it."""
        if not self._wants("workflow.executed", record):
            return ()
        if not self.engine.has_event_hooks():
            at = record.started_at or utcnow()
            return (ExecutionEventRef("workflow.executed", record.id, None, at),)
        return (Event(type="workflow.executed", data=execution_json(started_view(record))),)

    def sync_slot_free(self) -> bool:
        """Whether a synchronous execution submitted now starts at once."""
        return self.running and self._sync_limiter.available_tokens >= 1

    async def _connect(self, prepared: Prepared) -> None:
        """Load the connections (with secrets) of the workflow's integrations for the steps."""
        ids = prepared.integration_ids
        if ids is None:
            workflow = await call_store(
                self.store, self.store.get_workflow, prepared.record.workflow_id
            )
            ids = tuple(i.id for i in workflow.integrations) if workflow else ()
        for integration_id in ids:
            connection = await call_store(self.store, self.store.get_integration, integration_id)
            if connection is not None:
                prepared.integrations[integration_id] = connection

    def _wants(self, kind: str, record: ExecutionRecord) -> bool:
        """Whether an event of ``kind`` about ``record`` has a consumer (else it is not built)."""
        if record.callback_url is not None and kind in _CALLBACK_EVENTS:
            return True
        return self.engine.wants_event(kind)

    async def _execute(self, execution_id: str) -> None:
        prepared = await self._load(execution_id)
        if prepared is None:
            return
        record = prepared.record
        fresh = prepared.claimed or record.started_at is None
        if not prepared.claimed:
            record.started_at = record.started_at or utcnow()
            record.status = ExecutionStatus.RUNNING
            events = self.started_events(record) if fresh else ()
            claimed = await self.committer.submit(
                ClaimExecution(
                    execution_id=execution_id,
                    owner=self.node_id,
                    lease_until=self._lease(),
                    started_at=record.started_at,
                    events=events,
                )
            )
            if not claimed:
                return
        await self._connect(prepared)
        done: list[StepRecord] = (
            [] if fresh else await call_store(self.store, self.store.get_steps, execution_id)
        )
        signals: dict[str, Any] = (
            {} if fresh else await call_store(self.store, self.store.get_signals, execution_id)
        )
        if record.timeout_at is not None and record.timeout_at <= utcnow():
            await self._finish_timed_out(prepared, done, None)
            return
        scope = anyio.CancelScope()
        if record.timeout_at is not None:
            remaining = (record.timeout_at - utcnow()).total_seconds()
            scope.deadline = anyio.current_time() + remaining
        self._scopes[execution_id] = scope
        running: list[StepRecord | None] = [None]
        with scope:
            await self._run_steps(prepared, done, signals, running, resumed=not fresh)
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
        results: dict[str, Any] = {
            s.name: s.result for s in done if s.status is StepStatus.COMPLETED
        }
        last_result: Any = None
        for s in done:
            if s.status is StepStatus.COMPLETED:
                last_result = s.result
        specs = prepared.specs
        for index in range(len(done), len(specs)):
            if self._stopping:
                return
            spec = specs[index]
            is_last = index == len(specs) - 1
            started = resume_at or utcnow()
            resume_at = None
            if spec.skip_if is not None and spec.skip_if(record.configuration, record.parameters):
                step = StepRecord(
                    execution_id=record.id,
                    index=index,
                    name=spec.name,
                    status=StepStatus.SKIPPED,
                    started_at=started,
                    completed_at=started,
                    duration_ms=0,
                )
                if is_last:
                    await self._finish_completed(prepared, done, step, last_result)
                    return
                if not await self._checkpoint(step, ()):
                    return
                done.append(step)
                continue
            step = StepRecord(
                execution_id=record.id,
                index=index,
                name=spec.name,
                status=StepStatus.RUNNING,
                started_at=started,
            )
            running[0] = step
            outcome = await self._attempt(prepared, spec, step, results, signals)
            if outcome is _SUSPENDED:
                return
            if isinstance(outcome, _Failure):
                await self._finish_failed(record, prepared, outcome.exc, step=step, steps_done=done)
                return
            result, step.result_json = outcome
            finished = utcnow()
            step.status = StepStatus.COMPLETED
            step.completed_at = finished
            step.duration_ms = _ms(finished - started)
            step.result = result
            running[0] = None
            results[spec.name] = result
            last_result = result
            step_events: tuple[OutboxEvent, ...] = ()
            if self._wants("execution.step_completed", record):
                step_events = (self._step_event(record, step),)
            if is_last:
                await self._finish_completed(prepared, done, step, result, *step_events)
                return
            if not await self._checkpoint(step, step_events):
                return
            done.append(step)
        if not specs:
            await self._finish_completed(prepared, done, None, None)

    async def _attempt(
        self,
        prepared: Prepared,
        spec: StepSpec,
        step: StepRecord,
        results: dict[str, Any],
        signals: dict[str, Any],
    ) -> Any:
        record = prepared.record
        save_progress = partial(self._save_progress, record.id, step.index, signals)
        attempt = 0
        while True:
            attempt += 1
            step.attempts = attempt
            visible: dict[str, Any] = {}
            progress = None
            if signals:  # a copy: progress saved later must not show up as a signal
                progress = signals.get(f"{PROGRESS_PREFIX}{step.index}")
                visible = {k: v for k, v in signals.items() if not k.startswith("#")}
            ctx = StepContext(
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
                attempt=attempt,
                services={"engine": self.engine},
                progress=progress,
                progress_saver=save_progress,
            )
            try:
                if spec.timeout_seconds is not None:
                    with anyio.fail_after(spec.timeout_seconds):
                        result = await spec.fn(ctx)
                else:
                    result = await spec.fn(ctx)
                return result, _dumps(result)
            except Suspend as suspend:
                state = await self._suspend(record, suspend)
                if state == "ready":
                    signals.update(await call_store(self.store, self.store.get_signals, record.id))
                    attempt -= 1
                    continue
                return _SUSPENDED
            except ExecutionLost:  # another engine runs it now, or it was cancelled
                return _SUSPENDED
            except Exception as exc:
                if attempt >= spec.retry.attempts:
                    return _Failure(exc)
                await anyio.sleep(spec.retry.delay_before(attempt + 1))

    async def _save_progress(
        self, execution_id: str, index: int, signals: dict[str, Any], value: Any
    ) -> Any:
        """``StepContext.save_progress`` of step ``index``: kept with the signals, committed;
        returns the value as stored (what a run after a restart reads)."""
        try:
            text = _dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"progress must be JSON: {exc}") from None
        name = f"{PROGRESS_PREFIX}{index}"
        saved = await self.committer.submit(
            SaveProgress(
                execution_id=execution_id,
                owner=self.node_id,
                name=name,
                payload_json=text,
                saved_at=utcnow(),
            )
        )
        if not saved:
            raise ExecutionLost(f"execution {execution_id} is no longer run by this engine")
        stored = _loads(text)
        signals[name] = stored
        return stored

    def _step_event(self, record: ExecutionRecord, step: StepRecord) -> OutboxEvent:
        if not self.engine.has_event_hooks():
            at = step.completed_at or utcnow()
            return ExecutionEventRef("execution.step_completed", record.id, step.index, at)
        return Event(type="execution.step_completed", data=step_event_data(record, step))

    def _finished_event(
        self, kind: str, record: ExecutionRecord, view: Execution | None
    ) -> OutboxEvent:
        if view is None or not self.engine.has_event_hooks():
            return ExecutionEventRef(kind, record.id, None, record.completed_at or utcnow())
        return Event(type=kind, data=execution_json(view))

    async def _checkpoint(self, step: StepRecord, events: tuple[OutboxEvent, ...]) -> bool:
        applied: bool = await self.committer.submit(
            CheckpointStep(step=step, owner=self.node_id, lease_until=self._lease(), events=events)
        )
        return applied

    async def _suspend(self, record: ExecutionRecord, suspend: Suspend) -> Any:
        wake_at = None
        if suspend.timeout_seconds is not None:
            wake_at = utcnow() + timedelta(seconds=max(0.0, suspend.timeout_seconds))
        if suspend.sleeping and record.timeout_at is not None:
            # A sleep is running time: wake no later than the execution's timeout.
            wake_at = min(wake_at, record.timeout_at) if wake_at else record.timeout_at
        state = await self.committer.submit(
            SuspendExecution(
                execution_id=record.id,
                owner=self.node_id,
                waiting_for=suspend.name,
                wake_at=wake_at,
                keep_timeout=suspend.sleeping,
            )
        )
        if state is True:
            record.status = ExecutionStatus.WAITING
            if wake_at is not None and self._tg is not None:
                self._tg.start_soon(self._wake_at, wake_at)
            if not suspend.sleeping:
                record.timeout_at = None
                self._notify(record.id, None)  # a waiting caller gets the execution as it stands
        return state

    async def _wake_at(self, when: datetime) -> None:
        """Look for due timers right at ``when`` (the poller would notice later)."""
        await anyio.sleep(max(0.0, (when - utcnow()).total_seconds()) + 0.001)
        if not self._stopping:
            await self._recover_once()

    async def _finish_completed(
        self,
        prepared: Prepared,
        done: list[StepRecord],
        step: StepRecord | None,
        result: Any,
        *events: OutboxEvent,
    ) -> None:
        record = prepared.record
        now = utcnow()
        record.status = ExecutionStatus.COMPLETED
        record.completed_at = now
        record.duration_ms = _ms(now - (record.started_at or now))
        record.result = result
        steps = [*done, step] if step is not None else list(done)
        view = build_execution(record, steps) if self._needs_view(record) else None
        if self._wants("execution.completed", record):
            events = (*events, self._finished_event("execution.completed", record, view))
        applied = await self.committer.submit(
            FinishExecution(
                execution_id=record.id,
                workflow_id=record.workflow_id,
                status=ExecutionStatus.COMPLETED,
                completed_at=now,
                duration_ms=record.duration_ms,
                result=result,
                result_json=step.result_json if step is not None else None,
                owner=self.node_id,
                step=step,
                events=events,
            )
        )
        self._notify(record.id, view if applied else None)

    def _needs_view(self, record: ExecutionRecord) -> bool:
        """Whether the finished execution's view is built: for a waiting caller, or an
        ``execution.completed`` event carrying its data (one kept by reference needs none)."""
        if record.id in self._waiters:
            return True
        return self._wants("execution.completed", record) and self.engine.has_event_hooks()

    async def _finish_failed(
        self,
        record: ExecutionRecord,
        prepared: Prepared | None,
        exc: BaseException,
        *,
        step: StepRecord | None,
        steps_done: list[StepRecord],
    ) -> None:
        now = utcnow()
        secret = record.callback_secret or ""
        secrets_ = (secret, secret.removeprefix("whsec_"))  # the key is secret without its prefix
        message = redact(str(exc) or type(exc).__name__, secrets_)
        error = {
            "code": "WORKFLOW_EXECUTION_ERROR",
            "message": message,
            "step": step.name if step else None,
            "type": type(exc).__name__,
        }
        if step is not None:
            step.status = StepStatus.FAILED
            step.completed_at = now
            step.duration_ms = _ms(now - (step.started_at or now))
            step.error = {"type": type(exc).__name__, "message": message}
        record.status = ExecutionStatus.FAILED
        record.completed_at = now
        record.duration_ms = _ms(now - (record.started_at or now))
        record.error = {k: v for k, v in error.items() if v is not None}
        steps = [*steps_done, step] if step is not None else list(steps_done)
        view = build_execution(record, steps)
        applied = await self.committer.submit(
            FinishExecution(
                execution_id=record.id,
                workflow_id=record.workflow_id,
                status=ExecutionStatus.FAILED,
                completed_at=now,
                duration_ms=record.duration_ms,
                error=record.error,
                owner=self.node_id if prepared is not None else None,
                step=step,
                events=(self._finished_event("execution.failed", record, view),),
            )
        )
        self._notify(record.id, view if applied else None)

    async def _finish_timed_out(
        self, prepared: Prepared, done: list[StepRecord], running: StepRecord | None
    ) -> None:
        record = prepared.record
        now = utcnow()
        if running is not None:
            running.status = StepStatus.FAILED
            running.completed_at = now
            running.duration_ms = _ms(now - (running.started_at or now))
            running.error = {"type": "Timeout", "message": "execution timed out"}
        record.status = ExecutionStatus.TIMED_OUT
        record.completed_at = now
        record.duration_ms = _ms(now - (record.started_at or now))
        record.error = {"code": "EXECUTION_TIMEOUT", "message": "The execution timed out"}
        steps = [*done, running] if running is not None else list(done)
        view = build_execution(record, steps)
        applied = await self.committer.submit(
            CancelExecution(
                execution_id=record.id,
                workflow_id=record.workflow_id,
                status=ExecutionStatus.TIMED_OUT,
                completed_at=now,
                error=record.error,
                step=running,
                events=(self._finished_event("execution.failed", record, view),),
            )
        )
        self._notify(record.id, view if applied else None)


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_SUSPENDED = object()
_CALLBACK_EVENTS = frozenset({"execution.completed", "execution.failed"})


def _ms(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))
