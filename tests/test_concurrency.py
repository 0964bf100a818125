"""Concurrency limits (#16): per workflow and per key, slots as leases, on every
engine backend (SQLite file, PostgreSQL where configured)."""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    fast,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import InvalidRequest
from abi_engine.expressions import check_key_expression, evaluate_key

pytestmark = pytest.mark.anyio

KEYED = {"concurrency": {"key": "parameters.customer", "limit": 1}}


def _gated(customer: Any, gate: str) -> dict[str, Any]:
    return {"customer": customer, "do": {"first": {"gate": gate}}}


async def _running(engine: Engine, workflow_id: str) -> list[str]:
    page = await engine.executions.list(workflow_id=workflow_id, status="running", page_size=100)
    return [e.execution_id for e in page.items]


async def test_a_key_with_limit_one_runs_one_at_a_time_and_others_show_why(
    make: EngineFactory,
) -> None:
    """Two executions with the same key: the second waits queued (``concurrency_limit``,
    its key shown) until the first ends; another key runs meanwhile. The slots are
    listed with their holders."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        a = await engine.executions.execute(wf, _gated("c1", "a"), wait=False)
        await wait_status(engine, a.execution_id, ExecutionStatus.RUNNING, timeout=30)
        b = await engine.executions.execute(wf, _gated("c1", "b"), wait=False)
        other = await engine.executions.execute(wf, _gated("c2", "o"), wait=False)
        await wait_status(engine, other.execution_id, ExecutionStatus.RUNNING, timeout=30)
        waiting = await engine.executions.get(b.execution_id)
        assert waiting.status is ExecutionStatus.QUEUED
        assert waiting.queued_reason == "concurrency_limit"
        assert waiting.concurrency_key == "c1"
        view = await engine.workflows.concurrency(wf)
        assert view.concurrency is not None
        assert (view.concurrency.key, view.concurrency.limit) == ("parameters.customer", 1)
        held = {(s.execution_id, s.key) for s in view.slots}
        assert held == {(a.execution_id, "c1"), (other.execution_id, "c2")}
        PROBE.gate("a").set()
        await wait_status(engine, a.execution_id, *TERMINAL, timeout=30)
        PROBE.gate("b").set()
        PROBE.gate("o").set()
        done_b = await wait_status(engine, b.execution_id, *TERMINAL, timeout=30)
        done_a = await engine.executions.get(a.execution_id)
    assert done_b.status is ExecutionStatus.COMPLETED
    assert done_a.completed_at is not None
    assert done_b.started_at is not None
    assert done_b.started_at >= done_a.completed_at


async def test_max_concurrency_bounds_the_workflow_whatever_the_keys(make: EngineFactory) -> None:
    """``max_concurrency: 2``: of four gated executions two run, two wait queued."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, max_concurrency=2)
        ids = [
            (await engine.executions.execute(wf, _gated(i, f"g{i}"), wait=False)).execution_id
            for i in range(4)
        ]
        await until(lambda: len(PROBE.gates) >= 2, timeout=30, what="two started")
        running = await _running(engine, wf)
        assert len(running) == 2
        queued = [await engine.executions.get(i) for i in ids if i not in running]
        assert {q.queued_reason for q in queued} == {"concurrency_limit"}
        for i in range(4):
            PROBE.gate(f"g{i}").set()
        for execution_id in ids:
            done = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert done.status is ExecutionStatus.COMPLETED


async def test_two_engines_on_one_database_never_exceed_the_limit(make: EngineFactory) -> None:
    """Two engines share a database and a key with limit 1: the six executions run one
    after the other, whichever engine claims them (intervals never overlap)."""
    first, second = make("shared.db"), make("shared.db")
    async with first, second:
        wf = await new_workflow(first, **KEYED)
        ids = []
        for i in range(6):
            engine = first if i % 2 else second
            params = {"customer": "same", "do": {"first": {"sleep": 0.2}}}
            ids.append((await engine.executions.execute(wf, params, wait=False)).execution_id)
        done = [await wait_status(first, i, *TERMINAL, timeout=60) for i in ids]
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    spans = sorted((d.started_at, d.completed_at) for d in done)
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert ended is not None
        assert started is not None
        assert started >= ended, spans


async def test_limits_are_checked_at_create_and_update(make: EngineFactory) -> None:
    """Bad limits are ``InvalidRequest`` naming the field; good ones round-trip, and
    ``null`` removes them."""
    engine = make()
    async with engine:
        for bad, field in (
            ({"max_concurrency": 0}, "max_concurrency"),
            ({"max_concurrency": "x"}, "max_concurrency"),
            ({"concurrency": {"key": "parameters.a", "limit": 0}}, "concurrency.limit"),
            ({"concurrency": {"key": "import os", "limit": 1}}, "concurrency.key"),
            ({"concurrency": {"key": "open('x')", "limit": 1}}, "concurrency.key"),
            ({"concurrency": {"key": "", "limit": 1}}, "concurrency.key"),
            ({"concurrency": {"limit": 1}}, "concurrency.key"),
        ):
            with pytest.raises(InvalidRequest) as caught:
                await new_workflow(engine, active=False, **bad)
            assert caught.value.details["field"] == field, bad
        wf = await new_workflow(engine, active=False, max_concurrency=3, **KEYED)
        got = await engine.workflows.get(wf)
        assert got.max_concurrency == 3
        assert got.concurrency is not None
        assert got.concurrency.limit == 1
        with pytest.raises(InvalidRequest) as caught:
            await engine.workflows.update(wf, {"concurrency": {"key": "x.y", "limit": 1}})
        assert caught.value.details["field"] == "concurrency.key"
        cleared = await engine.workflows.update(wf, {"max_concurrency": None, "concurrency": None})
        assert cleared.max_concurrency is None
        assert cleared.concurrency is None


@given(
    st.one_of(
        st.text(max_size=20),
        st.integers(),
        st.none(),
        st.lists(st.integers(), max_size=3),
        st.booleans(),
    )
)
def test_a_key_is_a_string_or_nothing_and_equal_values_give_equal_keys(value: Any) -> None:
    """Whatever the parameter holds, the key is ``None`` (nothing to key on) or a
    string, the same for equal parameters; a missing parameter gives ``None``."""
    key = evaluate_key("parameters.customer", {"customer": value})
    again = evaluate_key("parameters.customer", {"customer": value})
    assert key == again
    assert key is None if value is None else isinstance(key, str)
    assert evaluate_key("parameters.customer", {}) is None


@given(st.text(max_size=40))
def test_a_key_expression_names_only_parameters(expr: str) -> None:
    """An accepted expression names nothing but ``parameters`` (and evaluating it never
    raises)."""
    if check_key_expression(expr) is None:
        import ast

        names = {
            n.id for n in ast.walk(ast.parse(expr.strip(), mode="eval")) if isinstance(n, ast.Name)
        }
        assert names <= {"parameters"}
        evaluate_key(expr, {"a": 1})


async def test_a_signal_wakes_an_execution_within_the_limits(make: EngineFactory) -> None:
    """A waits for a signal (holding no slot), B of the same key runs meanwhile; the
    signal to A queues it (``concurrency_limit``) rather than running it beside B;
    it runs once B ends."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        a = await engine.executions.execute(
            wf, {"customer": "c", "do": {"first": {"signal": "go"}}}, wait=False
        )
        await wait_status(engine, a.execution_id, ExecutionStatus.WAITING, timeout=30)
        b = await engine.executions.execute(wf, _gated("c", "b"), wait=False)
        await wait_status(engine, b.execution_id, ExecutionStatus.RUNNING, timeout=30)
        await engine.executions.signal(a.execution_id, "go", {"ok": True})
        woken = await engine.executions.get(a.execution_id)
        assert (woken.status, woken.queued_reason) == (
            ExecutionStatus.QUEUED,
            "concurrency_limit",
        )
        assert await _running(engine, wf) == [b.execution_id]
        PROBE.gate("b").set()
        done_a = await wait_status(engine, a.execution_id, *TERMINAL, timeout=30)
        done_b = await engine.executions.get(b.execution_id)
    assert done_a.status is ExecutionStatus.COMPLETED
    assert done_b.completed_at is not None
    assert done_a.completed_at is not None
    assert done_a.completed_at >= done_b.completed_at


async def test_a_synchronous_execute_waits_for_its_slot(make: EngineFactory) -> None:
    """A synchronous execute of a key whose slot is held waits queued
    (``concurrency_limit``) rather than starting at once beside the holder, then
    answers completed, started after the holder ended."""
    engine = make()
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        a = await engine.executions.execute(wf, _gated("c", "a"), wait=False)
        await wait_status(engine, a.execution_id, ExecutionStatus.RUNNING, timeout=30)
        answers: list[Any] = []

        async def synchronous() -> None:
            answers.append(
                await engine.executions.execute(wf, {"customer": "c"}, timeout_seconds=30)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(synchronous)
            await until(lambda: len(PROBE.gates) >= 1, timeout=30, what="a started")
            waiting: list[Any] = []
            with anyio.fail_after(30):  # it is stored queued, not running beside a
                while not waiting:
                    page = await engine.executions.list(workflow_id=wf, status="queued")
                    waiting = [e for e in page.items if e.execution_id != a.execution_id]
                    await anyio.sleep(0.01)
            assert waiting[0].queued_reason == "concurrency_limit"
            assert await _running(engine, wf) == [a.execution_id]
            PROBE.gate("a").set()
        done_a = await engine.executions.get(a.execution_id)
    assert answers[0].status is ExecutionStatus.COMPLETED
    assert done_a.completed_at is not None
    assert answers[0].started_at >= done_a.completed_at


async def test_a_freed_slot_starts_the_next_at_once_without_the_poller(
    make: EngineFactory,
) -> None:
    """The poller sleeps an hour: when an execution holding a key's only slot ends, its
    node grants itself the next one waiting on that key at once (``claim_freed``), and
    that one's end the next; another workflow's waiting execution is not granted by
    it, and the intervals never overlap."""
    engine = make(settings=fast(poll_interval=3600))
    async with engine:
        wf = await new_workflow(engine, **KEYED)
        other = await new_workflow(engine, max_concurrency=1)
        holder = await engine.executions.execute(other, _gated("x", "hold"), wait=False)
        await wait_status(engine, holder.execution_id, ExecutionStatus.RUNNING, timeout=30)
        stuck = await engine.executions.execute(other, _gated("y", "stuck"), wait=False)
        ids = [
            (await engine.executions.execute(wf, _gated("c", f"k{i}"), wait=False)).execution_id
            for i in range(3)
        ]
        await wait_status(engine, ids[0], ExecutionStatus.RUNNING, timeout=30)
        assert (await engine.executions.get(ids[1])).queued_reason == "concurrency_limit"
        for i in range(3):
            PROBE.gate(f"k{i}").set()
        done = [await wait_status(engine, i, *TERMINAL, timeout=30) for i in ids]
        still = await engine.executions.get(stuck.execution_id)
        PROBE.gate("hold").set()
        PROBE.gate("stuck").set()
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    assert still.status is ExecutionStatus.QUEUED
    assert still.queued_reason == "concurrency_limit"
    spans = sorted((d.started_at, d.completed_at) for d in done)
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert ended is not None
        assert started is not None
        assert started >= ended, spans
