"""Commits made in a synchronous caller's own thread (issue #18, the synchronous door).

A host thread calling ``engine.call(engine.executions.execute, ..., wait=False)``
used to hand its insert to the event loop and wait for the group committer's
answer: two thread wake-ups and several loop turns per acceptance, and, with one
caller waiting for each answer, a commit that grouped nothing.
:class:`ThreadCommits` lets the calling thread apply the write itself through the
store, which serializes it with the committer's batches under its own write lock
(SQLite) or runs it on a connection of its own (PostgreSQL). Threads calling at
once share commits (leader and followers: while one thread commits, the others
queue their ops; the next to take the lead commits all of them in one
transaction). The promise is unchanged: the caller is answered only once its
write is committed at the engine's durability.

What must follow a commit on the event loop (counting it, emitting its events,
handing a stored execution to the runtime) is posted to the loop without waiting
for it (``loop.call_soon_threadsafe``), once per commit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from abi_engine.errors import AbiError, EngineNotRunning, InternalError
from abi_engine.runtime.checkpoints import COMMIT_RETRY_SECONDS
from abi_engine.runtime.execution import one_line
from abi_engine.storage.base import Store
from abi_engine.storage.records import WriteOp

if TYPE_CHECKING:
    from abi_engine.runtime.commit import GroupCommitter

__all__ = ["ThreadCommits"]

log = logging.getLogger("abi_engine.commit")


class _Slot:
    """Ops waiting for the commit that carries them: one caller's op (``posted``: the
    commit is settled on the loop by :class:`ThreadCommits`), or a batch of the
    group committer, which settles it itself."""

    __slots__ = ("done", "error", "ops", "posted", "results", "then")

    def __init__(
        self, ops: Sequence[WriteOp], then: Callable[[Any], None] | None, *, posted: bool
    ) -> None:
        self.ops = ops
        self.then = then
        self.posted = posted
        self.done = False
        self.results: list[Any] = []
        #: The store failed as a whole (no op's result is known).
        self.error: Exception | None = None


class ThreadCommits:
    """Applies ops in the threads that submit them, grouped while one commit runs.

    :param store: where ops are applied (``store.apply``, safe from any thread).
    :param committer: the engine's group committer, which counts the commits and
        emits their events on the loop (:meth:`GroupCommitter.settle`).
    :param refresh: an op as it is retried (a fresh lease).
    """

    def __init__(
        self, store: Store, committer: GroupCommitter, refresh: Callable[[WriteOp], WriteOp]
    ) -> None:
        self._store = store
        self._committer = committer
        self._refresh = refresh
        self._queue_lock = threading.Lock()
        #: Waited on by callers whose ops are queued while a commit runs (``_leading``):
        #: told when it ends, each either has its answer or leads the next commit.
        self._turn = threading.Condition(self._queue_lock)
        self._leading = False
        #: Threads waiting on ``_turn`` (none: a commit's end notifies nobody).
        self._waiting = 0
        self._pending: list[_Slot] = []
        #: Commits made but not yet settled on the loop, and whether a drain is scheduled.
        self._settle: list[tuple[list[WriteOp], list[Any], float, list[Any], bool]] = []
        self._waking = False
        #: The loop the follow-ups of commits run on (set while the runtime runs).
        self.loop: asyncio.AbstractEventLoop | None = None
        if getattr(store, "commits_in_thread", False) and not store.blocking:
            # A SQLite file at durability="full": the group committer's batches, written
            # from its worker thread, share the callers' transactions (one fsync for all).
            # At "normal" they stay on the loop: blocked there by a caller's commit now and
            # then, the loop fills bigger batches (waiting instead cost 16% more
            # instructions and 1.6x the commits per execution, measured).
            committer.thread_apply = self.apply_batch

    def start(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Settle commits on ``loop`` from now on (``None``: the engine stops; a caller
        then gets ``EngineNotRunning``). The follow-ups of commits not settled yet are
        called now, on the stopping runtime: they let go of their queue places and hold
        their executions, which the engine's release then hands back.

        A commit under way finishes first (its follow-ups are among those called), and
        none starts after a stop: a caller's insert committed after the unsettled ones
        were called would hold its execution past the release, owned until its lease ran
        out."""
        with self._turn:
            while self._leading:
                self._wait_turn()
            self.loop = loop
            unsettled, self._settle = self._settle, []
            self._waking = False
        for _ops, _results, _elapsed, thens, _count in unsettled:
            for then, result in thens:
                if isinstance(result, BaseException):
                    continue
                try:
                    then(result)
                except Exception:
                    log.exception("a commit's follow-up failed")

    def commit(
        self,
        op: WriteOp,
        *,
        execution_id: str | None = None,
        then: Callable[[Any], None] | None = None,
    ) -> Any:
        """:meth:`Runtime.commit` from a caller's thread: commit ``op`` here, retrying a
        store that fails for a few seconds; its result, or its exception raised."""
        delay = 0.05
        give_up = time.monotonic() + COMMIT_RETRY_SECONDS
        while True:
            result = self.apply(op, then)
            if not isinstance(result, Exception):
                return result
            if isinstance(result, TypeError | ValueError | AbiError):
                raise result
            if time.monotonic() + delay > give_up:
                log.warning("%s failed for good (%s)", type(op).__name__, one_line(result))
                raise InternalError(
                    "The database did not answer; the change may or may not have been made"
                    + (f" (look up execution {execution_id})" if execution_id else ""),
                    {} if execution_id is None else {"execution_id": execution_id},
                ) from None
            time.sleep(delay)  # this caller's own thread: nothing else waits on it
            delay = min(delay * 2, 1.0)
            op = self._refresh(op)

    def apply(self, op: WriteOp, then: Callable[[Any], None] | None = None) -> Any:
        """Commit ``op`` now, from this thread; its result (an exception is returned,
        not raised). ``then(result)`` runs on the loop after the commit, unless the op
        failed (see :meth:`GroupCommitter.submit`)."""
        if self.loop is None:
            raise EngineNotRunning("The engine is not running", {"engine": "not_running"})
        slot = self._join(_Slot((op,), then, posted=True))
        return slot.error if slot.error is not None else slot.results[0]

    def apply_batch(self, ops: Sequence[WriteOp]) -> list[Any]:
        """``store.apply(ops)`` for the group committer's worker thread: its batch shares
        the transaction (and the fsync) of the callers' ops committed with it."""
        slot = self._join(_Slot(ops, None, posted=False))
        if slot.error is not None:
            raise slot.error
        return slot.results

    def _join(self, slot: _Slot) -> _Slot:
        """Commit ``slot`` with whatever else is queued: while a commit runs, wait for it
        to end (it may carry this slot, which is then answered at once); else lead the
        next commit, of every op queued by then."""
        with self._queue_lock:  # (``_turn``'s lock: a Condition's ``with`` is Python code)
            self._pending.append(slot)
            while self._leading and not slot.done:
                self._wait_turn()
            if slot.done:  # carried by the commit that just ended
                return slot
            self._leading = True
            batch, self._pending = self._pending, []
            stopped = self.loop is None
        try:
            if stopped:  # since the call began: commit none of the callers' ops
                batch = self._refuse(batch)  # (their follow-ups would be lost)
            if batch:
                self._write(batch)
        finally:
            with self._queue_lock:
                self._leading = False
                if self._waiting:
                    self._turn.notify_all()
        return slot

    def _wait_turn(self) -> None:
        """Wait for the end of the commit under way (``_turn`` held)."""
        self._waiting += 1
        try:
            self._turn.wait()
        finally:
            self._waiting -= 1

    @staticmethod
    def _refuse(batch: list[_Slot]) -> list[_Slot]:
        """Answer the callers' slots of ``batch`` ``EngineNotRunning``; the rest (the
        group committer's own batches, settled by it)."""
        for slot in batch:
            if slot.posted:
                slot.error = EngineNotRunning(
                    "The engine is not running", {"engine": "not_running"}
                )
                slot.done = True
        return [slot for slot in batch if not slot.posted]

    def _write(self, batch: list[_Slot]) -> None:
        ops = batch[0].ops if len(batch) == 1 else [op for slot in batch for op in slot.ops]
        clock = time.perf_counter()
        try:
            results = self._store.apply(ops)
        except Exception as exc:  # the store itself failed: every op's caller decides
            for slot in batch:
                slot.error = exc
                slot.done = True
            return
        elapsed = time.perf_counter() - clock
        start = 0
        for slot in batch:
            slot.results = results[start : start + len(slot.ops)]
            start += len(slot.ops)
            slot.done = True
        posted = [slot for slot in batch if slot.posted]
        if posted:
            # A commit carrying a batch of the group committer is counted by it.
            self._post(posted, elapsed, count=len(posted) == len(batch))

    def _post(self, posted: list[_Slot], elapsed: float, *, count: bool) -> None:
        """Have the loop settle the callers' ops of a commit (one wake-up for all the
        commits made while the loop was busy)."""
        if len(posted) == 1:  # (one caller's commit: the lists without comprehensions)
            one = posted[0]
            ops, results = list(one.ops), one.results
            thens = [] if one.then is None else [(one.then, one.results[0])]
        else:
            ops = [op for slot in posted for op in slot.ops]
            results = [result for slot in posted for result in slot.results]
            thens = [(slot.then, slot.results[0]) for slot in posted if slot.then is not None]
        with self._queue_lock:
            self._settle.append((ops, results, elapsed, thens, count))
            wake, self._waking = not self._waking, True
        loop = self.loop
        if wake and loop is not None:  # else the loop has a drain scheduled already
            try:  # (not contextlib.suppress: three Python calls)
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # a closed loop: the engine stopped
                return

    def _drain(self) -> None:
        """On the loop: settle every commit made in callers' threads since the last drain
        (one wake-up of the loop for all the commits made while it was busy)."""
        with self._queue_lock:
            settle, self._settle = self._settle, []
            self._waking = False
        for ops, results, elapsed, thens, count in settle:
            self._committer.settle(ops, results, elapsed, thens, count=count)
