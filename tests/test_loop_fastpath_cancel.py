"""Attack on #18's execute_many fast path: executions stored *running* at their
acceptance wait for their worker (held at a gate right before the worker runs them,
a hook, not a sleep) while they are cancelled or paused. A cancelled one runs no step
and ends ``cancelled``; a paused one ends ``paused`` and, resumed, runs each step once;
the workers held at the gate then serve new work (nothing left stuck)."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory, fast, new_workflow, until_sync

from abi_engine import ExecutionStatus


def _gated(engine: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[str]]:
    """Workers stop right before running what they took until the gate opens."""
    gate, parked = threading.Event(), []
    runtime = engine.runtime
    original = runtime._guarded

    async def guarded(execution_id: str, token: int) -> None:
        if not gate.is_set():
            parked.append(execution_id)
            await anyio.to_thread.run_sync(gate.wait, 60)
        await original(execution_id, token)

    monkeypatch.setattr(runtime, "_guarded", guarded)
    return gate, parked


@pytest.mark.parametrize("action", ["cancel", "pause"])
def test_stored_running_then_cancelled_or_paused_before_its_worker_runs_it(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    engine = make(settings=fast(workers=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        gate, parked = _gated(engine, monkeypatch)
        accepted = engine.call(engine.executions.execute_many, wf, [{}] * 2)
        assert [a.status for a in accepted] == [ExecutionStatus.RUNNING] * 2
        ids = [a.execution_id for a in accepted]
        until_sync(lambda: sorted(parked) == sorted(ids), "both taken by a worker")
        if action == "cancel":
            for execution_id in ids:
                engine.call(engine.executions.cancel, execution_id)
        else:
            for execution_id in ids:
                engine.call(engine.executions.pause, execution_id)
        gate.set()
        for execution_id in ids:
            if action == "cancel":
                final = engine.call(engine.executions.wait, execution_id, 60)
                assert final.status is ExecutionStatus.CANCELLED, final.status
                continue
            until_sync(
                lambda e=execution_id: (
                    engine.call(engine.executions.get, e).status is ExecutionStatus.PAUSED
                ),
                "paused",
            )
            engine.call(engine.executions.resume, execution_id)
            final = engine.call(engine.executions.wait, execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED
            assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
        until_sync(lambda: engine.runtime.idle_workers() == 2, "the gated workers are idle again")
        if action == "cancel":  # no step started, not even up to its first await
            assert all(PROBE.runs(execution_id) == {} for execution_id in ids)
        more = engine.call(engine.executions.execute_many, wf, [{}] * 5)
        for execution in more:
            final = engine.call(engine.executions.wait, execution.execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED
    finally:
        engine.stop_blocking()
        engine.close()
