"""Pausing a waiting execution, and signals sent to a paused one (#16, review): on every
engine backend (SQLite file, PostgreSQL where configured)."""

from __future__ import annotations

import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    new_workflow,
    wait_status,
)

from abi_engine import ExecutionStatus

pytestmark = pytest.mark.anyio


async def test_a_waiting_execution_pauses_once_its_wait_ends(make: EngineFactory) -> None:
    """Paused while it waits for a signal, the execution still shows ``waiting``; the
    signal ends the wait, and it pauses there instead of going on (the later steps do
    not run); resumed, it completes."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        ex = await engine.executions.execute(wf, {"do": {"first": {"signal": "go"}}}, wait=False)
        await wait_status(engine, ex.execution_id, ExecutionStatus.WAITING, timeout=30)
        asked = await engine.executions.pause(ex.execution_id)
        assert asked.status is ExecutionStatus.WAITING
        await engine.executions.signal(ex.execution_id, "go", {"n": 1})
        await wait_status(engine, ex.execution_id, ExecutionStatus.PAUSED, timeout=30)
        assert "second" not in PROBE.runs(ex.execution_id)
        await engine.executions.resume(ex.execution_id)
        done = await wait_status(engine, ex.execution_id, *TERMINAL, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(ex.execution_id)["second"] == 1


async def test_a_durable_sleep_paused_stays_held_after_it_ends(make: EngineFactory) -> None:
    """Paused during a durable sleep: when the sleep is over, it is ``paused``, not
    running on."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        params = {"do": {"first": {"durable_sleep": 2}}}
        ex = await engine.executions.execute(wf, params, wait=False)
        await wait_status(engine, ex.execution_id, ExecutionStatus.WAITING, timeout=30)
        await engine.executions.pause(ex.execution_id)
        await wait_status(engine, ex.execution_id, ExecutionStatus.PAUSED, timeout=30)
        assert "second" not in PROBE.runs(ex.execution_id)
        await engine.executions.resume(ex.execution_id)
        done = await wait_status(engine, ex.execution_id, *TERMINAL, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED


async def test_a_signal_sent_to_a_paused_execution_is_kept(make: EngineFactory) -> None:
    """Paused before its second step waits for ``go``, the execution accepts ``go``
    (kept, not refused); resumed, its wait takes the kept signal at once."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        params = {"do": {"first": {"gate": "g"}, "second": {"signal": "go"}}}
        ex = await engine.executions.execute(wf, params, wait=False)
        await wait_status(engine, ex.execution_id, ExecutionStatus.RUNNING, timeout=30)
        await PROBE.step_started("first").wait()
        await engine.executions.pause(ex.execution_id)
        PROBE.gate("g").set()
        await wait_status(engine, ex.execution_id, ExecutionStatus.PAUSED, timeout=30)
        await engine.executions.signal(ex.execution_id, "go", {"early": True})
        await engine.executions.resume(ex.execution_id)
        done = await wait_status(engine, ex.execution_id, *TERMINAL, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED
    assert PROBE.notes_of("signal") == [("signal", {"early": True})]
