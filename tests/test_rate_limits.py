"""Rate limits (#16): at most N starts per period, per key; those beyond wait queued and
start when the window allows, on every engine backend (SQLite file, PostgreSQL where
configured), with two engines on one database too."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    TERMINAL,
    EngineFactory,
    fast,
    new_workflow,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import InvalidRequest
from abi_engine.storage.sql.shaping import window

pytestmark = pytest.mark.anyio


def _starts(engine: Engine, ids: Sequence[str]) -> list[datetime]:
    """When the rate limit let each execution start (the store's record)."""
    records = [engine.store.get_execution(i) for i in ids]
    starts = [r.rate_granted_at for r in records if r is not None]
    assert all(s is not None for s in starts), records
    return sorted(s for s in starts if s is not None)


def _at_most(starts: Sequence[datetime], limit: int, period: timedelta) -> None:
    """No window of ``period`` holds more than ``limit`` of ``starts`` (sorted)."""
    for first, later in zip(starts, starts[limit:], strict=False):
        assert later - first >= period, (first, later, starts)


async def test_executions_beyond_the_limit_wait_and_start_when_the_window_allows(
    make: EngineFactory,
) -> None:
    """Two per second per customer: the third of one customer waits queued
    (``rate_limit``, its key and since when shown), another customer starts at once;
    the third starts as soon as the window allows (not a poll later)."""
    engine = make()
    async with engine:
        rule = {"key": "parameters.customer", "limit": 2, "period_seconds": 1.5}
        wf = await new_workflow(engine, rate_limit=rule)
        got = await engine.workflows.get(wf)
        assert got.rate_limit is not None
        assert (got.rate_limit.limit, got.rate_limit.period_seconds) == (2, 1.5)
        ids = [
            (await engine.executions.execute(wf, {"customer": "c"}, wait=False)).execution_id
            for _ in range(3)
        ]
        other = await engine.executions.execute(wf, {"customer": "d"}, wait=False)
        third = await engine.executions.get(ids[2])
        if third.status is ExecutionStatus.QUEUED:  # else: the window passed already
            assert (third.queued_reason, third.rate_limit_key) == ("rate_limit", "c")
            assert third.queued_since is not None
            page = await engine.executions.list(workflow_id=wf, status="queued")
            listed = {e.execution_id: e for e in page.items}
            assert listed[ids[2]].queued_reason == "rate_limit"
            assert listed[ids[2]].queued_since is not None
        done = [await wait_status(engine, i, *TERMINAL, timeout=30) for i in ids]
        await wait_status(engine, other.execution_id, *TERMINAL, timeout=30)
        starts = _starts(engine, ids)
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    _at_most(starts, 2, timedelta(seconds=1.5))
    # Claimed when its window opened: well before a poll interval's worth of delay.
    assert starts[2] - starts[0] < timedelta(seconds=1.5 + 0.4), starts


async def test_two_engines_on_one_database_never_start_more_than_the_limit(
    make: EngineFactory,
) -> None:
    """Two engines share a database and a limit of 3 per second: twelve executions
    requested through both start three per window at most, all of them, in about
    four windows."""
    first, second = make("shared.db"), make("shared.db")
    async with first, second:
        rule = {"limit": 3, "period_seconds": 1}
        wf = await new_workflow(first, rate_limit=rule)
        ids = []
        for i in range(12):
            engine = first if i % 2 else second
            ids.append((await engine.executions.execute(wf, {}, wait=False)).execution_id)
        done = [await wait_status(first, i, *TERMINAL, timeout=60) for i in ids]
        starts = _starts(first, ids)
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    _at_most(starts, 3, timedelta(seconds=1))
    assert starts[-1] - starts[0] >= timedelta(seconds=3)
    assert starts[-1] - starts[0] < timedelta(seconds=3 + 2), starts


async def test_rate_limits_are_checked_at_create_and_update(make: EngineFactory) -> None:
    """Bad rate limits and debounces are ``InvalidRequest`` naming the field; good ones
    round-trip, and ``null`` removes them."""
    engine = make()
    async with engine:
        for bad, field in (
            ({"rate_limit": {"limit": 0, "period_seconds": 1}}, "rate_limit.limit"),
            ({"rate_limit": {"limit": "x", "period_seconds": 1}}, "rate_limit.limit"),
            ({"rate_limit": {"limit": 1, "period_seconds": 0}}, "rate_limit.period_seconds"),
            ({"rate_limit": {"limit": 1}}, "rate_limit.period_seconds"),
            (
                {"rate_limit": {"key": "open('x')", "limit": 1, "period_seconds": 1}},
                "rate_limit.key",
            ),
            ({"debounce": {"seconds": -1}}, "debounce.seconds"),
            ({"debounce": {"key": "import os", "seconds": 1}}, "debounce.key"),
            ({"debounce": {"key": 3, "seconds": 1}}, "debounce.key"),
        ):
            with pytest.raises(InvalidRequest) as caught:
                await new_workflow(engine, active=False, **bad)
            assert caught.value.details["field"] == field, bad
        rule = {"key": "parameters.a", "limit": 5, "period_seconds": 60}
        wf = await new_workflow(engine, active=False, rate_limit=rule, debounce={"seconds": 2})
        got = await engine.workflows.get(wf)
        assert got.rate_limit is not None
        assert (got.rate_limit.key, got.rate_limit.limit) == ("parameters.a", 5)
        assert got.debounce is not None
        assert (got.debounce.key, got.debounce.seconds) == (None, 2)
        with pytest.raises(InvalidRequest) as caught:
            await engine.workflows.update(wf, {"rate_limit": {"limit": 1, "period_seconds": -2}})
        assert caught.value.details["field"] == "rate_limit.period_seconds"
        renamed = await engine.workflows.update(wf, {"name": "kept"})
        assert renamed.rate_limit == got.rate_limit
        assert renamed.debounce == got.debounce
        cleared = await engine.workflows.update(wf, {"rate_limit": None, "debounce": None})
        assert cleared.rate_limit is None
        assert cleared.debounce is None


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=60),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=1, max_value=2_000),
)
def test_the_window_rule_never_lets_more_than_the_limit_start_in_a_period(
    arrivals: list[int], limit: int, period: int
) -> None:
    """Executions arriving at ``arrivals`` (ms) start by the rule: each at its arrival
    or, held, at the time the rule names (in order). Any ``period`` long window holds
    at most ``limit`` starts, and no start waits longer than the rule says it must:
    at the time named, the rule lets it start."""
    starts: list[int] = []
    for arrival in sorted(arrivals):
        at = max(arrival, starts[-1] if starts else arrival)
        held = window(starts, at, limit, period)
        if held is not None:
            assert held > at
            assert window(starts, held, limit, period) is None
            at = held
        starts.append(at)
    for first, later in zip(starts, starts[limit:], strict=False):
        assert later - first >= period
    for first, later in itertools.pairwise(starts):
        assert later >= first


async def test_a_queued_execution_behind_higher_priority_work_shows_priority(
    make: EngineFactory,
) -> None:
    """One worker, busy: a low priority execution waiting in the node's queue behind a
    high priority one shows ``queued_reason`` ``priority`` (in the list too); the high
    one shows ``worker_pool``; once it runs, neither reason remains."""
    engine = make(settings=fast(workers=1))
    async with engine:
        wf = await new_workflow(engine)
        busy = await engine.executions.execute(wf, {"do": {"first": {"gate": "busy"}}}, wait=False)
        await wait_status(engine, busy.execution_id, ExecutionStatus.RUNNING, timeout=30)
        low = await engine.executions.execute(wf, {}, wait=False, priority=0)
        high = await engine.executions.execute(wf, {}, wait=False, priority=9)
        assert (await engine.executions.get(low.execution_id)).queued_reason == "priority"
        assert (await engine.executions.get(high.execution_id)).queued_reason == "worker_pool"
        page = await engine.executions.list(workflow_id=wf, status="queued")
        reasons = {e.execution_id: e.queued_reason for e in page.items}
        assert reasons == {low.execution_id: "priority", high.execution_id: "worker_pool"}
        PROBE.gate("busy").set()
        for execution_id in (busy.execution_id, low.execution_id, high.execution_id):
            done = await wait_status(engine, execution_id, *TERMINAL, timeout=30)
            assert (done.status, done.queued_reason) == (ExecutionStatus.COMPLETED, None)


async def test_a_rate_limit_and_a_concurrency_limit_both_hold(make: EngineFactory) -> None:
    """``max_concurrency: 1`` and two starts per second: five executions of 0.3 s run
    one at a time (never overlapping) and at most two start per second; all end."""
    engine = make()
    async with engine:
        rule = {"limit": 2, "period_seconds": 1}
        wf = await new_workflow(engine, rate_limit=rule, max_concurrency=1)
        params = {"do": {"first": {"sleep": 0.3}}}
        ids = [
            (await engine.executions.execute(wf, params, wait=False)).execution_id for _ in range(5)
        ]
        done = [await wait_status(engine, i, *TERMINAL, timeout=60) for i in ids]
        starts = _starts(engine, ids)
    assert {d.status for d in done} == {ExecutionStatus.COMPLETED}
    _at_most(starts, 2, timedelta(seconds=1))
    spans = sorted((d.started_at, d.completed_at) for d in done)
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert ended is not None
        assert started is not None
        assert started >= ended, spans
