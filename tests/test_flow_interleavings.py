"""Pause against step completion, cancellation and recovery after a crash (#16), with real
engines on every backend (SQLite file, PostgreSQL where configured).

The store decides each race in one transaction (``storage/sql/flow_ops.py``); these
tests force the interleavings with gated steps and check what the runs did.
``test_fencing_rules.py`` drives the same ops in any order against a model.
"""

from __future__ import annotations

import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    fast,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import InvalidState
from abi_engine.storage import SQLiteStore

pytestmark = pytest.mark.anyio

GATED_FIRST = {"do": {"first": {"gate": "g"}}}


def _expire_lease(engine: Engine, execution_id: str) -> None:
    """What a crash leaves: the execution's lease over (its node no longer renews it)."""
    store = engine.store
    mark = "?" if isinstance(store, SQLiteStore) else "%s"
    store.write(  # type: ignore[attr-defined]
        lambda conn: conn.execute(
            f"UPDATE executions SET lease_until = 0 WHERE id = {mark}", (execution_id,)
        )
    )


async def test_a_pausing_execution_taken_over_after_a_crash_pauses_instead_of_running(
    make: EngineFactory,
) -> None:
    """A pause is asked of a running execution whose node then stops renewing its lease:
    the node that recovers it pauses it instead of running it; the old run's late
    checkpoint is refused; resumed, only the step whose checkpoint was lost runs again."""
    # The old node never polls for recoverable work: it stands for a crashed one
    # (a live node would not run an execution again while its own run of it goes on).
    old = make(settings=fast(lease_seconds=30, poll_interval=3600))
    async with old:
        wf = await new_workflow(old)
        ex = await old.executions.execute(wf, GATED_FIRST, wait=False)
        await PROBE.step_started("first").wait()
        await old.executions.pause(ex.execution_id)
        _expire_lease(old, ex.execution_id)
        new = make()
        async with new:
            paused = await wait_status(new, ex.execution_id, ExecutionStatus.PAUSED, timeout=30)
            assert paused.queued_reason is None
            PROBE.gate("g").set()  # the old run's step ends; its checkpoint must be refused
            await until(lambda: "first" in {s for _, s, _ in PROBE.starts}, 5)
            await _seconds(1.0)
            still = await new.executions.get(ex.execution_id)
            assert still.status is ExecutionStatus.PAUSED
            assert next(s.status.value for s in still.steps or []) == "pending"
            await new.executions.resume(ex.execution_id)
            final = await wait_status(new, ex.execution_id, *TERMINAL, timeout=30)
    assert final.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(ex.execution_id) == {"first": 2, "second": 1, "third": 1}


async def test_a_cancel_wins_over_a_pause_not_yet_at_its_boundary(make: EngineFactory) -> None:
    """Paused then cancelled while its step runs: the execution ends cancelled, the step's
    late checkpoint changes nothing, and it can be neither paused nor resumed."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        ex = await engine.executions.execute(wf, GATED_FIRST, wait=False)
        await PROBE.step_started("first").wait()
        await engine.executions.pause(ex.execution_id)
        cancelled = await engine.executions.cancel(ex.execution_id)
        assert cancelled.status is ExecutionStatus.CANCELLED
        PROBE.gate("g").set()
        await _seconds(1.0)
        final = await engine.executions.get(ex.execution_id)
        for action in (engine.executions.pause, engine.executions.resume):
            with pytest.raises(InvalidState):
                await action(ex.execution_id)
    assert final.status is ExecutionStatus.CANCELLED
    assert PROBE.runs(ex.execution_id) == {"first": 1}


async def test_a_pause_asked_during_the_last_step_lets_the_execution_complete(
    make: EngineFactory,
) -> None:
    """There is no boundary after the last step: the execution completes; a pause
    withdrawn (resume) before the boundary leaves the run going on."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        last = await engine.executions.execute(wf, {"do": {"third": {"gate": "g3"}}}, wait=False)
        await PROBE.step_started("third").wait()
        await engine.executions.pause(last.execution_id)
        PROBE.gate("g3").set()
        done = await wait_status(engine, last.execution_id, *TERMINAL, timeout=30)
        withdrawn = await engine.executions.execute(wf, GATED_FIRST, wait=False)
        # Its own first step ("first" started already, in the execution above).
        await until(lambda: PROBE.calls[(withdrawn.execution_id, "first")] == 1, 30)
        await engine.executions.pause(withdrawn.execution_id)
        going = await engine.executions.resume(withdrawn.execution_id)
        assert going.status is ExecutionStatus.RUNNING
        PROBE.gate("g").set()
        final = await wait_status(engine, withdrawn.execution_id, *TERMINAL, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED
    assert final.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(withdrawn.execution_id) == {"first": 1, "second": 1, "third": 1}


async def _seconds(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)
