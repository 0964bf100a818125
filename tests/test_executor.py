"""The runtime: steps (skip, retry, timeouts, failures, redaction), durable resume after a stop
or a crash, suspension and signals, durable sleep, and the worker pool."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    DatabaseFactory,
    EngineFactory,
    fast,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.converter import unstructure
from abi_engine.errors import (
    ExecutionTimeout,
    InvalidRequest,
    InvalidState,
    QueueFull,
    WorkflowExecutionError,
)
from abi_engine.execution_views import build_execution
from abi_engine.ids import utcnow
from abi_engine.storage.records import ExecutionRecord, StepRecord

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def _failed(engine: Engine, workflow_id: str, params: dict[str, Any]) -> Any:
    """Execute synchronously, expecting a failure; return the stored failed execution."""
    with pytest.raises(WorkflowExecutionError) as caught:
        await engine.executions.execute(workflow_id, params)
    assert caught.value.code == "WORKFLOW_EXECUTION_ERROR"
    assert caught.value.http_status == 500
    execution = await engine.executions.get(caught.value.details["execution_id"])
    assert execution.status is ExecutionStatus.FAILED
    return execution


# -- steps --------------------------------------------------------------------------------------


async def test_skip_if_skips_and_continues(eng: Engine) -> None:
    """A step whose skip_if is true is recorded skipped and the execution continues."""
    wf = await new_workflow(eng, "test_skip")
    execution = await eng.executions.execute(wf, {"skip": True})
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        ("start", StepStatus.COMPLETED),
        ("middle", StepStatus.SKIPPED),
        ("end", StepStatus.COMPLETED),
    ]
    assert execution.steps[1].duration_ms == 0
    assert execution.result == {"end": True, "middle": None}
    assert PROBE.runs(execution.execution_id) == {"start": 1, "end": 1}
    ran = await eng.executions.execute(wf, {"skip": False})
    assert ran.result == {"end": True, "middle": {"middle": True}}


async def test_retry_until_success(eng: Engine) -> None:
    """A step failing twice under RetryPolicy(attempts=3) succeeds on the third try."""
    wf = await new_workflow(eng, "test_flaky")
    started = time.monotonic()
    execution = await eng.executions.execute(wf, {"succeed_on": 3})
    assert time.monotonic() - started >= 0.03  # backoff 0.01 then 0.02
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.steps is not None
    assert execution.steps[0].attempts == 3
    assert execution.steps[0].status is StepStatus.COMPLETED
    attempts = [what[1] for _, _, what in PROBE.notes if what[0] == "attempt"]
    assert attempts == [1, 2, 3]
    assert eng.store.get_steps(execution.execution_id)[0].result == {"attempt": 3}


async def test_retry_exhausted_fails(eng: Engine) -> None:
    """A step failing every try fails after the policy's attempts; later steps never run."""
    wf = await new_workflow(eng, "test_flaky")
    execution = await _failed(eng, wf, {})
    assert execution.steps is not None
    flaky = execution.steps[0]
    assert (flaky.status, flaky.attempts) == (StepStatus.FAILED, 3)
    assert flaky.error is not None
    assert (flaky.error.type, flaky.error.message) == ("ConnectionError", "attempt 3 failed")
    assert execution.steps[1].status is StepStatus.PENDING
    assert PROBE.runs(execution.execution_id) == {"flaky": 3}


async def test_step_timeout(eng: Engine) -> None:
    """A step over its timeout_seconds fails (and the execution with it); a quick one passes."""
    wf = await new_workflow(eng, "test_step_timeout")
    started = time.monotonic()
    execution = await _failed(eng, wf, {"sleep": 5})
    assert time.monotonic() - started < 2
    assert execution.error is not None
    assert execution.error.step == "slow"
    assert execution.error.type == "TimeoutError"
    assert PROBE.runs(execution.execution_id) == {"slow": 1}
    quick = await eng.executions.execute(wf, {"sleep": 0.01})
    assert quick.status is ExecutionStatus.COMPLETED


async def test_failing_step_fails_the_execution(eng: Engine) -> None:
    """A raising step fails the execution with WORKFLOW_EXECUTION_ERROR; the error is stored."""
    wf = await new_workflow(eng)
    with pytest.raises(WorkflowExecutionError) as caught:
        await eng.executions.execute(wf, {"do": {"second": {"raise": "quota exceeded"}}})
    details = caught.value.details
    assert details["step"] == "second"
    assert details["error_type"] == "RuntimeError"
    assert details["error_message"] == "quota exceeded"
    assert "second" in caught.value.message
    record = eng.store.get_execution(details["execution_id"])
    assert record is not None
    assert record.error == {
        "code": "WORKFLOW_EXECUTION_ERROR",
        "message": "quota exceeded",
        "step": "second",
        "type": "RuntimeError",
    }
    steps = eng.store.get_steps(details["execution_id"])
    assert [(s.name, s.status) for s in steps] == [
        ("first", StepStatus.COMPLETED),
        ("second", StepStatus.FAILED),
    ]
    assert steps[1].error == {"type": "RuntimeError", "message": "quota exceeded"}
    assert PROBE.runs(details["execution_id"]) == {"first": 1, "second": 1}


def _split(text: str) -> list[str]:
    """``text`` in one-character parts (the parameters then never hold a secret whole)."""
    return list(text)


async def test_secrets_never_stored_in_errors(eng: Engine) -> None:
    """A step error quoting the callback secret, a bearer token or an access token is redacted."""
    wf = await new_workflow(eng)
    token = eng.tokens.create_token("usr_leaky")
    message = f"upstream refused {SECRET}; sent Authorization: Bearer abc123.DEF-456; token {token}"
    execution = await eng.executions.execute(
        wf,
        {"do": {"first": {"raise_joined": _split(message)}}},
        wait=False,
        callback_url="https://example.com/hook",
        callback_secret=SECRET,
    )
    final = await eng.executions.wait(execution.execution_id, timeout=5)
    assert final.status is ExecutionStatus.FAILED
    record = eng.store.get_execution(execution.execution_id)
    assert record is not None
    steps = eng.store.get_steps(execution.execution_id)
    shown = unstructure(final)
    del shown["parameters"]
    stored = repr(record.error) + repr(steps[0].error) + repr(shown)
    assert "upstream refused" in stored
    for leaked in (SECRET, SECRET.removeprefix("whsec_"), "abc123.DEF-456", token):
        assert leaked not in stored


async def test_secret_without_prefix_is_redacted(eng: Engine) -> None:
    """The callback secret is masked even where a step quotes it without its whsec_ prefix."""
    wf = await new_workflow(eng)
    bare = SECRET.removeprefix("whsec_")
    execution = await eng.executions.execute(
        wf,
        {"do": {"first": {"raise_joined": _split(f"key={bare}")}}},
        wait=False,
        callback_url="https://example.com/hook",
        callback_secret=SECRET,
    )
    final = await eng.executions.wait(execution.execution_id, timeout=5)
    assert final.error is not None
    assert final.error.message.startswith("key=")
    assert bare not in final.error.message


async def test_long_error_messages_are_bounded(eng: Engine) -> None:
    """A huge exception message is stored cut to a bounded length."""
    wf = await new_workflow(eng)
    execution = await _failed(eng, wf, {"do": {"first": {"raise": "x" * 50_000}}})
    assert execution.error is not None
    assert 0 < len(execution.error.message) <= 1000


@pytest.mark.parametrize("kind", ["set", "nan", "object"])
async def test_non_json_result_fails_the_step(eng: Engine, kind: str) -> None:
    """A step returning what JSON cannot hold fails cleanly; the engine keeps working."""
    wf = await new_workflow(eng, "test_odd")
    execution = await _failed(eng, wf, {"kind": kind})
    assert execution.steps is not None
    assert execution.steps[0].status is StepStatus.FAILED
    assert execution.error is not None
    assert execution.error.type in ("TypeError", "ValueError")
    assert PROBE.runs(execution.execution_id) == {"odd": 1}
    other = await eng.executions.execute(await new_workflow(eng))
    assert other.status is ExecutionStatus.COMPLETED


def test_build_execution_shows_the_plan() -> None:
    """Unstored steps show as pending, the first one running while the execution runs."""
    now = utcnow()
    record = ExecutionRecord(
        id="exec_x",
        workflow_id="wf_x",
        workflow_type="test_three",
        status=ExecutionStatus.QUEUED,
        plan=["a", "b", "c"],
        created_at=now,
    )
    assert [s.status for s in build_execution(record, []).steps or []] == [StepStatus.PENDING] * 3
    record.status = ExecutionStatus.RUNNING
    record.started_at = now
    done = StepRecord(
        execution_id="exec_x",
        index=0,
        name="a",
        status=StepStatus.COMPLETED,
        started_at=now,
        completed_at=now + timedelta(milliseconds=5),
        duration_ms=5,
        attempts=1,
    )
    view = build_execution(record, [done])
    assert [s.status for s in view.steps or []] == [
        StepStatus.COMPLETED,
        StepStatus.RUNNING,
        StepStatus.PENDING,
    ]
    assert view.steps is not None
    assert view.steps[1].started_at == done.completed_at


# -- durable resume ---------------------------------------------------------------------------


async def _start_batch(engine: Engine, n: int) -> tuple[str, list[str]]:
    """Start ``n`` async executions whose ``second`` step waits on gate "hold"."""
    wf = await new_workflow(engine)
    ids = []
    for _ in range(n):
        execution = await engine.executions.execute(
            wf, {"do": {"second": {"gate": "hold"}}}, wait=False
        )
        ids.append(execution.execution_id)
    await until(
        lambda: all(PROBE.calls[(i, "second")] == 1 for i in ids), what="every second step runs"
    )
    return wf, ids


async def _finish_all(
    engine: Engine, ids: list[str], timeout: float = 10, *, second_runs: int = 2
) -> None:
    """Wait until every execution is terminal; check none ran a finished step twice
    (``second``, the step a restart cut, runs ``second_runs`` times)."""
    for execution_id in ids:
        final = await wait_status(engine, execution_id, *TERMINAL, timeout=timeout)
        assert final.status is ExecutionStatus.COMPLETED, final
        assert final.result == {"done": 3}
        assert PROBE.runs(execution_id) == {"first": 1, "second": second_runs, "third": 1}


async def test_resume_after_graceful_stop(make: EngineFactory) -> None:
    """Executions left mid-way by a stop are resumed by the next engine from their checkpoint."""
    first = make(settings=fast(shutdown_grace=0.1))
    async with first:
        _, ids = await _start_batch(first, 4)
    for execution_id in ids:
        record = first.store.get_execution(execution_id)
        assert record is not None
        assert (record.status, record.owner) == (ExecutionStatus.QUEUED, None)
        assert [s.name for s in first.store.get_steps(execution_id)] == ["first"]
    PROBE.gate("hold").set()
    second = make()
    async with second:
        await _finish_all(second, ids)


async def test_stop_lets_running_steps_finish(make: EngineFactory) -> None:
    """Stopping waits up to shutdown_grace for running steps, which then checkpoint."""
    engine = make(settings=fast(shutdown_grace=5))
    async with engine:
        wf = await new_workflow(engine)
        execution = await engine.executions.execute(
            wf, {"do": {"second": {"sleep": 0.3}}}, wait=False
        )
        await until(lambda: PROBE.calls[(execution.execution_id, "second")] == 1)
    steps = engine.store.get_steps(execution.execution_id)
    assert [(s.name, s.status) for s in steps] == [
        ("first", StepStatus.COMPLETED),
        ("second", StepStatus.COMPLETED),
    ]
    resumed = make()
    async with resumed:
        final = await wait_status(resumed, execution.execution_id, *TERMINAL)
    assert final.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}


async def _no_release() -> None:
    """Stands in for Runtime.release in a crash: nothing is handed back."""


async def test_resume_after_crash(make: EngineFactory) -> None:
    """Executions of an engine that died without handing them back are taken over once
    their lease expires and finished without re-running finished steps."""
    crashed = make(settings=fast(shutdown_grace=0, lease_seconds=2))
    crashed.runtime.release = _no_release  # type: ignore[method-assign]
    async with crashed:
        _, ids = await _start_batch(crashed, 4)
    owner = crashed.runtime.node_id
    for execution_id in ids:
        record = crashed.store.get_execution(execution_id)
        assert record is not None
        assert (record.status, record.owner) == (ExecutionStatus.RUNNING, owner)
    PROBE.gate("hold").set()
    survivor = make(settings=fast(lease_seconds=3600))
    async with survivor:
        await _finish_all(survivor, ids, timeout=30)


async def test_a_live_node_keeps_its_work_whatever_its_name(make: EngineFactory) -> None:
    """A node whose heartbeat runs keeps its executions past many lease periods, even
    when another engine has the same host and process id (liveness is the lease alone)."""
    holder = make(settings=fast(lease_seconds=1.5))
    other = make(settings=fast(lease_seconds=1.5))
    # Same host and pid as the holder: nothing may be concluded from a name.
    other.runtime.node_id = holder.runtime.node_id.rsplit(":", 1)[0] + ":other"
    async with holder, other:
        _, ids = await _start_batch(holder, 2)
        await anyio.sleep(6)  # four lease periods: the heartbeat thread renews
        assert all(PROBE.calls[(i, "second")] == 1 for i in ids)
        assert holder.runtime.claims.renewals >= 3
        PROBE.gate("hold").set()
        await _finish_all(holder, ids, timeout=30, second_runs=1)


async def test_resume_after_lease_expiry(make: EngineFactory) -> None:
    """Executions of a node that stopped renewing are taken over once its lease expires,
    not before."""
    remote = make(settings=fast(shutdown_grace=0, lease_seconds=3.0))
    remote.runtime.release = _no_release  # type: ignore[method-assign]
    async with remote:
        _, ids = await _start_batch(remote, 2)
    owner = remote.runtime.node_id
    PROBE.gate("hold").set()
    survivor = make()
    async with survivor:
        record = survivor.store.get_execution(ids[0])
        assert record is not None
        if record.lease_until is not None and record.lease_until > utcnow():
            assert record.owner == owner
            assert PROBE.calls[(ids[0], "second")] == 1
        await _finish_all(survivor, ids, timeout=30)


async def test_a_node_without_the_type_leaves_the_execution_for_one_with_it(
    make: EngineFactory,
) -> None:
    """An execution left by an engine whose workflow type the next engine lacks stays
    queued, untouched, until an engine with the type runs it (rolling upgrades)."""
    first = make(settings=fast(shutdown_grace=0.05))
    async with first:
        _, ids = await _start_batch(first, 1)
    bare = Engine(first.db_url, runtime=fast(), load_entry_points=False)
    try:
        async with bare:
            await anyio.sleep(1)  # many polls
            record = bare.store.get_execution(ids[0])
    finally:
        bare.close()
    assert record is not None
    assert record.status is ExecutionStatus.QUEUED
    assert PROBE.runs(ids[0]) == {"first": 1, "second": 1}
    PROBE.gate("hold").set()
    second = make()
    async with second:
        await _finish_all(second, ids, timeout=30)


async def test_two_live_engines_share_a_database(make: EngineFactory) -> None:
    """Two running engines of one process on one database never take each other's executions;
    a cancel through one stops the other's execution before its next step."""
    a = make()
    b = make()
    async with a, b:
        wf = await new_workflow(a)
        slow = await a.executions.execute(wf, {"do": {"second": {"sleep": 0.4}}}, wait=False)
        held = await a.executions.execute(wf, {"do": {"second": {"gate": "g"}}}, wait=False)
        await until(lambda: PROBE.calls[(held.execution_id, "second")] == 1)
        await anyio.sleep(0.2)  # several recovery polls of b
        cancelled = await b.executions.cancel(held.execution_id)
        assert cancelled.status is ExecutionStatus.CANCELLED
        PROBE.gate("g").set()
        done = await b.executions.wait(slow.execution_id, timeout=5)
        assert done.status is ExecutionStatus.COMPLETED
        await anyio.sleep(0.2)
    assert PROBE.runs(slow.execution_id) == {"first": 1, "second": 1, "third": 1}
    assert PROBE.runs(held.execution_id) == {"first": 1, "second": 1}
    final = await a.executions.get(held.execution_id)
    assert final.status is ExecutionStatus.CANCELLED


CRASH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import anyio
    sys.path.insert(0, {tests!r})
    import runtime_plugins
    from abi_engine import Engine
    from runtime_plugins.helpers import fast

    original = runtime_plugins.behave

    async def behave(ctx, default):
        with open({log!r}, "a") as f:
            f.write(json.dumps([ctx.execution_id, ctx.step_name]) + "\\n")
            f.flush()
            os.fsync(f.fileno())
        return await original(ctx, default)

    runtime_plugins.behave = behave

    async def main():
        engine = Engine(
            {db!r}, plugins=[runtime_plugins], runtime=fast(workers=4, lease_seconds=2)
        )
        async with engine:
            wf = await engine.workflows.create({{"name": "crash", "type": "test_three"}})
            await engine.workflows.activate(wf.id)
            for i in range(12):
                do = {{"second": {{"sleep": 0.01 * (i % 4)}}, "third": {{"gate": "hold"}}}}
                await engine.executions.execute(wf.id, {{"do": do}}, wait=False)
            with open({log!r}, "a") as f:
                f.write('["all submitted"]' + chr(10))
            await anyio.sleep(3600)

    anyio.run(main)
    """
)


@contextlib.asynccontextmanager
async def _killed_at_exit(script: str) -> AsyncIterator[anyio.abc.Process]:
    """The child running ``script``, killed however the block ends (its engine sleeps an
    hour: a failed wait must not leave the test waiting for it)."""
    async with await anyio.open_process(
        [sys.executable, "-c", script], stdout=subprocess.DEVNULL
    ) as child:
        try:
            yield child
        finally:
            if child.returncode is None:
                child.kill()


async def _until_four_held(child: anyio.abc.Process, log: Path) -> None:
    """Wait (generously: a loaded machine starts Python slowly) for every execution to be
    submitted and four of them (the workers) to hold in their third step."""
    with anyio.fail_after(120):
        while not _four_held(log):
            assert child.returncode is None, "the child process ended on its own"
            await anyio.sleep(0.02)


def _four_held(log: Path) -> bool:
    text = log.read_text() if log.exists() else ""
    return text.count('"third"') == 4 and "all submitted" in text


@pytest.mark.slow
async def test_resume_after_sigkill(
    tmp_path: Path, databases: DatabaseFactory, make: EngineFactory
) -> None:
    """A process killed with SIGKILL mid-way loses nothing: once its leases expire the next
    engine finishes every execution and no step that had finished runs again."""
    db = databases()  # the database make() opens
    log = tmp_path / "steps.log"
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), log=str(log), db=str(db))
    async with _killed_at_exit(script) as child:
        await _until_four_held(child, log)
        child.kill()  # SIGKILL
        assert await child.wait() == -signal.SIGKILL
    before = [
        tuple(json.loads(line))
        for line in log.read_text().splitlines()
        if "all submitted" not in line
    ]
    engine = make()
    ids = [s.execution_id for s in (await engine.executions.list(page_size=100)).items]
    assert len(ids) == 12
    finished_before = {
        (execution_id, s.name)
        for execution_id in ids
        for s in engine.store.get_steps(execution_id)
        if s.status is StepStatus.COMPLETED
    }
    assert {name for _, name in finished_before} == {"first", "second"}
    PROBE.gate("hold").set()
    async with engine:
        for execution_id in ids:
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
            ran = Counter(before)
            ran.update(PROBE.calls)
            assert [ran[(execution_id, name)] for name in ("first", "second")] == [1, 1]
            # The step running at the kill ran again; nothing that had finished did.
            assert ran[(execution_id, "third")] in (1, 2)
    for finished in finished_before:
        assert finished not in PROBE.calls, f"{finished} ran again after the crash"


@pytest.mark.slow
@pytest.mark.sqlite_only
async def test_a_killed_node_is_taken_over_at_once_on_sqlite(
    tmp_path: Path, databases: DatabaseFactory, make: EngineFactory
) -> None:
    """On SQLite the kernel drops the lock of a killed process's node: its executions are
    taken over at once, long before their (hour-long) leases would expire."""
    db = databases()
    log = tmp_path / "steps.log"
    script = CRASH_SCRIPT.format(tests=str(Path(__file__).parent), log=str(log), db=str(db))
    script = script.replace("lease_seconds=2", "lease_seconds=3600")
    async with _killed_at_exit(script) as child:
        await _until_four_held(child, log)
        child.kill()  # SIGKILL
        await child.wait()
    engine = make(settings=fast(lease_seconds=3600))
    PROBE.gate("hold").set()
    started = time.monotonic()
    async with engine:
        ids = [s.execution_id for s in (await engine.executions.list(page_size=100)).items]
        for execution_id in ids:
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
    assert len(ids) == 12
    assert time.monotonic() - started < 60  # not the hour of the leases


# -- suspension -------------------------------------------------------------------------------


async def test_signal_resumes_a_waiting_execution(make: EngineFactory) -> None:
    """A step waiting for a signal parks the execution as waiting without a worker, across a
    restart; the signal resumes it and the step gets the payload."""
    first = make(settings=fast(workers=1))
    async with first:
        wf = await new_workflow(first)
        waiting = await first.executions.execute(
            wf, {"do": {"second": {"signal": "go"}}}, wait=False
        )
        parked = await wait_status(first, waiting.execution_id, ExecutionStatus.WAITING)
        assert parked.steps is not None
        assert [s.status for s in parked.steps] == [
            StepStatus.COMPLETED,
            StepStatus.RUNNING,
            StepStatus.PENDING,
        ]
        # The only worker is free: another async execution runs to completion meanwhile.
        other = await first.executions.execute(wf, wait=False)
        done = await first.executions.wait(other.execution_id, timeout=5)
        assert done.status is ExecutionStatus.COMPLETED
    second = make(settings=fast(workers=1))
    async with second:
        await anyio.sleep(0.2)  # recovery polls run; a waiting execution stays parked
        still = await second.executions.get(waiting.execution_id)
        assert still.status is ExecutionStatus.WAITING
        resumed = await second.executions.signal(waiting.execution_id, "go", {"approved": True})
        assert resumed.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
        final = await second.executions.wait(waiting.execution_id, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED
    assert second.store.get_steps(waiting.execution_id)[1].result == {"payload": {"approved": True}}
    assert (waiting.execution_id, "second", ("signal", {"approved": True})) in PROBE.notes
    assert PROBE.runs(waiting.execution_id) == {"first": 1, "second": 2, "third": 1}


async def test_sync_execute_returns_a_waiting_execution(eng: Engine) -> None:
    """A sync execution that suspends is answered at once as waiting, not at its timeout."""
    wf = await new_workflow(eng)
    started = time.monotonic()
    execution = await eng.executions.execute(
        wf, {"do": {"second": {"signal": "go"}}}, timeout_seconds=10
    )
    assert time.monotonic() - started < 2
    assert execution.status is ExecutionStatus.WAITING
    started = time.monotonic()
    waited = await eng.executions.wait(execution.execution_id, timeout=10)
    assert time.monotonic() - started < 2
    assert waited.status is ExecutionStatus.WAITING


async def test_waiting_time_is_not_a_sync_timeout(eng: Engine) -> None:
    """A sync-started execution that waits longer than its caller's timeout still completes."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(
        wf, {"do": {"second": {"signal": "go"}}}, timeout_seconds=0.3
    )
    assert execution.status is ExecutionStatus.WAITING
    await anyio.sleep(0.5)
    await eng.executions.signal(execution.execution_id, "go", "yes")
    final = await eng.executions.wait(execution.execution_id, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED


async def test_signal_refused_only_when_finished(eng: Engine) -> None:
    """A signal to a finished execution raises InvalidState; an unfinished one keeps a
    signal it does not wait for (yet), and a second one of the same name as the next
    of its stream; require_waiting=True still refuses them.

    The execution is held in its first step (a gate) while the signals come: once
    the first ``go`` is given to a waiting execution it may finish before the second
    arrives, which would then rightly be refused."""
    wf = await new_workflow(eng)
    done = await eng.executions.execute(wf)
    with pytest.raises(InvalidState):
        await eng.executions.signal(done.execution_id, "go", 1)
    waiting = await eng.executions.execute(
        wf, {"do": {"first": {"gate": "held"}, "second": {"signal": "go"}}}, wait=False
    )
    await until(lambda: PROBE.calls[(waiting.execution_id, "first")] == 1)
    with pytest.raises(InvalidState) as caught:
        await eng.executions.signal(waiting.execution_id, "other", 1, require_waiting=True)
    assert caught.value.details["signal"] == "other"
    kept = await eng.executions.signal(waiting.execution_id, "other", 1)
    assert kept.status is ExecutionStatus.RUNNING
    with pytest.raises(InvalidRequest):
        await eng.executions.signal(waiting.execution_id, "", 1)
    await eng.executions.signal(waiting.execution_id, "go", 1)
    await eng.executions.signal(waiting.execution_id, "go", 2)
    PROBE.gate("held").set()
    final = await eng.executions.wait(waiting.execution_id, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED
    assert eng.store.get_steps(waiting.execution_id)[1].result == {"payload": 1}
    assert eng.store.get_signals(waiting.execution_id) == {"other": 1, "go": 1, "go#2": 2}
    with pytest.raises(InvalidState):
        await eng.executions.signal(waiting.execution_id, "go", 3)


async def test_early_signal_is_kept(eng: Engine) -> None:
    """A signal given before the wait is kept and used by the step."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(
        wf, {"do": {"first": {"gate": "g"}, "second": {"signal": "go"}}}, wait=False
    )
    await until(lambda: PROBE.calls[(execution.execution_id, "first")] == 1)
    await eng.executions.signal(execution.execution_id, "go", "early")
    PROBE.gate("g").set()
    final = await eng.executions.wait(execution.execution_id, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED
    assert eng.store.get_steps(execution.execution_id)[1].result == {"payload": "early"}
    assert PROBE.runs(execution.execution_id)["first"] == 1


async def test_signal_payload_must_be_json(eng: Engine) -> None:
    """A signal payload JSON cannot hold is an InvalidRequest; the execution keeps waiting."""
    wf = await new_workflow(eng)
    waiting = await eng.executions.execute(wf, {"do": {"second": {"signal": "go"}}})
    with pytest.raises(InvalidRequest) as caught:
        await eng.executions.signal(waiting.execution_id, "go", {1, 2})
    assert caught.value.details["field"] == "payload"
    assert (await eng.executions.get(waiting.execution_id)).status is ExecutionStatus.WAITING
    await eng.executions.signal(waiting.execution_id, "go", [1, 2])
    final = await eng.executions.wait(waiting.execution_id, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED


async def test_a_step_can_wait_for_several_signals(eng: Engine) -> None:
    """A step waiting for two signals in turn parks twice and gets both payloads."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(wf, {"do": {"second": {"signals": ["a", "b"]}}})
    assert execution.status is ExecutionStatus.WAITING
    with pytest.raises(InvalidState):
        await eng.executions.signal(execution.execution_id, "b", "too early", require_waiting=True)
    await eng.executions.signal(execution.execution_id, "a", 1)
    again = await eng.executions.wait(execution.execution_id, timeout=5)
    assert again.status is ExecutionStatus.WAITING
    await eng.executions.signal(execution.execution_id, "b", 2)
    final = await eng.executions.wait(execution.execution_id, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED
    assert eng.store.get_steps(execution.execution_id)[1].result == {"payloads": [1, 2]}
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 3, "third": 1}


async def test_signal_wait_times_out(eng: Engine) -> None:
    """A wait past its timeout resumes the step, where wait_for_signal raises SignalTimeout."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(
        wf, {"do": {"second": {"signal": "go", "signal_timeout": 0.2}}}, timeout_seconds=5
    )
    assert execution.status is ExecutionStatus.WAITING
    final = await wait_status(eng, execution.execution_id, *TERMINAL)
    assert final.status is ExecutionStatus.FAILED
    assert final.error is not None
    assert (final.error.step, final.error.type) == ("second", "SignalTimeout")
    assert (execution.execution_id, "second", ("timeout", "go")) in PROBE.notes
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 2}


async def test_durable_sleep_parks_and_survives_restart(make: EngineFactory) -> None:
    """ctx.sleep over a second parks the execution as waiting, across a restart, then completes."""
    first = make(settings=fast(workers=1))
    async with first:
        wf = await new_workflow(first)
        execution = await first.executions.execute(
            wf, {"do": {"second": {"durable_sleep": 1.2}}}, wait=False
        )
        started = time.monotonic()
        await wait_status(first, execution.execution_id, ExecutionStatus.WAITING)
        assert first.store.get_execution(execution.execution_id).wake_at is not None  # type: ignore[union-attr]
    second = make()
    async with second:
        final = await wait_status(second, execution.execution_id, *TERMINAL, timeout=5)
    assert final.status is ExecutionStatus.COMPLETED
    assert time.monotonic() - started >= 1.1
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 2, "third": 1}


async def test_short_sleep_is_not_durable(eng: Engine) -> None:
    """ctx.sleep of a second or less just sleeps: the execution never shows waiting."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(wf, {"do": {"second": {"durable_sleep": 0.05}}})
    assert execution.status is ExecutionStatus.COMPLETED
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}


# -- workers ------------------------------------------------------------------------------------


async def test_queue_full(make: EngineFactory) -> None:
    """Beyond the bounded queue, async executions are refused with QueueFull (503)."""
    engine = make(settings=fast(workers=1, queue_size=5))
    async with engine:
        wf = await new_workflow(engine)
        accepted: list[str] = []
        refused: QueueFull | None = None
        for _ in range(10):
            try:
                execution = await engine.executions.execute(
                    wf, {"do": {"first": {"gate": "g"}}}, wait=False
                )
            except QueueFull as exc:
                refused = exc
                break
            accepted.append(execution.execution_id)
            await anyio.sleep(0.01)
        assert refused is not None
        assert refused.code == "QUEUE_FULL"
        assert refused.http_status == 503
        assert len(accepted) == 6  # one running, five queued
        assert (await engine.executions.list()).pagination.total_items == len(accepted)
        PROBE.gate("g").set()
        for execution_id in accepted:
            final = await engine.executions.wait(execution_id, timeout=5)
            assert final.status is ExecutionStatus.COMPLETED


async def test_queue_full_under_concurrency_leaves_no_orphans(make: EngineFactory) -> None:
    """Executions refused with QueueFull leave nothing behind, even when submitted concurrently."""
    engine = make(settings=fast(workers=1, queue_size=5))
    async with engine:
        wf = await new_workflow(engine)
        accepted: list[str] = []
        refused: list[QueueFull] = []

        async def submit() -> None:
            try:
                execution = await engine.executions.execute(wf, wait=False)
            except QueueFull as exc:
                refused.append(exc)
            else:
                accepted.append(execution.execution_id)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(submit)
        assert refused
        total = (await engine.executions.list(page_size=100)).pagination.total_items
        assert total == len(accepted)


async def test_sync_timeout_while_waiting_for_a_slot(make: EngineFactory) -> None:
    """A sync execution that never got a slot (sync_workers busy) times out and never runs."""
    engine = make(settings=fast(sync_workers=1))
    async with engine, anyio.create_task_group() as tg:
        wf = await new_workflow(engine)
        tg.start_soon(engine.executions.execute, wf, {"do": {"first": {"gate": "g"}}})
        await until(lambda: PROBE.calls.total() == 1, what="the slot is taken")
        started = time.monotonic()
        with pytest.raises(ExecutionTimeout) as caught:
            await engine.executions.execute(wf, timeout_seconds=0.3)
        assert time.monotonic() - started < 2.5
        execution_id = caught.value.details["execution_id"]
        assert (await engine.executions.get(execution_id)).status is ExecutionStatus.TIMED_OUT
        PROBE.gate("g").set()
    assert PROBE.runs(execution_id) == {}


async def test_many_executions_share_commits(make: EngineFactory) -> None:
    """Hundreds of concurrent executions all complete, each step once, with batched commits."""
    engine = make(settings=fast(workers=16))
    async with engine:
        wf = await new_workflow(engine)
        ids = [(await engine.executions.execute(wf, wait=False)).execution_id for _ in range(300)]
        for execution_id in ids:
            final = await engine.executions.wait(execution_id, timeout=20)
            assert final.status is ExecutionStatus.COMPLETED
    assert all(PROBE.runs(i) == {"first": 1, "second": 1, "third": 1} for i in ids)
    committer = engine.runtime.committer
    assert committer.ops >= 300 * 4
    assert committer.batches < committer.ops / 2
    stats = (await engine.workflows.get(wf)).stats
    assert (stats.runs_total, stats.runs_success) == (300, 300)


async def test_sync_not_starved_by_async_flood(make: EngineFactory) -> None:
    """A sync execution completes promptly while every async worker is busy with slow work."""
    engine = make(settings=fast(workers=2, queue_size=50))
    async with engine:
        wf = await new_workflow(engine)
        slow = [
            (await engine.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False))
            for _ in range(20)
        ]
        await until(lambda: PROBE.calls.total() == 2, what="both workers are busy")
        started = time.monotonic()
        quick = await engine.executions.execute(wf, timeout_seconds=5)
        assert quick.status is ExecutionStatus.COMPLETED
        assert time.monotonic() - started < 1
        assert (await engine.executions.get(slow[-1].execution_id)).status.value == "queued"
        PROBE.gate("g").set()
        for execution in slow:
            assert (await engine.executions.wait(execution.execution_id, 10)).status.value == (
                "completed"
            )


async def test_durable_sleep_counts_toward_the_timeout(make: EngineFactory) -> None:
    """A durable sleep (over a second) is running time: the execution's timeout still ends it."""
    engine = make(settings=fast())
    async with engine:
        wf = await new_workflow(
            engine,
            "custom",
            configuration={"steps": [{"name": "nap", "action": "delay", "seconds": 30}]},
        )
        started = time.monotonic()
        with pytest.raises(ExecutionTimeout) as caught:
            await engine.executions.execute(wf, timeout_seconds=1.2)
        assert time.monotonic() - started < 3
        execution = await engine.executions.get(caught.value.details["execution_id"])
        assert execution.status is ExecutionStatus.TIMED_OUT


async def test_durable_sleep_inside_a_sync_execution_completes(make: EngineFactory) -> None:
    """A sync caller waits through a durable sleep (it is not a wait for a signal)."""
    engine = make(settings=fast())
    async with engine:
        wf = await new_workflow(
            engine,
            "custom",
            configuration={
                "steps": [
                    {"name": "nap", "action": "delay", "seconds": 1.2},
                    {"name": "t", "action": "transform", "expressions": {"x": "1 + 1"}},
                ]
            },
        )
        execution = await engine.executions.execute(wf, timeout_seconds=10)
        assert execution.status is ExecutionStatus.COMPLETED
        assert execution.result == {"x": 2}


async def test_a_retried_step_resumes_from_its_saved_progress(eng: Engine) -> None:
    """A step that kept its progress and failed is tried again from there: no unit is redone."""
    wf = await new_workflow(eng, "test_progress")
    execution = await eng.executions.execute(wf, {"items": 5, "fail_after": 2})
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.result == {"done": [0, 1, 2, 3, 4]}
    work = [what[1] for _, _, what in PROBE.notes if what[0] == "work"]
    assert work == [0, 1, 2, 3, 4]  # 0 and 1 once, though the first try failed after them
    attempts = [what[1:] for _, _, what in PROBE.notes if what[0] == "attempt"]
    assert attempts == [(1, None, {}), (2, {"done": [0, 1]}, {})]  # progress is not a signal
    stored = eng.store.get_signals(execution.execution_id)
    assert stored == {"#progress:0": {"done": [0, 1, 2, 3, 4]}}


async def test_saved_progress_must_be_json(eng: Engine) -> None:
    """Progress that JSON cannot hold fails the step with a clear message; nothing is kept."""
    wf = await new_workflow(eng, "test_progress")
    with pytest.raises(WorkflowExecutionError) as info:
        await eng.executions.execute(wf, {"items": 1, "save_bad": True})
    assert "progress must be JSON" in info.value.details["error_message"]
    execution_id = info.value.details["execution_id"]
    assert eng.store.get_signals(execution_id) == {"#progress:0": {"done": [0]}}


async def test_a_signal_name_cannot_pass_for_progress(eng: Engine) -> None:
    """A signal named like the progress record is refused: '#' is not allowed in signal names."""
    wf = await new_workflow(eng, "test_progress")
    started = await eng.executions.execute(wf, {"items": 1}, wait=False)
    with pytest.raises(InvalidRequest) as info:
        await eng.executions.signal(started.execution_id, "#progress:0", {"done": [0, 1]})
    assert info.value.details == {"field": "name"}


async def test_progress_reads_back_as_stored_and_is_not_a_signal(eng: Engine) -> None:
    """After a save, ctx.progress is the stored JSON (string keys), and ctx.signals lacks it."""
    wf = await new_workflow(eng, "test_progress")
    execution = await eng.executions.execute(wf, {"items": 2, "tagged": True})
    assert execution.status is ExecutionStatus.COMPLETED
    after = PROBE.notes_of("after save")
    assert after[-1] == (
        "after save",
        {"done": [0, 1], "tags": {"0": "unit 0", "1": "unit 1"}},  # as a restart reads it
        {},  # progress never shows among the signals
    )


async def test_a_step_that_lost_its_execution_stops_and_is_not_retried(eng: Engine) -> None:
    """save_progress after the execution was taken away stops the step (no retry); the engine
    that runs it next resumes from the last kept unit."""
    wf = await new_workflow(eng, "test_progress")
    started = await eng.executions.execute(wf, {"items": 5, "release_after": 2}, wait=False)
    done = await eng.executions.wait(started.execution_id, timeout=10)
    assert done is not None
    assert done.status is ExecutionStatus.COMPLETED
    assert done.result == {"done": [0, 1, 2, 3, 4]}
    work = [what[1] for what in PROBE.notes_of("work")]
    # Unit 1 was done, then the save found the execution gone: done again by the next run,
    # which started from the kept [0]; no retry of the stale run did any unit in between.
    assert work == [0, 1, 1, 2, 3, 4]
    attempts = [what[1:3] for what in PROBE.notes_of("attempt")]
    assert attempts == [(1, None), (1, {"done": [0]})]
