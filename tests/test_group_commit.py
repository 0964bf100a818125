"""The group committer: bounded batches, answered one after the other, nothing lost at shutdown."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
import pytest

from abi_engine.events import OutboxEvent
from abi_engine.runtime.commit import GroupCommitter
from abi_engine.storage.records import WriteOp

pytestmark = pytest.mark.anyio


@attrs.frozen(kw_only=True)
class Echo(WriteOp):
    """Applies to ``value``, or raises it when it is an exception."""

    value: Any


class RecordingStore:
    """Applies :class:`Echo` ops and records each transaction's ops (the committer's view of a store)."""

    def __init__(self, *, blocking: bool = False) -> None:
        self.blocking = blocking
        self.applied: list[list[Any]] = []
        self.gate: threading.Event | None = None
        self.second = threading.Event()  # set when the second transaction starts

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        values = [op.value for op in ops]  # type: ignore[attr-defined]
        self.applied.append(values)
        if len(self.applied) == 2:
            self.second.set()
        if self.gate is not None and len(self.applied) == 2:
            assert self.gate.wait(10), (
                "the first batch was not answered while the second was written"
            )
        return [v if isinstance(v, Exception) else v * 10 for v in values]


def _committer(store: RecordingStore, max_batch: int) -> tuple[GroupCommitter, list[Any]]:
    emitted: list[Any] = []

    def emit(events: Any) -> None:
        emitted.extend(events)

    return GroupCommitter(store, emit, max_batch=max_batch), emitted  # type: ignore[arg-type]


async def test_batches_are_bounded_and_each_submitter_gets_its_result() -> None:
    """Ten concurrent submits with max_batch 3: no transaction holds more than 3; results match."""
    store = RecordingStore()
    committer, _ = _committer(store, 3)
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await committer.submit(Echo(value=i))

    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            for i in range(10):
                submitters.start_soon(one, i)
        tg.cancel_scope.cancel()
    assert results == {i: i * 10 for i in range(10)}
    assert sorted(v for batch in store.applied for v in batch) == list(range(10))
    assert max(len(batch) for batch in store.applied) <= 3
    assert committer.ops == 10


async def test_a_batch_is_answered_while_the_next_one_is_written() -> None:
    """With a blocking store, the first batch's submitters resume while the second batch is in the thread."""
    store = RecordingStore(blocking=True)
    store.gate = threading.Event()
    committer, _ = _committer(store, 2)
    first_done = anyio.Event()

    async def first(i: int) -> None:
        assert await committer.submit(Echo(value=i)) == i * 10
        if i == 1:
            first_done.set()

    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            for i in range(4):  # ops 0, 1 fill the first batch, 2, 3 the second
                submitters.start_soon(first, i)
            await first_done.wait()
            store.gate.set()  # only now may the second transaction end
        tg.cancel_scope.cancel()
    assert store.applied == [[0, 1], [2, 3]]


async def test_submit_many_keeps_order_across_transactions() -> None:
    """submit_many with more ops than max_batch: applied in chunks, results in the order given."""
    store = RecordingStore()
    committer, _ = _committer(store, 4)
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        results = await committer.submit_many([Echo(value=i) for i in range(10)])
        tg.cancel_scope.cancel()
    assert results == [i * 10 for i in range(10)]
    assert [len(batch) for batch in store.applied] == [4, 4, 2]


async def test_an_op_failure_reaches_only_its_submitter() -> None:
    """An op whose result is an exception raises in its own submitter; the others get their results."""
    store = RecordingStore()
    committer, _ = _committer(store, 10)
    outcomes: dict[int, Any] = {}

    async def one(i: int) -> None:
        try:
            outcomes[i] = await committer.submit(Echo(value=ValueError("bad") if i == 2 else i))
        except ValueError as exc:
            outcomes[i] = str(exc)

    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            for i in range(4):
                submitters.start_soon(one, i)
        tg.cancel_scope.cancel()
    assert outcomes == {0: 0, 1: 10, 2: "bad", 3: 30}


async def test_events_of_applied_ops_are_emitted() -> None:
    """Events of ops that applied are handed to ``emit`` after the commit; a failed op's are not."""
    store = RecordingStore()
    committer, emitted = _committer(store, 10)
    good: OutboxEvent = object()  # type: ignore[assignment]
    bad: OutboxEvent = object()  # type: ignore[assignment]
    results = await committer.submit_many(
        [Echo(value=1, events=(good,)), Echo(value=ValueError("no"), events=(bad,))]
    )
    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert emitted == [good]


async def test_pending_ops_are_written_when_the_writer_stops() -> None:
    """Ops queued but not yet written when the writer is cancelled are applied, and answered."""
    store = RecordingStore()
    committer, _ = _committer(store, 2)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await committer.submit(Echo(value=i)))

    async with anyio.create_task_group() as submitters, anyio.create_task_group() as writer:
        await writer.start(committer.run)
        for i in range(5):
            submitters.start_soon(one, i)
        await anyio.lowlevel.checkpoint()  # the submits are queued, the writer not yet run
        assert store.applied == []
        writer.cancel_scope.cancel()
    assert sorted(results) == [0, 10, 20, 30, 40]
    assert [len(batch) for batch in store.applied] == [2, 2, 1]


async def test_stopping_while_a_batch_is_written_in_a_thread_loses_no_batch() -> None:
    """Cancelled while a blocking store writes one batch, the writer still writes and answers the rest."""
    store = RecordingStore(blocking=True)
    store.gate = threading.Event()
    committer, _ = _committer(store, 1)
    results: list[Any] = []

    async def one(i: int) -> None:
        results.append(await committer.submit(Echo(value=i)))

    with anyio.fail_after(10):  # a lost batch would leave its submitter waiting forever
        async with anyio.create_task_group() as submitters, anyio.create_task_group() as writer:
            await writer.start(committer.run)
            for i in range(4):
                submitters.start_soon(one, i)
            # the second batch is in the thread, held by the gate
            assert await anyio.to_thread.run_sync(store.second.wait, 10)
            writer.cancel_scope.cancel()
            store.gate.set()
    assert sorted(results) == [0, 10, 20, 30]
    assert store.applied == [[0], [1], [2], [3]]


def test_max_batch_must_be_positive() -> None:
    """max_batch below 1 is refused."""
    with pytest.raises(ValueError, match="max_batch"):
        _committer(RecordingStore(), 0)


@pytest.mark.anyio
async def test_then_runs_at_the_commit_even_when_the_caller_was_cancelled(tmp_path: Path) -> None:
    """``submit(op, then=...)``: the follow-up runs with the op's result when its batch
    commits, even though the task that submitted it was cancelled while it waited."""
    from abi_engine.runtime.commit import GroupCommitter
    from abi_engine.storage import SQLiteStore
    from abi_engine.storage.records import InsertEvents

    store = SQLiteStore(tmp_path / "t.db")
    seen: list[object] = []
    called = anyio.Event()

    def then(result: object) -> None:
        seen.append(result)
        called.set()

    committer = GroupCommitter(store, lambda events: None)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            with anyio.CancelScope() as scope:
                scope.cancel()  # cancelled at its first wait: the commit's
                await committer.submit(InsertEvents(), then=then)
            with anyio.fail_after(30):
                await called.wait()
            tg.cancel_scope.cancel()
    finally:
        store.close()
    assert seen == [True]


async def test_writes_of_tasks_ready_at_the_wakeup_join_the_same_commit() -> None:
    """A task that is ready to run when the writer wakes (it yielded once after the
    first submit) gets its write into the same transaction; a lone write is flushed
    without waiting for anything."""
    store = RecordingStore()
    committer, _ = _committer(store, 100)
    results: list[Any] = []

    async def first() -> None:
        results.append(await committer.submit(Echo(value=1)))

    async def second() -> None:
        await anyio.lowlevel.checkpoint()  # still ready when the writer wakes up
        results.append(await committer.submit(Echo(value=2)))

    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            submitters.start_soon(first)
            submitters.start_soon(second)
        assert store.applied == [[1, 2]]
        with anyio.fail_after(10):
            assert await committer.submit(Echo(value=3)) == 30
        tg.cancel_scope.cancel()
    assert sorted(results) == [10, 20]
    assert store.applied == [[1, 2], [3]]
