"""The synchronous thread door (#18) meeting a store that fails: a caller's commit that
raises, or whose answer is lost after it committed, is retried in the caller's thread;
the caller gets its execution, which runs once, every step once; a store down for good
gives a clear error, and the caller's queue place back."""

from __future__ import annotations

import functools
import threading
from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.faults import harnessed
from runtime_plugins.helpers import EngineFactory, new_workflow

from abi_engine import ExecutionStatus
from abi_engine.errors import InternalError
from abi_engine.storage.records import InsertExecution


def _accept(engine: Any, workflow_id: str) -> Any:
    execute = functools.partial(engine.executions.execute, wait=False)
    return engine.call(execute, workflow_id, {})


@pytest.mark.parametrize("answer_lost", [False, True], ids=["refused", "answer-lost"])
def test_a_failing_commit_in_the_callers_thread_is_retried_and_runs_once(
    make: EngineFactory, answer_lost: bool
) -> None:
    engine, harness = harnessed(make)
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        warm = _accept(engine, wf)  # the workflow's first call compiles it on the loop
        threads: set[int] = set()
        harness.after_commit(lambda ops: threads.add(threading.get_ident()))
        harness.fail(InsertExecution, 2, after=answer_lost)
        accepted = _accept(engine, wf)
        assert harness.faults_left() == 0
        assert [f[1] for f in harness.failed] == [answer_lost] * 2
        assert threading.get_ident() in threads  # committed by this (the caller's) thread
        for execution_id in (warm.execution_id, accepted.execution_id):
            final = engine.call(engine.executions.wait, execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED
            assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
        page = engine.call(engine.executions.list, workflow_id=wf, page_size=10)
        assert sorted(e.execution_id for e in page.items) == sorted(
            [warm.execution_id, accepted.execution_id]
        )
    finally:
        engine.stop_blocking()
        engine.close()


def test_a_store_down_for_good_is_a_clear_error_and_gives_the_place_back(
    make: EngineFactory,
) -> None:
    engine, harness = harnessed(make, queue_size=4)
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        warm = _accept(engine, wf)
        engine.call(engine.executions.wait, warm.execution_id, 60)
        room = engine.runtime.room()
        harness.fail(InsertExecution, 10_000)
        with pytest.raises(InternalError):
            _accept(engine, wf)
        assert engine.runtime.room() == room  # its reservation let go
        harness.fail(InsertExecution, 0)
        page = engine.call(engine.executions.list, workflow_id=wf, page_size=10)
        assert [e.execution_id for e in page.items] == [warm.execution_id]
    finally:
        engine.stop_blocking()
        engine.close()
