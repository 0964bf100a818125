"""The synchronous door's caller side (#18, fix 14): ``engine.call(execute)`` with
``wait=True`` commits the execution in the caller's thread and waits there (told by
the loop's run when it ends), timing out as ``execute`` does; the version of the
workflow a call was checked against is checked again in the insert's transaction, so
a change committed before the call (by this engine or another) is seen."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import (
    EngineNotRunning,
    ExecutionTimeout,
    InvalidState,
    WorkflowExecutionError,
    WorkflowNotFound,
)
from abi_engine.storage.records import InsertExecution


class Hops:
    """Counts the coroutines ``Engine.call`` hands to the event loop."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = asyncio.run_coroutine_threadsafe

        def counting(coro: Any, loop: Any) -> Any:
            self.count += 1
            return real(coro, loop)

        monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", counting)


def _workflow(engine: Engine, **fields: Any) -> str:
    body = {"name": "door", "type": "test_three", "configuration": {}, **fields}
    wf = engine.call(engine.workflows.create, body)
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


def _inserts_by_thread(engine: Engine) -> list[int]:
    """The thread of every ``store.apply`` carrying an insert, from now on."""
    threads: list[int] = []
    apply = engine.store.apply

    def recording(ops: Any) -> Any:
        if any(isinstance(op, InsertExecution) for op in ops):
            threads.append(threading.get_ident())
        return apply(ops)

    engine.store.apply = recording  # type: ignore[method-assign]
    return threads


def test_sequential_execute_runs_without_handing_a_coroutine_to_the_loop(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``execute`` (``wait=True``) through ``engine.call``: no coroutine goes to the loop;
    the insert is committed from the caller's thread, stored running (it starts at once),
    and the answer is the ended execution with its steps, as the loop would give it."""
    engine = make()
    engine.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})  # compiles it
    hops = Hops(monkeypatch)
    threads = _inserts_by_thread(engine)
    done = [engine.call(engine.executions.execute, wf_id, {"n": i}) for i in range(10)]
    assert hops.count == 0
    assert threads.count(threading.get_ident()) == 10
    for ex in done:
        assert ex.status is ExecutionStatus.COMPLETED
        assert ex.steps is not None
        assert [(s.name, s.status) for s in ex.steps] == [
            ("first", StepStatus.COMPLETED),
            ("second", StepStatus.COMPLETED),
            ("third", StepStatus.COMPLETED),
        ]
        stored = engine.call(engine.executions.get, ex.execution_id)
        assert stored.status is ExecutionStatus.COMPLETED
        assert stored.result == ex.result
    assert len({ex.execution_id for ex in done}) == 10
    assert not engine.runtime._waiters  # every waiter let go


def test_a_failed_execution_raises_in_the_callers_thread(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails is ``WorkflowExecutionError`` naming the step, as from the loop."""
    engine = make()
    engine.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})
    hops = Hops(monkeypatch)
    with pytest.raises(WorkflowExecutionError) as caught:
        engine.call(engine.executions.execute, wf_id, {"do": {"second": {"raise": "boom"}}})
    assert hops.count == 0
    details = caught.value.details
    assert details["step"] == "second"
    assert "boom" in details["error_message"]
    stored = engine.call(engine.executions.get, details["execution_id"])
    assert stored.status is ExecutionStatus.FAILED


def test_a_sequential_timeout_ends_the_execution_timed_out(make: EngineFactory) -> None:
    """Past ``timeout_seconds`` the caller's thread gets ``ExecutionTimeout`` and the
    execution ends ``timed_out``, its running step failed and the next one never run:
    what ``execute`` does from the loop (``test_sync_timeout_ends_timed_out``)."""
    engine = make()
    engine.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})
    started = time.monotonic()
    with pytest.raises(ExecutionTimeout) as caught:
        engine.call(
            engine.executions.execute,
            wf_id,
            {"do": {"second": {"sleep": 30}}},
            timeout_seconds=0.3,
        )
    assert time.monotonic() - started < 10
    assert caught.value.code == "EXECUTION_TIMEOUT"
    assert caught.value.details["timeout_seconds"] == 0.3
    execution_id = caught.value.details["execution_id"]
    execution = engine.call(engine.executions.get, execution_id)
    assert execution.status is ExecutionStatus.TIMED_OUT
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        ("first", StepStatus.COMPLETED),
        ("second", StepStatus.FAILED),
        ("third", StepStatus.PENDING),
    ]
    assert PROBE.runs(execution_id) == {"first": 1, "second": 1}
    assert not engine.runtime._waiters


def test_a_wait_for_a_running_execution_waits_in_the_callers_thread(
    make: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``engine.call(wait)`` of an execution still running waits in the caller's thread
    (told by the run's end, no coroutine to the loop); past its timeout it answers the
    execution as it stands, as ``wait`` does."""
    engine = make()
    engine.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})
    slow = engine.call(
        engine.executions.execute, wf_id, {"do": {"second": {"sleep": 1.0}}}, wait=False
    )
    stuck = engine.call(
        engine.executions.execute, wf_id, {"do": {"second": {"sleep": 60}}}, wait=False
    )
    hops = Hops(monkeypatch)
    done = engine.call(engine.executions.wait, slow.execution_id, 60)
    assert hops.count == 0
    assert done.status is ExecutionStatus.COMPLETED
    assert done.steps is not None
    assert [s.status for s in done.steps] == [StepStatus.COMPLETED] * 3
    started = time.monotonic()
    current = engine.call(engine.executions.wait, stuck.execution_id, 0.3)
    assert time.monotonic() - started >= 0.3
    assert current.status is ExecutionStatus.RUNNING  # as it stands (read on the loop)
    assert hops.count == 1
    assert not engine.runtime._waiters
    engine.call(engine.executions.cancel, stuck.execution_id)


def test_a_waiting_caller_is_told_when_the_engine_stops_and_the_run_goes_on(
    make: EngineFactory,
) -> None:
    """The engine stopping while a caller's thread waits for its execution: the caller
    gets ``EngineNotRunning`` (not a hang), and the execution, committed before, runs
    to its end in the engine started next on the same database."""
    engine = make()
    engine.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})
    outcome: list[BaseException | Any] = []

    def call() -> None:
        try:
            outcome.append(
                engine.call(
                    engine.executions.execute,
                    wf_id,
                    {"do": {"second": {"sleep": 3}}},
                    timeout_seconds=600,  # its deadline does not pass before it is taken again
                )
            )
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 30
    while not engine.runtime._waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    (execution_id,) = list(engine.runtime._waiters)
    engine.stop_blocking()
    caller.join(30)
    assert not caller.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], EngineNotRunning)
    engine.close()
    again = make()
    again.start_blocking()
    ended = again.call(again.executions.wait, execution_id, 120)
    assert ended.status is ExecutionStatus.COMPLETED


def test_a_paused_workflow_times_out_the_waiting_caller_on_the_loop(
    make: EngineFactory,
) -> None:
    """A workflow paused: the execution waits queued, so the caller's wait runs out and
    the execution ends ``timed_out`` (by the loop, as ``execute`` ends it there)."""
    engine = make()
    engine.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})
    engine.call(engine.executions.pause_workflow, wf_id)
    engine.call(engine.executions.execute, wf_id, {}, wait=False)  # compiled again, paused
    with pytest.raises(ExecutionTimeout) as caught:
        engine.call(engine.executions.execute, wf_id, {}, timeout_seconds=0.3)
    execution = engine.call(engine.executions.get, caught.value.details["execution_id"])
    assert execution.status is ExecutionStatus.TIMED_OUT


Change = Callable[[Engine, str], Any]


def _deactivate(other: Engine, wf_id: str) -> None:
    other.call(other.workflows.deactivate, wf_id)


def _delete(other: Engine, wf_id: str) -> None:
    other.call(other.workflows.delete, wf_id)


def _edit(other: Engine, wf_id: str) -> None:
    workflow = other.call(other.workflows.get, wf_id)
    other.call(other.workflows.update, wf_id, {"name": "renamed", "type": workflow.type})


@pytest.mark.parametrize("wait", [True, False])
@pytest.mark.parametrize(
    ("change", "refusal"),
    [(_deactivate, InvalidState), (_delete, WorkflowNotFound), (_edit, None)],
)
def test_a_change_by_another_engine_is_seen_by_the_next_call(
    make: EngineFactory,
    monkeypatch: pytest.MonkeyPatch,
    wait: bool,
    change: Change,
    refusal: type[Exception] | None,
) -> None:
    """The workflow compiled here, then changed by another engine on the same database
    (this one's cache cannot know): the next call sees it. Its insert, checked against
    the version it was compiled at in the insert's own transaction, stores nothing, and
    the call goes to the loop, which reads the workflow again and refuses (inactive,
    deleted) or runs the new version (edited)."""
    engine = make()
    engine.start_blocking()
    other = make()
    other.start_blocking()
    wf_id = _workflow(engine)
    engine.call(engine.executions.execute, wf_id, {})  # compiled and cached here
    before = engine.call(engine.executions.list, workflow_id=wf_id).pagination.total_items
    change(other, wf_id)
    hops = Hops(monkeypatch)
    if refusal is not None:
        with pytest.raises(refusal):
            engine.call(engine.executions.execute, wf_id, {}, wait=wait)
        assert hops.count == 1  # the insert stored nothing: the loop answered
        if refusal is InvalidState:
            after = engine.call(engine.executions.list, workflow_id=wf_id).pagination.total_items
            assert after == before
        return
    ex = engine.call(engine.executions.execute, wf_id, {}, wait=wait)
    assert hops.count == 1
    assert ex.workflow_name == "renamed"
    after = engine.call(engine.executions.list, workflow_id=wf_id).pagination.total_items
    assert after == before + 1
    hops.count = 0
    ex = engine.call(engine.executions.execute, wf_id, {}, wait=wait)  # cached anew
    assert hops.count == 0
    assert ex.workflow_name == "renamed"


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["rename", "deactivate", "activate", "pause", "resume"]), st.booleans()
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_thread_door_answers_what_the_workflow_is_now(
    make: EngineFactory, steps: list[tuple[str, bool]]
) -> None:
    """Rule: whatever another engine changed before the call, a call through the thread
    door runs the workflow as it is then: refused while inactive, held ``paused`` while
    paused, named as last renamed; never as the version compiled here before."""
    engine = make()
    engine.start_blocking()
    other = make()
    other.start_blocking()
    wf_id = _workflow(engine)
    active, paused, name = True, False, "door"
    try:
        for n, (what, call_between) in enumerate(steps):
            if what == "rename":
                name = f"door {n}"
                other.call(other.workflows.update, wf_id, {"name": name, "type": "test_three"})
            elif what == "deactivate" and active:
                other.call(other.workflows.deactivate, wf_id)
                active = False
            elif what == "activate" and not active:
                other.call(other.workflows.activate, wf_id)
                active = True
            elif what in ("pause", "resume"):
                paused = what == "pause"
                other.call(other.executions.pause_workflow, wf_id, paused)
            if not call_between:
                continue
            if not active:
                with pytest.raises(InvalidState):
                    engine.call(engine.executions.execute, wf_id, {}, wait=False)
                continue
            ex = engine.call(engine.executions.execute, wf_id, {}, wait=False)
            assert ex.workflow_name == name
            stored = engine.call(engine.executions.get, ex.execution_id)
            if paused:
                assert stored.status is ExecutionStatus.QUEUED
                assert stored.queued_reason == "paused"
    finally:
        engine.close()
        other.close()
