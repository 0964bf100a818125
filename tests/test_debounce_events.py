"""A debounced execution ends like any other (#16): ``execution.skipped`` is written to the
outbox in the transaction that skips it, its ``callback_url`` hears it (signed), webhook
subscribers of ``execution.skipped`` receive it once, and a waiter in this process wakes
at once. On every engine backend, against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    Receiver,
    eventually,
    make_engine_fixture,
    receiver_fixture,
)

from abi_engine import EVENT_TYPES, Engine, Event, ExecutionStatus, hookimpl
from abi_engine.errors import InvalidRequest

pytestmark = pytest.mark.anyio

STEPS = {"steps": [{"name": "t", "action": "transform", "expressions": {"sum": "1 + 2"}}]}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENDED = ("completed", "failed", "timed_out", "cancelled", "skipped")


async def _debounced(engine: Engine, seconds: float = 1) -> str:
    wf = await engine.workflows.create(
        {
            "name": "debounced",
            "type": "custom",
            "configuration": STEPS,
            "debounce": {"key": "parameters.customer", "seconds": seconds},
        }
    )
    await engine.workflows.activate(wf.id)
    return wf.id


def _bodies(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.received(path)]


async def _until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    await eventually(predicate, timeout)


async def _quiet(receiver: Receiver, path: str, count: int) -> None:
    """Wait a second more and check no further request arrived (nothing is repeated)."""
    await anyio.sleep(1)
    assert len(receiver.received(path)) == count


def test_execution_skipped_is_an_event_type() -> None:
    assert "execution.skipped" in EVENT_TYPES


async def test_every_skipped_execution_calls_back_once_signed(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A burst of four with a callback each: the three skipped ones' callbacks arrive once
    each (``execution.skipped``, ``status`` skipped, ``debounced_by`` the next one),
    signed with their secret; the last one's arrives ``execution.completed``."""
    engine = make_engine()
    async with engine:
        wf = await _debounced(engine)
        ids = [
            (
                await engine.executions.execute(
                    wf,
                    {"customer": "c"},
                    wait=False,
                    callback_url=receiver.url("/cb"),
                    callback_secret=SECRET,
                )
            ).execution_id
            for _ in range(4)
        ]
        await receiver.wait_for(4, "/cb", timeout=60)
        await _quiet(receiver, "/cb", 4)
    by_execution = {}
    for request in receiver.received("/cb"):
        body = Verifier(SECRET).verify(request.body, request.headers)
        by_execution[body["data"]["execution_id"]] = body
    assert sorted(by_execution) == sorted(ids)
    for skipped, by in itertools.pairwise(ids):
        body = by_execution[skipped]
        assert body["type"] == "execution.skipped"
        assert body["data"]["status"] == "skipped"
        assert body["data"]["debounced_by"] == by
        assert body["data"]["workflow_id"] == wf
    last = by_execution[ids[-1]]
    assert (last["type"], last["data"]["status"]) == ("execution.completed", "completed")


async def test_a_subscription_to_execution_skipped_hears_each_skip_once(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A webhook subscribed to ``execution.skipped`` (only) receives one event per skipped
    execution, with the execution id, workflow id and ``debounced_by``, in batches
    inserted together too; the execution that ran brings none."""
    engine = make_engine()
    async with engine:
        await engine.webhooks.create(
            {"url": receiver.url("/hook"), "events": ["execution.skipped"], "secret": SECRET}
        )
        wf = await _debounced(engine)
        ids: list[str] = []
        async with anyio.create_task_group() as tg:  # several inserts share a commit

            async def request() -> None:
                started = await engine.executions.execute(wf, {"customer": "c"}, wait=False)
                ids.append(started.execution_id)

            for _ in range(6):
                tg.start_soon(request)
        await _until(lambda: len(receiver.received("/hook")) >= 5)
        views = [await engine.executions.get(i) for i in ids]
        await _quiet(receiver, "/hook", 5)
    skipped = {v.execution_id: v for v in views if v.status is ExecutionStatus.SKIPPED}
    assert len(skipped) == 5
    bodies = _bodies(receiver, "/hook")
    assert {b["type"] for b in bodies} == {"execution.skipped"}
    assert Counter(b["data"]["execution_id"] for b in bodies) == Counter(list(skipped))
    for body in bodies:
        view = skipped[body["data"]["execution_id"]]
        assert body["data"]["workflow_id"] == wf
        assert body["data"]["debounced_by"] == view.debounced_by is not None


async def test_two_engines_racing_deliver_each_skip_exactly_once(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """Two engines on one database request ten executions of one key at once, each with a
    callback, beside a subscription: every skipped execution's event reaches the
    subscriber once and its callback once; the one that ran calls back completed."""
    first = make_engine()
    second = make_engine()
    async with first, second:
        await first.webhooks.create(
            {"url": receiver.url("/hook"), "events": ["execution.skipped"], "secret": SECRET}
        )
        wf = await _debounced(first, seconds=1.5)
        ids: list[str] = []

        async def request(index: int) -> None:
            engine = first if index % 2 else second
            started = await engine.executions.execute(
                wf, {"customer": "c"}, wait=False, callback_url=receiver.url("/cb")
            )
            ids.append(started.execution_id)

        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(request, index)
        await receiver.wait_for(10, "/cb", timeout=90)
        await _until(lambda: len(receiver.received("/hook")) >= 9)
        await _quiet(receiver, "/cb", 10)
        assert len(receiver.received("/hook")) == 9
        views = {i: await first.executions.get(i) for i in ids}
    skipped = {i for i, v in views.items() if v.status is ExecutionStatus.SKIPPED}
    assert len(skipped) == 9
    hooks = Counter(b["data"]["execution_id"] for b in _bodies(receiver, "/hook"))
    assert hooks == Counter(list(skipped))
    callbacks = {b["data"]["execution_id"]: b for b in _bodies(receiver, "/cb")}
    assert sorted(callbacks) == sorted(ids)
    for execution_id, body in callbacks.items():
        expected = "execution.skipped" if execution_id in skipped else "execution.completed"
        assert body["type"] == expected
        assert body["data"]["debounced_by"] == views[execution_id].debounced_by


async def test_a_waiter_of_a_skipped_execution_wakes_at_once(
    make_engine: Callable[..., Engine],
) -> None:
    """``wait`` on a queued execution returns as soon as a later request skips it, long
    before the poll that would notice it otherwise (the poll interval is made a minute)."""
    from abi_engine.runtime.settings import RuntimeSettings

    engine = make_engine(runtime=RuntimeSettings(poll_interval=60))
    async with engine:
        wf = await _debounced(engine, seconds=30)
        first = await engine.executions.execute(wf, {"customer": "c"}, wait=False)
        woken: list[float] = []

        async def waiter() -> None:
            view, settled = await engine.executions.wait_settled(first.execution_id, timeout=120)
            assert settled
            assert view.status is ExecutionStatus.SKIPPED
            woken.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(1)  # the waiter is waiting (it looked at the store once)
            asked = time.monotonic()
            second = await engine.executions.execute(wf, {"customer": "c"}, wait=False)
        assert woken[0] - asked < 10
        skipped = await engine.executions.get(first.execution_id)
        assert skipped.debounced_by == second.execution_id
        await engine.executions.cancel(second.execution_id)


async def test_execution_skipped_can_be_subscribed_and_unknown_types_cannot(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    engine = make_engine()
    async with engine:
        hook = await engine.webhooks.create(
            {"url": receiver.url("/hook"), "events": ["execution.skipped"]}
        )
        assert hook.events == ["execution.skipped"]
        with pytest.raises(InvalidRequest) as raised:
            await engine.webhooks.create(
                {"url": receiver.url("/hook"), "events": ["execution.skipt"]}
            )
    assert "events[0]" in str(raised.value.details) + raised.value.message


class _Heard:
    """A plugin keeping the events its ``abi_event`` hook hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


async def test_an_abi_event_hook_hears_each_skip_once_with_its_data(
    make_engine: Callable[..., Engine],
) -> None:
    """With an ``abi_event`` hook, each skipped execution is heard once, after its
    commit, with the execution's JSON (``status`` skipped, ``debounced_by``)."""
    heard = _Heard()
    engine = make_engine(plugins=(heard,))
    async with engine:
        wf = await _debounced(engine)
        ids = [
            (await engine.executions.execute(wf, {"customer": "c"}, wait=False)).execution_id
            for _ in range(3)
        ]
        skips = [e for e in heard.events if e.type == "execution.skipped"]
        await engine.executions.cancel(ids[-1])
    assert [e.data["execution_id"] for e in skips] == ids[:2]
    assert [e.data["debounced_by"] for e in skips] == ids[1:]
    assert {e.data["status"] for e in skips} == {"skipped"}
    assert {e.data["workflow_id"] for e in skips} == {wf}


def _skip_events(engine: Engine) -> list[str]:
    return [
        s.event.execution_id  # type: ignore[union-attr]
        for s in engine.store.events_after(0, 10_000)
        if s.event.type == "execution.skipped"
    ]


async def test_a_retried_insert_skips_nothing_again(make_engine: Callable[..., Engine]) -> None:
    """A batch of two of one key, applied: the first is skipped, one event. The first's
    insert applied again (a retry after a lost answer) is ``AGAIN``: it is not shaped
    again, so it neither ends the second (that replaced it) nor writes an event."""
    from abi_engine.ids import new_id, utcnow
    from abi_engine.storage.records import AGAIN, ExecutionRecord, InsertExecution

    engine = make_engine()
    wf = await _debounced(engine, seconds=60)
    records = [
        ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=wf,
            workflow_type="custom",
            status=ExecutionStatus.QUEUED,
            created_at=utcnow(),
            parameters={"customer": "c"},
        )
        for _ in range(2)
    ]
    ops = [InsertExecution(record=r) for r in records]
    assert engine.store.apply(ops) == [True, True]
    assert [e.type for e in ops[0].found] == ["execution.skipped"]
    assert _skip_events(engine) == [records[0].id]
    again = InsertExecution(record=records[0])
    assert engine.store.apply([again]) == [AGAIN]
    assert again.found == []
    second = await engine.executions.get(records[1].id)
    assert (second.status, second.queued_reason) == (ExecutionStatus.QUEUED, "debounce")
    first = await engine.executions.get(records[0].id)
    assert (first.status, first.debounced_by) == (ExecutionStatus.SKIPPED, records[1].id)
    assert _skip_events(engine) == [records[0].id]


async def test_an_insert_refused_by_its_idempotency_key_ends_nothing(
    make_engine: Callable[..., Engine],
) -> None:
    """A second request with a taken idempotency key is not inserted (``False``): the
    execution that holds the key stays queued, not skipped by a row that never was."""
    from abi_engine.ids import new_id, utcnow
    from abi_engine.storage.records import ExecutionRecord, InsertExecution

    engine = make_engine()
    wf = await _debounced(engine, seconds=60)

    def record() -> ExecutionRecord:
        return ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=wf,
            workflow_type="custom",
            status=ExecutionStatus.QUEUED,
            created_at=utcnow(),
            parameters={"customer": "c"},
            idempotency_key="k-1",
        )

    first = record()
    assert engine.store.apply([InsertExecution(record=first)]) == [True]
    assert engine.store.apply([InsertExecution(record=record())]) == [False]
    view = await engine.executions.get(first.id)
    assert (view.status, view.debounced_by) == (ExecutionStatus.QUEUED, None)
    assert _skip_events(engine) == []


async def test_over_rest_a_skipped_execute_async_calls_back_and_is_subscribable(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """Over REST: a webhook subscribes to ``execution.skipped`` (201; an unknown type is
    400 naming ``events[0]``), and of two ``execute_async`` of one key with a callback,
    the first's callback is ``execution.skipped``, signed, naming the second."""
    import httpx
    from abi_asgi import create_app

    engine = make_engine()
    async with engine:
        token = engine.tokens.create_token("usr_skip")
        wf = await _debounced(engine, seconds=30)  # the second waits: only the skip calls back
        transport = httpx.ASGITransport(app=create_app(engine, rate_limit=None))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            hook = await client.post(
                "/webhooks", json={"url": receiver.url("/hook"), "events": ["execution.skipped"]}
            )
            assert hook.status_code == 201, hook.text
            bad = await client.post(
                "/webhooks", json={"url": receiver.url("/hook"), "events": ["execution.skipt"]}
            )
            assert bad.status_code == 400
            assert bad.json()["error"]["code"] == "INVALID_REQUEST"
            assert "events[0]" in bad.text
            ids = []
            for _ in range(2):
                r = await client.post(
                    f"/workflows/{wf}/execute_async",
                    json={
                        "parameters": {"customer": "c"},
                        "callback_url": receiver.url("/cb"),
                        "callback_secret": SECRET,
                    },
                )
                assert r.status_code == 202, r.text
                ids.append(r.json()["data"]["execution_id"])
        (request,) = await receiver.wait_for(1, "/cb", timeout=60)
        await receiver.wait_for(1, "/hook", timeout=60)
        await engine.executions.cancel(ids[1])
    body = Verifier(SECRET).verify(request.body, request.headers)
    assert body["type"] == "execution.skipped"
    assert (body["data"]["execution_id"], body["data"]["debounced_by"]) == (ids[0], ids[1])
    (heard,) = _bodies(receiver, "/hook")
    assert (heard["type"], heard["data"]["execution_id"]) == ("execution.skipped", ids[0])
