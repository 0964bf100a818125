"""Attacks on #18's loop fast path: events go to ``abi_event`` hooks iff one is
registered *now* (the live pluggy list, not a copy taken at start), for executions
run by workers, accepted by ``execute_many`` stored running or queued; and the JSON
encoder kept per thread, used from many threads at once."""

from __future__ import annotations

import json
import threading
from typing import Any

import attrs

from abi_engine import Engine, ExecutionStatus, RuntimeSettings, WorkflowType, hookimpl, step
from abi_engine.events import Event
from abi_engine.storage import _codec


class Twice(WorkflowType):
    name = "twice"

    @attrs.define
    class Parameters:
        i: int

    @step
    async def one(self, ctx: Any) -> dict[str, int]:
        return {"v": ctx.parameters["i"]}

    @step
    async def two(self, ctx: Any) -> dict[str, int]:
        return {"v": ctx.parameters["i"] * 2}


class TwicePlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Twice)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, execution_id: str) -> list[str]:
        return [
            e.type
            for e in self.events
            if execution_id in (e.data.get("execution_id"), e.data.get("id"))
        ]


def _run_all(engine: Engine, workflow_id: str, count: int) -> list[str]:
    """``count`` executions by execute_many (some stored running, some queued), and one
    by execute; all waited for; their ids."""
    many = engine.call(
        engine.executions.execute_many, workflow_id, [{"i": i} for i in range(count)]
    )
    statuses = {e.status for e in many}
    assert ExecutionStatus.RUNNING in statuses
    assert ExecutionStatus.QUEUED in statuses
    one = engine.call(engine.executions.execute, workflow_id, {"i": 9})
    ids = [e.execution_id for e in many] + [one.execution_id]
    for execution_id in ids:
        done = engine.call(engine.executions.wait, execution_id, timeout=60)
        assert done.status is ExecutionStatus.COMPLETED
    return ids


def test_a_plugin_registered_after_start_gets_every_event_and_none_once_gone(
    databases: Any,
) -> None:
    """Before any abi_event hook: none is called (a recorder kept aside sees nothing).
    A hook registered on the running engine sees, for each execution accepted after,
    its acceptance, two step completions then the completion; unregistered, it sees nothing more."""
    engine = Engine(databases(), plugins=[TwicePlugin()], runtime=RuntimeSettings(workers=2))
    try:
        workflow = engine.call(engine.workflows.create, {"name": "t", "type": "twice"})
        engine.call(engine.workflows.activate, workflow.id)
        assert not engine.events.has_hooks()
        before = _run_all(engine, workflow.id, 5)

        late = Recorder()
        engine.pm.register(late, name="late-recorder")
        assert engine.events.has_hooks()
        during = _run_all(engine, workflow.id, 5)
        for execution_id in during:
            assert late.of(execution_id) == [
                "workflow.executed",
                "execution.step_completed",
                "execution.step_completed",
                "execution.completed",
            ], execution_id
        assert not any(late.of(execution_id) for execution_id in before)

        engine.pm.unregister(late)
        assert not engine.events.has_hooks()
        seen = len(late.events)
        after = _run_all(engine, workflow.id, 5)
        assert len(late.events) == seen
        assert not any(late.of(execution_id) for execution_id in after)
    finally:
        engine.close()


def test_the_per_thread_json_encoder_from_many_threads_at_once() -> None:
    """8 threads encode nested documents at once (a barrier lines them up), some of
    them refused midway (a cycle, NaN): each text is the library's, each refusal the
    library's, and no thread's markers leak into another's."""
    threads, rounds = 8, 400
    barrier = threading.Barrier(threads)
    failures: list[str] = []

    def work(n: int) -> None:
        barrier.wait(timeout=60)
        for r in range(rounds):
            doc = {"n": n, "r": r, "list": [{"k": [n, r, "é"]}] * 3, "nested": {"a": [r] * 5}}
            if r % 7 == 3:
                cyclic: list[Any] = [doc]
                cyclic.append(cyclic)
                try:
                    _codec.dumps(cyclic)
                    failures.append(f"{n}/{r}: a cycle was encoded")
                except ValueError:
                    pass
                continue
            if r % 11 == 5:
                try:
                    _codec.dumps({"x": [float("nan")]})
                    failures.append(f"{n}/{r}: NaN was encoded")
                except ValueError:
                    pass
                continue
            expected = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
            text = _codec.dumps(doc)
            if text != expected or _codec.loads(text) != json.loads(expected):
                failures.append(f"{n}/{r}: {text!r}")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in workers)
    assert failures == []
