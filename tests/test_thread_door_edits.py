"""Workflow edits racing acceptances (#18, the adversary): an execution whose request was
checked against one version of its workflow is not stored once another version (an
update, a deactivation, a deletion, a pause or resume) was committed meanwhile. The
request is checked again: refused as the contract says (409 ``INVALID_STATE`` for an
inactive workflow, 404 for a deleted one) or accepted under the new version, and runs
with the configuration it was accepted under.

The edit is aimed exactly between the check and the commit: it runs inside the
check's read of the workflow's version (a hook on the store), both through the
synchronous thread door (``engine.call(execute, wait=False)``, answered in the
caller's thread) and through the loop (an ``idempotency_key`` sends it there). It is
committed straight through the store, as another node of the same database would
(the loop reads the version on the loop itself on SQLite: it cannot wait there for a
service call)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import pytest

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import InvalidState, WorkflowNotFound
from abi_engine.ids import utcnow
from abi_engine.models import WorkflowStatus
from abi_engine.storage.records import InsertExecution, PauseWorkflow

DatabaseFactory = Callable[..., Any]


def _steps(factor: int) -> dict[str, Any]:
    return {
        "steps": [
            {
                "name": "scale",
                "action": "transform",
                "expressions": {"v": f"parameters['i'] * {factor}"},
            }
        ]
    }


@pytest.fixture
def engine(backend_engine: Engine) -> Engine:
    return backend_engine


def _workflow(engine: Engine) -> str:
    wf = engine.call(
        engine.workflows.create, {"name": "edits", "type": "custom", "configuration": _steps(2)}
    )
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


class EditInsideCheck:
    """Runs ``edit`` once, inside the next read of the workflow's version made while
    ``armed`` (or, where no version is read before the insert, just before the insert's
    transaction): after the request was checked, before its insert is committed. Every
    insert committed is recorded."""

    def __init__(self, engine: Engine) -> None:
        self.edit: Callable[[], Any] | None = None
        self.done = threading.Event()
        self.inserted: list[str] = []
        #: Inserts committed by a transaction begun after an edit was committed.
        self.late: list[str] = []
        self.edited = threading.Event()
        store = engine.store
        read, apply, update = store.workflow_version, store.apply, store.update_workflow

        def version(workflow_id: str) -> Any:
            seen = read(workflow_id)
            edit, self.edit = self.edit, None
            if edit is not None:
                edit()  # committed (and answered) before the request goes on
                self.done.set()
            return seen

        def applying(ops: Any) -> Any:
            if any(isinstance(op, InsertExecution) for op in ops):
                # The thread door reads no version before its insert (fix 14: its
                # transaction checks it): the edit goes just before that transaction.
                edit, self.edit = self.edit, None
                if edit is not None:
                    edit()
                    self.done.set()
            after_edit = self.edited.is_set()
            results = apply(ops)
            ids = [
                op.record.id
                for op, result in zip(ops, results, strict=True)
                if isinstance(op, InsertExecution) and result is True
            ]
            self.inserted.extend(ids)
            if after_edit:
                self.late.extend(ids)
            return results

        def updating(*args: Any, **kwargs: Any) -> Any:
            updated = update(*args, **kwargs)
            self.edited.set()
            return updated

        store.workflow_version = version  # type: ignore[method-assign]
        store.apply = applying  # type: ignore[method-assign]
        store.update_workflow = updating  # type: ignore[method-assign]


def _edit(engine: Engine, wf_id: str, **changes: Any) -> None:
    """Commit a new version of the workflow (``changes``), as another node would."""
    current = engine.store.get_workflow(wf_id)
    assert current is not None
    assert engine.store.update_workflow(attrs.evolve(current, updated_at=utcnow(), **changes))


def _deactivate(engine: Engine, wf_id: str) -> None:
    _edit(engine, wf_id, status=WorkflowStatus.INACTIVE, deactivated_at=utcnow())


def _pause(engine: Engine, wf_id: str, paused: bool) -> None:
    op = PauseWorkflow(workflow_id=wf_id, paused=paused, at=utcnow())
    assert engine.store.apply([op])[0] is not None


def _execute(engine: Engine, door: str, wf_id: str, i: int) -> Any:
    execute = partial(engine.executions.execute, wait=False)
    if door == "loop":
        execute = partial(execute, idempotency_key=f"k{i}-{time.monotonic_ns()}")
    return engine.call(execute, wf_id, {"i": i})


def _stored(engine: Engine, wf_id: str) -> list[str]:
    page = engine.call(engine.executions.list, workflow_id=wf_id, page_size=100)
    return [e.execution_id for e in page.items]


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_a_deactivation_committed_after_the_check_refuses_the_request(
    engine: Engine, door: str
) -> None:
    """Deactivated between the check and the insert: 409 ``INVALID_STATE``, and nothing
    stored (not accepted by anyone, nothing left to run)."""
    wf_id = _workflow(engine)
    first = _execute(engine, door, wf_id, 1)  # compiles and caches the workflow
    hook = EditInsideCheck(engine)
    hook.edit = lambda: _deactivate(engine, wf_id)
    with pytest.raises(InvalidState) as refused:
        _execute(engine, door, wf_id, 2)
    assert hook.done.is_set()
    assert refused.value.details["status"] == "inactive"
    assert _stored(engine, wf_id) == [first.execution_id]


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_a_deletion_committed_after_the_check_refuses_the_request(
    engine: Engine, door: str
) -> None:
    wf_id = _workflow(engine)
    first = _execute(engine, door, wf_id, 1)
    done = engine.call(engine.executions.wait, first.execution_id, 60)
    assert done.status is ExecutionStatus.COMPLETED
    hook = EditInsideCheck(engine)
    hook.edit = lambda: engine.store.delete_workflow(wf_id, utcnow())
    with pytest.raises(WorkflowNotFound):
        _execute(engine, door, wf_id, 2)
    assert hook.done.is_set()
    assert hook.inserted == []


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_an_update_committed_after_the_check_runs_the_new_steps(engine: Engine, door: str) -> None:
    """Updated between the check and the insert: the execution is accepted under the
    new version (its configuration stored, its steps run) or not at all."""
    wf_id = _workflow(engine)
    _execute(engine, door, wf_id, 1)
    hook = EditInsideCheck(engine)
    hook.edit = lambda: _edit(engine, wf_id, configuration=_steps(1000))
    accepted = _execute(engine, door, wf_id, 3)
    assert hook.done.is_set()
    done = engine.call(engine.executions.wait, accepted.execution_id, 60)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.result == {"v": 3000}
    record = engine.store.get_execution(accepted.execution_id)
    assert record is not None
    assert record.configuration == _steps(1000)
    # And the next request (the cache) sees the new version too.
    again = engine.call(engine.executions.wait, _execute(engine, door, wf_id, 4).execution_id, 60)
    assert again.result == {"v": 4000}


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_a_resume_committed_after_the_check_does_not_leave_the_execution_held(
    engine: Engine, door: str
) -> None:
    """Checked while its workflow was paused (held, as the cache says), resumed before its
    insert commits: it must not be stored held for a pause that is over (nothing would
    release it)."""
    wf_id = _workflow(engine)
    engine.call(engine.executions.pause_workflow, wf_id)
    held = _execute(engine, door, wf_id, 1)  # compiles the paused version, held
    hook = EditInsideCheck(engine)
    hook.edit = lambda: _pause(engine, wf_id, False)
    late = _execute(engine, door, wf_id, 2)
    assert hook.done.is_set()
    for accepted, value in ((held, 2), (late, 4)):
        done = engine.call(engine.executions.wait, accepted.execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED, done
        assert done.result == {"v": value}


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_threads_racing_a_deactivation_store_nothing_after_it(engine: Engine, door: str) -> None:
    """8 threads submitting while the workflow is deactivated: every request answered
    with an execution has it stored and run; every other one is refused 409; once the
    deactivation is answered, nothing more is stored."""
    wf_id = _workflow(engine)
    _execute(engine, door, wf_id, 0)
    hook = EditInsideCheck(engine)
    deactivated = threading.Event()
    answers: list[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(9)

    def submit(t: int) -> None:
        start.wait(60)
        for i in range(40):
            try:
                answer: Any = _execute(engine, door, wf_id, t * 100 + i)
            except InvalidState as exc:
                answer = exc
            with lock:
                answers.append(answer)
            if deactivated.is_set() and isinstance(answer, InvalidState):
                return

    def deactivate() -> None:
        _deactivate(engine, wf_id)
        deactivated.set()

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    start.wait(60)
    hook.edit = deactivate  # inside one of the threads' checks
    for thread in threads:
        thread.join(120)
    assert hook.done.is_set()
    accepted = [a for a in answers if not isinstance(a, InvalidState)]
    assert {a.execution_id for a in accepted} <= set(hook.inserted)
    assert hook.late == []  # no transaction begun after the deactivation stored one
    assert len(accepted) < len(answers)
    for a in accepted:
        done = engine.call(engine.executions.wait, a.execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED
