"""The synchronous door (#18): engine.call's direct hand-off, waits that read once,
group commits off the event loop at ``durability="full"``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import ExecutionNotFound, InvalidRequest
from abi_engine.storage.sqlite import SQLiteStore

STEPS = {
    "steps": [
        {"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}},
        {"name": "double", "action": "transform", "expressions": {"b": "results['add']['a'] * 2"}},
    ]
}


def _workflow(engine: Engine) -> str:
    wf = engine.call(
        engine.workflows.create, {"name": "door", "type": "custom", "configuration": STEPS}
    )
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


@pytest.fixture
def full_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(tmp_path / "full.db", durability="full")
    try:
        yield engine
    finally:
        engine.close()


def test_full_durability_commits_off_the_loop(full_engine: Engine, tmp_path: Path) -> None:
    """At durability="full" every group commit is applied in a worker thread, never on
    the event loop; executions submitted one call at a time from 4 threads all run to
    their results, and every accepted one is in the file after the engine closed."""
    engine = full_engine
    store = engine.store
    assert isinstance(store, SQLiteStore)
    assert store.commits_in_thread
    appliers: set[int] = set()
    apply = store.apply

    def recording_apply(ops: Any) -> Any:
        appliers.add(threading.get_ident())
        return apply(ops)

    store.apply = recording_apply  # type: ignore[method-assign]
    wf_id = _workflow(engine)
    accepted: dict[str, int] = {}
    lock = threading.Lock()

    def submit(first: int) -> None:
        for i in range(first, 40, 4):
            ex = engine.call(engine.executions.execute, wf_id, {"i": i}, wait=False)
            with lock:
                accepted[ex.execution_id] = i

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for execution_id, i in accepted.items():
        done = engine.call(engine.executions.wait, execution_id, 60)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == {"b": (i + 1) * 2}
    assert len(accepted) == 40
    loop_thread = engine._loop_thread
    assert appliers
    assert loop_thread is not None
    assert loop_thread not in appliers
    engine.close()
    reopened = SQLiteStore(tmp_path / "full.db")
    try:
        for execution_id in accepted:
            record = reopened.get_execution(execution_id)
            assert record is not None
            assert record.status is ExecutionStatus.COMPLETED
    finally:
        reopened.close()


def test_normal_durability_commits_on_the_loop(tmp_path: Path) -> None:
    """At durability="normal" (no fsync to wait for) commits stay inline."""
    store = SQLiteStore(tmp_path / "normal.db")
    try:
        assert not store.commits_in_thread
    finally:
        store.close()
    memory = SQLiteStore(":memory:", durability="full")
    try:
        assert not memory.commits_in_thread  # nothing to fsync
    finally:
        memory.close()


def test_call_runs_on_the_loop_and_raises_what_the_coroutine_raises(tmp_path: Path) -> None:
    """The direct hand-off: the coroutine runs on the engine's loop thread, keyword
    arguments pass, its exception comes back to the caller as raised, and an awaitable
    that is not a coroutine works too."""
    engine = Engine(tmp_path / "abi.db")
    try:
        engine.start_blocking()

        async def where(*, tag: str) -> tuple[int, str]:
            return threading.get_ident(), tag

        ident, tag = engine.call(where, tag="x")
        assert ident == engine._loop_thread != threading.get_ident()
        assert tag == "x"
        with pytest.raises(ExecutionNotFound):
            engine.call(engine.executions.get, "exec_missing")
        with pytest.raises(InvalidRequest):
            engine.call(engine.executions.list, page_size=0)

        class Later:
            def __await__(self) -> Any:
                return (yield from where(tag="awaitable").__await__())

        assert engine.call(Later)[1] == "awaitable"
    finally:
        engine.close()


def test_wait_on_an_ended_execution_reads_it_once(tmp_path: Path) -> None:
    """wait() of an execution that ended already answers from one read of the execution
    (and one of its steps); an unknown id is ExecutionNotFound."""
    engine = Engine(tmp_path / "abi.db")
    try:
        wf_id = _workflow(engine)
        ex = engine.call(engine.executions.execute, wf_id, {"i": 3})
        assert ex.result == {"b": 8}
        reads: list[str] = []
        get_execution = engine.store.get_execution

        def counting(execution_id: str) -> Any:
            reads.append(execution_id)
            return get_execution(execution_id)

        engine.store.get_execution = counting  # type: ignore[method-assign]
        done = engine.call(engine.executions.wait, ex.execution_id, 5)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == {"b": 8}
        assert [s.name for s in done.steps] == ["add", "double"]
        assert reads == [ex.execution_id]
        with pytest.raises(ExecutionNotFound):
            engine.call(engine.executions.wait, "exec_nope", 1)
        with pytest.raises(ExecutionNotFound):
            engine.call(engine.executions.wait, 42, 1)  # type: ignore[arg-type]
    finally:
        engine.close()


def test_wait_for_a_running_execution_still_waits(tmp_path: Path) -> None:
    """An execution not ended yet is waited for (the one read does not answer early)."""
    engine = Engine(tmp_path / "abi.db")
    try:
        wf_id = _workflow(engine)
        started = engine.call(engine.executions.execute, wf_id, {"i": 1}, wait=False)
        view, settled = engine.call(engine.executions.wait_settled, started.execution_id, 30)
        assert settled
        assert view.status is ExecutionStatus.COMPLETED
        assert view.result == {"b": 4}
    finally:
        engine.close()
