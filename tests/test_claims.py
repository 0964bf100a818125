"""Exactly once under concurrency and faults: claim tokens, honest leases, retried writes.

Each test tries an interleaving that broke the promise before claim tokens
(issue #10): a signal racing the poller, a store call that fails (before or
after its commit), a caller cancelled during the commit, a full queue, an
idempotent replay that times out, a step that blocks the event loop longer
than the lease, a cancellation racing the start of a run. They run on every
engine backend (SQLite, and PostgreSQL where configured).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from runtime_plugins import PROBE
from runtime_plugins.faults import Harness, harnessed
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    fast,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import ExecutionTimeout
from abi_engine.storage import Store
from abi_engine.storage.records import (
    AGAIN,
    CheckpointStep,
    ClaimExecution,
    FinishExecution,
    SuspendExecution,
    WriteOp,
)

pytestmark = pytest.mark.anyio


def _faulty(make: EngineFactory, **settings: Any) -> tuple[Engine, Harness]:
    """An engine (with the test types) on a Harness over a real store of the backend."""
    return harnessed(make, **settings)


async def _all_done(engine: Engine, ids: Sequence[str], timeout: float = 60) -> None:
    for execution_id in ids:
        final = await wait_status(engine, execution_id, *TERMINAL, timeout=timeout)
        assert final.status is ExecutionStatus.COMPLETED, final


# -- signals racing the poller ----------------------------------------------------------------


async def test_a_signal_racing_the_poller_runs_the_rest_once(make: EngineFactory) -> None:
    """Signals delivered while recovery polls run back to back on the same loop: the step
    after the wait runs once per execution (the resumed execution is granted to the
    signalling node in the signal's own transaction, so no poll can queue it again)."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        plan = {"do": {"second": {"signal": "go"}}}
        ids = [
            (await engine.executions.execute(wf, plan, wait=False)).execution_id for _ in range(60)
        ]
        for execution_id in ids:
            await wait_status(engine, execution_id, ExecutionStatus.WAITING, timeout=30)

        async def poll_storm() -> None:
            while True:  # a poll at every turn of the loop: in every window there is
                await engine.runtime._recover_once()
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll_storm)
            async with anyio.create_task_group() as signals:
                for execution_id in ids:
                    signals.start_soon(engine.executions.signal, execution_id, "go", {"n": 1})
            await _all_done(engine, ids)
            tg.cancel_scope.cancel()
    for execution_id in ids:
        assert PROBE.runs(execution_id) == {"first": 1, "second": 2, "third": 1}


# -- failing store calls ------------------------------------------------------------------------


@pytest.mark.parametrize("after", [False, True], ids=["before-commit", "answer-lost"])
@pytest.mark.parametrize("kind", [ClaimExecution, CheckpointStep, FinishExecution])
async def test_a_failed_write_is_retried_and_applies_once(
    make: EngineFactory, kind: type[WriteOp], after: bool
) -> None:
    """A claim, checkpoint or finish whose store call fails (before its commit, or after it
    with the answer lost) is retried: every execution completes, each step runs once, and
    the workflow's run statistics count each execution once."""
    engine, faulty = _faulty(make)
    try:
        async with engine:
            wf = await new_workflow(engine)
            faulty.fail(kind, times=3, after=after)
            ids = [
                (await engine.executions.execute(wf, {}, wait=False)).execution_id for _ in range(6)
            ]
            await _all_done(engine, ids)
            stats = await engine.workflows.get(wf)
    finally:
        engine.close()
    assert len(faulty.failed) == 3
    for execution_id in ids:
        assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
    assert stats.stats.runs_total == 6


async def test_a_long_outage_leaves_the_execution_to_recovery_by_the_same_node(
    make: EngineFactory,
) -> None:
    """A store that fails longer than a run retries lets the run go; once the lease expires
    the same live node recovers it (nothing stays owned but unheld) and only the step
    whose checkpoint was lost runs again."""
    engine, faulty = _faulty(make, lease_seconds=2)
    try:
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"gate": "g"}}}, wait=False
            )
            await until(lambda: PROBE.calls[(execution.execution_id, "second")] == 1)
            faulty.down("apply")
            PROBE.gate("g").set()
            await anyio.sleep(3)  # longer than the run retries (half the lease)
            faulty.up()
            await _all_done(engine, [execution.execution_id])
    finally:
        engine.close()
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 2, "third": 1}


async def test_the_poller_and_heartbeat_survive_a_failing_store(make: EngineFactory) -> None:
    """Recovery polls and lease renewals that fail (the database unreachable) are retried;
    the engine keeps running and finishes the work once the store answers again."""
    engine, faulty = _faulty(make, lease_seconds=1.5)
    try:
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"gate": "g"}}}, wait=False
            )
            await until(lambda: PROBE.calls[(execution.execution_id, "second")] == 1)
            faulty.down("claim_recoverable", "renew_leases")
            await anyio.sleep(0.7)  # failing polls and a failing renewal
            faulty.up()
            PROBE.gate("g").set()
            await _all_done(engine, [execution.execution_id])
            assert engine.runtime.running
    finally:
        engine.close()


async def test_a_retried_suspension_is_recognised(make: EngineFactory) -> None:
    """A suspension whose commit succeeded but whose answer was lost is retried and
    recognised (AGAIN): the execution waits, and the signal then resumes it once."""
    engine, faulty = _faulty(make)
    try:
        async with engine:
            wf = await new_workflow(engine)
            faulty.fail(SuspendExecution, after=True)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"signal": "go"}}}, wait=False
            )
            await wait_status(engine, execution.execution_id, ExecutionStatus.WAITING)
            await engine.executions.signal(execution.execution_id, "go", 1)
            await _all_done(engine, [execution.execution_id])
    finally:
        engine.close()
    assert faulty.failed == [("SuspendExecution", True)]
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 2, "third": 1}


# -- stored but never queued ----------------------------------------------------------------------


async def test_a_caller_cancelled_during_the_commit_leaves_nothing_stuck(
    make: EngineFactory,
) -> None:
    """An in-process caller cancelled while its execution is being stored: whatever was
    stored runs to the end."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        for attempt in range(30):  # cancelled at various points, the commit among them
            with anyio.move_on_after(attempt * 0.0005):
                await engine.executions.execute(wf, {}, wait=False)
        page = await engine.executions.list(page_size=100)
        ids = [item.execution_id for item in page.items]
        assert ids
        await _all_done(engine, ids)


async def test_a_reserved_queue_place_is_never_taken(make: EngineFactory) -> None:
    """A place reserved by execute_async is not taken by other work (a schedule firing):
    the firing is handed back to the store and runs later; the reserving caller gets its
    place, not QUEUE_FULL after its execution was stored."""
    engine = make(settings=fast(queue_size=1, workers=1))
    async with engine:
        wf = await new_workflow(engine)
        runtime = engine.runtime
        reservation = runtime.reserve()
        # What the scheduler does when a firing finds no room: hand it back, not lose it.
        schedule = await engine.schedules.create(
            wf,
            {
                "name": "s",
                "schedule_type": "interval",
                "interval_value": 1,
                "interval_unit": "seconds",
            },
        )
        await until(lambda: engine.scheduler.fired >= 1, timeout=30, what="a firing")
        await engine.schedules.update(schedule.id, {"enabled": False})
        reservation.release()
        first = await engine.executions.execute(wf, {}, wait=False)
        fired = [
            e.execution_id
            for e in (await engine.executions.list(page_size=100)).items
            if e.execution_id != first.execution_id
        ]
        await _all_done(engine, [first.execution_id, *fired])


# -- idempotent replays ------------------------------------------------------------------------


async def test_a_replay_that_times_out_never_touches_the_original(make: EngineFactory) -> None:
    """A repeated execute with the same idempotency key that waits past its timeout answers
    504 but leaves the original running (it had no timeout), which then completes."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        plan = {"do": {"second": {"gate": "g"}}}
        original = await engine.executions.execute(wf, plan, wait=False, idempotency_key="key-1")
        await until(lambda: PROBE.calls[(original.execution_id, "second")] == 1)
        with pytest.raises(ExecutionTimeout) as caught:
            await engine.executions.execute(
                wf, plan, wait=True, timeout_seconds=1, idempotency_key="key-1"
            )
        assert caught.value.details["execution_id"] == original.execution_id
        current = await engine.executions.get(original.execution_id)
        assert current.status is ExecutionStatus.RUNNING
        assert ("second", "interrupted") not in {
            (step, what) for e, step, what in PROBE.notes if e == original.execution_id
        }
        PROBE.gate("g").set()
        await _all_done(engine, [original.execution_id])


# -- steps that block the loop ---------------------------------------------------------------


async def test_a_step_blocking_the_loop_past_its_lease_is_not_taken_over(
    make: EngineFactory,
) -> None:
    """A step that blocks its event loop for several lease periods keeps its execution:
    the heartbeat runs in a thread, so another engine (its own loop, in another thread)
    never takes it over and the step runs once."""
    other = make(settings=fast(lease_seconds=1.5))
    other.start_blocking()  # polls from its own thread and loop
    try:
        engine = make(settings=fast(lease_seconds=1.5))
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"block": 5}}}, wait=False
            )
            await _all_done(engine, [execution.execution_id])
    finally:
        other.stop_blocking()
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}


# -- cancellation racing the start of a run ------------------------------------------------------


async def test_no_step_starts_after_its_cancellation_returned(make: EngineFactory) -> None:
    """Executions cancelled right after they were submitted: no step of theirs starts after
    the cancellation returned (it reaches a run that has not registered yet, too)."""
    engine = make()
    cancelled_at: dict[str, float] = {}
    async with engine:
        wf = await new_workflow(engine)
        for _ in range(40):
            execution = await engine.executions.execute(wf, {}, wait=False)
            try:
                await engine.executions.cancel(execution.execution_id)
            except Exception:  # it completed first: nothing to check
                continue
            cancelled_at[execution.execution_id] = time.monotonic()
        await anyio.sleep(1)
    assert cancelled_at
    late = [
        (e, step)
        for e, step, started in PROBE.starts
        if e in cancelled_at and started > cancelled_at[e]
    ]
    assert late == []


# -- store rules -------------------------------------------------------------------------------


def test_ops_applied_again_answer_again(store: Store) -> None:
    """Every op of a run, applied a second time after its first commit, recognises its own
    effect (AGAIN, or True for an idempotent checkpoint) instead of answering False."""
    from datetime import timedelta

    from abi_engine.ids import new_id, utcnow
    from abi_engine.models import StepStatus
    from abi_engine.storage.records import (
        ExecutionRecord,
        InsertExecution,
        StepRecord,
    )

    now = utcnow()
    wf = new_id("wf_")
    record = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=wf,
        workflow_type="t",
        status=ExecutionStatus.QUEUED,
        created_at=now,
        owner="n",
        claim=11,
        lease_until=now + timedelta(seconds=30),
    )
    insert = InsertExecution(record=record)
    assert store.apply([insert]) == [True]
    assert store.apply([insert]) == [AGAIN]
    claim = ClaimExecution(
        execution_id=record.id,
        grant=11,
        token=12,
        owner="n",
        lease_until=now + timedelta(seconds=30),
        started_at=now,
    )
    assert store.apply([claim]) == [True]
    assert store.apply([claim]) == [AGAIN]
    stale = ClaimExecution(
        execution_id=record.id,
        grant=11,
        token=13,
        owner="m",
        lease_until=now + timedelta(seconds=30),
        started_at=now,
    )
    assert store.apply([stale]) == [False]  # a grant is used once
    step = StepRecord(
        execution_id=record.id, index=0, name="a", status=StepStatus.COMPLETED, result=1
    )
    assert store.apply([CheckpointStep(step=step, token=12)]) == [True]
    assert store.apply([CheckpointStep(step=step, token=12)]) == [True]
    assert store.apply([CheckpointStep(step=step, token=13)]) == [False]
    finish = FinishExecution(
        execution_id=record.id,
        workflow_id=wf,
        status=ExecutionStatus.COMPLETED,
        completed_at=now,
        duration_ms=5,
        token=12,
    )
    assert store.apply([finish]) == [True]
    assert store.apply([finish]) == [AGAIN]
    other = FinishExecution(
        execution_id=record.id,
        workflow_id=wf,
        status=ExecutionStatus.FAILED,
        completed_at=now,
        duration_ms=5,
        token=12,
    )
    assert store.apply([other]) == [False]
    assert store.renew_leases({record.id: 12}, now + timedelta(seconds=30)) == [record.id]


def test_a_failed_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A COMMIT that fails (here a deferred foreign key) is rolled back: the next write
    begins normally instead of failing for ever."""
    import sqlite3 as sqlite

    from abi_engine.storage import SQLiteStore

    store = SQLiteStore(tmp_path / "c.db")

    def orphan_step() -> None:
        with store.transaction() as conn:
            conn.execute("PRAGMA defer_foreign_keys = ON")  # checked at COMMIT
            conn.execute(
                "INSERT INTO execution_steps (execution_id, idx, name, status)"
                " VALUES ('exec_missing', 0, 'x', 'completed')"
            )

    try:
        with pytest.raises(sqlite.IntegrityError):
            orphan_step()
        with store.transaction() as conn:
            assert conn.execute("SELECT count(*) FROM execution_steps").fetchone()[0] == 0
    finally:
        store.close()


def test_claims_hand_back_a_run_token_not_yet_confirmed() -> None:
    """A claim sent to the store but not answered yet (the engine stopping meanwhile) is
    handed back under both tokens; once swapped, only the run token is held."""
    from abi_engine.runtime.leases import Claims

    claims = Claims(lambda held, until: [], 30)
    claims.hold("exec_1", 11)
    claims.expect("exec_1", 12)
    assert sorted(claims.to_hand_back()) == [("exec_1", 11), ("exec_1", 12)]
    assert claims.swap("exec_1", 11, 12)
    assert claims.to_hand_back() == [("exec_1", 12)]
    claims.let_go("exec_1", 12)
    assert claims.to_hand_back() == []


def test_a_lost_report_for_a_swapped_grant_is_ignored() -> None:
    """A renewal that reports a grant lost after the node swapped it for its run token
    stops nothing: only a token still held can be lost."""
    from abi_engine.runtime.leases import Claims

    reported: list[list[str]] = [["exec_1"]]
    claims = Claims(lambda held, until: reported.pop() if reported else [], 30)
    claims.hold("exec_1", 11)
    claims.renew_once()  # the store already runs it under the run token: "lost"
    assert claims.swap("exec_1", 11, 12)
    assert claims.take_lost() == {}
    assert claims.token("exec_1") == 12


def test_a_loss_reported_before_the_swap_waits_for_the_claims_answer() -> None:
    """The heartbeat renews between a claim's commit and its swap: the store reports the
    grant gone (the row runs under the run token). A poll of lost claims then must not
    stop the run: the loss waits for the claim's answer. Swapped, it is dropped; the
    claim refused (let go), the grant's loss is acted on."""
    from abi_engine.runtime.leases import Claims

    reported: list[list[str]] = [["exec_1"]]
    claims = Claims(lambda held, until: reported.pop() if reported else [], 30)
    claims.hold("exec_1", 11)
    claims.expect("exec_1", 12)
    assert claims.renew_once() == 1
    assert claims.take_lost() == {}  # polled before the swap: nothing stops
    assert claims.token("exec_1") == 11
    assert claims.swap("exec_1", 11, 12)
    assert claims.take_lost() == {}
    assert claims.token("exec_1") == 12

    reported.append(["exec_2"])
    claims.hold("exec_2", 21)
    claims.expect("exec_2", 22)
    assert claims.renew_once() == 1
    assert claims.take_lost() == {}
    claims.let_go("exec_2", 22)  # the claim was refused: nothing on its way any more
    assert claims.take_lost() == {"exec_2": 21}
    assert claims.token("exec_2") is None


async def test_an_execution_with_more_steps_done_than_its_type_has_ends(
    make: EngineFactory,
) -> None:
    """An execution resumed by a type that now has fewer steps than it finished (a newer
    version of the plugin) completes with its last result instead of never ending."""
    from abi_engine.ids import new_id, utcnow
    from abi_engine.models import StepStatus
    from abi_engine.storage.records import ExecutionRecord, InsertExecution, StepRecord

    engine = make()
    wf = await new_workflow(engine, "test_skip")
    now = utcnow()
    record = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=wf,
        workflow_type="test_skip",
        status=ExecutionStatus.QUEUED,
        created_at=now,
        started_at=now,
        claim=4,
    )
    engine.store.apply([InsertExecution(record=record)])
    specs = len(engine.workflow_types["test_skip"].steps(None))
    done = [
        StepRecord(
            execution_id=record.id,
            index=i,
            name=f"old{i}",
            status=StepStatus.COMPLETED,
            result={"i": i},
        )
        for i in range(specs + 1)
    ]
    # Run by a node that died after checkpointing them all (its lease ends now).
    claim = ClaimExecution(
        execution_id=record.id, grant=4, token=5, owner="x", lease_until=now, started_at=now
    )
    assert engine.store.apply([claim]) == [True]
    assert engine.store.apply([CheckpointStep(step=s, token=5) for s in done]) == [True] * len(done)
    async with engine:
        final = await wait_status(engine, record.id, *TERMINAL, timeout=30)
    assert final.status is ExecutionStatus.COMPLETED
    assert final.result == {"i": specs}
