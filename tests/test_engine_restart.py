"""An engine started again after a stop, on the same :class:`Engine` object, runs what
it accepts (``async with engine`` twice on one loop, ``start_blocking`` twice on two
loops), through the loop and through the synchronous thread door (#18)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from abi_engine import Engine, ExecutionStatus

STEPS = {
    "steps": [{"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}}]
}

DatabaseFactory = Callable[..., Any]


def test_async_with_twice_on_the_same_engine_runs_executions(databases: DatabaseFactory) -> None:
    engine = Engine(databases())

    async def main() -> None:
        async with engine:
            wf = await engine.workflows.create(
                {"name": "again", "type": "custom", "configuration": STEPS}
            )
            await engine.workflows.activate(wf.id)
            first = await engine.executions.execute(wf.id, {"i": 1}, wait=True)
            assert first.status is ExecutionStatus.COMPLETED
        assert not engine.runtime.running
        async with engine:
            assert engine.runtime.running
            accepted = await engine.executions.execute(wf.id, {"i": 2}, wait=False)
            with anyio.fail_after(60):
                done = await engine.executions.wait(accepted.execution_id)
            assert done.status is ExecutionStatus.COMPLETED
            assert [s.name for s in done.steps or []] == ["add"]

    try:
        anyio.run(main)
    finally:
        engine.close()


def test_start_blocking_twice_runs_thread_door_executions(databases: DatabaseFactory) -> None:
    engine = Engine(databases())
    try:
        engine.start_blocking()
        wf = engine.call(
            engine.workflows.create, {"name": "again", "type": "custom", "configuration": STEPS}
        )
        engine.call(engine.workflows.activate, wf.id)
        first = engine.call(engine.executions.execute, wf.id, {"i": 1}, wait=False)
        engine.call(engine.executions.wait, first.execution_id, timeout=60)
        engine.stop_blocking()
        assert not engine.runtime.running
        engine.start_blocking()  # a new loop in a new thread
        assert engine.runtime.running
        ids = [
            engine.call(engine.executions.execute, wf.id, {"i": i}, wait=False).execution_id
            for i in range(5)
        ]
        for execution_id in ids:
            done = engine.call(engine.executions.wait, execution_id, timeout=60)
            assert done.status is ExecutionStatus.COMPLETED
            assert [s.name for s in done.steps or []] == ["add"]
    finally:
        engine.close()


@pytest.mark.parametrize("rounds", [3])
def test_an_engine_restarted_several_times_keeps_running(
    databases: DatabaseFactory, rounds: int
) -> None:
    engine = Engine(databases())
    try:
        engine.start_blocking()
        wf = engine.call(
            engine.workflows.create, {"name": "again", "type": "custom", "configuration": STEPS}
        )
        engine.call(engine.workflows.activate, wf.id)
        for round_ in range(rounds):
            if round_:
                engine.stop_blocking()
                engine.start_blocking()
            done = engine.call(engine.executions.execute, wf.id, {"i": round_}, wait=True)
            assert done.status is ExecutionStatus.COMPLETED
    finally:
        engine.close()
