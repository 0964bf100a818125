"""SIGKILL of a process in the middle of a thread-door commit (#18, the adversary).

A child process accepts executions from 4 threads through the thread door while its
engine runs their steps. A hook aims the kill: one caller, leading a commit that
carries other callers' inserts too (followers), or with other callers queued behind
it for the next commit, stops right after its transaction committed, before anyone
of the batch is answered; the parent then SIGKILLs the child. After a restart, on each backend and durability:

- every execution a caller was answered with exists and runs to its result;
- the executions of the aimed commit (the leader's and its followers': committed,
  never answered) exist and run too;
- the queued followers' executions (never committed) do not exist;
- no step runs twice, but for the few that were running at the kill (no more than
  the child's workers): a finished step never runs again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, ExecutionStatus, RuntimeSettings

pytestmark = pytest.mark.slow

DatabaseFactory = Callable[..., Any]
WORKERS = 4

#: A step appending its execution's id to a log, then answering ``i * 2``.
PLUGIN = """
import os
from abi_engine import hookimpl


@hookimpl
def abi_step_handlers(register):
    async def logged(ctx):
        with open(os.environ["STEP_LOG"], "a") as log:
            log.write(ctx.execution_id + "\\n")
        return {"v": ctx.parameters["i"] * 2}

    register("logged", logged)
"""

CHILD = """
import json, sys, threading, time
import steplog
from abi_engine import Engine, RuntimeSettings
from abi_engine.storage.records import InsertExecution

engine = Engine(sys.argv[1], durability=sys.argv[2], plugins=[steplog],
                runtime=RuntimeSettings(lease_seconds=2.0, poll_interval=0.2,
                                        workers=int(sys.argv[3])))
engine.start_blocking()
wf = engine.call(engine.workflows.create, {"name": "kill", "type": "custom",
                 "configuration": {"handler": "logged"}})
engine.call(engine.workflows.activate, wf.id)
engine.call(engine.executions.execute, wf.id, {"i": 0}, wait=False)
commits = engine.runtime.thread_commits
callers, answered, out = set(), [0], threading.Lock()
aimed = threading.Event()
apply = engine.store.apply

def say(line):
    with out:
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

def ids(slots):
    return [op.record.id for s in slots for op in s.ops if isinstance(op, InsertExecution)]

def applying(ops):
    leads = threading.get_ident() in callers and answered[0] >= 100 and not aimed.is_set()
    inserts = sum(isinstance(op, InsertExecution) for op in ops)
    # Aimed: the first commit of a caller carrying other callers' inserts, or with
    # other callers' inserts queued behind it (not one whose followers, committed by
    # the previous leader, merely wait for the lock to be answered).
    if not leads or (inserts < 2 and not ids(list(commits._pending))):
        return apply(ops)
    aimed.set()
    results = apply(ops)
    committed = [op.record.id for op, r in zip(ops, results) if isinstance(op, InsertExecution) and r is True]
    say("committed " + " ".join(committed))
    say("queued " + " ".join(ids(list(commits._pending))))
    time.sleep(3600)  # killed here: nobody of this commit is answered

engine.store.apply = applying

def submit(t):
    callers.add(threading.get_ident())
    for i in range(t + 1, 100000, 4):
        ex = engine.call(engine.executions.execute, wf.id, {"i": i}, wait=False)
        with out:
            answered[0] += 1
        say(f"ok {ex.execution_id} {i}")

for t in range(4):
    threading.Thread(target=submit, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def _run_child(
    db: str, durability: str, tmp_path: Path
) -> tuple[dict[str, int], list[str], list[str]]:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "STEP_LOG": str(tmp_path / "steps.log"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, db, durability, str(WORKERS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    accepted: dict[str, int] = {}
    committed: list[str] | None = None
    queued: list[str] | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while queued is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            kind, *rest = line.split()
            if kind == "ok":
                accepted[rest[0]] = int(rest[1])
            elif kind == "committed":
                committed = rest
            elif kind == "queued":
                queued = rest
    finally:
        proc.send_signal(signal.SIGKILL)
        _, errors = proc.communicate(timeout=60)
    assert committed is not None, errors
    assert queued is not None, errors
    return accepted, committed, queued, errors


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_kill_between_a_leaders_commit_and_its_answers_loses_nothing(
    every_database: DatabaseFactory, durability: str, tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "steplog.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("STEP_LOG", str(tmp_path / "steps.log"))
    import steplog

    db = str(every_database())
    accepted, committed, queued, errors = _run_child(db, durability, tmp_path)
    assert len(accepted) >= 100
    assert committed  # the aimed commit stored executions nobody was answered for
    assert not set(committed) & set(accepted)
    assert len(committed) + len(queued) >= 2, errors  # followers in it or behind it
    engine = Engine(
        db,
        plugins=[steplog],
        runtime=RuntimeSettings(lease_seconds=1.0, poll_interval=0.2),
    )
    try:
        engine.start_blocking()
        for execution_id, i in [*accepted.items(), *((c, None) for c in committed)]:
            done = engine.call(engine.executions.wait, execution_id, 120)
            assert done.status is ExecutionStatus.COMPLETED, done
            if i is not None:
                assert done.result == {"v": i * 2}
        for execution_id in queued:
            assert engine.store.get_execution(execution_id) is None
    finally:
        engine.close()
    runs = Counter((tmp_path / "steps.log").read_text().split())
    expected = set(accepted) | set(committed)
    assert expected <= set(runs)
    twice = [e for e, n in runs.items() if n > 1]
    assert all(runs[e] == 2 for e in twice), runs
    assert len(twice) <= WORKERS, json.dumps(twice)
