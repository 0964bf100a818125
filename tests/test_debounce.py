"""Debounce (#16): of executions with one key requested within the window, only the last
runs; the others end ``skipped`` naming it. On every engine backend (SQLite file,
PostgreSQL where configured), with two engines racing on one database too."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import anyio
import pytest
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import ExecutionStatus
from abi_engine.errors import InvalidState
from abi_engine.storage.records import ExecutionQuery

pytestmark = pytest.mark.anyio

ENDED = (*TERMINAL, ExecutionStatus.SKIPPED)


async def test_of_a_burst_only_the_last_runs_and_the_others_point_to_it(
    make: EngineFactory,
) -> None:
    """Three executions of one customer within the window: the first two end
    ``skipped``, each with ``debounced_by`` the next (the one that replaced it); the
    third waits (``debounce``, its key shown) for its window, then runs; another
    customer's runs on its own."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, debounce={"key": "parameters.customer", "seconds": 1})
        ids = [
            (await engine.executions.execute(wf, {"customer": "c"}, wait=False)).execution_id
            for _ in range(3)
        ]
        other = await engine.executions.execute(wf, {"customer": "d"}, wait=False)
        last = await engine.executions.get(ids[2])
        assert (last.status, last.queued_reason, last.debounce_key) == (
            ExecutionStatus.QUEUED,
            "debounce",
            "c",
        )
        assert last.queued_since is not None
        for skipped_id, by in itertools.pairwise(ids):
            skipped = await engine.executions.get(skipped_id)
            assert (skipped.status, skipped.debounced_by) == (ExecutionStatus.SKIPPED, by)
            assert skipped.completed_at is not None
        done = await wait_status(engine, ids[2], *ENDED, timeout=30)
        done_other = await wait_status(engine, other.execution_id, *ENDED, timeout=30)
        page = await engine.executions.list(workflow_id=wf, status="skipped")
    assert done.status is ExecutionStatus.COMPLETED
    assert done_other.status is ExecutionStatus.COMPLETED
    assert sorted(e.execution_id for e in page.items) == sorted(ids[:2])
    assert done.started_at is not None
    assert last.created_at is not None
    waited = done.started_at - last.created_at
    # It waited its window, and was claimed when the window ended (not polls later).
    assert timedelta(seconds=1) <= waited < timedelta(seconds=1.5), waited


async def test_two_engines_racing_inserts_of_one_key_run_exactly_one(
    make: EngineFactory,
) -> None:
    """Two engines on one database request eight executions of one key at once:
    exactly one runs, and every other ends ``skipped`` pointing to an execution of
    the burst (the chain ends at the one that ran)."""
    first, second = make("shared.db"), make("shared.db")
    async with first, second:
        wf = await new_workflow(first, debounce={"seconds": 1.5})
        ids: list[str] = []

        async def request(index: int) -> None:
            engine = first if index % 2 else second
            ids.append((await engine.executions.execute(wf, {}, wait=False)).execution_id)

        async with anyio.create_task_group() as tg:
            for index in range(8):
                tg.start_soon(request, index)
        done = [await wait_status(first, i, *ENDED, timeout=60) for i in ids]
    ran = [d for d in done if d.status is ExecutionStatus.COMPLETED]
    assert len(ran) == 1, [(d.execution_id, d.status) for d in done]
    skipped = [d for d in done if d.status is ExecutionStatus.SKIPPED]
    assert len(skipped) == 7
    assert {d.debounced_by for d in skipped} <= set(ids)
    by_id = {d.execution_id: d for d in done}
    for d in skipped:
        seen, at = {d.execution_id}, d
        while at.debounced_by is not None:
            assert at.debounced_by not in seen
            seen.add(at.debounced_by)
            at = by_id[at.debounced_by]
        assert at.execution_id == ran[0].execution_id


async def test_a_skipped_execution_is_finished(make: EngineFactory) -> None:
    """A skipped execution cannot be cancelled or signalled (finished), and a
    synchronous caller of the one replaced gets it ``skipped``."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, debounce={"seconds": 1})
        answers: list[Any] = []

        async def synchronous() -> None:
            answers.append(await engine.executions.execute(wf, {}, wait=True, timeout_seconds=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(synchronous)
            await until(lambda: engine.store.list_executions(ExecutionQuery())[1] == 1, 30)
            later = await engine.executions.execute(wf, {}, wait=False)
        first = answers[0]
        assert (first.status, first.debounced_by) == (ExecutionStatus.SKIPPED, later.execution_id)
        with pytest.raises(InvalidState):
            await engine.executions.cancel(first.execution_id)
        with pytest.raises(InvalidState):
            await engine.executions.signal(first.execution_id, "go", {})
        done = await wait_status(engine, later.execution_id, *ENDED, timeout=30)
    assert done.status is ExecutionStatus.COMPLETED
