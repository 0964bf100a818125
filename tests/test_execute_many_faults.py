"""execute_many (#18) meeting a store that fails: its insertions, handed to the group
committer together, are retried while the store fails (a batch refused, or committed
with its answer lost); every execution is accepted once and runs once, every step once;
a store down for good gives a clear error (logged once) and the queue places back."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.faults import harnessed
from runtime_plugins.helpers import EngineFactory, new_workflow

from abi_engine import ExecutionStatus
from abi_engine.errors import InternalError
from abi_engine.storage.records import InsertExecution


def _many(engine: Any, workflow_id: str, count: int) -> Any:
    return engine.call(engine.executions.execute_many, workflow_id, [{}] * count)


@pytest.mark.parametrize("answer_lost", [False, True], ids=["refused", "answer-lost"])
def test_a_failing_batch_of_insertions_is_retried_and_each_runs_once(
    make: EngineFactory, answer_lost: bool
) -> None:
    engine, harness = harnessed(make)
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        harness.fail(InsertExecution, 2, after=answer_lost)
        accepted = _many(engine, wf, 12)
        assert harness.faults_left() == 0
        assert [f[1] for f in harness.failed] == [answer_lost] * 2
        ids = [a.execution_id for a in accepted]
        assert len(set(ids)) == 12
        for execution_id in ids:
            final = engine.call(engine.executions.wait, execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED
            assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
        page = engine.call(engine.executions.list, workflow_id=wf, page_size=50)
        assert sorted(e.execution_id for e in page.items) == sorted(ids)
    finally:
        engine.stop_blocking()
        engine.close()


def test_a_store_down_for_good_is_a_clear_error_and_gives_the_places_back(
    make: EngineFactory,
) -> None:
    engine, harness = harnessed(make, queue_size=8)
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        room = engine.runtime.room()
        harness.fail(InsertExecution, 10_000)
        with pytest.raises(InternalError):
            _many(engine, wf, 5)
        assert engine.runtime.room() == room  # the reservations let go
        page = engine.call(engine.executions.list, workflow_id=wf, page_size=10)
        assert page.items == []
    finally:
        engine.stop_blocking()
        engine.close()
