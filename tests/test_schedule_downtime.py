"""Ticks after long downtime keep the event loop free (issue #10, scenario 8).

A tick after downtime plans each schedule's missed due times; it must not
enumerate them all (80 days of an every-minute schedule is 115,200), must
yield to the loop between schedules, and must not call the store on the loop
when the store blocks (PostgreSQL). The exactness of the counts is proved by
the property tests of ``tests/test_schedule_math.py``; here the engine shows
them in the history.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from runtime_plugins.helpers import new_workflow

from abi_engine import Engine

pytestmark = pytest.mark.anyio

TRANSFORM = {
    "steps": [{"name": "echo", "action": "transform", "expressions": {"n": "parameters['n']"}}]
}
DOWNTIME = timedelta(days=80)
SCHEDULES = 10


async def every_minute(engine: Engine, count: int, **fields: Any) -> tuple[list[str], datetime]:
    """``count`` every-minute cron schedules (UTC and Paris) and their common first due time."""
    wf = await new_workflow(engine, "custom", configuration=TRANSFORM, name="Minutely")
    created = [
        await engine.schedules.create(
            wf,
            {
                "name": f"minutely {i}",
                "schedule_type": "cron",
                "cron_expression": "* * * * *",
                "timezone": "Europe/Paris" if i % 2 else "UTC",
                "parameters": {"n": i},
                "overlap_policy": "allow",
                **fields,
            },
        )
        for i in range(count)
    ]
    firsts = {s.next_execution for s in created}
    if len(firsts) > 1:  # created across a minute boundary: start again on the next minute
        return await every_minute(engine, count, **fields)
    [first] = firsts
    assert first is not None
    return [s.id for s in created], first


class LoopLag:
    """The longest the event loop went without running a task that sleeps 10 ms at a time."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            await anyio.sleep(0.01)
            self.longest = max(self.longest, time.perf_counter() - started - 0.01)


@pytest.mark.parametrize(
    ("policy", "runs", "skipped"),
    [
        ("skip", 1, 80 * 1440),
        ("run_once", 1, 80 * 1440),
        ("catch_up", 11, 80 * 1440 - 10),
    ],
)
async def test_eighty_days_of_every_minute_plan_in_well_under_a_second(
    eng: Engine, policy: str, runs: int, skipped: int
) -> None:
    """Ten every-minute schedules after 80 days down: the tick plans them in well under a
    second of CPU, the loop keeps running, and each history says exactly how many were missed."""
    ids, first = await every_minute(eng, SCHEDULES, misfire_policy=policy)
    now = first + DOWNTIME + timedelta(seconds=30)  # first + 80 days is on time, the rest late
    lag = LoopLag()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lag.run)
        await anyio.sleep(0.05)
        cpu = time.process_time()
        await eng.scheduler.tick(now)
        cpu = time.process_time() - cpu
        tg.cancel_scope.cancel()
    assert cpu < 2.0, cpu  # enumerating every missed minute took 10-12 s
    assert lag.longest < 2.0, lag.longest
    for schedule_id in ids:
        page = await eng.schedules.history(schedule_id, page_size=100)
        lines = list(reversed(page.items))
        assert lines[0].outcome == "skipped_misfire"
        assert lines[0].due_at == first
        assert lines[0].detail == f"{skipped} due time(s) missed ({policy})"
        due = [h.due_at for h in lines if h.outcome == "fired"]
        assert len(due) == runs
        assert due[-1] == first + DOWNTIME  # the on-time one, last
        assert due == [first + DOWNTIME - timedelta(minutes=runs - 1 - k) for k in range(runs)]
        schedule = await eng.schedules.get(schedule_id)
        assert schedule.next_execution == first + DOWNTIME + timedelta(minutes=1)


async def test_a_tick_yields_to_the_loop_between_schedules(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a tick plans many due schedules, other tasks run between them."""
    _, first = await every_minute(eng, 20)
    ran = 0
    seen: list[int] = []
    plan = eng.scheduler._plan_due

    async def observed(*args: Any) -> Any:
        seen.append(ran)
        return await plan(*args)

    monkeypatch.setattr(eng.scheduler, "_plan_due", observed)

    async def other_task() -> None:
        nonlocal ran
        while True:
            ran += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await anyio.lowlevel.checkpoint()
        await eng.scheduler.tick(first)
        tg.cancel_scope.cancel()
    assert len(seen) == 20
    # The other task ran between each schedule's plan and the next one's.
    assert all(later > earlier for earlier, later in itertools.pairwise(seen)), seen


async def test_a_firing_reads_its_workflow_as_every_store_call_is_made(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the workflow to fire follows the store's rule: in a worker thread when the
    store blocks (PostgreSQL: a network round trip), never on the event loop."""
    _, first = await every_minute(eng, 1)
    loop_thread = threading.get_ident()
    threads: list[int] = []
    get_workflow = eng.store.get_workflow

    def observed(workflow_id: str) -> Any:
        threads.append(threading.get_ident())
        return get_workflow(workflow_id)

    monkeypatch.setattr(eng.store, "get_workflow", observed)
    await eng.scheduler.tick(first)
    assert threads, "the firing read the workflow"
    on_loop = {thread == loop_thread for thread in threads}
    assert on_loop == {not eng.store.blocking}
