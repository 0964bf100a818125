"""Two batches in flight (issue #18): the group committer hands a store that writes
concurrent transactions (PostgreSQL: ``batches_in_flight = 2``) more than one batch at
a time, and still applies the ops of each execution in the order they were submitted.

A fake blocking store records what each transaction held and which ones overlapped;
hypothesis drives random submissions (executions, a barrier op, failing
transactions) and random transaction times.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_plugins.helpers import (
    TERMINAL,
    DatabaseFactory,
    engines,
    fast,
    new_workflow,
    wait_status,
)

from abi_engine import ExecutionStatus, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidRequest
from abi_engine.ids import new_id
from abi_engine.runtime.commit import GroupCommitter, op_keys
from abi_engine.storage import Store
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    InsertEvents,
    InsertExecution,
    ReleaseExecutions,
    StepRecord,
    WriteOp,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _claim(execution_id: str, n: int) -> ClaimExecution:
    """An op on ``execution_id``; ``token`` numbers it (the fake store answers it)."""
    return ClaimExecution(
        execution_id=execution_id, grant=0, token=n, owner="n", lease_until=T0, started_at=T0
    )


def _number(op: WriteOp, barriers: dict[int, int]) -> int:
    return op.token if isinstance(op, ClaimExecution) else barriers[id(op)]


class ConcurrentStore:
    """A blocking store writing up to ``batches_in_flight`` transactions at once.

    Each transaction takes ``delays[k]`` seconds (the k-th transaction), fails as a
    whole when it holds an op numbered in ``failing``, and is checked against the
    ones running at the same time: none may share an execution with it, and one
    whose executions are unknown runs alone.
    """

    blocking = True

    def __init__(self, in_flight: int, delays: Sequence[float], failing: set[int]) -> None:
        self.batches_in_flight = in_flight
        self.delays = list(delays)
        self.failing = failing
        self.lock = threading.Lock()
        self.running: list[set[str] | None] = []
        self.most_at_once = 0
        self.violations: list[str] = []
        #: Per execution, the numbers of its ops in the order their transactions ended.
        self.committed: dict[str, list[int]] = {}
        self.transactions = 0
        #: The op numbers of each transaction that failed.
        self.failed: list[list[int]] = []
        self.barriers: dict[int, int] = {}

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        keys: set[str] | None = set()
        for op in ops:
            found = op_keys(op)
            keys = None if keys is None or found is None else keys | set(found)
        with self.lock:
            for other in self.running:
                if keys is None or other is None or not keys.isdisjoint(other):
                    self.violations.append(f"{keys} overlapped {other}")
            self.running.append(keys)
            self.most_at_once = max(self.most_at_once, len(self.running))
            delay = self.delays[self.transactions % len(self.delays)]
            self.transactions += 1
        try:
            time.sleep(delay)
            numbers = [_number(op, self.barriers) for op in ops]
            if self.failing.intersection(numbers):
                with self.lock:
                    self.failed.append(numbers)
                raise ConnectionError("the connection broke mid-batch")
            with self.lock:
                for op, n in zip(ops, numbers, strict=True):
                    for key in op_keys(op) or ():
                        self.committed.setdefault(key, []).append(n)
            return [n * 10 for n in numbers]
        finally:
            with self.lock:
                self.running.remove(keys)


# A submission: the execution its op writes (None: a barrier), whether it fails, and
# whether the submitter yields to the event loop before the next submission.
_SUBMISSION = st.tuples(
    st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d", "e"])),
    st.integers(0, 9).map(lambda n: n == 0),
    st.booleans(),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    submissions=st.lists(_SUBMISSION, min_size=1, max_size=40),
    delays=st.lists(st.sampled_from([0.0, 0.0005, 0.002, 0.005]), min_size=1, max_size=6),
    in_flight=st.sampled_from([1, 2, 3]),
    max_batch=st.sampled_from([1, 3, 1000]),
    overlap_min=st.sampled_from([1, 2, 32]),
)
def test_ops_of_an_execution_apply_in_submission_order(
    submissions: list[tuple[str | None, bool, bool]],
    delays: list[float],
    in_flight: int,
    max_batch: int,
    overlap_min: int,
) -> None:
    """Whatever the timing, each submitter gets its own op's answer (or its batch's
    failure), transactions never overlap on an execution, at most ``in_flight`` run at
    once, and each execution's ops commit in the order they were submitted."""
    failing = {n for n, (_, fails, _) in enumerate(submissions) if fails}
    store = ConcurrentStore(in_flight, delays, failing)
    answers: dict[int, Any] = {}

    async def main() -> None:
        committer = GroupCommitter(
            store,  # type: ignore[arg-type]
            lambda events: None,
            max_batch=max_batch,
            overlap_min=overlap_min,
        )

        async def submit(n: int, op: WriteOp) -> None:
            try:
                answers[n] = await committer.submit(op)
            except ConnectionError as exc:
                answers[n] = exc

        async with anyio.create_task_group() as tg:
            await tg.start(committer.run)
            async with anyio.create_task_group() as submitters:
                for n, (key, _, yields) in enumerate(submissions):
                    op: WriteOp = _claim(key, n) if key is not None else InsertEvents()
                    if key is None:
                        store.barriers[id(op)] = n
                    submitters.start_soon(submit, n, op)
                    if yields:
                        await anyio.lowlevel.checkpoint()
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert store.violations == []
    assert store.most_at_once <= in_flight
    assert sorted(answers) == list(range(len(submissions)))
    failed = {n for numbers in store.failed for n in numbers}
    assert all(failing.intersection(numbers) for numbers in store.failed)
    for n, answer in answers.items():
        if n in failed:  # a failing op's whole transaction failed, and only that one
            assert isinstance(answer, ConnectionError), (n, answer)
        else:
            assert answer == n * 10, (n, answer)
    for key, numbers in store.committed.items():
        assert numbers == sorted(numbers), (key, numbers)
        expected = [
            n
            for n, (k, _, _) in enumerate(submissions)
            if k == key and not isinstance(answers[n], ConnectionError)
        ]
        assert numbers == expected, (key, numbers, expected)


async def test_two_batches_on_other_executions_are_written_at_once() -> None:
    """With ``batches_in_flight = 2`` the second batch starts while the first is still
    being written (the first waits until it does), and both are answered."""
    second_started = threading.Event()
    seen: list[list[str]] = []

    class Store:
        blocking = True
        batches_in_flight = 2

        def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
            ids = [op.execution_id for op in ops]  # type: ignore[attr-defined]
            seen.append(ids)
            if len(seen) == 1:
                assert second_started.wait(10), "the second batch waited for the first"
            else:
                second_started.set()
            return [True] * len(ops)

    committer = GroupCommitter(Store(), lambda events: None, overlap_min=1)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        first = [_claim("a", 1)]
        async with anyio.create_task_group() as submitters:
            submitters.start_soon(committer.submit_many, first)
            await anyio.sleep(0.01)  # the first batch is being written
            assert await committer.submit(_claim("b", 2)) is True
        tg.cancel_scope.cancel()
    assert seen == [["a"], ["b"]]


async def test_a_small_batch_waits_for_the_one_in_flight_until_it_has_overlap_min_ops() -> None:
    """Beside a batch being written, the next one starts only once it holds
    ``overlap_min`` ops (a transaction of its own for one op costs more than it saves);
    reaching that many starts it at once, before the first batch ends."""
    release = threading.Event()
    sizes: list[int] = []

    class Store:
        blocking = True
        batches_in_flight = 2

        def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
            sizes.append(len(ops))
            if len(sizes) == 1:
                assert release.wait(10)
            return [True] * len(ops)

    committer = GroupCommitter(Store(), lambda events: None, overlap_min=3)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            submitters.start_soon(committer.submit, _claim("a", 1))
            with anyio.fail_after(10):  # a's batch is being written (alone)
                while not sizes:  # noqa: ASYNC110 - the writer thread appends
                    await anyio.sleep(0.01)
            submitters.start_soon(committer.submit, _claim("b", 2))
            submitters.start_soon(committer.submit, _claim("c", 3))
            await anyio.sleep(0.2)
            assert sizes == [1]  # two ops: not yet
            submitters.start_soon(committer.submit, _claim("d", 4))
            with anyio.fail_after(10):
                while len(sizes) < 2:  # noqa: ASYNC110 - the writer thread appends
                    await anyio.sleep(0.01)
            assert sizes == [1, 3]  # started beside the first, still being written
            release.set()
        tg.cancel_scope.cancel()
    assert committer.most_in_flight == 2


async def test_a_batch_on_the_same_execution_waits_for_the_one_in_flight() -> None:
    """The second op of an execution is not written while its first op's batch is: it
    starts once that one has ended, and ops of other executions submitted after it
    wait behind it (batches start in order)."""
    release = threading.Event()
    log: list[str] = []

    class Store:
        blocking = True
        batches_in_flight = 2

        def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
            names = ",".join(f"{op.execution_id}{op.token}" for op in ops)  # type: ignore[attr-defined]
            log.append(f"start {names}")
            if names == "a1":
                assert release.wait(10)
            log.append(f"end {names}")
            return [True] * len(ops)

    committer = GroupCommitter(Store(), lambda events: None, overlap_min=1)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            submitters.start_soon(committer.submit, _claim("a", 1))
            with anyio.fail_after(10):  # a1's batch is being written (alone)
                while not log:  # noqa: ASYNC110 - the writer thread appends
                    await anyio.sleep(0.01)
            submitters.start_soon(committer.submit, _claim("a", 2))
            submitters.start_soon(committer.submit, _claim("b", 3))
            await anyio.sleep(0.2)  # nothing else may start meanwhile
            assert log == ["start a1"]
            release.set()
        tg.cancel_scope.cancel()
    assert log == ["start a1", "end a1", "start a2,b3", "end a2,b3"]


async def test_a_failing_batch_fails_alone_while_another_is_in_flight() -> None:
    """The store failing in one transaction (a broken connection mid-batch) answers
    that batch's ops with the error; the batch in flight beside it is answered with its
    results, and the next batch of the failed execution is written."""
    both = threading.Barrier(2, timeout=10)

    class Store:
        blocking = True
        batches_in_flight = 2

        def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
            tokens = {op.token for op in ops}  # type: ignore[attr-defined]
            if tokens in ({1}, {2}):
                both.wait()  # the two first batches are in flight together
            if tokens == {1}:
                raise ConnectionError("connection lost")
            return [op.token * 10 for op in ops]  # type: ignore[attr-defined]

    committer = GroupCommitter(Store(), lambda events: None, overlap_min=1)  # type: ignore[arg-type]
    answers: dict[str, Any] = {}

    async def submit(name: str, op: WriteOp) -> None:
        try:
            answers[name] = await committer.submit(op)
        except ConnectionError as exc:
            answers[name] = exc

    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        async with anyio.create_task_group() as submitters:
            submitters.start_soon(submit, "a1", _claim("a", 1))
            await anyio.sleep(0.01)
            submitters.start_soon(submit, "b2", _claim("b", 2))
        await submit("a3", _claim("a", 3))
        tg.cancel_scope.cancel()
    assert isinstance(answers["a1"], ConnectionError)
    assert answers["b2"] == 20
    assert answers["a3"] == 30


async def test_stopping_writes_the_batches_in_flight_and_the_pending_ones() -> None:
    """Cancelled with batches in flight and more pending, the committer answers every
    op before it returns: nothing submitted is lost."""

    class Store:
        blocking = True
        batches_in_flight = 2

        def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
            time.sleep(0.02)
            return [op.token for op in ops]  # type: ignore[attr-defined]

    committer = GroupCommitter(Store(), lambda events: None, max_batch=2, overlap_min=1)  # type: ignore[arg-type]
    answers: dict[int, Any] = {}

    async def submit(n: int) -> None:
        answers[n] = await committer.submit(_claim(f"x{n % 3}", n))

    async with anyio.create_task_group() as outer, anyio.create_task_group() as tg:
        await tg.start(committer.run)
        for n in range(12):
            outer.start_soon(submit, n)
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()  # the writer stops with work in flight
    assert answers == {n: n for n in range(12)}


def test_op_keys_name_the_executions_written() -> None:
    step = StepRecord(execution_id="e1", index=0, name="s", status="completed")  # type: ignore[arg-type]
    assert op_keys(CheckpointStep(step=step, token=1)) == ("e1",)
    assert op_keys(_claim("e2", 1)) == ("e2",)
    assert op_keys(ReleaseExecutions(claims=(("e3", 1), ("e4", 2)))) == ("e3", "e4")
    assert op_keys(InsertEvents()) is None


# -- a real engine: every execution's steps run once, whatever the batches in flight ------


class Counted(WorkflowType):
    """Three steps, each counting its runs per execution."""

    name = "counted_three"
    runs: ClassVar[Counter[tuple[str, str]]] = Counter()

    @step
    async def one(self, ctx: StepContext) -> dict[str, int]:
        Counted.runs[(ctx.execution_id, "one")] += 1
        return {"a": ctx.parameters["i"] + 1}

    @step
    async def two(self, ctx: StepContext) -> dict[str, int]:
        Counted.runs[(ctx.execution_id, "two")] += 1
        return {"b": ctx.results["one"]["a"] * 2}

    @step
    async def three(self, ctx: StepContext) -> dict[str, int]:
        Counted.runs[(ctx.execution_id, "three")] += 1
        return {"value": ctx.results["two"]["b"]}


class CountedPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Counted)


async def test_executions_run_each_step_once_with_batches_in_flight(
    tmp_path: Path, databases: DatabaseFactory
) -> None:
    """300 executions from 32 submitters, every 7th cancelled while it may be running:
    on PostgreSQL the committer writes batches side by side; each execution ends once,
    a completed one ran each step once with the right result, a cancelled one no step
    twice, and the workflow's stats count every end once."""
    Counted.runs.clear()
    with engines(tmp_path, databases) as make:
        engine = make(plugins=(CountedPlugin(),), settings=fast(workers=64, queue_size=1000))
        async with engine:
            wf = await new_workflow(engine, "counted_three")
            ids: dict[int, str] = {}

            async def submit(numbers: range) -> None:
                for i in numbers:
                    ex = await engine.executions.execute(wf, {"i": i}, wait=False)
                    ids[i] = ex.execution_id
                    if i % 7 == 0:
                        with contextlib.suppress(Exception):  # already ended: 409
                            await engine.executions.cancel(ex.execution_id)

            async with anyio.create_task_group() as tg:
                for s in range(32):
                    tg.start_soon(submit, range(s, 300, 32))
            ended = [await wait_status(engine, ids[i], *TERMINAL, timeout=120) for i in range(300)]
            stats = (await engine.workflows.get(wf)).stats
            committer = engine.runtime.committer
            limit = getattr(engine.runtime.store, "batches_in_flight", 1)
            assert 1 <= committer.most_in_flight <= limit
    assert stats.runs_total == 300
    for i, execution in enumerate(ended):
        counts = [Counted.runs[(execution.execution_id, name)] for name in ("one", "two", "three")]
        assert max(counts) <= 1, (i, counts)
        if execution.status is ExecutionStatus.COMPLETED:
            assert counts == [1, 1, 1], (i, counts)
            assert execution.result == {"value": (i + 1) * 2}
        else:
            assert execution.status is ExecutionStatus.CANCELLED, execution.status
            assert i % 7 == 0


def test_a_nul_in_a_batch_of_inserts_is_a_bad_request_for_that_one(store: Store) -> None:
    """PostgreSQL's arrays go in binary: a U+0000 in a text column of one insert of a
    batch is still that insert's INVALID_REQUEST (the others are stored); SQLite keeps it."""
    records = [
        ExecutionRecord(
            id=new_id("exec_"),
            workflow_id="wf_nul",
            workflow_type="t",
            status=ExecutionStatus.QUEUED,
            created_at=T0,
            created_by=by,
        )
        for by in ("usr_fine", "usr_\x00", "usr_also_fine")
    ]
    results = store.apply([InsertExecution(record=r) for r in records])
    assert results[0] is True
    assert results[2] is True
    if store.dialect.name == "postgresql":  # type: ignore[attr-defined]
        assert isinstance(results[1], InvalidRequest)
        assert results[1].details == {"reason": "nul_character"}
        assert store.get_execution(records[1].id) is None
        with pytest.raises(InvalidRequest):  # alone: the batch's own error, mapped
            store.apply([InsertExecution(record=records[1])])
    else:
        assert results[1] is True
    assert store.get_execution(records[2].id) is not None
