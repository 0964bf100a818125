"""Attack on #18's worker wake-ups (runtime/work.py) and idle-worker count: more
executions than workers, accepted by execute_many (the first stored running, the
rest queued), while the runs of two of them crash the runtime (an error outside any
step, once loaded, before the first). The workers go on: every other execution completes; the two
crashed ones are let go, taken over once their leases end, and complete; each step
runs once; the idle-worker count comes back to the number of workers."""

from __future__ import annotations

import time
from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory, fast, new_workflow

from abi_engine import ExecutionStatus


def test_runs_crashing_the_runtime_leave_no_work_stuck(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make(settings=fast(workers=2, lease_seconds=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        runtime = engine.runtime
        original = runtime._run_loaded
        crashed: list[str] = []

        async def run_loaded(prepared: Any) -> Any:
            execution_id = prepared.record.id
            if len(crashed) < 2 and execution_id not in crashed:
                crashed.append(execution_id)  # loaded (claimed), before its first step
                raise RuntimeError("injected: the runtime crashed on this run")
            return await original(prepared)

        monkeypatch.setattr(runtime, "_run_loaded", run_loaded)
        accepted = engine.call(engine.executions.execute_many, wf, [{}] * 7)
        assert [a.status for a in accepted[:2]] == [ExecutionStatus.RUNNING] * 2
        assert {a.status for a in accepted[2:]} == {ExecutionStatus.QUEUED}
        for execution in accepted:
            final = engine.call(engine.executions.wait, execution.execution_id, 90)
            assert final.status is ExecutionStatus.COMPLETED, (execution.execution_id, final)
            assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}, (
                execution.execution_id,
                accepted.index(execution),
                execution.execution_id in crashed,
                [(s.name, s.attempts) for s in final.steps],
            )
        assert len(crashed) == 2
        deadline = time.monotonic() + 60
        while runtime.idle_workers() != 2:
            assert time.monotonic() < deadline, "workers left busy"
            time.sleep(0.1)
    finally:
        engine.stop_blocking()
        engine.close()
