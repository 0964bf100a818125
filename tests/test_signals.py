"""Signals done right (#16): kept when sent early, streams, correlation keys, exactly once.

Both backends (the ``databases`` fixture); two engines on one database stand for
two processes: each has its own store, connections and runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from served_engines import served

from abi.workflows import WorkflowExecutor
from abi_engine import Engine, ExecutionStatus, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidRequest, InvalidState
from abi_engine.runtime.settings import RuntimeSettings
from abi_engine.storage.records import TIMEOUT_SUFFIX, stream_key
from abi_engine.storage.sql.signal_ops import _slot
from abi_engine.testing import engine_for
from abi_engine.types import SignalTimeout

pytestmark = pytest.mark.anyio


class Keyed(WorkflowType):
    """Waits as its parameters say: ``count`` items of a stream ``item``, or one ``go``
    (``timeout`` seconds, then the next ``go`` without a timeout), on ``key`` if given."""

    name = "keyed_signals"

    @step
    async def hold(self, ctx: StepContext) -> Any:
        p = ctx.parameters
        key = p.get("key")
        if "count" in p:
            got = []
            for item in ctx.signal_stream("item", correlation_key=key):
                got.append(item)
                if len(got) == p["count"]:
                    return got
        timeout = p.get("timeout")
        timeouts = 0
        while True:
            try:
                got = ctx.wait_for_signal("go", timeout, correlation_key=key, stream=True)
                return {"got": got, "timeouts": timeouts}
            except SignalTimeout:
                timeouts, timeout = timeouts + 1, None


class Plugin:
    @hookimpl
    def abi_workflow_types(self, register: Any) -> None:
        register(Keyed)


def _engine(database: str | Path) -> AbstractAsyncContextManager[Engine]:
    """A started engine with the test type on ``database``, closed afterwards."""
    return engine_for(Plugin(), db=str(database))


async def _workflow(engine: Engine) -> str:
    workflow = await engine.workflows.create({"name": "keyed", "type": "keyed_signals"})
    await engine.workflows.activate(workflow.id)
    return workflow.id


async def _until_status(engine: Engine, execution_id: str, *wanted: ExecutionStatus) -> Any:
    with anyio.fail_after(30):
        while True:
            execution = await engine.executions.get(execution_id)
            if execution.status in wanted:
                return execution
            await anyio.sleep(0.02)


async def _finished(engine: Engine, execution_id: str) -> Any:
    return await _until_status(
        engine, execution_id, ExecutionStatus.COMPLETED, ExecutionStatus.FAILED
    )


async def test_a_signal_sent_before_the_wait_is_kept_and_a_stream_reads_each_once(
    databases: Any,
) -> None:
    """Items sent before and during a stream wait are read once each, in order; a signal
    to a finished execution is refused."""
    async with _engine(databases()) as engine:
        wf = await _workflow(engine)
        started = await engine.executions.execute(wf, {"count": 4}, wait=False)
        execution_id = started.execution_id
        for n in (1, 2):  # before (or while) the step first waits
            await engine.executions.signal(execution_id, "item", n)
        await _until_status(engine, execution_id, ExecutionStatus.WAITING)
        for n in (3, 4):
            await engine.executions.signal(execution_id, "item", n)
            await _until_status(
                engine, execution_id, ExecutionStatus.WAITING, ExecutionStatus.COMPLETED
            )
        done = await _finished(engine, execution_id)
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == [1, 2, 3, 4]
        with pytest.raises(InvalidState):
            await engine.executions.signal(execution_id, "item", 5)


async def test_a_correlation_key_wakes_its_waiting_execution(databases: Any) -> None:
    """send_signal delivers to the execution waiting on the key (not to another key's)."""
    async with _engine(databases()) as engine:
        wf = await _workflow(engine)
        mine = await engine.executions.execute(wf, {"key": "order-1"})
        other = await engine.executions.execute(wf, {"key": "order-2"})
        assert mine.status is other.status is ExecutionStatus.WAITING
        delivery = await engine.executions.send_signal("go", "order-1", {"paid": True})
        assert (delivery.status, delivery.execution_id) == ("delivered", mine.execution_id)
        assert delivery.expires_at is None
        done = await _finished(engine, mine.execution_id)
        assert done.result == {"got": {"paid": True}, "timeouts": 0}
        still = await engine.executions.get(other.execution_id)
        assert still.status is ExecutionStatus.WAITING


async def test_a_signal_for_a_key_nobody_waits_on_is_kept_until_its_ttl(
    databases: Any,
) -> None:
    """A signal sent before any wait on its key is pending, then taken by the first wait;
    one past its ttl_seconds is dropped."""
    async with _engine(databases()) as engine:
        wf = await _workflow(engine)
        kept = await engine.executions.send_signal("go", "k-early", 1)
        assert (kept.status, kept.execution_id) == ("pending", None)
        assert kept.expires_at is not None
        expiring = await engine.executions.send_signal("go", "k-short", 2, ttl_seconds=1)
        assert expiring.status == "pending"
        done = await engine.executions.execute(wf, {"key": "k-early"})
        assert done.status is ExecutionStatus.COMPLETED
        assert done.result == {"got": 1, "timeouts": 0}
        second = await engine.executions.execute(wf, {"key": "k-early"})
        assert second.status is ExecutionStatus.WAITING  # the kept one was taken once
        await anyio.sleep(1.5)  # past the 1 s ttl
        late = await engine.executions.execute(wf, {"key": "k-short"})
        assert late.status is ExecutionStatus.WAITING


async def test_send_signal_checks_its_arguments(databases: Any) -> None:
    """A bad name, key or ttl is INVALID_REQUEST naming the field."""
    async with _engine(databases()) as engine:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"name": "a#b", "correlation_key": "k"}, "name"),
            ({"name": "", "correlation_key": "k"}, "name"),
            ({"name": "go", "correlation_key": ""}, "correlation_key"),
            ({"name": "go", "correlation_key": 3}, "correlation_key"),
            ({"name": "go", "correlation_key": "k", "ttl_seconds": 0}, "ttl_seconds"),
            ({"name": "go", "correlation_key": "k", "ttl_seconds": True}, "ttl_seconds"),
            ({"name": "go", "correlation_key": "k", "payload": {1, 2}}, "payload"),
        ]
        for arguments, field in cases:
            with pytest.raises(InvalidRequest) as raised:
                await engine.executions.send_signal(**arguments)
            assert raised.value.details["field"] == field, arguments


async def test_each_signal_is_taken_by_one_wait_with_two_engines(databases: Any) -> None:
    """Two engines on one database send 2n signals to one key concurrently while n
    executions wait on it: each execution gets exactly one, n are kept, and n more
    executions take exactly those; no payload is lost or taken twice."""
    n = 6
    database = databases()
    async with _engine(database) as one, _engine(database) as two:
        wf = await _workflow(one)
        first = [
            (await one.executions.execute(wf, {"key": "shared"})).execution_id for _ in range(n)
        ]
        for execution_id in first:
            await _until_status(one, execution_id, ExecutionStatus.WAITING)
        deliveries: list[Any] = []

        async def send(engine: Engine, payloads: range) -> None:
            for payload in payloads:
                deliveries.append(await engine.executions.send_signal("go", "shared", payload))

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, one, range(0, 2 * n, 2))
            tg.start_soon(send, two, range(1, 2 * n, 2))
        delivered = [d for d in deliveries if d.status == "delivered"]
        assert len(delivered) == n
        assert sorted(d.execution_id for d in delivered) == sorted(first)
        second = [
            (await two.executions.execute(wf, {"key": "shared"}, wait=False)).execution_id
            for _ in range(n)
        ]
        results = [(await _finished(one, e)).result["got"] for e in first + second]
    assert sorted(results) == list(range(2 * n))


async def test_a_signal_racing_the_timeout_poller_is_taken_once(databases: Any) -> None:
    """Waits that time out after 1 s race signals sent to their keys by another engine at
    about that moment: whichever wins, each execution ends with its own signal, taken once
    (directly, or kept and taken by its next wait)."""
    n = 8
    database = databases()
    async with _engine(database) as runner, _engine(database) as sender:
        wf = await _workflow(runner)
        ids = [
            (await runner.executions.execute(wf, {"key": f"r{i}", "timeout": 1})).execution_id
            for i in range(n)
        ]
        await anyio.sleep(0.9)
        for i in range(n):
            await sender.executions.send_signal("go", f"r{i}", i)
            await anyio.sleep(0.05)
        results = [(await _finished(runner, e)).result for e in ids]
    assert [r["got"] for r in results] == list(range(n))
    assert all(r["timeouts"] in (0, 1) for r in results)


@pytest.fixture
def served_engine(databases: Any) -> Iterator[Any]:
    with served(
        databases(),
        plugins=[Plugin()],
        runtime=RuntimeSettings(poll_interval=0.05, shutdown_grace=1.0),
    ) as found:
        yield found


def _wait_finished(engine: Engine, execution_id: str) -> Any:
    """From a thread beside the served engine's loop: the finished execution."""
    return engine.call(_finished, engine, execution_id)


def test_rest_signals_early_and_by_key(served_engine: Any) -> None:
    """Over real HTTP: an early signal answers 200 and is kept; POST /signals answers 202
    pending then 200 delivered; a finished execution answers 409; bad bodies 400."""
    engine = served_engine.engine
    client = served_engine.client()
    wf = engine.call(_workflow, engine)
    started = engine.call(engine.executions.execute, wf, {"count": 1}, wait=False)
    path = f"/api/v1/workflow_executions/{started.execution_id}/signal"
    answer = client.post(path, json={"name": "item", "payload": "early"})
    assert answer.status_code == 200, answer.text
    assert _wait_finished(engine, started.execution_id).result == ["early"]
    refused = client.post(path, json={"name": "item"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "INVALID_STATE")

    def post(body: Any) -> httpx.Response:
        return client.post("/api/v1/signals", json=body)

    pending = post({"name": "go", "correlation_key": "c1", "payload": 7})
    assert pending.status_code == 202, pending.text
    assert pending.json()["data"]["status"] == "pending"
    taken = engine.call(engine.executions.execute, wf, {"key": "c1"})
    assert taken.result == {"got": 7, "timeouts": 0}
    waiting = engine.call(engine.executions.execute, wf, {"key": "c2"})
    delivered = post({"name": "go", "correlation_key": "c2"})
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["data"]["execution_id"] == waiting.execution_id
    bad = post({"name": "go"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["field"] == "correlation_key"


@pytest.mark.parametrize("way", ["local", "remote"])
def test_python_api_sends_by_key(served_engine: Any, way: str) -> None:
    """abi.workflows' send_signal, in-process and over HTTP, gives the same answers."""
    engine = served_engine.engine
    executor = served_engine.facade(WorkflowExecutor, way)
    wf = engine.call(_workflow, engine)
    kept = executor.send_signal("go", f"p-{way}", 1)
    assert (kept.status, kept.execution_id) == ("pending", None)
    waiting = engine.call(engine.executions.execute, wf, {"key": f"q-{way}"})
    sent = executor.send_signal("go", f"q-{way}", 2)
    assert (sent.status, sent.execution_id) == ("delivered", waiting.execution_id)
    assert _wait_finished(engine, waiting.execution_id).result["got"] == 2


async def test_one_kept_signal_two_engines_waiting_at_once(databases: Any) -> None:
    """One signal kept for a key, and executions on two engines reaching their wait on it
    at the same moment: exactly one takes it, the others keep waiting; the next signal
    goes to one of those."""
    database = databases()
    async with _engine(database) as one, _engine(database) as two:
        wf = await _workflow(one)
        kept = await one.executions.send_signal("go", "race", "only")
        assert kept.status == "pending"
        started: list[str] = []

        async def start(engine: Engine) -> None:
            started.append((await engine.executions.execute(wf, {"key": "race"})).execution_id)

        async with anyio.create_task_group() as tg:
            for engine in (one, two, one, two):
                tg.start_soon(start, engine)
        states = [await one.executions.get(e) for e in started]
        done = [s for s in states if s.status is ExecutionStatus.COMPLETED]
        assert len(done) == 1
        assert done[0].result == {"got": "only", "timeouts": 0}
        assert sum(s.status is ExecutionStatus.WAITING for s in states) == 3
        second = await two.executions.send_signal("go", "race", "next")
        assert second.status == "delivered"
        assert second.execution_id in started
        assert second.execution_id != done[0].execution_id


async def test_a_signal_after_the_poller_timed_the_wait_out_goes_to_the_next_wait(
    databases: Any,
) -> None:
    """The poller ends a 1 s wait (its slot marked timed out) before the signal comes: the
    signal is then the next stream item, read once by the step's next wait."""
    async with _engine(databases()) as engine:
        wf = await _workflow(engine)
        started = await engine.executions.execute(wf, {"key": "late", "timeout": 1}, wait=False)
        execution_id = started.execution_id
        with anyio.fail_after(30):  # the poller recorded the timeout
            while True:
                if "go#timeout" in engine.store.get_signals(execution_id):
                    break
                await anyio.sleep(0.05)
        await _until_status(engine, execution_id, ExecutionStatus.WAITING)
        delivered = await engine.executions.send_signal("go", "late", "after")
        assert (delivered.status, delivered.execution_id) == ("delivered", execution_id)
        done = await _finished(engine, execution_id)
        assert done.result == {"got": "after", "timeouts": 1}
        assert engine.store.get_signals(execution_id)["go#2"] == "after"


signal_names = st.text(st.characters(blacklist_characters="#\x00"), min_size=1, max_size=20)


@given(name=signal_names, other=signal_names, number=st.integers(1, 10_000))
def test_stream_keys_number_each_signal_of_a_name_once(name: str, other: str, number: int) -> None:
    """The n-th signal of a name is kept under a key that names its place and its name
    only: `name` first, then `name#n`; no key of another name is counted."""
    key = stream_key(name, number)
    assert _slot(key, name) == number
    assert (key == name) == (number == 1)
    if other != name:
        assert _slot(key, other) == 0
    assert _slot(f"{key}{TIMEOUT_SUFFIX}", name) == 0  # a timeout marker is no signal
