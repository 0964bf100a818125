"""Rate limits and debounce through the synchronous thread door (#18, the adversary):
``engine.call(execute, wait=False)`` answered in the caller's thread holds and skips
exactly what the loop's door does, 8 threads calling at once (docs/flow-control.md).

The thread door is proven taken (no coroutine handed to the loop for the acceptances);
the loop door is the same request with an ``idempotency_key`` (which sends it there)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from abi_engine import Engine, Event, ExecutionStatus, hookimpl

DatabaseFactory = Callable[..., Any]
THREADS, EACH = 8, 5
STEPS = {"steps": [{"name": "v", "action": "transform", "expressions": {"v": "parameters['i']"}}]}


class _Heard:
    """A plugin keeping the events its ``abi_event`` hook hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def heard() -> _Heard:
    return _Heard()


@pytest.fixture
def engine(databases: DatabaseFactory, heard: _Heard) -> Iterator[Engine]:
    built = Engine(databases(), plugins=[heard])
    try:
        yield built
    finally:
        built.close()


def _workflow(engine: Engine, **shaping: Any) -> str:
    body = {"name": "flow", "type": "custom", "configuration": STEPS, **shaping}
    wf = engine.call(engine.workflows.create, body)
    engine.call(engine.workflows.activate, wf.id)
    return wf.id


def _burst(engine: Engine, door: str, wf_id: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``THREADS`` threads each submit ``EACH`` executions at once; the ids accepted."""
    engine.call(engine.executions.compiled, wf_id)  # cached: the thread door can answer
    hops = Counter[str]()
    real = asyncio.run_coroutine_threadsafe

    def counting(coro: Any, loop: Any) -> Any:
        hops["loop"] += 1
        return real(coro, loop)

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", counting)
    ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def submit(t: int) -> None:
        start.wait(60)
        for i in range(EACH):
            execute = partial(engine.executions.execute, wait=False)
            if door == "loop":
                execute = partial(execute, idempotency_key=f"{t}-{i}")
            accepted = engine.call(execute, wf_id, {"i": t * EACH + i})
            with lock:
                ids.append(accepted.execution_id)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", real)
    assert len(ids) == THREADS * EACH
    assert hops["loop"] == (0 if door == "thread" else THREADS * EACH)
    return ids


def _settled(engine: Engine, ids: list[str], done: Callable[[Counter[str]], bool]) -> Any:
    """Poll the executions' statuses (and queued reasons) until ``done`` says so."""
    deadline = time.monotonic() + 60
    while True:
        views = [engine.call(engine.executions.get, i) for i in ids]
        seen = Counter(f"{v.status.value}:{v.queued_reason or ''}" for v in views)
        if done(seen) or time.monotonic() > deadline:
            return views, seen
        time.sleep(0.2)  # polling for the runtime, not a margin


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_a_rate_limit_holds_the_same_through_both_doors(
    engine: Engine, door: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limit 7 starts an hour, 40 requested at once by 8 threads: exactly 7 run, the
    other 33 are accepted and wait queued for the rate limit, whichever door."""
    wf_id = _workflow(engine, rate_limit={"limit": 7, "period_seconds": 3600})
    ids = _burst(engine, door, wf_id, monkeypatch)
    _, seen = _settled(engine, ids, lambda seen: seen["completed:"] >= 7)
    time.sleep(1)  # a start beyond the limit would show now: look again
    _, seen = _settled(engine, ids, lambda seen: True)
    assert seen == Counter({"completed:": 7, "queued:rate_limit": 33})


@pytest.mark.parametrize("door", ["thread", "loop"])
def test_a_debounce_keeps_only_the_last_through_both_doors(
    engine: Engine, door: str, monkeypatch: pytest.MonkeyPatch, heard: _Heard
) -> None:
    """One debounce key, 40 requested at once by 8 threads: 39 end ``skipped``, each
    pointing to a later one and heard once as ``execution.skipped``, and exactly one
    waits out its window, whichever door."""
    wf_id = _workflow(engine, debounce={"seconds": 3600})
    ids = _burst(engine, door, wf_id, monkeypatch)
    views, seen = _settled(engine, ids, lambda seen: seen["skipped:"] >= 39)
    assert seen == Counter({"skipped:": 39, "queued:debounce": 1})
    last = next(v.execution_id for v in views if v.status is ExecutionStatus.QUEUED)
    by = {v.execution_id: v.debounced_by for v in views}
    for view in views:  # every chain of debounced_by ends at the one waiting
        at, hops = view.execution_id, 0
        while by[at] is not None and hops <= len(ids):
            at, hops = by[at], hops + 1
        assert at == last
    skipped = {v.execution_id for v in views if v.status is ExecutionStatus.SKIPPED}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        heard_skips = [
            e.data["execution_id"] for e in heard.events if e.type == "execution.skipped"
        ]
        if len(heard_skips) >= len(skipped):
            break
        time.sleep(0.2)  # polling for the loop to emit, not a margin
    assert sorted(heard_skips) == sorted(skipped)
