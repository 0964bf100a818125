"""What a batch of the group committer holds, what its ops touch, who writes it.

:class:`Batch` is the ops of one transaction of
:class:`~abi_engine.runtime.commit.GroupCommitter`, their results and whoever waits
for them; :func:`op_keys` names the executions an op writes (batches in flight
together must not share one); the helpers hand out a commit's events and follow-ups;
:class:`Appliers` are the threads that write batches off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio

from abi_engine.events import OutboxEvent
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

__all__ = ["Appliers", "Batch", "applied_events", "call_then", "call_thens", "op_keys"]

log = logging.getLogger("abi_engine.commit")


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


class Batch:
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

    def conflicts(self, other: Batch) -> bool:
        """Whether this batch must wait for ``other`` (in flight) to end first."""
        if self.keys is None or other.keys is None:
            return True
        return not self.keys.isdisjoint(other.keys)


def applied_events(
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


def call_thens(thens: Sequence[tuple[Callable[[Any], None], Any]]) -> None:
    for then, result in thens:
        if not isinstance(result, BaseException):
            call_then(then, result)


def call_then(then: Callable[[Any], None], result: Any) -> None:
    try:
        then(result)
    except Exception:
        log.exception("a commit's follow-up failed")


class Appliers:
    """Threads of the group committer's own that apply its batches (as many as batches
    may be written at once), started when first needed and stopped with the writer.

    What ``anyio.to_thread.run_sync`` does for a batch, without its costs on the loop
    per call (a capacity limiter, a cancel scope, a search for the root task, a copy of
    the context): here a batch is handed over with one queue put and answered with one
    ``call_soon_threadsafe``. Awaiting :meth:`run` is not cancellable: the caller
    shields it (a batch handed to a thread is written and answered).
    """

    def __init__(self, threads: int, name: str = "abi-engine-commit") -> None:
        self._size = threads
        self._name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in one of the threads; its result, or its exception raised."""
        if not self._threads:
            self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fn, loop, future))
        return await future

    def _start(self) -> None:
        for n in range(self._size):
            thread = threading.Thread(target=self._serve, name=f"{self._name}-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Let the threads end once they have applied what they were given."""
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, loop, future = item
            try:
                answer: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:  # handed to the caller, raised there
                answer = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, future, *answer)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
