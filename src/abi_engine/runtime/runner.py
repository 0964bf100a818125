"""The durable execution runtime: workers, steps, checkpoints, recovery.

Every state change of an execution is a write operation committed (in
batches, see :mod:`abi_engine.runtime.commit`) before the runtime moves on: a step's
result is stored before the next step starts, so after a crash an execution
resumes from its last finished step and no finished step runs twice.

Work comes from two lanes. Synchronous callers (someone waits) run at once
under their own capacity limit; asynchronous executions go through a bounded
queue served by a fixed pool of workers. A flood of asynchronous work can
therefore never starve a synchronous caller.

Each runtime is a *node* (``host:pid:nonce``, a name for people: nothing is
decided from it). It holds the executions it runs under claim tokens and
leases (:mod:`abi_engine.runtime.leases`); every write of a run is a compare-and-set
on its token (:mod:`abi_engine.storage._fencing`), so a run that lost its
claim can change nothing. A poller grants this node executions nobody holds
(no owner, or a lease expired in the database's clock) and wakes waiting
executions whose timer is due.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import attrs
from anyio.abc import TaskGroup, TaskStatus

from abi_engine.errors import AbiError, InternalError, QueueFull
from abi_engine.events import EventPolicy
from abi_engine.execution_views import (
    build_execution,
)
from abi_engine.ids import utcnow
from abi_engine.limits import Limits
from abi_engine.models import (
    Execution,
    ExecutionStatus,
)
from abi_engine.runtime.checkpoints import COMMIT_RETRY_SECONDS
from abi_engine.runtime.commit import GroupCommitter
from abi_engine.runtime.execution import (
    Backoff,
    Lost,
    Prepared,
    one_line,
    settled,
)
from abi_engine.runtime.leases import Claims
from abi_engine.runtime.metrics import RuntimeMetrics
from abi_engine.runtime.recovery import Recovers
from abi_engine.runtime.settings import RuntimeSettings
from abi_engine.runtime.thread_commit import ThreadCommits
from abi_engine.runtime.work import Wakeups, _Reservation
from abi_engine.storage._fencing import new_claim
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import Store
from abi_engine.storage.records import (
    DeliverCorrelatedSignal,
    DeliverSignal,
    ExecutionRecord,
    InsertExecution,
    ReleaseExecutions,
    WriteOp,
    stored_priority,
)
from abi_engine.types import WorkflowType

if TYPE_CHECKING:
    from abi_engine.host import Host
    from abi_engine.runtime.tracing import Tracing

__all__ = ["Runtime"]

log = logging.getLogger("abi_engine.executor")


class _Waiter:
    __slots__ = ("done", "execution")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.execution: Execution | None = None


class Runtime(Recovers):
    """Runs executions for one engine. Started and stopped by the engine."""

    def __init__(
        self,
        store: Store,
        settings: RuntimeSettings | None = None,
        *,
        events: EventPolicy,
        workflow_types: Mapping[str, WorkflowType],
        limits: Limits | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self.metrics = metrics  # what it counts for the metrics (None: metrics are off)
        #: The spans of executions (``None``: not traced; set by the engine).
        self.tracing: Tracing | None = None
        self.limits: Limits = limits or Limits()
        self.store = store
        if hasattr(store, "priority_aging_ms"):  # the order the store hands out work in
            store.priority_aging_ms = round(self.settings.priority_aging_seconds * 1000)
        self.events = events
        self.workflow_types = workflow_types
        #: What steps receive as ``ctx.host`` (set by the engine once it is built).
        self.host: Host | None = None
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.committer = GroupCommitter(store, events.emit, metrics=metrics)
        self.committer.on_ended = self._notify
        #: Commits made in synchronous callers' threads (the synchronous door).
        self.thread_commits = ThreadCommits(store, self.committer, self._with_fresh_lease)
        self.claims = Claims(store.renew_leases, self.settings.lease_seconds)
        # The bound of the queue is kept by counting (``_queued``, ``_reserved``): a place
        # reserved by a caller is never taken by anyone else. The queue of asynchronous
        # work: a heap in priority order (aged like the store's claims), a wake-up per
        # item for the workers (``_work``).
        self._heap: list[tuple[float, int, str, int]] = []
        #: The stored priority of each execution in the heap, and how many per priority.
        self._queued_priority: dict[str, int] = {}
        self._priorities: dict[int, int] = {}
        self._pushed = itertools.count()
        self._work = Wakeups()
        # Queued; workers running an execution; stored running but not queued yet.
        self._queued = self._busy = self._starting = 0
        self._sync_limiter = anyio.CapacityLimiter(self.settings.sync_workers)
        self._prepared: dict[str, Prepared] = {}
        self._handed: dict[str, tuple[int, ExecutionRecord]] = {}
        self._reserved = 0
        self._reserve_lock = threading.Lock()
        self._waiters: dict[str, _Waiter] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._cancelled: set[str] = set()
        self._cancelled_early: dict[str, bool] = {}  # not held here yet (cancel_local)
        self._inflight: set[str] = set()
        #: Grants that arrived while an earlier run of the same execution was still here.
        self._deferred: dict[str, int] = {}
        #: The run token of each execution running here (its grant became this).
        self._run_tokens: dict[str, int] = {}
        self._tg: TaskGroup | None = None
        #: The time a claim is set for, for executions held until then (rate limits).
        self._due_at: datetime | None = None
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
        self._stopping = False  # an engine can be started again after a stop
        self._idle = anyio.Event()
        register = getattr(self.store, "register_node", None)
        if register is not None:
            await call_store(self.store, register, self.node_id)
        self.claims.start(f"abi-engine-heartbeat-{self.node_id}")
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.committer.run)
                self._tg = tg
                self.thread_commits.start(_asyncio_loop())
                for _ in range(self.settings.workers):
                    tg.start_soon(self._worker)
                tg.start_soon(self._poller)
                tg.start_soon(self._watch_claims)
                task_status.started()
        finally:
            self._tg = None
            self.thread_commits.start(None)
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
        self._work.close()

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
                one_line(exc),
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

    def idle_workers(self) -> int:
        """How many asynchronous executions accepted now would start at once: workers
        neither running one nor due to take one queued (0 while not running)."""
        if not self.running:
            return 0
        return max(0, self.settings.workers - self._busy - self._queued - self._starting)

    def take_idle(self, wanted: int) -> int:
        """Hold up to ``wanted`` idle workers for executions stored running at their
        acceptance (no claim write when they start); how many. Give them back with
        :meth:`give_idle` once those are handed over (queued) or refused."""
        with self._reserve_lock:  # (callers' threads hold workers too: the thread door)
            taken = min(wanted, self.idle_workers())
            self._starting += taken
        return taken

    def give_idle(self, count: int) -> None:
        with self._reserve_lock:
            self._starting -= count

    def reserve(self) -> _Reservation:
        """Reserve a place in the asynchronous queue, or raise ``QueueFull``.

        Reserving before the execution is stored means a refused caller leaves
        nothing behind, and a reserved place is never taken by other work
        (the scheduler, recovery). :meth:`submit` uses the reservation;
        release it (``reservation.release()``, idempotent) when it was not used.
        """
        with self._reserve_lock:  # callers' threads reserve too (the synchronous door)
            if self.room() <= 0:
                raise QueueFull(
                    f"The execution queue is full ({self.settings.queue_size} waiting);"
                    " retry later",
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
        if prepared.claimed and self._cancelled_early.pop(record.id, False):
            self._cancelled.add(record.id)  # cancelled before its hand-over: no step runs
        if sync or prepared.claimed or self._queued < self.settings.queued_in_memory:
            self._prepared[record.id] = prepared  # else a worker reads it from the store
        if reservation is None and not sync and self.room() <= 0:
            self._prepared.pop(record.id, None)
            self._hand_back(record.id, record.claim)
            return False
        try:
            self._push(record.id, record.claim, sync=sync, priority=record.priority)
        finally:
            # Only now: a caller's thread reserving meanwhile sees the place taken, by
            # the reservation or by the queued execution, never free (the queue limit).
            if reservation is not None:
                reservation.release()
        return True

    def poke(self) -> None:
        """Look for work nobody holds now rather than at the next poll (a resumed
        execution, queued without owner)."""
        self._timer(utcnow())

    def resume(self, execution_id: str, token: int) -> None:
        """Run an execution granted to this node by a signal (it was waiting)."""
        self.claims.hold(execution_id, token)
        self._push(execution_id, token)

    def _push(
        self, execution_id: str, token: int, *, sync: bool = False, priority: int | None = None
    ) -> None:
        if self._tg is None:
            raise RuntimeError("The engine is not running: use `async with engine:`")
        if sync:
            self._tg.start_soon(self._run_sync, execution_id, token)
            return
        self._queued += 1
        # Higher priority (a lower stored value) first; the wait counts as in the store.
        stored = stored_priority(None) if priority is None else priority
        self._queued_priority[execution_id] = stored
        self._priorities[stored] = self._priorities.get(stored, 0) + 1
        key = time.monotonic() + stored * self.settings.priority_aging_seconds
        heapq.heappush(self._heap, (key, next(self._pushed), execution_id, token))
        self._work.push()

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
            log.warning("could not hand back %d executions (%s)", len(claims), one_line(exc))

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
        backoff: Backoff | None = None
        while True:
            try:
                return await self.committer.submit(op, then=then)
            except (TypeError, ValueError, AbiError):
                raise
            except Exception as exc:
                backoff = backoff or Backoff(COMMIT_RETRY_SECONDS, 1.0)
                if not backoff.left():
                    raise _gave_up(op, exc, execution_id) from None
                await backoff.sleep()
                op = self._with_fresh_lease(op)

    async def commit_many(
        self, ops: Sequence[WriteOp], thens: Sequence[Callable[[Any], None] | None]
    ) -> list[Any]:
        """:meth:`commit` of many ops at once (they share commits): each op's result, or
        the exception it met (:class:`~abi_engine.errors.InternalError` when the store
        kept failing). ``thens``: one follow-up per op, or ``None``."""
        results = await self.committer.submit_many(ops, thens)
        backoff = Backoff(COMMIT_RETRY_SECONDS, 1.0)
        while todo := [i for i, r in enumerate(results) if _store_failed(r)]:
            if not backoff.left():
                failed = _gave_up(ops[todo[0]], results[todo[0]], None)
                for i in todo:
                    results[i] = failed
                break
            await backoff.sleep()
            again = [self._with_fresh_lease(ops[i]) for i in todo]
            answers = await self.committer.submit_many(again, [thens[i] for i in todo])
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
        return results

    def _with_fresh_lease(self, op: WriteOp) -> WriteOp:
        """``op`` granting this node a lease from now (a retried write must not store a
        lease that ran out while it was retried)."""
        if isinstance(op, InsertExecution) and op.record.owner == self.node_id:
            op.record.lease_until = self.lease()
        elif isinstance(op, DeliverSignal | DeliverCorrelatedSignal) and op.grant_owner is not None:
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
                if record is not None and settled(record):
                    steps = await call_store(self.store, self.store.get_steps, execution_id)
                    return build_execution(record, steps)
        finally:
            if self._waiters.get(execution_id) is waiter:  # (a caller's thread may share
                self._waiters.pop(execution_id, None)  # it and let go of it at once)

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
            return
        # Not here (yet?): a caller's thread that committed it stored running may be
        # handing it over right now (the thread door): noted, so that it runs no step.
        early = self._cancelled_early
        early[execution_id] = True
        if len(early) > 1024:  # (only the last few matter: the hand-over is under way)
            del early[next(iter(early))]

    # -- loops ----------------------------------------------------------------------------

    async def _worker(self) -> None:
        while await self._work.take():
            self._queued -= 1
            _, _, execution_id, token = heapq.heappop(self._heap)
            stored = self._queued_priority.pop(execution_id, None)
            if stored is not None:
                self._priorities[stored] -= 1
            self._busy += 1
            try:
                await self._guarded(execution_id, token)
            finally:
                self._busy -= 1

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
        except Lost:
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
        except Lost:
            return False
        return (
            record is not None
            and record.status is ExecutionStatus.RUNNING
            and record.claim == token
        )

    def behind_priority(self, execution_id: str) -> bool:
        """Whether ``execution_id`` waits in this node's queue while work of higher
        priority waits there too (``queued_reason`` ``priority``)."""
        stored = self._queued_priority.get(execution_id)
        return stored is not None and any(n for p, n in self._priorities.items() if p < stored)

    def sync_slot_free(self) -> bool:
        """Whether a synchronous execution submitted now starts at once."""
        return self.running and self._sync_limiter.available_tokens >= 1


def _store_failed(result: Any) -> bool:
    """Whether an op's result is the store failing (retried), not the op refused."""
    return isinstance(result, Exception) and not isinstance(
        result, TypeError | ValueError | AbiError
    )


def _gave_up(op: WriteOp, exc: BaseException, execution_id: str | None) -> InternalError:
    """The error of a caller's write the store kept failing (it may have applied)."""
    log.warning("%s failed for good (%s)", type(op).__name__, one_line(exc))
    details = {} if execution_id is None else {"execution_id": execution_id}
    return InternalError(
        "The database did not answer; the change may or may not have been"
        " made" + (f" (look up execution {execution_id})" if execution_id else ""),
        details,
    )


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop (``None`` on another backend: no thread commits)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
