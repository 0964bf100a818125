"""Interleavings found by an adversarial review of claim tokens (#10).

Each test forces one interleaving of the runtime with a real store (SQLite file,
and PostgreSQL where configured) through
:class:`~runtime_plugins.faults.Harness`, which injects what the network and
the kernel do (an answer lost after a commit, a call that fails or hangs, the
heartbeat thread firing at a given instant). Each one failed on the first
version of claim tokens, except the ``CheckpointStep`` case of
``test_the_hooks_see_the_event_of_a_write_whose_answer_was_lost``: a guard that
the fix of the first test does not lose the hooks' events.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import anyio
import pytest
from runtime_plugins import PROBE
from runtime_plugins.faults import harnessed
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    fast,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import ExecutionStatus, StepContext, WorkflowType, hookimpl, step
from abi_engine.events import Event
from abi_engine.ids import utcnow
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    FinishExecution,
    InsertExecution,
    SuspendExecution,
    WriteOp,
)

pytestmark = pytest.mark.anyio


class Recorder:
    """A plugin keeping every event the engine hands to ``abi_event`` hooks."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


def _step_events(events: Sequence[Any], execution_id: str) -> list[str]:
    """The step names of the ``execution.step_completed`` events of one execution."""
    return sorted(
        e.data["step"]["name"]
        for e in events
        if e.type == "execution.step_completed" and e.data.get("execution_id") == execution_id
    )


# -- 1. events written twice -----------------------------------------------------------------


async def test_a_checkpoint_retried_after_a_lost_answer_writes_its_event_once(
    make: EngineFactory,
) -> None:
    """A checkpoint whose commit succeeded but whose answer was lost is retried; the retry
    must not write its ``execution.step_completed`` event to the outbox again (a webhook
    delivered twice): each step's event is in the outbox once."""
    recorder = Recorder()
    engine, harness = harnessed(make, plugins=[recorder])
    try:
        async with engine:
            wf = await new_workflow(engine)
            harness.fail(CheckpointStep, after=True)
            execution = await engine.executions.execute(wf, {}, wait=False)
            final = await wait_status(engine, execution.execution_id, *TERMINAL, timeout=60)
            assert final.status is ExecutionStatus.COMPLETED
            stored = engine.store.events_after(0, 10_000)
    finally:
        engine.close()
    assert harness.failed == [("CheckpointStep", True)]
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}
    outbox = _step_events([s.event for s in stored], execution.execution_id)
    assert outbox == ["first", "second", "third"], outbox


@pytest.mark.parametrize("kind", [CheckpointStep, FinishExecution])
async def test_the_hooks_see_the_event_of_a_write_whose_answer_was_lost(
    make: EngineFactory, kind: type[WriteOp]
) -> None:
    """A write whose commit succeeded but whose answer was lost: its retry finds its own
    effect (AGAIN) and writes nothing again, yet the ``abi_event`` hooks, which saw
    nothing of the first attempt, still see each committed event exactly once."""
    recorder = Recorder()
    engine, harness = harnessed(make, plugins=[recorder])
    try:
        async with engine:
            wf = await new_workflow(engine)
            harness.fail(kind, after=True)
            execution = await engine.executions.execute(wf, {}, wait=False)
            final = await wait_status(engine, execution.execution_id, *TERMINAL, timeout=60)
            assert final.status is ExecutionStatus.COMPLETED
    finally:
        engine.close()
    assert harness.failed == [(kind.__name__, True)]
    execution_id = execution.execution_id
    assert _step_events(recorder.events, execution_id) == ["first", "second", "third"]
    completed = [
        e
        for e in recorder.events
        if e.type == "execution.completed"
        and execution_id in (e.data.get("id"), e.data.get("execution_id"))
    ]
    assert len(completed) == 1, completed


# -- 2. a resume dropped by the run it was deferred behind ------------------------------------


async def test_a_signal_resuming_an_execution_whose_run_is_still_here_is_not_dropped(
    make: EngineFactory,
) -> None:
    """A signal delivered (on the same node) while the suspension's write is still being
    retried, every worker busy: the grant the signal gives this node must survive the end
    of the old run, so the execution resumes at once, not one lease later."""
    engine, harness = harnessed(make, workers=1, lease_seconds=120)
    try:
        async with engine:
            wf = await new_workflow(engine)
            # The suspension commits, but its answer is lost again and again: the run
            # (on the only worker) keeps retrying it for several seconds.
            harness.fail(SuspendExecution, times=10, after=True)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"signal": "go"}}}, wait=False
            )
            execution_id = execution.execution_id
            await wait_status(engine, execution_id, ExecutionStatus.WAITING, timeout=30)
            assert harness.faults_left() > 0  # the run still retries its suspension
            await engine.executions.signal(execution_id, "go", {"n": 1})
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
    finally:
        engine.close()
    assert PROBE.runs(execution_id) == {"first": 1, "second": 2, "third": 1}


# -- 3. a heartbeat between a claim's commit and its swap stops the live run --------------------


async def test_a_heartbeat_between_a_claims_commit_and_its_swap_does_not_stop_the_run(
    make: EngineFactory,
) -> None:
    """The heartbeat thread renewing right after a ClaimExecution committed (the grant is
    still what the node holds, the row already runs under the new token) must not make
    the runtime stop the run it just started: the step is not interrupted, runs once,
    and the execution completes without waiting for a lease to expire."""
    engine, harness = harnessed(make, lease_seconds=120)
    renewed: list[int] = []

    def heartbeat_now(ops: Sequence[WriteOp]) -> None:
        if any(isinstance(op, ClaimExecution) for op in ops) and not renewed:
            renewed.append(engine.runtime.claims.renew_once())

    harness.after_commit(heartbeat_now)
    try:
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"first": {"gate": "g"}}}, wait=False
            )
            execution_id = execution.execution_id
            await until(lambda: PROBE.calls[(execution_id, "first")] == 1, timeout=30)
            await anyio.sleep(2)  # some 40 polls: a lost claim is acted on by now
            PROBE.gate("g").set()
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
    finally:
        engine.close()
    assert renewed, "the injected heartbeat did not run"
    assert ("first", "interrupted") not in {(s, w) for e, s, w in PROBE.notes if e == execution_id}
    assert PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}


# -- 4. a wake timer meeting a failing store takes the engine down ------------------------------


async def test_a_wake_timer_meeting_a_failing_store_does_not_stop_the_engine(
    make: EngineFactory,
) -> None:
    """A durable sleep's wake timer fires while the store does not answer: the engine keeps
    running (no task of the runtime may die of a store error) and the sleeping execution
    completes once the store is back."""
    engine, harness = harnessed(make, poll_interval=1.0)
    try:
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"durable_sleep": 3}}}, wait=False
            )
            execution_id = execution.execution_id
            await wait_status(engine, execution_id, ExecutionStatus.WAITING, timeout=30)
            record = engine.store.get_execution(execution_id)
            assert record is not None
            assert record.wake_at is not None
            harness.down("claim_recoverable")
            wake_at = record.wake_at
            await until(
                lambda: utcnow() > wake_at + timedelta(seconds=3),
                timeout=60,
                what="the wake time",
            )
            harness.up()
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
            assert engine.runtime.running
    finally:
        engine.close()
    assert "claim_recoverable" in harness.down_calls


# -- 5. an insert retried past its lease runs a step on an expired lease ------------------------


async def test_an_execution_inserted_after_retries_is_never_stored_with_an_expired_lease(
    make: EngineFactory,
) -> None:
    """A synchronous execution whose insert is retried for longer than the lease (the store
    failing for a few seconds): when the insert finally commits, no other node may find
    it recoverable, since this node runs its first step at once (no claim is taken
    first). Checked by another node's poll right at the commit, then by the step count."""
    # Only the intruder polls (this node's own poller would race it for the row).
    engine, harness = harnessed(make, lease_seconds=2, poll_interval=3600)
    stolen: list[tuple[str, int, int]] = []

    def another_node_polls(ops: Sequence[WriteOp]) -> None:
        if any(isinstance(op, InsertExecution) for op in ops):
            now = utcnow()
            stolen.extend(
                harness._store.claim_recoverable(
                    "intruder", now, now + timedelta(seconds=60), 10, None, ()
                )
            )

    harness.after_commit(another_node_polls)
    try:
        async with engine:
            wf = await new_workflow(engine)
            # 8 failures: retried with backoff for ~4.5 s, more than the 2 s lease.
            harness.fail(InsertExecution, times=8)
            with anyio.move_on_after(5):  # the intruder holds it if the bug is there
                await engine.executions.execute(wf, {}, wait=True, timeout_seconds=60)
    finally:
        engine.close()
    assert len(harness.failed) == 8
    assert stolen == []


# -- 6. one failed read abandons a run for a whole lease ----------------------------------------


async def test_a_run_whose_read_fails_once_is_not_abandoned_for_a_lease(
    make: EngineFactory,
) -> None:
    """A resumed run whose first read of the store (its signals) fails once, a blip like
    the ones its writes survive, goes on after a retry: the execution completes without
    waiting for its lease to expire."""
    engine, harness = harnessed(make, lease_seconds=120)
    try:
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"signal": "go"}}}, wait=False
            )
            execution_id = execution.execution_id
            await wait_status(engine, execution_id, ExecutionStatus.WAITING, timeout=30)
            harness.fail_calls("get_signals")
            await engine.executions.signal(execution_id, "go", {"n": 1})
            final = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert final.status is ExecutionStatus.COMPLETED
    finally:
        engine.close()
    assert harness.down_calls == ["get_signals"]
    assert PROBE.runs(execution_id) == {"first": 1, "second": 2, "third": 1}


# -- 7. a partitioned node keeps running a step after its lease expired --------------------------


@pytest.mark.postgresql_only  # on SQLite a hanging store call blocks the loop, steps included
async def test_a_partitioned_node_stops_its_step_before_its_lease_can_be_taken_over(
    make: EngineFactory,
) -> None:
    """A node cut off from PostgreSQL (its store calls hang until the driver's timeouts,
    longer than the lease) must stop the step it runs before another node can take the
    execution over: when the other node starts the step, the first run of it has been
    interrupted already (the claim expired at ``EXPIRY_SHARE`` of the lease)."""
    other = make(settings=fast(lease_seconds=10))
    engine, harness = harnessed(make, lease_seconds=10)
    try:
        async with engine:
            wf = await new_workflow(engine)
            execution = await engine.executions.execute(
                wf, {"do": {"second": {"gate": "g"}}}, wait=False
            )
            execution_id = execution.execution_id
            await until(lambda: PROBE.calls[(execution_id, "second")] == 1, timeout=30)
            harness.stall("renew_leases", "claim_recoverable", "apply")  # the partition
            try:
                async with other:  # another node, still connected, looks for work
                    await until(
                        lambda: PROBE.calls[(execution_id, "second")] == 2,
                        timeout=60,
                        what="the takeover by the other node",
                    )
                    interrupted = [
                        s for e, s, w in PROBE.notes if e == execution_id and w == "interrupted"
                    ]
                    harness.unstall()
                    PROBE.gate("g").set()
                    final = await wait_status(other, execution_id, *TERMINAL, timeout=30)
            finally:
                harness.unstall()
    finally:
        engine.close()
    assert final.status is ExecutionStatus.COMPLETED
    assert interrupted == ["second"], "the step still ran on the partitioned node"


# -- 8. a run that crashes the same way every time is retried forever ---------------------------


def _skip_if_flag(configuration: Any, parameters: Any) -> bool:
    """A plugin's skip rule with a bug: a KeyError when the parameter is missing."""
    return bool(parameters["flag"])


class BrokenSkip(WorkflowType):
    """``check`` has a ``skip_if`` that raises unless ``parameters.flag`` is given."""

    name = "review_broken_skip"

    @step
    async def start(self, ctx: StepContext) -> Any:
        PROBE.calls[(ctx.execution_id, ctx.step_name)] += 1
        return {"ok": True}

    @step(skip_if=_skip_if_flag)
    async def check(self, ctx: StepContext) -> Any:
        return {"checked": True}


class BrokenSkipPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(BrokenSkip)


async def test_a_run_that_crashes_every_time_ends_instead_of_looping(
    make: EngineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An execution whose run raises outside any step (a plugin's ``skip_if`` with a bug)
    ends ``failed`` with the error, instead of being recovered and crashing again every
    lease, forever, with a traceback each time."""
    engine, _ = harnessed(make, plugins=[BrokenSkipPlugin()], lease_seconds=1)
    try:
        async with engine:
            wf = await new_workflow(engine, "review_broken_skip")
            execution = await engine.executions.execute(wf, {}, wait=False)
            execution_id = execution.execution_id
            with contextlib.suppress(AssertionError):  # not ended: checked below
                await wait_status(engine, execution_id, *TERMINAL, timeout=20)  # 20 leases
            final = await engine.executions.get(execution_id)
    finally:
        engine.close()
    crashes = [r for r in caplog.records if "crashed the runtime" in r.getMessage()]
    assert final.status is ExecutionStatus.FAILED, (final.status, len(crashes))
    assert len(crashes) <= 3, f"{len(crashes)} tracebacks for one execution"
    assert PROBE.runs(execution_id)["start"] <= 3


# -- 9. a synchronous run waiting for a slot starts its steps after its cancellation ------------


async def test_a_sync_execution_cancelled_while_waiting_for_a_slot_never_starts_a_step(
    make: EngineFactory,
) -> None:
    """A synchronous execution stored ``running`` (a slot was free when it was stored)
    whose slot is taken by another caller right after its commit, so that its run waits:
    cancelled meanwhile, none of its steps may start once the slot frees (its run must
    find out that it ended before running anything)."""
    engine, harness = harnessed(make, sync_workers=1)
    limiter = engine.runtime._sync_limiter
    borrower = object()  # another synchronous caller, taking the only slot

    def take_the_slot(ops: Sequence[WriteOp]) -> None:
        if any(isinstance(op, InsertExecution) for op in ops) and not limiter.borrowed_tokens:
            if harness.blocking:  # applied in a thread of the committer: on the loop
                loop = engine.runtime.thread_commits.loop
                taken = threading.Event()

                def take() -> None:
                    limiter.acquire_on_behalf_of_nowait(borrower)
                    taken.set()

                loop.call_soon_threadsafe(take)
                assert taken.wait(30)
            else:
                limiter.acquire_on_behalf_of_nowait(borrower)

    harness.after_commit(take_the_slot)
    answer: list[Any] = []
    try:
        async with engine:
            wf = await new_workflow(engine)

            async def call() -> None:
                try:
                    answer.append(await engine.executions.execute(wf, {}, timeout_seconds=120))
                except Exception as exc:  # recorded, checked below
                    answer.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await until(lambda: limiter.borrowed_tokens == 1, timeout=30, what="the slot")
                page = await engine.executions.list(page_size=10)
                assert len(page.items) == 1
                execution_id = page.items[0].execution_id
                assert page.items[0].status is ExecutionStatus.RUNNING  # stored running
                cancelled = await engine.executions.cancel(execution_id)
                assert cancelled.status is ExecutionStatus.CANCELLED
                limiter.release_on_behalf_of(borrower)
            final = await engine.executions.get(execution_id)
    finally:
        engine.close()
    assert final.status is ExecutionStatus.CANCELLED
    assert PROBE.runs(execution_id) == {}, "a step of the cancelled execution started"
