"""Attack on #18's committer fast path (a future per waiting run, the writer's wake-up
set once per batch): a batch holding the step writes of several runs fails (refused,
or committed with its answer lost) while those runs' futures wait on it. Each run
retries and ends completed; each step ran once; each step's and each execution's
event reaches an ``abi_event`` hook exactly once (a lost answer retried is not an
event twice); executions stored running by execute_many and queued ones alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import runtime_plugins
from runtime_plugins import PROBE
from runtime_plugins.faults import Harness, _store_error
from runtime_plugins.helpers import EngineFactory, new_workflow

from abi_engine import Engine, ExecutionStatus, hookimpl
from abi_engine.events import Event
from abi_engine.runtime.settings import RuntimeSettings
from abi_engine.storage.records import CheckpointStep, WriteOp

COUNT = 10


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


class FailingCheckpoints(Harness):
    """The first batch holding the step checkpoints of several runs fails, once (the
    runs started together by execute_many write their first steps together)."""

    def __init__(self, store: Any, *, answer_lost: bool) -> None:
        super().__init__(store)
        self.answer_lost = answer_lost
        self.failed_runs: set[str] = set()

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        runs = {op.step.execution_id for op in ops if isinstance(op, CheckpointStep)}
        if len(runs) >= 2 and not self.failed_runs:
            self.failed_runs = runs
            if not self.answer_lost:
                raise _store_error(self._store, "database is locked (injected)")
            self._store.apply(ops)
            raise _store_error(self._store, "connection lost during COMMIT (injected)")
        return self._store.apply(ops)


@pytest.mark.parametrize("answer_lost", [False, True], ids=["refused", "answer-lost"])
def test_a_failing_batch_of_several_runs_step_writes(
    make: EngineFactory, answer_lost: bool
) -> None:
    plain = make()
    store = FailingCheckpoints(plain.store, answer_lost=answer_lost)
    recorder = Recorder()
    engine = Engine(
        store,  # type: ignore[arg-type]
        plugins=[runtime_plugins, recorder],
        runtime=RuntimeSettings(workers=COUNT // 2, lease_seconds=30, poll_interval=0.2),
    )
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        many = engine.call(engine.executions.execute_many, wf, [{}] * COUNT)
        statuses = Counter(e.status for e in many)
        assert statuses[ExecutionStatus.RUNNING] == COUNT // 2
        ids = [e.execution_id for e in many]
        for execution_id in ids:
            final = engine.call(engine.executions.wait, execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED, (execution_id, final.status)
            assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
            assert [s.attempts for s in final.steps] == [1, 1, 1]
        assert len(store.failed_runs) >= 2
        for execution_id in ids:
            seen = Counter(
                e.type for e in recorder.events if e.data.get("execution_id") == execution_id
            )
            assert seen["execution.step_completed"] == 3, (execution_id, seen)
            assert seen["execution.completed"] == 1, (execution_id, seen)
    finally:
        engine.stop_blocking()
        engine.close()
