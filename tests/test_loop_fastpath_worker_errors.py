"""Attack on #18's worker wake-ups (runtime/work.py), idle-worker count and the
execute_many fast path: more executions than workers, accepted by execute_many (the
first stored running, the rest queued), while the runs of two of them crash the
runtime, at one of two points:

- ``loaded``: an error outside any step, once loaded (claimed), before the first;
- ``before_load``: before the worker loads it. An execution stored running at its
  acceptance keeps its ``Prepared`` (``claimed``: run without a claim write) in the
  runtime until a worker loads it; once its lease ends and it is granted again, the new
  grant must claim it as any recovered execution. (Before the fix the stale
  ``Prepared`` was taken as claimed under the new grant: its first step ran twice.)

The workers go on: every other execution completes; the two crashed ones are let go,
taken over once their leases end, and complete; each step runs once; the idle-worker
count comes back to the number of workers."""

from __future__ import annotations

import time
from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory, fast, new_workflow

from abi_engine import ExecutionStatus


def _crashing(runtime: Any, point: str, crashed: list[str]) -> tuple[str, Any]:
    """The runtime method to replace, and its replacement crashing two runs at ``point``."""

    def crashes(execution_id: str) -> bool:
        if len(crashed) < 2 and execution_id not in crashed:
            crashed.append(execution_id)
            return True
        return False

    if point == "loaded":
        original = runtime._run_loaded

        async def run_loaded(prepared: Any) -> Any:
            if crashes(prepared.record.id):
                raise RuntimeError("injected: the runtime crashed on this run")
            return await original(prepared)

        return "_run_loaded", run_loaded
    original_execute = runtime._execute

    async def execute(execution_id: str, token: int) -> Any:
        if crashes(execution_id):
            raise RuntimeError("injected: the runtime crashed on this run")
        return await original_execute(execution_id, token)

    return "_execute", execute


@pytest.mark.parametrize("point", ["loaded", "before_load"])
def test_runs_crashing_the_runtime_leave_no_work_stuck(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    engine = make(settings=fast(workers=2, lease_seconds=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        runtime = engine.runtime
        crashed: list[str] = []
        monkeypatch.setattr(runtime, *_crashing(runtime, point, crashed))
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
