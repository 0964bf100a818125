"""The durable execution runtime: workers, steps, checkpoints, recovery.

Every state change of an execution is a write operation committed (in
batches, see :mod:`abi_engine._commit`) before the runtime moves on: a step's
result is stored before the next step starts, so after a crash an execution
resumes from its last finished step and no finished step runs twice.

Work comes from two lanes. Synchronous callers (someone waits) run at once
under their own capacity limit; asynchronous executions go through a bounded
queue served by a fixed pool of workers. A flood of asynchronous work can
therefore never starve a synchronous caller.

Each runtime is a *node* (``host:pid:nonce``, a name for people: nothing is
decided from it). It holds the executions it runs under claim tokens and
leases (:mod:`abi_engine._leases`); every write of a run is a compare-and-set
on its token (:mod:`abi_engine.storage._fencing`), so a run that lost its
claim can change nothing. A poller grants this node executions nobody holds
(no owner, or a lease expired in the database's clock) and wakes waiting
executions whose timer is due.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import attrs
from anyio.abc import TaskGroup, TaskStatus

from abi_engine._commit import GroupCommitter
from abi_engine._leases import Claims
from abi_engine.errors import AbiError, InternalError, QueueFull
from abi_engine.events import EventPolicy, ExecutionEventRef, OutboxEvent
from abi_engine.execution_views import (
    build_execution,
    execution_json,
    started_view,
    step_event_data,
)
from abi_engine.ids import utcnow
from abi_engine.limits import Limits
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    StepStatus,
)
from abi_engine.storage._codec import dumps as _dumps
from abi_engine.storage._codec import loads as _loads
from abi_engine.storage._fencing import new_claim
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import Store
from abi_engine.storage.records import (
    AGAIN,
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    DeliverSignal,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    ReleaseExecutions,
    SaveProgress,
    StepRecord,
    SuspendExecution,
    WriteOp,
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
    from abi_engine.host import Host

__all__ = [
    "Prepared",
    "ProgressTooLarge",
    "ResultTooLarge",
    "Runtime",
    "RuntimeSettings",
    "build_execution",
    "execution_json",
]

log = logging.getLogger("abi_engine.executor")

T = TypeVar("T")

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
    execution without renewing (a heartbeat thread renews every third of it;
    after a crash, the node's work is taken over once it expires);
    ``poll_interval``: how often the node looks for work to recover and
    timers that are due; ``shutdown_grace``: how long stopping waits for
    running steps before interrupting them; ``default_sync_timeout``: the
    timeout of a synchronous execution that gives none.
    """

    workers: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    sync_workers: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    queue_size: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))
    lease_seconds: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
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
    #: The claim token of the run (set when it starts).
    token: int = 0
    #: Nothing of it is stored yet but the execution (no steps, signals, progress to read).
    fresh: bool = True


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


class ResultTooLarge(ValueError):
    """A step returned a result whose JSON is larger than ``Limits.max_result_bytes``.

    The step fails at once (no retry: the same result would come back), and
    the execution with it; the step's error names the size and the limit.
    """


class ProgressTooLarge(ValueError):
    """A step saved progress whose JSON is larger than ``Limits.max_progress_bytes``
    (raised by ``ctx.save_progress``; nothing is saved)."""


def _sized_json(value: Any, limit: int, what: str, error: type[ValueError]) -> str:
    """``value`` as JSON text, unless it is larger than ``limit`` bytes (``error``).

    A long string is refused before anything is encoded, so a step returning
    hundreds of megabytes costs no second copy of them.
    """
    if isinstance(value, str) and len(value) > limit:
        raise error(f"{what} is more than {limit} bytes of JSON ({len(value)} characters)")
    text = _dumps(value)
    if len(text) * 4 > limit:  # at most 4 bytes a character: only then count them
        size = len(text.encode("utf-8"))
        if size > limit:
            raise error(f"{what} is {size} bytes of JSON, more than the limit of {limit}")
    return text


class _Lost(Exception):
    """This node no longer holds the execution it was writing (or cannot reach the
    store for long enough that it must assume so); the run stops without writing."""


#: How long a run keeps retrying a write the store refuses before letting the execution go.
WRITE_RETRY_SHARE = 0.5
#: How long an API call's write is retried while the store fails.
COMMIT_RETRY_SECONDS = 5.0


class Runtime:
    """Runs executions for one engine. Started and stopped by the engine."""

    def __init__(
        self,
        store: Store,
        settings: RuntimeSettings | None = None,
        *,
        events: EventPolicy,
        workflow_types: Mapping[str, WorkflowType],
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self.limits: Limits = limits or Limits()
        self.store = store
        self.events = events
        self.workflow_types = workflow_types
        #: What steps receive as ``ctx.host`` (set by the engine once it is built).
        self.host: Host | None = None
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.committer = GroupCommitter(store, events.emit)
        self.claims = Claims(store.renew_leases, self.settings.lease_seconds)
        # The bound of the queue is kept by counting (``_queued``, ``_reserved``): a
        # place reserved by a caller is never taken by anyone else.
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, int]](math.inf)
        self._queued = 0
        self._sync_limiter = anyio.CapacityLimiter(self.settings.sync_workers)
        self._prepared: dict[str, Prepared] = {}
        self._reserved = 0
        self._waiters: dict[str, _Waiter] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._cancelled: set[str] = set()
        self._inflight: set[str] = set()
        #: Grants that arrived while an earlier run of the same execution was still here.
        self._deferred: dict[str, int] = {}
        #: The run token of each execution running here (its grant became this).
        self._run_tokens: dict[str, int] = {}
        self._tg: TaskGroup | None = None
        self._stopping = False
        self._idle = anyio.Event()
        self._store_failures = 0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._tg is not None and not self._stopping

    @property
    def in_flight(self) -> int:
        """How many executions run in this process now (its load; webhooks yield to it)."""
        return len(self._inflight)

    def lease(self) -> datetime:
        """When a lease taken now ends."""
        return utcnow() + timedelta(seconds=self.settings.lease_seconds)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the committer, workers, poller and heartbeat; run until cancelled."""
        register = getattr(self.store, "register_node", None)
        if register is not None:
            await call_store(self.store, register, self.node_id)
        self.claims.start(f"abi-engine-heartbeat-{self.node_id}")
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.committer.run)
                self._tg = tg
                for _ in range(self.settings.workers):
                    tg.start_soon(self._worker, self._receive.clone())
                tg.start_soon(self._poller)
                tg.start_soon(self._watch_claims)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):  # a renewal in progress may take a moment
                await anyio.to_thread.run_sync(self.claims.stop)

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
        """Hand back what this node still holds, so a restart (or another node) resumes
        it at once; then the node is gone."""
        try:
            await self._hand_back_all()
        finally:
            unregister = getattr(self.store, "unregister_node", None)
            if unregister is not None:
                with anyio.CancelScope(shield=True):
                    await call_store(self.store, unregister, self.node_id)

    async def _hand_back_all(self) -> None:
        held = self.claims.to_hand_back()
        if not held:
            return
        try:
            with anyio.CancelScope(shield=True):  # runs while the engine is being cancelled
                await call_store(
                    self.store, self.store.apply, [ReleaseExecutions(claims=tuple(held))]
                )
        except Exception as exc:
            log.warning(
                "could not hand back %d executions of %s (%s); their leases expire in %g s",
                len(held),
                self.node_id,
                _one_line(exc),
                self.settings.lease_seconds,
            )
            return
        for execution_id, token in held:
            self.claims.let_go(execution_id, token)

    # -- submitting -------------------------------------------------------------------------

    def grant(self, record: ExecutionRecord) -> None:
        """Make ``record``, about to be inserted, held by this node: owner, a fresh claim
        token, a lease. :meth:`submit` then holds and runs it."""
        record.owner = self.node_id
        record.claim = new_claim()
        record.lease_until = self.lease()

    def room(self) -> int:
        """Free places in the asynchronous queue (reserved ones are not free)."""
        return self.settings.queue_size - self._queued - self._reserved

    def reserve(self) -> _Reservation:
        """Reserve a place in the asynchronous queue, or raise ``QueueFull``.

        Reserving before the execution is stored means a refused caller leaves
        nothing behind, and a reserved place is never taken by other work
        (the scheduler, recovery). :meth:`submit` uses the reservation;
        release it (``reservation.release()``, idempotent) when it was not used.
        """
        if self.room() <= 0:
            raise QueueFull(
                f"The execution queue is full ({self.settings.queue_size} waiting); retry later",
                {"queue_size": self.settings.queue_size},
            )
        self._reserved += 1
        return _Reservation(self)

    def submit(
        self, prepared: Prepared, *, sync: bool, reservation: _Reservation | None = None
    ) -> bool:
        """Run a just-inserted execution (granted with :meth:`grant`): at once when
        ``sync``, else through the queue. Returns ``False`` when the queue had no room
        (and no ``reservation`` was given): the execution is then handed back to the
        store for any node's recovery.
        """
        record = prepared.record
        assert record.claim is not None, "submit() needs a record granted with grant()"
        self.claims.hold(record.id, record.claim)
        self._prepared[record.id] = prepared
        if reservation is not None:
            reservation.release()
        elif not sync and self.room() <= 0:
            self._prepared.pop(record.id, None)
            self._hand_back(record.id, record.claim)
            return False
        self._push(record.id, record.claim, sync=sync)
        return True

    def resume(self, execution_id: str, token: int) -> None:
        """Run an execution granted to this node by a signal (it was waiting)."""
        self.claims.hold(execution_id, token)
        self._push(execution_id, token)

    def _push(self, execution_id: str, token: int, *, sync: bool = False) -> None:
        if self._tg is None:
            raise RuntimeError("The engine is not running: use `async with engine:`")
        if sync:
            self._tg.start_soon(self._run_sync, execution_id, token)
            return
        self._queued += 1
        self._send.send_nowait((execution_id, token))

    def _hand_back(self, execution_id: str, token: int) -> None:
        """Let go of a claim and hand the execution back to the store (in the background;
        if that write fails, the lease expiry does the same)."""
        self.claims.let_go(execution_id, token)
        if self._tg is not None and not self._stopping:
            self._tg.start_soon(self._release_claims, ((execution_id, token),))

    async def _release_claims(self, claims: tuple[tuple[str, int], ...]) -> None:
        try:
            await self.committer.submit(ReleaseExecutions(claims=claims))
        except Exception as exc:
            log.warning("could not hand back %d executions (%s)", len(claims), _one_line(exc))

    async def commit(
        self,
        op: WriteOp,
        *,
        execution_id: str | None = None,
        then: Callable[[Any], None] | None = None,
    ) -> Any:
        """Commit ``op`` for a caller (an API call), retrying a store that fails for a
        few seconds (every op is idempotent: a retry after a lost answer finds its
        own effect). Raises :class:`~abi_engine.errors.InternalError` naming
        ``execution_id`` when the store keeps failing: the op may or may not have
        applied. A value the store cannot encode (``TypeError``/``ValueError``) is
        raised at once. ``then(result)``: see :meth:`GroupCommitter.submit`.
        """
        delay = 0.05
        give_up = time.monotonic() + COMMIT_RETRY_SECONDS
        retry = False
        while True:
            if retry:
                op = self._with_fresh_lease(op)
            retry = True
            try:
                return await self.committer.submit(op, then=then)
            except (TypeError, ValueError, AbiError):
                raise
            except Exception as exc:
                if time.monotonic() + delay > give_up:
                    log.warning("%s failed for good (%s)", type(op).__name__, _one_line(exc))
                    details = {} if execution_id is None else {"execution_id": execution_id}
                    raise InternalError(
                        "The database did not answer; the change may or may not have been"
                        " made" + (f" (look up execution {execution_id})" if execution_id else ""),
                        details,
                    ) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _with_fresh_lease(self, op: WriteOp) -> WriteOp:
        """``op`` granting this node a lease from now (a retried write must not store a
        lease that ran out while it was retried)."""
        if isinstance(op, InsertExecution) and op.record.owner == self.node_id:
            op.record.lease_until = self.lease()
        elif isinstance(op, DeliverSignal) and op.grant_owner is not None:
            op = attrs.evolve(op, lease_until=self.lease())
        return op

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
                    if waiter.execution is not None:
                        return waiter.execution
                    if waiter.done.is_set():  # without a view: look at the store
                        waiter.done = anyio.Event()
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
        """Stop the execution's run in this node, if any (its record is already ended, or
        this node lost it): at once when a step runs, before the first step otherwise."""
        if execution_id in self._inflight or execution_id in self._prepared:
            self._cancelled.add(execution_id)
            scope = self._scopes.get(execution_id)
            if scope is not None:
                scope.cancel()

    # -- loops ----------------------------------------------------------------------------

    async def _worker(self, receive: Any) -> None:
        async with receive:
            async for execution_id, token in receive:
                self._queued -= 1
                await self._guarded(execution_id, token)

    async def _run_sync(self, execution_id: str, token: int) -> None:
        waited = self._sync_limiter.available_tokens < 1
        async with self._sync_limiter:
            prepared = self._prepared.get(execution_id)
            if waited and prepared is not None and prepared.claimed:
                # Stored running, then it waited for a slot: cancelled meanwhile?
                prepared.claimed = await self._still_running(execution_id, token)
            await self._guarded(execution_id, token)

    async def _guarded(self, execution_id: str, token: int) -> None:
        if self._stopping or not self.claims.holds(execution_id, token):
            self._prepared.pop(execution_id, None)
            self._cancelled.discard(execution_id)
            return  # handed back on stop, or lost meanwhile
        if execution_id in self._inflight:
            # An earlier run of it is still here (it lost its claim and has not noticed
            # yet): this grant runs once that one has stopped.
            self._deferred[execution_id] = token
            return
        self._inflight.add(execution_id)
        try:
            await self._execute(execution_id, token)
        except _Lost:
            pass  # logged where it was noticed
        except Exception:
            log.exception("execution %s crashed the runtime; it will be recovered", execution_id)
        finally:
            self._inflight.discard(execution_id)
            self._scopes.pop(execution_id, None)
            self._cancelled.discard(execution_id)
            run_token = self._run_tokens.pop(execution_id, None)
            held = self.claims.token(execution_id)
            if held in (token, run_token) and held is not None and not self._stopping:
                # The run stopped without ending the execution (the store failed for
                # too long): its lease expires and recovery takes it over. (While
                # stopping, what is still held is handed back by ``release``; a newer
                # grant, from a signal or a poll, is not this run's to drop.)
                self.claims.let_go(execution_id, held)
            deferred = self._deferred.pop(execution_id, None)
            if deferred is not None and self.claims.holds(execution_id, deferred):
                self._push(execution_id, deferred)
            if self._stopping and not self._inflight:
                self._idle.set()

    async def _still_running(self, execution_id: str, token: int) -> bool:
        """Whether the execution is still stored running under ``token`` (``False``: it
        ended meanwhile, e.g. cancelled; the run must not start)."""
        if execution_id in self._cancelled:
            return False
        try:
            record = await self._read(self.store.get_execution, execution_id, token=token)
        except _Lost:
            return False
        return (
            record is not None
            and record.status is ExecutionStatus.RUNNING
            and record.claim == token
        )

    async def _poller(self) -> None:
        while True:
            if not self._stopping:
                try:
                    await self._recover_once()
                except Exception as exc:
                    self._store_failed("recovery poll", exc)
                else:
                    self._store_works()
            await anyio.sleep(self.settings.poll_interval)

    async def _watch_claims(self) -> None:
        """Stop the runs of claims this node lost (a loop of its own: a poll that hangs on
        an unreachable store must not keep a run going past its lease)."""
        while True:
            for execution_id in self.claims.take_lost():
                if execution_id in self._inflight:
                    log.warning(
                        "execution %s: this node lost its claim; its run stops", execution_id
                    )
                self.cancel_local(execution_id)
            await anyio.sleep(min(self.settings.poll_interval, self.settings.lease_seconds / 10))

    def _store_failed(self, what: str, exc: BaseException) -> None:
        self._store_failures += 1
        if self._store_failures == 1:
            log.warning("%s failed (%s); retrying", what, _one_line(exc))

    def _store_works(self) -> None:
        if self._store_failures:
            log.warning("the store works again after %d failed polls", self._store_failures)
            self._store_failures = 0

    async def _recover_once(self) -> int:
        room = min(self.room(), 500)
        if room <= 0:
            return 0
        dead_nodes = getattr(self.store, "dead_nodes", None)
        dead = await call_store(self.store, dead_nodes) if dead_nodes is not None else []
        granted = await call_store(
            self.store,
            self.store.claim_recoverable,
            self.node_id,
            utcnow(),
            self.lease(),
            room,
            set(self.workflow_types),
            dead,
        )
        for execution_id, _priority, token in granted:
            self.claims.hold(execution_id, token)
            self._push(execution_id, token)
        return len(granted)

    # -- running one execution ---------------------------------------------------------------

    async def _write(self, op: WriteOp, execution_id: str, token: int) -> Any:
        """Commit ``op`` of the run holding ``token`` and return its result.

        A store that fails is retried with backoff (every op is idempotent: a
        retry after a commit whose answer was lost finds its own effect) while
        this node holds the claim, for at most ``WRITE_RETRY_SHARE`` of the
        lease. Then the claim is let go (its lease expires, recovery takes the
        execution over) and :class:`_Lost` is raised.
        """
        delay = 0.05
        give_up = time.monotonic() + self.settings.lease_seconds * WRITE_RETRY_SHARE
        failures = 0
        while True:
            try:
                result = await self.committer.submit(op)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "execution %s: %s failed (%s); retrying",
                        execution_id,
                        type(op).__name__,
                        _one_line(exc),
                    )
                if not self.claims.holds(execution_id, token) or (
                    time.monotonic() + delay > give_up
                ):
                    log.warning(
                        "execution %s: the store kept failing; left to recovery (lease %g s)",
                        execution_id,
                        self.settings.lease_seconds,
                    )
                    self.claims.let_go(execution_id, token)
                    self._notify(execution_id, None)
                    raise _Lost(execution_id) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if failures:
                log.warning("execution %s: %s done after a retry", execution_id, type(op).__name__)
            return result

    async def _read(self, fn: Callable[..., T], *args: Any, token: int) -> T:
        """A store read of the run holding ``token`` (``execution_id`` first in ``args``),
        retried like :meth:`_write` while the store fails."""
        execution_id = str(args[0]) if args else ""
        delay = 0.05
        give_up = time.monotonic() + self.settings.lease_seconds * WRITE_RETRY_SHARE
        failures = 0
        while True:
            try:
                return await call_store(self.store, fn, *args)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "execution %s: reading it failed (%s); retrying",
                        execution_id,
                        _one_line(exc),
                    )
                if not self.claims.holds(execution_id, token) or (
                    time.monotonic() + delay > give_up
                ):
                    log.warning(
                        "execution %s: the store kept failing; left to recovery (lease %g s)",
                        execution_id,
                        self.settings.lease_seconds,
                    )
                    self.claims.let_go(execution_id, token)
                    self._notify(execution_id, None)
                    raise _Lost(execution_id) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _load(self, execution_id: str, grant: int) -> Prepared | None:
        """The execution to run, claimed by this node under a fresh run token (``None``
        when there is nothing to run here)."""
        prepared = self._prepared.pop(execution_id, None)
        if prepared is not None and prepared.claimed:
            prepared.token = grant  # inserted running under its run token
            prepared.fresh = True
            return prepared
        record = (
            prepared.record
            if prepared is not None
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
        record.started_at = record.started_at or utcnow()
        record.status = ExecutionStatus.RUNNING
        token = new_claim()
        self.claims.expect(execution_id, token)  # handed back too if we stop meanwhile
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
        if not claimed or not self.claims.swap(execution_id, grant, token):
            self.claims.let_go(execution_id, grant)
            return None
        self._run_tokens[execution_id] = token
        record.claim = token
        if prepared is not None:
            prepared.token, prepared.fresh = token, fresh
            return prepared
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

    def sync_slot_free(self) -> bool:
        """Whether a synchronous execution submitted now starts at once."""
        return self.running and self._sync_limiter.available_tokens >= 1

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

    def _wants(self, kind: str, record: ExecutionRecord) -> bool:
        """Whether an event of ``kind`` about ``record`` has a consumer (else it is not built)."""
        return self.events.wants_for_execution(kind, record.callback_url)

    async def _execute(self, execution_id: str, grant: int) -> None:
        prepared = await self._load(execution_id, grant)
        if prepared is None:
            return
        record = prepared.record
        fresh = prepared.fresh  # nothing stored yet: no steps, signals or progress to read
        await self._connect(prepared)
        token = prepared.token
        done: list[StepRecord] = (
            [] if fresh else await self._read(self.store.get_steps, execution_id, token=token)
        )
        signals: dict[str, Any] = (
            {} if fresh else await self._read(self.store.get_signals, execution_id, token=token)
        )
        if record.timeout_at is not None and record.timeout_at <= utcnow():
            await self._finish_timed_out(prepared, done, None)
            return
        scope = anyio.CancelScope()
        if record.timeout_at is not None:
            remaining = (record.timeout_at - utcnow()).total_seconds()
            scope.deadline = anyio.current_time() + remaining
        self._scopes[execution_id] = scope
        if execution_id in self._cancelled:  # cancelled (or lost) before the scope existed
            scope.cancel()
        running: list[StepRecord | None] = [None]
        with scope:
            try:
                await self._run_steps(prepared, done, signals, running, resumed=not fresh)
            except _Lost:
                raise
            except Exception as exc:
                # Outside any step (a plugin's skip_if, say): the same error comes back at
                # every recovery, so the execution ends failed instead of looping.
                log.error("execution %s failed outside its steps: %s", execution_id, exc)
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
                if not await self._checkpoint(prepared, step, ()):
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
            if not await self._checkpoint(prepared, step, step_events):
                return
            done.append(step)
        # Nothing left to run: no steps at all, or every step done already (the type
        # has fewer steps than when the execution started).
        await self._finish_completed(prepared, done, None, last_result)

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
                host=self.host,
                services=self.host.legacy_services if self.host else {},  # deprecated
                progress=progress,
                progress_saver=save_progress,
            )
            try:
                if spec.timeout_seconds is not None:
                    with anyio.fail_after(spec.timeout_seconds):
                        result = await spec.fn(ctx)
                else:
                    result = await spec.fn(ctx)
                return result, _sized_json(
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
                return _SUSPENDED
            except ExecutionLost:  # another engine runs it now, or it was cancelled
                return _SUSPENDED
            except (ResultTooLarge, ProgressTooLarge) as exc:  # the same would come back
                return _Failure(exc)
            except Exception as exc:
                if attempt >= spec.retry.attempts:
                    return _Failure(exc)
                await anyio.sleep(spec.retry.delay_before(attempt + 1))

    async def _save_progress(
        self, prepared: Prepared, index: int, signals: dict[str, Any], value: Any
    ) -> Any:
        """``StepContext.save_progress`` of step ``index``: kept with the signals, committed;
        returns the value as stored (what a run after a restart reads)."""
        limit = self.limits.max_progress_bytes
        try:
            text = _sized_json(value, limit, "The progress", ProgressTooLarge)
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
        except _Lost:
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

    def _finished_event(
        self, kind: str, record: ExecutionRecord, view: Execution | None
    ) -> OutboxEvent:
        at = record.completed_at or utcnow()
        if view is None:
            return ExecutionEventRef(kind, record.id, None, at)
        return self.events.execution_event(kind, record.id, lambda: execution_json(view), at=at)

    async def _checkpoint(
        self, prepared: Prepared, step: StepRecord, events: tuple[OutboxEvent, ...]
    ) -> bool:
        applied = await self._write(
            CheckpointStep(step=step, token=prepared.token, events=events),
            prepared.record.id,
            prepared.token,
        )
        if not applied:
            self._lost(prepared)
        return bool(applied)

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
            ),
            record.id,
            prepared.token,
        )
        if state is True or state is AGAIN:
            self.claims.let_go(record.id, prepared.token)  # waiting: nobody holds it
            record.status = ExecutionStatus.WAITING
            if wake_at is not None and self._tg is not None:
                self._tg.start_soon(self._wake_at, wake_at)
            if not suspend.sleeping:
                record.timeout_at = None
                self._notify(record.id, None)  # a waiting caller gets the execution as it stands
        elif state != "ready":
            self._lost(prepared)
        return state

    async def _wake_at(self, when: datetime) -> None:
        """Look for due timers right at ``when`` (the poller would notice later)."""
        await anyio.sleep(max(0.0, (when - utcnow()).total_seconds()) + 0.001)
        if not self._stopping:
            try:
                await self._recover_once()
            except Exception as exc:  # the poller will find it when the store answers
                self._store_failed("wake-up poll", exc)

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
                events=events,
            ),
            record.id,
            prepared.token,
        )
        self._ended(prepared, view, applied)

    def _ended(self, prepared: Prepared, view: Execution | None, applied: Any) -> None:
        """After the write that ends the run: tell whoever waits, let go of the claim."""
        self.claims.let_go(prepared.record.id, prepared.token)
        self._notify(prepared.record.id, view if applied else None)

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
            step.duration_ms = _ms(now - (step.started_at or now))
            step.error = {"type": type(exc).__name__, "message": message}
        record.status = ExecutionStatus.FAILED
        record.completed_at = now
        record.duration_ms = _ms(now - (record.started_at or now))
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
            running.duration_ms = _ms(now - (running.started_at or now))
            running.error = {"type": "Timeout", "message": "execution timed out"}
        record.status = ExecutionStatus.TIMED_OUT
        record.completed_at = now
        record.duration_ms = _ms(now - (record.started_at or now))
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


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_SUSPENDED = object()


def _ms(delta: timedelta) -> int:
    return max(0, round(delta.total_seconds() * 1000))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
