"""ReadCoalescer: concurrent reads of one key share a query, never a stale one (#18)."""

from __future__ import annotations

import anyio
import pytest
from anyio.lowlevel import checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.coalesce import ReadCoalescer

pytestmark = pytest.mark.anyio


class Versioned:
    """A value that writes move on; a read sees it when the read is *sent*, answers after
    ``ticks`` scheduler turns (a round trip)."""

    def __init__(self, ticks: int = 3) -> None:
        self.version = 0
        self.ticks = ticks
        self.sent = 0

    async def read(self, key: str) -> int:
        self.sent += 1
        seen = self.version
        for _ in range(self.ticks):
            await checkpoint()
        return seen


async def test_concurrent_callers_share_reads() -> None:
    """50 callers at once: at most two reads (the one in flight when they arrive is never
    shared, the next one is), every caller answered."""
    source = Versioned(ticks=5)
    coalescer: ReadCoalescer[str, int] = ReadCoalescer(source.read)
    answers: list[int] = []

    async def call() -> None:
        answers.append(await coalescer.read("wf"))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(call)
    assert answers == [0] * 50
    assert source.sent == coalescer.reads <= 2
    assert coalescer._keys == {}  # nothing kept once idle


async def test_a_read_in_flight_is_not_shared_with_a_later_caller() -> None:
    """A write committed before a caller arrives is seen by that caller, even while a read
    sent before the write is still in flight."""
    source = Versioned(ticks=10)
    coalescer: ReadCoalescer[str, int] = ReadCoalescer(source.read)
    results: dict[str, int] = {}

    async def call(name: str) -> None:
        results[name] = await coalescer.read("wf")

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "before")
        await checkpoint()
        await checkpoint()  # the first read is in flight, holding version 0
        source.version = 1  # a write commits
        tg.start_soon(call, "after")
    assert results == {"before": 0, "after": 1}
    assert source.sent == 2


async def test_keys_do_not_share() -> None:
    source = Versioned()
    coalescer: ReadCoalescer[str, int] = ReadCoalescer(source.read)
    async with anyio.create_task_group() as tg:
        for key in ("a", "b", "c"):
            tg.start_soon(coalescer.read, key)
    assert source.sent == 3


async def test_an_error_reaches_the_callers_of_its_read_only() -> None:
    calls = 0

    async def failing_once(key: str) -> int:
        nonlocal calls
        calls += 1
        await checkpoint()
        if calls == 1:
            raise ConnectionError("store gone")
        return 7

    coalescer: ReadCoalescer[str, int] = ReadCoalescer(failing_once)
    outcomes: list[object] = []

    async def call() -> None:
        try:
            outcomes.append(await coalescer.read("wf"))
        except ConnectionError as exc:
            outcomes.append(type(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await checkpoint()
        await checkpoint()
        tg.start_soon(call)  # arrives during the failing read: waits for the next one
    assert outcomes == [ConnectionError, 7]
    assert await coalescer.read("wf") == 7


async def test_a_cancelled_leader_does_not_strand_its_followers() -> None:
    """The caller that sends a read is cancelled while it waits for the read in flight:
    the callers that joined its round still get an answer (they read again)."""
    source = Versioned(ticks=20)
    coalescer: ReadCoalescer[str, int] = ReadCoalescer(source.read)
    answers: list[int] = []

    async def call() -> None:
        answers.append(await coalescer.read("wf"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)  # read 1 in flight
        await checkpoint()
        await checkpoint()
        with anyio.CancelScope() as leader_scope:
            async with anyio.create_task_group() as inner:
                inner.start_soon(coalescer.read, "wf")  # leads round 2, waits for read 1
                await checkpoint()
                tg.start_soon(call)  # joins round 2
                await checkpoint()
                leader_scope.cancel()
    assert answers == [0, 0]
    assert coalescer._keys == {}


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(min_value=0, max_value=6), st.booleans()), min_size=1, max_size=25
    ),
    ticks=st.integers(min_value=0, max_value=4),
)
def test_every_answer_is_a_value_of_the_caller_s_own_time(
    plan: list[tuple[int, bool]], ticks: int
) -> None:
    """Callers arrive after random delays, some right after a write: each answer is a
    version at least as new as the caller's arrival and no newer than its return
    (linearizable), whatever the interleaving."""

    async def run() -> None:
        source = Versioned(ticks=ticks)
        coalescer: ReadCoalescer[str, int] = ReadCoalescer(source.read)

        async def call(delay: int, write: bool) -> None:
            for _ in range(delay):
                await checkpoint()
            if write:
                source.version += 1
            arrived = source.version
            answer = await coalescer.read("wf")
            assert arrived <= answer <= source.version

        async with anyio.create_task_group() as tg:
            for delay, write in plan:
                tg.start_soon(call, delay, write)
        assert coalescer._keys == {}

    anyio.run(run)
