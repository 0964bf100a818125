"""Attack on #18's execute_many fast path: an execution stored running at its
acceptance keeps its ``Prepared`` (``claimed``: run without a claim write) in the
runtime until a worker loads it. When its first run ends before loading it (the
runtime crashed there, injected; a stop leaving it in the queue is another way) the
``Prepared`` stays; once the lease ends and the execution is granted again, the new
grant must claim it as any recovered execution. Before the fix the stale ``Prepared``
was taken as claimed under the new grant: run without a claim, its first step twice."""

from __future__ import annotations

import time
from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory, fast, new_workflow

from abi_engine import ExecutionStatus


def test_a_run_crashed_before_loading_is_recovered_with_a_claim(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make(settings=fast(workers=2, lease_seconds=2))
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        runtime = engine.runtime
        original = runtime._execute
        crashed: list[str] = []

        async def execute(execution_id: str, token: int) -> Any:
            if len(crashed) < 2 and execution_id not in crashed:
                crashed.append(execution_id)  # before loading it
                raise RuntimeError("injected: the runtime crashed on this run")
            return await original(execution_id, token)

        monkeypatch.setattr(runtime, "_execute", execute)
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
