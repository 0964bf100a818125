"""The workers' wake-ups (runtime/work.py, #18): every item pushed is taken once, by an
idle worker at once or by the next to ask; a worker cancelled after an item was handed
to it passes the item on; close ends every worker."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.runtime.work import Wakeups

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_items_pushed_before_are_taken_without_waiting() -> None:
    work = Wakeups()
    for _ in range(3):
        work.push()
    with anyio.fail_after(1):
        assert [await work.take() for _ in range(3)] == [True, True, True]


async def test_an_idle_worker_is_handed_the_item_and_close_ends_the_others() -> None:
    work = Wakeups()
    taken: list[bool] = []

    async def worker() -> None:
        taken.append(await work.take())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        work.push()
        await anyio.wait_all_tasks_blocked()
        assert taken == [True]
        work.close()
    assert sorted(taken) == [False, False, True]
    with pytest.raises(anyio.ClosedResourceError):
        work.push()
    assert await work.take() is False


async def test_a_worker_cancelled_once_handed_an_item_passes_it_on() -> None:
    """Handed an item, then cancelled before it runs: either it took the item (its
    wait had ended) or the item goes to the next taker; never lost, never twice."""
    work = Wakeups()
    took: list[bool] = []
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def doomed() -> None:
            with scope:
                took.append(await work.take())

        tg.start_soon(doomed)
        await anyio.wait_all_tasks_blocked()
        work.push()
        scope.cancel()
    passed_on = work._waiting
    assert took.count(True) + passed_on == 1
    work.close()
    assert [await work.take() for _ in range(passed_on)] == [True] * passed_on
    assert await work.take() is False


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["push", "idle", "cancel"]), max_size=30))
def test_every_item_pushed_is_taken_once(steps: list[str]) -> None:
    """Whatever the order of pushes, idle workers and cancellations of idle workers,
    the items taken plus those left for the next taker are the items pushed."""

    async def run() -> int:
        work = Wakeups()
        taken = 0
        scopes: list[anyio.CancelScope] = []

        async def worker(scope: anyio.CancelScope) -> None:
            nonlocal taken
            with scope:
                if await work.take():
                    taken += 1

        async with anyio.create_task_group() as tg:
            for step in steps:
                if step == "push":
                    work.push()
                elif step == "idle":
                    scopes.append(anyio.CancelScope())
                    tg.start_soon(worker, scopes[-1])
                elif scopes:
                    scopes.pop(0).cancel()
                await anyio.wait_all_tasks_blocked()
            work.close()
        left = 0
        while work._waiting:
            assert await work.take()
            left += 1
        assert taken + left == steps.count("push")
        return taken

    anyio.run(run)
