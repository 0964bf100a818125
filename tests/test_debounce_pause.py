"""Pausing and resuming an execution waiting out its debounce window (#16): resumed, it
waits for the rest of its window (a later request still replaces it), and runs at once
when the window ended while it was paused. On every engine backend."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    new_workflow,
    wait_status,
)

from abi_engine import ExecutionStatus

pytestmark = pytest.mark.anyio

ENDED = (*TERMINAL, ExecutionStatus.SKIPPED)


async def test_resumed_it_keeps_its_debounce_hold(make: EngineFactory) -> None:
    """Paused then resumed within its 3 s window, it is queued ``debounce`` again (not
    run at once): it starts no sooner than its window's end, and a request of its key
    meanwhile still replaces it (``skipped``, pointing to that one)."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, debounce={"key": "parameters.customer", "seconds": 3})
        first = await engine.executions.execute(wf, {"customer": "c"}, wait=False)
        paused = await engine.executions.pause(first.execution_id)
        assert paused.status is ExecutionStatus.PAUSED
        await engine.executions.resume(first.execution_id)
        resumed = await engine.executions.get(first.execution_id)
        assert (resumed.status, resumed.queued_reason) == (ExecutionStatus.QUEUED, "debounce")
        second = await engine.executions.execute(wf, {"customer": "c"}, wait=False)
        replaced = await wait_status(engine, first.execution_id, *ENDED, timeout=30)
        other = await engine.executions.execute(wf, {"customer": "d"}, wait=False)
        await engine.executions.pause(other.execution_id)
        await engine.executions.resume(other.execution_id)
        done = await wait_status(engine, other.execution_id, *ENDED, timeout=30)
        await wait_status(engine, second.execution_id, *ENDED, timeout=30)
    assert (replaced.status, replaced.debounced_by) == (
        ExecutionStatus.SKIPPED,
        second.execution_id,
    )
    assert done.status is ExecutionStatus.COMPLETED
    assert done.started_at is not None
    assert other.created_at is not None
    assert done.started_at - other.created_at >= timedelta(seconds=3)


async def test_resumed_after_its_window_it_runs(make: EngineFactory) -> None:
    """Paused for longer than its 1 s window, resumed it runs (its window is over), no
    sooner than the window's end."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, debounce={"seconds": 1})
        first = await engine.executions.execute(wf, {}, wait=False)
        await engine.executions.pause(first.execution_id)
        await anyio.sleep(1.5)  # the window ends while it is paused
        assert (await engine.executions.get(first.execution_id)).status is ExecutionStatus.PAUSED
        await engine.executions.resume(first.execution_id)
        done = await wait_status(engine, first.execution_id, *ENDED, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.started_at is not None
    assert first.created_at is not None
    assert done.started_at - first.created_at >= timedelta(seconds=1)


async def test_a_paused_workflow_holds_its_debounced_executions(make: EngineFactory) -> None:
    """Requested while its workflow is paused, debounced executions do not run when
    their 1 s window ends: the later of two of one key replaces the earlier
    (``skipped``) and waits, shown ``paused``, until the workflow resumes; then it
    runs."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, debounce={"seconds": 1})
        await engine.executions.pause_workflow(wf)
        first = await engine.executions.execute(wf, {}, wait=False)
        second = await engine.executions.execute(wf, {}, wait=False)
        await anyio.sleep(2.5)  # their windows are over; their workflow still paused
        replaced = await engine.executions.get(first.execution_id)
        held = await engine.executions.get(second.execution_id)
        await engine.executions.pause_workflow(wf, paused=False)
        done = await wait_status(engine, second.execution_id, *ENDED, timeout=30)
    assert (replaced.status, replaced.debounced_by) == (
        ExecutionStatus.SKIPPED,
        second.execution_id,
    )
    assert (held.status, held.queued_reason) == (ExecutionStatus.QUEUED, "paused")
    assert done.status is ExecutionStatus.COMPLETED


async def test_a_workflow_paused_and_resumed_within_the_window_keeps_the_hold(
    make: EngineFactory,
) -> None:
    """A debounced execution (3 s window) whose workflow is paused and resumed within
    its window waits for the rest of it (``debounce`` again), and starts no sooner."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, debounce={"seconds": 3})
        first = await engine.executions.execute(wf, {}, wait=False)
        await engine.executions.pause_workflow(wf)
        held = await engine.executions.get(first.execution_id)
        await engine.executions.pause_workflow(wf, paused=False)
        released = await engine.executions.get(first.execution_id)
        done = await wait_status(engine, first.execution_id, *ENDED, timeout=30)
    assert held.queued_reason == "paused"
    assert (released.status, released.queued_reason) == (ExecutionStatus.QUEUED, "debounce")
    assert done.status is ExecutionStatus.COMPLETED
    assert done.started_at is not None
    assert first.created_at is not None
    assert done.started_at - first.created_at >= timedelta(seconds=3)
