"""Reruns from a step, pause and resume, and why a queued execution waits (#16),
on every engine backend (SQLite file, PostgreSQL where configured)."""

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
from abi_engine.errors import ExecutionNotFound, InvalidRequest, InvalidState
from abi_engine.models import StepStatus

pytestmark = pytest.mark.anyio


FAIL_SECOND = {"do": {"second": {"raise": "boom"}}}


# -- rerun -----------------------------------------------------------------------------------


async def test_a_rerun_starts_at_the_failed_step_and_reuses_the_results_before_it(
    make: EngineFactory,
) -> None:
    """A failed execution rerun with new parameters runs from its failed step on: the
    first step is not run again, its stored result is what the second step sees, and
    the rerun links to the original (``rerun_of``; listed by ``rerun_of=``)."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        first = await engine.executions.execute(wf, FAIL_SECOND, wait=False)
        failed = await wait_status(engine, first.execution_id, *TERMINAL, timeout=30)
        assert failed.status is ExecutionStatus.FAILED
        rerun = await engine.executions.rerun(first.execution_id, parameters={})
        assert rerun.rerun_of == first.execution_id
        assert rerun.status is ExecutionStatus.QUEUED
        done = await wait_status(engine, rerun.execution_id, *TERMINAL, timeout=30)
        listed = await engine.executions.list(rerun_of=first.execution_id)
    assert done.status is ExecutionStatus.COMPLETED, done.error
    assert PROBE.runs(rerun.execution_id) == {"second": 1, "third": 1}
    assert PROBE.runs(first.execution_id) == {"first": 1, "second": 1}
    steps = done.steps or []
    assert [s.status for s in steps] == [StepStatus.COMPLETED] * 3
    assert [s.reused_from for s in steps] == [first.execution_id, None, None]
    second_saw = [w for e, s, w in PROBE.notes if e == rerun.execution_id]
    assert second_saw == []  # nothing noted; the result carries what it saw:
    assert done.result == {"done": 3}
    assert [i.execution_id for i in listed.items] == [rerun.execution_id]


async def test_a_rerun_from_a_named_step_runs_that_step_and_after(make: EngineFactory) -> None:
    """``from_step`` by name and by index: the steps from it run again, those before
    are reused; the default for a completed execution is the first step."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        original = await engine.executions.execute(wf, {}, wait=True)
        by_name = await engine.executions.rerun(original.execution_id, from_step="third")
        by_index = await engine.executions.rerun(original.execution_id, from_step=1)
        whole = await engine.executions.rerun(original.execution_id)
        for ex in (by_name, by_index, whole):
            final = await wait_status(engine, ex.execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(by_name.execution_id) == {"third": 1}
    assert PROBE.runs(by_index.execution_id) == {"second": 1, "third": 1}
    assert PROBE.runs(whole.execution_id) == {"first": 1, "second": 1, "third": 1}


async def test_a_rerun_refuses_what_it_cannot_do(make: EngineFactory) -> None:
    """An unknown step, a step needing a result the original lacks, an unknown
    configuration mode: ``InvalidRequest`` naming the field; an original still
    running: ``InvalidState``; an unknown execution: ``ExecutionNotFound``."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        failed = await engine.executions.execute(wf, FAIL_SECOND, wait=False)
        await wait_status(engine, failed.execution_id, *TERMINAL, timeout=30)
        for bad, field in (
            ({"from_step": "nope"}, "from_step"),
            ({"from_step": 7}, "from_step"),
            ({"from_step": "third"}, "from_step"),  # needs 'second', which failed
            ({"configuration": "latest"}, "configuration"),
        ):
            with pytest.raises(InvalidRequest) as caught:
                await engine.executions.rerun(failed.execution_id, **bad)  # type: ignore[arg-type]
            assert caught.value.details["field"] == field, bad
        gated = await engine.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False)
        with pytest.raises(InvalidState) as state:
            await engine.executions.rerun(gated.execution_id)
        assert state.value.details["execution_id"] == gated.execution_id
        with pytest.raises(ExecutionNotFound):
            await engine.executions.rerun("exec_missing")
        PROBE.gate("g").set()
        await wait_status(engine, gated.execution_id, *TERMINAL, timeout=30)


async def test_a_bulk_rerun_lists_then_starts_what_its_filter_matches(
    make: EngineFactory,
) -> None:
    """A dry run lists the failed executions and starts nothing; the real one starts a
    rerun of each, at most ``limit``; a filter naming an unfinished status is refused."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        failed = []
        for _ in range(3):
            ex = await engine.executions.execute(wf, FAIL_SECOND, wait=False)
            await wait_status(engine, ex.execution_id, *TERMINAL, timeout=30)
            failed.append(ex.execution_id)
        await engine.executions.execute(wf, {}, wait=True)  # completed: not taken
        dry = await engine.executions.rerun_many(workflow_id=wf, dry_run=True)
        assert dry["matched"] == 3
        assert sorted(i["execution_id"] for i in dry["items"]) == sorted(failed)
        assert all(i["rerun_execution_id"] is None for i in dry["items"])
        assert (await engine.executions.list(workflow_id=wf)).pagination.total_items == 4
        real = await engine.executions.rerun_many(workflow_id=wf, status=["failed"], limit=2)
        started = [i["rerun_execution_id"] for i in real["items"]]
        assert len(started) == 2
        assert all(started)
        with pytest.raises(InvalidRequest) as caught:
            await engine.executions.rerun_many(status=["running"])
        assert caught.value.details["field"] == "filter.status"
        with pytest.raises(InvalidRequest):
            await engine.executions.rerun_many(limit=1001)
        for execution_id in started:
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.rerun_of in failed


# -- pause and resume --------------------------------------------------------------------------


async def test_a_running_execution_pauses_at_the_next_step_boundary_and_resumes(
    make: EngineFactory,
) -> None:
    """Paused while its first step runs, the execution finishes that step and then
    stops (``paused``, nobody holds it); resumed, it runs the remaining steps once."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        ex = await engine.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False)
        await wait_status(engine, ex.execution_id, ExecutionStatus.RUNNING, timeout=30)
        await PROBE.step_started("first").wait()
        asked = await engine.executions.pause(ex.execution_id)
        assert asked.status is ExecutionStatus.RUNNING  # at the next boundary
        PROBE.gate("g").set()
        paused = await wait_status(engine, ex.execution_id, ExecutionStatus.PAUSED, timeout=30)
        record = engine.store.get_execution(ex.execution_id)
        assert record is not None
        assert record.owner is None
        assert record.claim is None
        assert [s.status for s in paused.steps or []][:2] == [
            StepStatus.COMPLETED,
            StepStatus.PENDING,
        ]
        assert PROBE.runs(ex.execution_id) == {"first": 1}
        again = await engine.executions.pause(ex.execution_id)  # idempotent
        assert again.status is ExecutionStatus.PAUSED
        resumed = await engine.executions.resume(ex.execution_id)
        assert resumed.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
        final = await wait_status(engine, ex.execution_id, *TERMINAL, timeout=30)
        with pytest.raises(InvalidState):
            await engine.executions.resume(ex.execution_id)
        with pytest.raises(InvalidState):
            await engine.executions.pause(ex.execution_id)
    assert final.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(ex.execution_id) == {"first": 1, "second": 1, "third": 1}


async def test_a_paused_execution_stays_paused_across_a_restart_and_can_be_cancelled(
    make: EngineFactory,
) -> None:
    """A paused execution is not picked up by recovery after a restart (it shows no
    ``queued_reason``); cancelling it ends it."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        ex = await engine.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False)
        await PROBE.step_started("first").wait()
        await engine.executions.pause(ex.execution_id)
        PROBE.gate("g").set()
        await wait_status(engine, ex.execution_id, ExecutionStatus.PAUSED, timeout=30)
    again = make()
    async with again:
        for _ in range(3):  # recovery polls every 50 ms: several rounds pass
            await wait_status(again, ex.execution_id, ExecutionStatus.PAUSED, timeout=1)
            view = await again.executions.get(ex.execution_id)
            assert view.queued_reason is None
            await _sleep(0.2)
        assert PROBE.runs(ex.execution_id) == {"first": 1}
        cancelled = await again.executions.cancel(ex.execution_id)
    assert cancelled.status is ExecutionStatus.CANCELLED


async def test_a_queued_execution_pauses_at_once_and_shows_why_it_waited(
    make: EngineFactory,
) -> None:
    """A queued execution (no worker free) shows ``queued_reason`` ``worker_pool`` and
    ``queued_since``; paused, it is never started by the worker it was granted to;
    resumed, it shows queued since the resume, then runs."""
    from runtime_plugins.helpers import fast

    engine = make(settings=fast(workers=1))
    async with engine:
        wf = await new_workflow(engine)
        busy = await engine.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False)
        await PROBE.step_started("first").wait()
        queued = await engine.executions.execute(wf, {}, wait=False)
        view = await engine.executions.get(queued.execution_id)
        assert view.status is ExecutionStatus.QUEUED
        assert view.queued_reason == "worker_pool"
        assert view.queued_since == view.created_at
        paused = await engine.executions.pause(queued.execution_id)
        assert paused.status is ExecutionStatus.PAUSED
        assert paused.queued_reason is None
        PROBE.gate("g").set()
        await wait_status(engine, busy.execution_id, *TERMINAL, timeout=30)
        await _sleep(0.3)
        assert (await engine.executions.get(queued.execution_id)).status is ExecutionStatus.PAUSED
        assert PROBE.runs(queued.execution_id) == {}
        resumed = await engine.executions.resume(queued.execution_id)
        if resumed.status is ExecutionStatus.QUEUED:
            assert resumed.queued_since is not None
            assert resumed.created_at is not None
            assert resumed.queued_since > resumed.created_at
        final = await wait_status(engine, queued.execution_id, *TERMINAL, timeout=30)
    assert final.status is ExecutionStatus.COMPLETED
    assert final.queued_reason is None
    assert final.queued_since is None


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


# -- pausing a workflow ------------------------------------------------------------------------


async def test_a_paused_workflow_holds_its_new_executions_queued_until_resumed(
    make: EngineFactory,
) -> None:
    """Executions requested of a paused workflow (async, sync, rerun) are accepted and
    wait ``queued`` with ``queued_reason`` ``paused``, across a restart too; resumed,
    they all run. Another workflow is not held."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine)
        other = await new_workflow(engine)
        done = await engine.executions.execute(wf, {}, wait=True)
        view = await engine.executions.pause_workflow(wf)
        assert view.paused
        assert view.paused_at is not None
        held = await engine.executions.execute(wf, {}, wait=False)
        assert held.queued_reason == "paused"
        rerun = await engine.executions.rerun(done.execution_id)
        import anyio

        with anyio.move_on_after(0.5):  # a synchronous caller waits; it is held too
            await engine.executions.execute(wf, {}, wait=True)
        free = await engine.executions.execute(other, {}, wait=True)
        assert free.status is ExecutionStatus.COMPLETED
    again = make()
    async with again:
        await _sleep(0.3)  # several recovery polls
        ids = [held.execution_id, rerun.execution_id]
        for execution_id in ids:
            view_now = await again.executions.get(execution_id)
            assert view_now.status is ExecutionStatus.QUEUED
            assert view_now.queued_reason == "paused"
        assert PROBE.runs(held.execution_id) == {}
        resumed = await again.executions.pause_workflow(wf, paused=False)
        assert not resumed.paused
        assert resumed.changed_executions == 3
        for execution_id in ids:
            final = await wait_status(again, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
        page = await again.executions.list(workflow_id=wf, status="completed")
    assert page.pagination.total_items == 4


async def test_a_rerun_emits_execution_rerun(make: EngineFactory) -> None:
    """``execution.rerun`` reaches the ``abi_event`` hooks with the new execution, the
    original, the step it starts at and the steps reused; webhooks may subscribe to it."""
    from abi_engine import hookimpl
    from abi_engine.events import EVENT_TYPES, Event

    seen: list[Event] = []

    class Recorder:
        @hookimpl
        def abi_event(self, event: Event) -> None:
            seen.append(event)

    engine = make(plugins=(Recorder(),))
    async with engine:
        wf = await new_workflow(engine)
        first = await engine.executions.execute(wf, FAIL_SECOND, wait=False)
        await wait_status(engine, first.execution_id, *TERMINAL, timeout=30)
        rerun = await engine.executions.rerun(first.execution_id, configuration="current")
        await wait_status(engine, rerun.execution_id, *TERMINAL, timeout=30)
    assert "execution.rerun" in EVENT_TYPES
    (event,) = [e for e in seen if e.type == "execution.rerun"]
    assert event.data == {
        "execution_id": rerun.execution_id,
        "workflow_id": wf,
        "rerun_of": first.execution_id,
        "from_step": "second",
        "configuration": "current",
        "reused_steps": ["first"],
    }
