"""Group commit: many tasks' writes, one transaction.

Tasks hand write operations to :class:`GroupCommitter` and await their
results; one writer task applies everything pending in a single store
transaction, then emits the events of the ops that applied. Under load a
batch carries hundreds of ops, so durability costs one commit (and, with
``synchronous=FULL``, one fsync) per batch instead of per step.

A store that writes concurrent transactions (PostgreSQL:
``batches_in_flight = 2``) gets more than one batch at a time, each in its own
transaction on its own connection. Batches start in the order they filled, and
one that touches an execution a batch in flight touches waits for it (see
:func:`op_keys`): the writes of one execution commit in the order they were
submitted, as with one batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from abi_engine.events import Event, ExecutionEventRef, OutboxEvent
from abi_engine.execution_views import build_execution, execution_json
from abi_engine.runtime.metrics import RuntimeMetrics
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import Store
from abi_engine.storage.records import (
    AGAIN,
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    DeliverSignal,
    FinishExecution,
    InsertExecution,
    InsertRerun,
    PauseExecution,
    ReleaseExecutions,
    ResumeExecution,
    SaveProgress,
    SuspendExecution,
    WriteOp,
    applied,
)

__all__ = ["OVERLAP_MIN", "GroupCommitter", "op_keys"]

#: The fewest ops a batch starts with while another is being written: a transaction
#: of its own costs a commit, a read of its executions and a few statements, paid
#: per batch (a batch of 2 beside one of 50 costs more CPU than it saves time).
OVERLAP_MIN = 32

#: Ops that write one execution, named by their ``execution_id``.
_BY_EXECUTION_ID = (
    ClaimExecution,
    FinishExecution,
    SaveProgress,
    SuspendExecution,
    DeliverSignal,
    CancelExecution,
    PauseExecution,
    ResumeExecution,
)


def op_keys(op: WriteOp) -> tuple[str, ...] | None:
    """The executions ``op`` writes, or ``None`` when that is not known from the op
    alone (a workflow's pause, a correlated signal, schedules, bare events): such an
    op's batch runs alone, after every batch before it and before every one after."""
    if isinstance(op, _BY_EXECUTION_ID):
        return (op.execution_id,)
    if isinstance(op, CheckpointStep):
        return (op.step.execution_id,)
    if isinstance(op, (InsertExecution, InsertRerun)):
        # Not its workflow's other inserts: what those decide together (concurrency
        # slots, rate limits, a debounce ending the execution it replaces) is decided
        # under the workflow's grant lock, in commit order, as between two processes.
        return (op.record.id,)
    if isinstance(op, ReleaseExecutions):
        return tuple(execution_id for execution_id, _ in op.claims)
    return None


log = logging.getLogger("abi_engine.commit")


class _Batch:
    __slots__ = ("done", "keys", "ops", "results", "thens", "waiters")

    def __init__(self) -> None:
        self.ops: list[WriteOp] = []
        self.results: list[Any] = []
        #: ``(index, then)``: called with the result of ``ops[index]`` once it is known.
        self.thens: list[tuple[int, Callable[[Any], None]]] = []
        #: Set once the results are known (made when someone waits on it).
        self.done: anyio.Event | None = None
        #: On asyncio: ``(index, future)`` of each task waiting for the result of
        #: ``ops[index]`` alone (a future each is lighter than an event all share).
        self.waiters: list[tuple[int, asyncio.Future[Any]]] = []
        #: The executions its ops write (``None``: unknown, the batch runs alone).
        self.keys: set[str] | None = set()

    async def wait(self) -> None:
        """Wait until the results are known."""
        if self.done is None:
            self.done = anyio.Event()
        await self.done.wait()

    def answer(self, results: list[Any]) -> None:
        """Hand the results to whoever waits (a waiter cancelled meanwhile is skipped)."""
        self.results = results
        for index, future in self.waiters:
            if not future.done():
                future.set_result(results[index])
        if self.done is not None:
            self.done.set()

    def add_keys(self, ops: Iterable[WriteOp]) -> None:
        for op in ops:
            if self.keys is None:
                return
            keys = op_keys(op)
            if keys is None:
                self.keys = None
            else:
                self.keys.update(keys)

    def conflicts(self, other: _Batch) -> bool:
        """Whether this batch must wait for ``other`` (in flight) to end first."""
        if self.keys is None or other.keys is None:
            return True
        return not self.keys.isdisjoint(other.keys)


class GroupCommitter:
    """Collects write operations and commits them in batches.

    Pending ops fill batches of at most ``max_batch`` ops, committed one
    after the other, each in one transaction. While a blocking store (or a
    SQLite file at ``durability="full"``, waiting for its fsync) writes one
    batch in a worker thread, the tasks of the batch before it, now
    answered, fill the next one: with more concurrent writers than
    ``max_batch`` the event loop and the database work at the same time.

    A blocking store whose ``batches_in_flight`` is above 1 is given up to that
    many batches at once (each in a worker thread, a transaction of its own),
    a batch joining one in flight once it holds ``overlap_min`` ops.
    They start in the order they filled; a batch writing an execution that a
    batch in flight writes waits for that one to end, so the ops of an
    execution apply in the order they were submitted.

    :param store: where ops are applied (``store.apply``).
    :param emit: called with the events of the ops that applied, after commit.
    :param max_batch: the most ops applied in one transaction.
    :param metrics: where each commit's duration and size are counted (``None``: nowhere).
    :param in_flight: the most batches written at once (default: the store's
        ``batches_in_flight`` when it is blocking, else 1).
    :param overlap_min: the fewest ops a batch starts with while another one is
        being written (default :data:`OVERLAP_MIN`); alone, a batch starts with any.
    """

    def __init__(
        self,
        store: Store,
        emit: Callable[[Iterable[OutboxEvent]], None],
        max_batch: int = 1000,
        *,
        metrics: RuntimeMetrics | None = None,
        in_flight: int | None = None,
        overlap_min: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if in_flight is None:
            in_flight = int(getattr(store, "batches_in_flight", 1)) if store.blocking else 1
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self._store = store
        # A store that blocks on the network, or a SQLite file whose commits wait for an
        # fsync (``commits_in_thread``): applied in a worker thread, the loop goes on.
        self._in_thread = store.blocking or bool(getattr(store, "commits_in_thread", False))
        self._emit = emit
        self._max_batch = max_batch
        self._metrics = metrics
        self._pending: deque[_Batch] = deque()
        self._in_flight_limit = in_flight
        #: Whether batches note the executions they write (only batches in flight
        #: together compare them: with one at a time, nothing does).
        self._keyed = in_flight > 1
        self._overlap_min = OVERLAP_MIN if overlap_min is None else max(1, overlap_min)
        #: The batches being written now, oldest first.
        self._writing: list[_Batch] = []
        #: Set (and replaced) whenever a batch in flight ends, or the next batch
        #: grows to ``OVERLAP_MIN`` ops.
        self._changed = anyio.Event()
        #: The most batches that were written at once.
        self.most_in_flight = 0
        self._wakeup = anyio.Event()
        #: Whether :attr:`_wakeup` is set already (spares setting it again per op).
        self._woken = False
        #: The asyncio loop the writer runs on (``None``: not running, or not asyncio).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self.batches = 0
        self.ops = 0
        self._failures = 0
        #: Called with each execution the store ended while applying an op (a debounce's
        #: skips) and ``None``, after its commit: whoever waits for it reads it again.
        self.on_ended: Callable[[str, None], None] | None = None
        #: Whether events must carry their data (an ``abi_event`` hook listens): then
        #: the store's found events, kept by reference, are built with it before emit.
        self.hooked: Callable[[], bool] = lambda: False
        #: What applies a batch in a worker thread instead of ``store.apply`` (a SQLite
        #: file at ``durability="full"``: ``ThreadCommits.apply_batch``, so the batch
        #: shares its commit and fsync with the callers' threads committing meanwhile).
        self.thread_apply: Callable[[Sequence[WriteOp]], list[Any]] | None = None
        #: Tasks emitting the events of commits made in callers' threads (kept referenced).
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._running

    def _open_batch(self, adding: int) -> _Batch:
        """The batch ``adding`` new ops join: the last pending one, unless that would
        take it past ``max_batch`` (an empty one takes any number: ``submit_many``)."""
        last = self._pending[-1] if self._pending else None
        if last is None or (last.ops and len(last.ops) + adding > self._max_batch):
            last = _Batch()
            self._pending.append(last)
        return last

    async def submit(self, op: WriteOp, *, then: Callable[[Any], None] | None = None) -> Any:
        """Queue ``op``, wait until its batch is committed, return its result.

        Raises the op's exception when it failed on its own. When the writer
        is not running (the engine is not started) the op is applied at once.

        ``then(result)`` is called by the writer as soon as the op's result is
        known (not when it failed), before the waiting task resumes and even
        when that task was cancelled meanwhile: what must follow a commit
        (handing a stored execution to the runtime) cannot be skipped.
        """
        if not self._running:
            result = (await self._apply([op]))[0]
            if then is not None and not isinstance(result, BaseException):
                _call_then(then, result)
        else:
            batch = self._open_batch(1)
            index = len(batch.ops)
            batch.ops.append(op)
            if self._keyed:
                batch.add_keys((op,))
            if len(batch.ops) == self._overlap_min and self._writing:
                self._signal_change()
            if then is not None:
                batch.thens.append((index, then))
            self._wake()
            loop = self._loop
            # On the writer's loop, a future of its own; a task of another loop (an ASGI
            # server's, in its thread) waits on the batch's event, as it always did.
            if loop is not None and asyncio._get_running_loop() is loop:
                future = loop.create_future()
                batch.waiters.append((index, future))
                result = await future
            else:
                await batch.wait()
                result = batch.results[index]
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(
        self,
        ops: Sequence[WriteOp],
        thens: Sequence[Callable[[Any], None] | None] | None = None,
    ) -> list[Any]:
        """Queue ``ops`` together and return their results (exceptions included).

        They share one transaction when there are at most ``max_batch`` of them.
        ``thens``: one follow-up (or ``None``) per op, called as :meth:`submit`'s.
        """
        if not ops:
            return []
        if not self._running:
            results = await self._apply(ops)
            for then, result in zip(thens or (), results, strict=False):
                if then is not None and not isinstance(result, BaseException):
                    _call_then(then, result)
            return results
        batch = self._open_batch(len(ops))
        start = len(batch.ops)
        batch.ops.extend(ops)
        if self._keyed:
            batch.add_keys(ops)
        if thens is not None:
            batch.thens.extend((start + i, t) for i, t in enumerate(thens) if t is not None)
        if start < self._overlap_min <= len(batch.ops) and self._writing:
            self._signal_change()
        self._wake()
        await batch.wait()
        return batch.results[start : start + len(ops)]

    def _wake(self) -> None:
        """Wake the writer (once per batch it has to look at)."""
        if not self._woken:
            self._woken = True
            self._wakeup.set()

    async def _apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        clock = time.perf_counter()
        if self._in_thread:
            apply = self.thread_apply or self._store.apply
            results = await anyio.to_thread.run_sync(partial(apply, ops))
        else:  # inline; in a thread should another process hold the database's lock
            results = await call_store(self._store, self._store.apply, ops)
        self._count(time.perf_counter() - clock, len(ops))
        await self._emit_applied(ops, results)
        return results

    def _count(self, seconds: float, size: int) -> None:
        if self._metrics is not None:
            self._metrics.committed(seconds, size)
        self.batches += 1
        self.ops += size

    async def _emit_applied(self, ops: Sequence[WriteOp], results: Sequence[Any]) -> None:
        """Emit the events of the ops that applied (after their commit)."""
        events, found = _applied_events(ops, results)
        if found:
            self._ended(found)
            events.extend(await self._with_data(found) if self.hooked() else found)
        if events:
            self._emit(events)

    def settle(
        self,
        ops: Sequence[WriteOp],
        results: Sequence[Any],
        seconds: float,
        thens: Sequence[tuple[Callable[[Any], None], Any]],
        *,
        count: bool = True,
    ) -> None:
        """On the loop, after a commit made in a caller's thread
        (:class:`~abi_engine.runtime.thread_commit.ThreadCommits`): count it (unless
        ``count`` is false: it carried a batch of this committer, counted already), emit
        its events, then call each ``then(result)`` whose op did not fail."""
        if count:
            self._count(seconds, len(ops))
        else:
            self.ops += len(ops)
        events, found = _applied_events(ops, results)
        if found and self.hooked():  # the events need their data, read back: a task
            task = asyncio.get_running_loop().create_task(self._settle_later(ops, results, thens))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            return
        if found:
            self._ended(found)
            events.extend(found)
        if events:
            self._emit(events)
        _call_thens(thens)

    async def _settle_later(
        self,
        ops: Sequence[WriteOp],
        results: Sequence[Any],
        thens: Sequence[tuple[Callable[[Any], None], Any]],
    ) -> None:
        try:
            await self._emit_applied(ops, results)
        finally:
            _call_thens(thens)

    async def _with_data(self, found: Sequence[OutboxEvent]) -> list[OutboxEvent]:
        """The store's found events with their data, as ``abi_event`` hooks hear events
        (read back once committed: a skipped execution never changes again)."""
        built: list[OutboxEvent] = []
        for event in found:
            if not isinstance(event, ExecutionEventRef):
                built.append(event)
                continue
            get = partial(self._store.get_execution, event.execution_id)
            record = await anyio.to_thread.run_sync(get) if self._store.blocking else get()
            if record is not None:
                data = execution_json(build_execution(record, []))
                built.append(Event(type=event.type, data=data, timestamp=event.timestamp))
        return built

    def _ended(self, found: Sequence[OutboxEvent]) -> None:
        """Tell :attr:`on_ended` of the executions the store ended while applying an op."""
        if self.on_ended is not None:
            for event in found:
                if isinstance(event, ExecutionEventRef):
                    self.on_ended(event.execution_id, None)

    async def _flush(self, batch: _Batch) -> None:
        results: list[Any] = []
        for start in range(0, len(batch.ops), self._max_batch):
            results.extend(await self._safe_apply(batch.ops[start : start + self._max_batch]))
        for index, then in batch.thens:
            if not isinstance(results[index], BaseException):
                _call_then(then, results[index])
        batch.answer(results)

    async def _flush_pending(self) -> None:
        """Write the pending batches one after the other (after those in flight)."""
        await self._wait_writing(lambda: bool(self._writing))
        while self._pending:
            batch = self._pending.popleft()
            if batch.ops:
                self.most_in_flight = max(self.most_in_flight, 1)
                # Out of the queue, it must be written and answered: a cancellation
                # arriving now (the engine stopping) waits for it.
                with anyio.CancelScope(shield=True):
                    await self._flush(batch)

    async def _start_pending(self, tg: TaskGroup) -> None:
        """Start writing the pending batches, in order, as room in flight allows.

        The oldest pending batch starts once fewer than ``in_flight`` batches are
        being written and none of them writes an execution it writes; while it
        waits, new ops still join it.
        """
        while self._pending:
            batch = self._pending[0]
            if not batch.ops:
                self._pending.popleft()
                continue
            await self._wait_writing(partial(self._must_wait, batch))
            if self._pending and self._pending[0] is batch:
                self._pending.popleft()
                self._writing.append(batch)
                self.most_in_flight = max(self.most_in_flight, len(self._writing))
                tg.start_soon(self._write_in_flight, batch)

    def _must_wait(self, batch: _Batch) -> bool:
        """Whether ``batch`` may not start yet: no room in flight, fewer than
        ``OVERLAP_MIN`` ops while another batch is being written, or a batch in
        flight writes one of its executions."""
        if not self._writing:
            return False
        if len(self._writing) >= self._in_flight_limit or len(batch.ops) < self._overlap_min:
            return True
        return any(batch.conflicts(other) for other in self._writing)

    def _signal_change(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def _wait_writing(self, busy: Callable[[], bool]) -> None:
        """Wait until ``busy()`` is false, re-checked whenever a batch in flight ends."""
        while busy():
            await self._changed.wait()

    async def _write_in_flight(self, batch: _Batch) -> None:
        try:
            with anyio.CancelScope(shield=True):  # started, it is written and answered
                await self._flush(batch)
        finally:
            self._writing.remove(batch)
            self._signal_change()

    async def _safe_apply(self, ops: list[WriteOp]) -> list[Any]:
        try:
            results = await self._apply(ops)
        except Exception as exc:  # the store itself failed (disk full, closed, unreachable)
            # Each op's caller gets the exception and decides (the runtime retries);
            # a streak of failures is logged once, with the first one's traceback.
            self._failures += 1
            if self._failures == 1:
                log.warning("group commit failed; the writers retry", exc_info=True)
            return [exc for _ in ops]
        if self._failures:
            log.warning("group commit works again after %d failed batches", self._failures)
            self._failures = 0
        return results

    async def _gather(self) -> None:
        """Before a batch is written: when other tasks are ready to run now (steps that
        just ended, callers just answered), let them run first, so the writes they are
        about to make join this commit instead of waiting for the next one (one turn of
        the loop; none when nothing else is ready, so a lone write is not delayed)."""
        try:
            ready = getattr(asyncio.get_running_loop(), "_ready", None)
        except RuntimeError:  # not on asyncio
            return
        if ready:
            await anyio.lowlevel.checkpoint()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop; runs until cancelled, then flushes what is pending."""
        # Events of this loop (a restarted engine may run on another one).
        self._wakeup, self._changed = anyio.Event(), anyio.Event()
        self._woken = False
        if self._pending:
            self._wake()
        self._loop = _asyncio_loop()
        self._running = True
        task_status.started()
        try:
            if self._in_flight_limit == 1:
                while True:
                    await self._wakeup.wait()
                    await self._gather()
                    self._wakeup, self._woken = anyio.Event(), False
                    await self._flush_pending()
            async with anyio.create_task_group() as tg:
                while True:
                    await self._wakeup.wait()
                    await self._gather()
                    self._wakeup, self._woken = anyio.Event(), False
                    await self._start_pending(tg)
        finally:
            with anyio.CancelScope(shield=True):
                self._running = False
                self._loop = None
                await self._flush_pending()


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop (``None`` on another backend: waiters use events)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _applied_events(
    ops: Sequence[WriteOp], results: Sequence[Any]
) -> tuple[list[OutboxEvent], list[OutboxEvent]]:
    """The events of the ops that applied, and the events the store found while applying."""
    events: list[OutboxEvent] = []
    found: list[OutboxEvent] = []
    for op, result in zip(ops, results, strict=True):
        # AGAIN: applied by an earlier attempt whose answer was lost, before the hooks
        # saw its events (the store wrote them to the outbox then, not again now).
        if (op.events or op.found) and (applied(result) or result is AGAIN):
            events.extend(op.events)
            found.extend(op.found)
    return events, found


def _call_thens(thens: Sequence[tuple[Callable[[Any], None], Any]]) -> None:
    for then, result in thens:
        if not isinstance(result, BaseException):
            _call_then(then, result)


def _call_then(then: Callable[[Any], None], result: Any) -> None:
    try:
        then(result)
    except Exception:
        log.exception("a commit's follow-up failed")
