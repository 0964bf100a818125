"""Attack on #18's execute_many fast path: the workflow is paused (by another node)
between execute_many's check of it (not paused: its executions are to be stored
running, as many as workers are idle) and the commit of their insertion. A pause
"holds the workflow's new executions: they are accepted (never refused) and wait
queued" (docs/flow-control.md): none may run before the resume; each runs once after."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from runtime_plugins import PROBE
from runtime_plugins.faults import Harness
from runtime_plugins.helpers import EngineFactory, new_workflow, resume_and_check_once, started_on

from abi_engine import ExecutionStatus
from abi_engine.ids import utcnow
from abi_engine.storage.records import InsertExecution, PauseWorkflow, WriteOp


class PausedMeanwhile(Harness):
    """Before the first batch of insertions is applied, another node pauses the
    workflow (its own transaction, committed first)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.workflow_id: str | None = None

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        if self.workflow_id is not None and any(isinstance(op, InsertExecution) for op in ops):
            workflow_id, self.workflow_id = self.workflow_id, None
            at = utcnow()
            assert self._store.apply([PauseWorkflow(workflow_id=workflow_id, paused=True, at=at)])
        return self._store.apply(ops)


@pytest.mark.parametrize("how", ["execute_many", "execute_async"])
def test_a_pause_committed_between_the_check_and_the_insertion(
    make: EngineFactory, how: str
) -> None:
    store = PausedMeanwhile(make().store)
    with started_on(store) as engine:
        wf = engine.call(new_workflow, engine)
        assert engine.runtime.idle_workers() == 4
        store.workflow_id = wf
        if how == "execute_many":
            accepted = engine.call(engine.executions.execute_many, wf, [{}] * 3)
        else:
            accepted = [engine.call(engine.executions.execute, wf, {}, wait=False)]
        assert store.workflow_id is None  # the pause was committed first
        ids = [a.execution_id for a in accepted]
        time.sleep(2)  # (not a margin: a run that wrongly started has long written a step)
        for execution_id in ids:
            now = engine.call(engine.executions.get, execution_id)
            assert now.status is ExecutionStatus.QUEUED, (execution_id, now.status)
            assert PROBE.runs(execution_id) == {}
        resume_and_check_once(engine, wf, ids)


class PausedBetweenCommits(Harness):
    """The workflow is paused by another node right after the first batch of
    insertions committed, before the next one (more items than one commit holds)."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.workflow_id: str | None = None
        self.inserted: list[int] = []

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        results = self._store.apply(ops)
        count = sum(isinstance(op, InsertExecution) for op in ops)
        if count and self.workflow_id is not None:
            self.inserted.append(count)
            workflow_id, self.workflow_id = self.workflow_id, None
            assert self._store.apply(
                [PauseWorkflow(workflow_id=workflow_id, paused=True, at=utcnow())]
            )
        return results


def test_a_pause_between_two_commits_of_one_execute_many(make: EngineFactory) -> None:
    """12 items, 5 per commit: the first 5 are stored (running or queued) before the
    pause, the rest after it. Nothing may be refused behind the caller's back: all 12
    are accepted (none stored yet answered 409 with 5 running, before the fix), the
    5 of the first commit run, the 7 others are held by the pause and run on resume."""
    store = PausedBetweenCommits(make().store)
    with started_on(store) as engine:
        wf = engine.call(new_workflow, engine)
        engine.runtime.committer._max_batch = 5
        store.workflow_id = wf
        accepted = engine.call(engine.executions.execute_many, wf, [{}] * 12)
        assert store.inserted == [5]
        ids = [a.execution_id for a in accepted]
        assert len(set(ids)) == 12
        page = engine.call(engine.executions.list, workflow_id=wf, page_size=50)
        assert sorted(e.execution_id for e in page.items) == sorted(ids)
        for execution_id in ids[:5]:
            final = engine.call(engine.executions.wait, execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED
        for execution_id in ids[5:]:
            now = engine.call(engine.executions.get, execution_id)
            assert now.status is ExecutionStatus.QUEUED, (execution_id, now.status)
            assert PROBE.runs(execution_id) == {}
        resume_and_check_once(engine, wf, ids)
