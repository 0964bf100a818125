"""Attack on #18's execute_many fast path: executions stored *running* at their
acceptance (no claim write when a worker starts them), then their node is killed
(SIGKILL) after the insertion's commit and before any worker takes them. Another
engine on the same database takes each over once its lease ends, and runs each step
exactly once; none is left running or queued for ever.

The kill is aimed, not timed: the child process kills itself inside the committer's
follow-up of the insertion (``execution_batches._hand_over``), i.e. after the commit
and before the hand-over to a worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, ExecutionStatus, RuntimeSettings

pytestmark = pytest.mark.slow

_TYPES = """
import os
from typing import Any

import attrs

from abi_engine import WorkflowType, hookimpl, step

def _note(ctx: Any, name: str) -> None:
    fd = os.open(os.environ["FASTPATH_STEP_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.execution_id} {name}\\n".encode())
    finally:
        os.close(fd)


class Noted(WorkflowType):
    name = "noted"

    @attrs.define
    class Parameters:
        i: int

    @step
    async def first(self, ctx: Any) -> dict[str, int]:
        _note(ctx, "first")
        return {"i": ctx.parameters["i"]}

    @step
    async def second(self, ctx: Any) -> dict[str, int]:
        _note(ctx, "second")
        return {"i": ctx.parameters["i"] * 2}


class NotedPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Noted)
"""

_CHILD = """
import os, signal, sys
import abi_engine.execution_batches as batches
from abi_engine import Engine, RuntimeSettings
from fastpath_types import NotedPlugin

database, workers, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = Engine(database, plugins=[NotedPlugin()],
                runtime=RuntimeSettings(workers=workers, lease_seconds=3))
wf = engine.call(engine.workflows.create, {"name": "noted", "type": "noted"})
engine.call(engine.workflows.activate, wf.id)
print(wf.id, flush=True)

def killed(*args):  # the insertion is committed; no worker has taken anything yet
    os.kill(os.getpid(), signal.SIGKILL)

batches._hand_over = killed
engine.call(engine.executions.execute_many, wf.id, [{"i": i} for i in range(count)])
print("not killed", flush=True)
"""


def _until(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(1)


@pytest.mark.parametrize(("workers", "count"), [(4, 3), (2, 5)])
def test_stored_running_then_killed_before_a_worker_takes_them(
    tmp_path: Path, databases: Any, workers: int, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``count`` executions accepted with ``workers`` idle: min(workers, count) stored
    running, the rest queued, all held by the child, which is killed right after the
    commit. A second engine takes every one over once the leases end: each completes,
    each step ran exactly once (a log line per step run), and none ran in the child."""
    (tmp_path / "fastpath_types.py").write_text(textwrap.dedent(_TYPES))
    (tmp_path / "child.py").write_text(textwrap.dedent(_CHILD))
    log = tmp_path / "steps.log"
    monkeypatch.setenv("FASTPATH_STEP_LOG", str(log))
    monkeypatch.syspath_prepend(str(tmp_path))
    database = databases("crash.db")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    child = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(database), str(workers), str(count)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    workflow_id = child.stdout.split()[0]
    assert "not killed" not in child.stdout
    assert not log.exists()  # no step ran in the child

    from fastpath_types import NotedPlugin

    engine = Engine(database, plugins=[NotedPlugin()], runtime=RuntimeSettings(lease_seconds=3))
    try:
        page = engine.call(engine.executions.list, workflow_id=workflow_id, page_size=100)
        stored = {e.execution_id: e.status for e in page.items}
        assert len(stored) == count

        def finished() -> bool:
            items = engine.call(
                engine.executions.list, workflow_id=workflow_id, page_size=100
            ).items
            return all(e.status.finished for e in items)

        _until(finished, "every execution of the killed node finished")
        for execution_id in stored:
            done = engine.call(engine.executions.get, execution_id)
            assert done.status is ExecutionStatus.COMPLETED, (execution_id, done.status)
            assert [s.attempts for s in done.steps] == [1, 1]
        runs = Counter(log.read_text().split("\n")[:-1])
        assert runs == Counter({f"{e} {name}": 1 for e in stored for name in ("first", "second")})
    finally:
        engine.close()
