"""Priorities (#16): 0 to 9 on execute requests and schedules, higher first, aged so
that lower priority cannot starve; on every engine backend."""

from __future__ import annotations

import time

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    fast,
    new_workflow,
    wait_status,
)

from abi_engine import ExecutionStatus
from abi_engine.errors import InvalidRequest, InvalidSchedule
from abi_engine.storage.records import requested_priority, stored_priority

pytestmark = pytest.mark.anyio

AGING = 0.2  # seconds one level of priority is worth, in these tests


async def test_higher_priority_goes_first_and_waiting_lower_priority_ages(
    make: EngineFactory,
) -> None:
    """A paused workflow holds a low priority execution, then a flood of high priority
    ones: those asked within 9 levels of aging after it start before it, those asked
    later start after it (it is not starved however many come)."""
    engine = make(settings=fast(workers=1, priority_aging_seconds=AGING))
    async with engine:
        wf = await new_workflow(engine)
        await engine.executions.pause_workflow(wf)
        low = await engine.executions.execute(wf, {}, wait=False, priority=0)
        asked = time.monotonic()
        early = [
            (await engine.executions.execute(wf, {}, wait=False, priority=9)).execution_id
            for _ in range(5)
        ]
        assert time.monotonic() - asked < 9 * AGING, "the machine is too slow for this test"
        await anyio.sleep(9 * AGING + 1.0)  # past the aging of 9 levels
        late = [
            (await engine.executions.execute(wf, {}, wait=False, priority=9)).execution_id
            for _ in range(5)
        ]
        await engine.executions.pause_workflow(wf, paused=False)
        ids = [*early, low.execution_id, *late]
        done = [await wait_status(engine, i, *TERMINAL, timeout=60) for i in ids]
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    order = [d.execution_id for d in sorted(done, key=lambda d: (d.started_at, d.completed_at))]
    position = order.index(low.execution_id)
    assert set(order[:position]) == set(early), order
    assert set(order[position + 1 :]) == set(late), order


async def test_a_nodes_own_queue_runs_higher_priority_first(make: EngineFactory) -> None:
    """One worker, busy: a low priority execution accepted first and high priority ones
    after it wait in the node's queue; the high ones (asked within the aging of 9
    levels) run first."""
    engine = make(settings=fast(workers=1, priority_aging_seconds=AGING * 10))
    async with engine:
        wf = await new_workflow(engine)
        busy = await engine.executions.execute(
            wf, {"do": {"first": {"gate": "hold"}}}, wait=False, priority=9
        )
        await wait_status(engine, busy.execution_id, ExecutionStatus.RUNNING, timeout=30)
        low = await engine.executions.execute(wf, {}, wait=False, priority=0)
        high = [
            (await engine.executions.execute(wf, {}, wait=False, priority=9)).execution_id
            for _ in range(3)
        ]
        PROBE.gate("hold").set()
        ids = [low.execution_id, *high]
        done = [await wait_status(engine, i, *TERMINAL, timeout=60) for i in ids]
    low_done, *high_done = done
    assert low_done.started_at is not None
    for other in high_done:  # one worker: each high one ended before the low one began
        assert other.completed_at is not None
        assert other.completed_at <= low_done.started_at, (other, low_done)


async def test_priorities_are_checked_and_kept_by_schedules(make: EngineFactory) -> None:
    """A priority outside 0 to 9 (or not an integer) is ``InvalidRequest`` naming the
    field (``InvalidSchedule`` for a schedule's); a schedule keeps its priority."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        for bad in (10, -1, "high", True, 2.5):
            with pytest.raises(InvalidRequest) as caught:
                await engine.executions.execute(wf, {}, wait=False, priority=bad)  # type: ignore[arg-type]
            assert caught.value.details["field"] == "priority", bad
        body = {
            "name": "s",
            "schedule_type": "interval",
            "interval_value": 1,
            "interval_unit": "hours",
            "priority": 8,
        }
        schedule = await engine.schedules.create(wf, body)
        assert schedule.priority == 8
        with pytest.raises(InvalidSchedule) as refused:
            await engine.schedules.create(wf, {**body, "priority": 12})
        assert refused.value.details["field"] == "priority"


@given(st.one_of(st.none(), st.integers(min_value=0, max_value=9)), st.booleans())
def test_stored_priorities_keep_sync_first_and_higher_lower(
    priority: int | None, sync: bool
) -> None:
    """A synchronous caller is stored 0 (first); an asynchronous one 1 to 10, lower
    for higher priority, and its requested priority reads back."""
    stored = stored_priority(priority, sync=sync)
    if sync:
        assert stored == 0
        assert requested_priority(stored) is None
        return
    assert 1 <= stored <= 10
    assert requested_priority(stored) == (5 if priority is None else priority)
    if priority is not None and priority < 9:
        assert stored_priority(priority + 1) < stored
