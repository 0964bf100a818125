"""A run's writes: each a compare-and-set on its claim token, retried while the store fails.

:class:`WritesRuns` holds what every part of running an execution writes with:
:meth:`~WritesRuns._write` and :meth:`~WritesRuns._read` (a run that lost its
claim stops at once, :class:`~abi_engine.runtime.execution.Lost`), a finished
step's checkpoint, suspension, and the three ways a run ends (completed,
failed, timed out). Mixed into :class:`~abi_engine.runtime.runner.Runtime`
through :class:`~abi_engine.runtime.steps.RunsExecutions`; no state of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from abi_engine.events import CALLBACK_EVENTS, EventPolicy, ExecutionEventRef, OutboxEvent
from abi_engine.execution_views import (
    build_execution,
    execution_json,
)
from abi_engine.ids import utcnow
from abi_engine.limits import Limits
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    StepStatus,
)
from abi_engine.runtime.commit import GroupCommitter
from abi_engine.runtime.execution import (
    Backoff,
    Lost,
    Prepared,
    milliseconds,
    one_line,
    redact,
)
from abi_engine.runtime.leases import Claims
from abi_engine.runtime.metrics import RuntimeMetrics
from abi_engine.runtime.settings import RuntimeSettings
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import Store
from abi_engine.storage.records import (
    AGAIN,
    CancelExecution,
    ExecutionRecord,
    FinishExecution,
    HandedOff,
    HandOff,
    StepRecord,
    SuspendExecution,
    WriteOp,
)
from abi_engine.types import (
    Suspend,
    WorkflowType,
)

if TYPE_CHECKING:
    from abi_engine.host import Host
    from abi_engine.runtime.tracing import Tracing

__all__ = ["COMMIT_RETRY_SECONDS", "WRITE_RETRY_SHARE", "WritesRuns"]

log = logging.getLogger("abi_engine.executor")

T = TypeVar("T")

#: How long a run keeps retrying a write the store refuses before letting the execution go.
WRITE_RETRY_SHARE = 0.5
#: How long an API call's write is retried while the store fails.
COMMIT_RETRY_SECONDS = 5.0


class WritesRuns:
    """Writing a run under its claim token, for :class:`~abi_engine.runtime.runner.Runtime`."""

    # Provided by Runtime.
    settings: RuntimeSettings
    limits: Limits
    store: Store
    events: EventPolicy
    workflow_types: Mapping[str, WorkflowType]
    host: Host | None
    node_id: str
    committer: GroupCommitter
    claims: Claims
    metrics: RuntimeMetrics | None
    tracing: Tracing | None
    _waiters: dict[str, Any]
    _scopes: dict[str, anyio.CancelScope]
    _cancelled: set[str]
    _prepared: dict[str, Prepared]
    #: Executions granted by a finish's hand-off, as the grant stored them: (grant
    #: token, record), for their run to use rather than read them (#16).
    _handed: dict[str, tuple[int, ExecutionRecord]]

    _run_tokens: dict[str, int]
    _stopping: bool

    def lease(self) -> datetime:
        raise NotImplementedError

    def _hand_back(self, execution_id: str, token: int) -> None:
        raise NotImplementedError

    def _timer(self, when: datetime) -> None:
        raise NotImplementedError

    async def slot_freed(self, workflow_id: str) -> None:
        raise NotImplementedError

    def take_granted(
        self,
        granted: Iterable[tuple[str, int, int]],
        due: timedelta | None = None,
        records: Iterable[ExecutionRecord] = (),
    ) -> None:
        raise NotImplementedError

    def room(self) -> int:
        raise NotImplementedError

    def _hand_off(self, record: ExecutionRecord) -> HandOff | None:
        """What the finish of ``record`` asks its commit to grant this node: the
        executions waiting for the concurrency slot it frees (#16); ``None`` when it
        holds none (or the node stops)."""
        if not record.limited or self._stopping:
            return None
        return HandOff(
            owner=self.node_id,
            lease_until=self.lease(),
            room=min(self.room(), 500),
            types=tuple(sorted(self.workflow_types)),
        )

    def _notify(self, execution_id: str, execution: Execution | None) -> None:
        raise NotImplementedError

    def _store_failed(self, what: str, exc: BaseException) -> None:
        raise NotImplementedError

    def _store_works(self) -> None:
        raise NotImplementedError

    async def _write(self, op: WriteOp, execution_id: str, token: int) -> Any:
        """Commit ``op`` of the run holding ``token`` and return its result.

        A store that fails is retried with backoff (every op is idempotent: a
        retry after a commit whose answer was lost finds its own effect) while
        this node holds the claim, for at most ``WRITE_RETRY_SHARE`` of the
        lease. Then the claim is let go (its lease expires, recovery takes the
        execution over) and :class:`Lost` is raised.
        """
        # Awaited here (no coroutine of its own); committed at once when alone.
        future = self.committer.enqueue(op, now=True)
        try:
            result = await (self.committer.submit(op) if future is None else future)
        except Exception as exc:
            result = exc
        if isinstance(result, Exception):  # (no retry state is set up before a failure)
            again = partial(self.committer.submit, op)
            return await self._retrying(again, result, execution_id, token, type(op).__name__)
        return result

    async def _read(self, fn: Callable[..., T], *args: Any, token: int) -> T:
        """A store read of the run holding ``token`` (``execution_id`` first in ``args``),
        retried like :meth:`_write` while the store fails."""
        call = partial(call_store, self.store, fn, *args)
        try:
            return await call()
        except Exception as exc:
            return await self._retrying(
                call, exc, str(args[0]) if args else "", token, "reading it"
            )

    async def _retrying(
        self,
        call: Callable[[], Awaitable[T]],
        failed: Exception,
        execution_id: str,
        token: int,
        what: str,
    ) -> T:
        """``await call()`` again after it ``failed``, with backoff, while the store fails
        and the claim holds."""
        log.warning("execution %s: %s failed (%s); retrying", execution_id, what, one_line(failed))
        backoff = Backoff(self.settings.lease_seconds * WRITE_RETRY_SHARE, 2.0)
        while True:
            if not self.claims.holds(execution_id, token) or not backoff.left():
                log.warning(
                    "execution %s: the store kept failing; left to recovery (lease %g s)",
                    execution_id,
                    self.settings.lease_seconds,
                )
                self.claims.let_go(execution_id, token)
                self._notify(execution_id, None)
                raise Lost(execution_id) from None
            await backoff.sleep()
            try:
                result = await call()
            except Exception:
                continue
            log.warning("execution %s: %s done after a retry", execution_id, what)
            return result

    def _wants(self, kind: str, record: ExecutionRecord) -> bool:
        """Whether an event of ``kind`` about ``record`` has a consumer (else it is not built)."""
        # EventPolicy.wants_for_execution, inline: this runs once or twice a step.
        events = self.events
        if kind in events.outbox_types or (
            record.callback_url is not None and kind in CALLBACK_EVENTS
        ):
            return True
        return events.has_hooks()

    def _finished_event(
        self, kind: str, record: ExecutionRecord, view: Execution | None
    ) -> OutboxEvent:
        at = record.completed_at or utcnow()
        if view is None:
            return ExecutionEventRef(kind, record.id, None, at)
        return self.events.execution_event(kind, record.id, lambda: execution_json(view), at=at)

    def _lost(self, prepared: Prepared) -> None:
        """A write of the run was refused: the execution was cancelled, ended or taken
        over elsewhere. This run stops; whoever waits re-reads the execution."""
        self.claims.let_go(prepared.record.id, prepared.token)
        self._notify(prepared.record.id, None)

    async def _suspend(self, prepared: Prepared, suspend: Suspend) -> Any:
        record = prepared.record
        wake_at = None
        if suspend.timeout_seconds is not None:
            wake_at = utcnow() + timedelta(seconds=max(0.0, suspend.timeout_seconds))
        if suspend.sleeping and record.timeout_at is not None:
            # A sleep is running time: wake no later than the execution's timeout.
            wake_at = min(wake_at, record.timeout_at) if wake_at else record.timeout_at
        state = await self._write(
            SuspendExecution(
                execution_id=record.id,
                token=prepared.token,
                waiting_for=suspend.name,
                wake_at=wake_at,
                keep_timeout=suspend.sleeping,
                correlation=suspend.correlation_key,
            ),
            record.id,
            prepared.token,
        )
        if state is True or state is AGAIN:
            self.claims.let_go(record.id, prepared.token)  # waiting: nobody holds it
            record.status = ExecutionStatus.WAITING
            if wake_at is not None:
                self._timer(wake_at)
            if not suspend.sleeping:
                record.timeout_at = None
                self._notify(record.id, None)  # a waiting caller gets the execution as it stands
        elif state != "ready":
            self._lost(prepared)
        return state

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
        record.duration_ms = milliseconds(now - (record.started_at or now))
        record.result = result
        steps = [*done, step] if step is not None else list(done)
        view = build_execution(record, steps) if self._needs_view(record) else None
        if self._wants("execution.completed", record):
            events = (*events, self._finished_event("execution.completed", record, view))
        applied = await self._write(
            FinishExecution(
                execution_id=record.id,
                workflow_id=record.workflow_id,
                status=ExecutionStatus.COMPLETED,
                completed_at=now,
                duration_ms=record.duration_ms,
                result=result,
                result_json=step.result_json if step is not None else None,
                token=prepared.token,
                step=step,
                hand_off=self._hand_off(record),
                events=events,
            ),
            record.id,
            prepared.token,
        )
        self._ended(prepared, view, applied)

    def _ended(self, prepared: Prepared, view: Execution | None, applied: Any) -> None:
        """After the write that ends the run: tell whoever waits, let go of the claim;
        count it, and log a failure (one line, with the ids and the error)."""
        record = prepared.record
        self.claims.let_go(record.id, prepared.token)
        if isinstance(applied, HandedOff):  # the next ones granted in the same commit
            prepared.handed_off = applied
        self._notify(record.id, view if applied else None)
        if not applied:
            return
        if self.metrics is not None:
            self.metrics.execution_finished(record.workflow_type, record.status.value)
        if record.status is not ExecutionStatus.COMPLETED:
            error = record.error or {}
            log.warning(
                "execution %s of workflow %s %s: %s",
                record.id,
                record.workflow_id,
                record.status.value.replace("_", " "),
                error.get("message"),
                extra={
                    "execution_id": record.id,
                    "workflow_id": record.workflow_id,
                    "workflow_type": record.workflow_type,
                    "status": record.status.value,
                    "step": error.get("step"),
                    "error": error,
                },
            )

    def _count_step(self, record: ExecutionRecord, step: StepRecord) -> None:
        """Count a step that ran (completed or failed) in the step durations."""
        if self.metrics is not None and step.duration_ms is not None:
            self.metrics.step_ended(record.workflow_type, step.name, step.duration_ms / 1000)

    def _needs_view(self, record: ExecutionRecord) -> bool:
        """Whether the finished execution's view is built: for a waiting caller, or an
        ``execution.completed`` event carrying its data (one kept by reference needs none)."""
        if record.id in self._waiters:
            return True
        return self._wants("execution.completed", record) and self.events.has_hooks()

    async def _finish_failed(
        self,
        record: ExecutionRecord,
        prepared: Prepared,
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
            step.duration_ms = milliseconds(now - (step.started_at or now))
            step.error = {"type": type(exc).__name__, "message": message}
            self._count_step(record, step)
        record.status = ExecutionStatus.FAILED
        record.completed_at = now
        record.duration_ms = milliseconds(now - (record.started_at or now))
        record.error = {k: v for k, v in error.items() if v is not None}
        steps = [*steps_done, step] if step is not None else list(steps_done)
        view = build_execution(record, steps)
        applied = await self._write(
            FinishExecution(
                execution_id=record.id,
                workflow_id=record.workflow_id,
                status=ExecutionStatus.FAILED,
                completed_at=now,
                duration_ms=record.duration_ms,
                error=record.error,
                token=prepared.token,
                step=step,
                hand_off=self._hand_off(record),
                events=(self._finished_event("execution.failed", record, view),),
            ),
            record.id,
            prepared.token,
        )
        self._ended(prepared, view, applied)

    async def _finish_timed_out(
        self, prepared: Prepared, done: list[StepRecord], running: StepRecord | None
    ) -> None:
        record = prepared.record
        now = utcnow()
        if running is not None:
            running.status = StepStatus.FAILED
            running.completed_at = now
            running.duration_ms = milliseconds(now - (running.started_at or now))
            running.error = {"type": "Timeout", "message": "execution timed out"}
        record.status = ExecutionStatus.TIMED_OUT
        record.completed_at = now
        record.duration_ms = milliseconds(now - (record.started_at or now))
        record.error = {"code": "EXECUTION_TIMEOUT", "message": "The execution timed out"}
        steps = [*done, running] if running is not None else list(done)
        view = build_execution(record, steps)
        applied = await self._write(
            CancelExecution(
                execution_id=record.id,
                workflow_id=record.workflow_id,
                status=ExecutionStatus.TIMED_OUT,
                completed_at=now,
                error=record.error,
                step=running,
                token=prepared.token,
                events=(self._finished_event("execution.failed", record, view),),
            ),
            record.id,
            prepared.token,
        )
        self._ended(prepared, view, applied)
