"""The group committer's own threads (#18, fix 19): batches written off the loop
(PostgreSQL, a SQLite file at ``durability="full"``) go to threads of the committer's
own instead of anyio's worker threads; each batch is answered once, a failing one
raises in its writer, and the threads end with the writer."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory, fast, new_workflow

from abi_engine import ExecutionStatus
from abi_engine.runtime.batches import Appliers


def _appliers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("abi-engine-commit-")]


@pytest.mark.anyio
async def test_appliers_answer_each_call_and_raise_its_error() -> None:
    appliers = Appliers(2, name="abi-engine-commit-test")
    try:
        seen: list[str] = []

        def work(n: int) -> int:
            seen.append(threading.current_thread().name)
            if n == 3:
                raise OSError("injected: the disk failed")
            return n * 10

        answers: dict[int, object] = {}

        async def one(n: int) -> None:
            try:
                answers[n] = await appliers.run(lambda: work(n))
            except OSError as exc:
                answers[n] = exc

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(one, n)
        assert {n: a for n, a in answers.items() if n != 3} == {0: 0, 1: 10, 2: 20, 4: 40, 5: 50}
        assert isinstance(answers[3], OSError)
        assert all(name.startswith("abi-engine-commit-test-") for name in seen)
    finally:
        appliers.stop()
    deadline = time.monotonic() + 30
    while any(t.name.startswith("abi-engine-commit-test-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the threads did not end"
        await anyio.sleep(0.05)


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_the_writers_threads_run_while_the_engine_runs(
    make: EngineFactory, durability: str
) -> None:
    engine = make(settings=fast(workers=4), durability=durability)
    off_loop = engine.store.blocking or durability == "full"
    before = set(_appliers_alive())
    engine.start_blocking()
    try:
        wf = engine.call(new_workflow, engine)
        ids = [a.execution_id for a in engine.call(engine.executions.execute_many, wf, [{}] * 20)]
        for execution_id in ids:
            final = engine.call(engine.executions.wait, execution_id, 60)
            assert final.status is ExecutionStatus.COMPLETED
            assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
        started = set(_appliers_alive()) - before
        assert bool(started) is off_loop  # on the loop at normal on SQLite: no thread
    finally:
        engine.stop_blocking()
        engine.close()
    deadline = time.monotonic() + 30
    while set(_appliers_alive()) - before:
        assert time.monotonic() < deadline, "the writer's threads did not end with it"
        time.sleep(0.05)
