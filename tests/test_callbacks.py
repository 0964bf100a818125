"""Execution callbacks: an async execution's callback_url receives its end, durably and signed.

The callback goes through the same outbox, signing and retries as webhook
deliveries; the receiver is a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from abi_asgi import create_app
from standardwebhooks.webhooks import Webhook as Verifier
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    Receiver,
    eng_fixture,
    eventually,
    fast,
    faulty_engine_fixture,
    make_engine_fixture,
    receiver_fixture,
)

from abi_engine import Engine
from abi_engine.errors import InvalidRequest
from abi_engine.models_webhooks import Delivery, DeliveryStatus

STEPS = {"steps": [{"name": "t", "action": "transform", "expressions": {"sum": "1 + 2"}}]}
FAILING = {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "parameters['x']"}}]}
# A minute of in-worker sleeps (each a second at most: longer ones park the execution); the
# execution ends by its timeout long before.
SLOW = {"steps": [{"name": f"wait{n}", "action": "delay", "seconds": 1} for n in range(60)]}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def _workflow(engine: Engine, config: dict[str, Any] = STEPS) -> str:
    wf = await engine.workflows.create({"name": "cb", "type": "custom", "configuration": config})
    await engine.workflows.activate(wf.id)
    return wf.id


async def _finished(engine: Engine, execution_id: str, timeout: float = 30) -> list[Delivery]:
    """Wait until the execution's callback deliveries are all finished; return them."""
    with anyio.fail_after(timeout):
        while True:
            found = await engine.webhooks.callback_deliveries(execution_id)
            if found and all(d.status is not DeliveryStatus.PENDING for d in found):
                return found
            await anyio.sleep(0.02)


async def _attempted(engine: Engine, execution_id: str, count: int = 1) -> None:
    """Wait until the execution's callback has ``count`` recorded attempts."""
    with anyio.fail_after(30):
        while True:
            found = await engine.webhooks.callback_deliveries(execution_id)
            if found and found[0].attempt_count >= count:
                return
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_completed_execution_calls_back_signed(eng: Engine, receiver: Receiver) -> None:
    """execution.completed with data = the finished execution, signed with callback_secret."""
    wf_id = await _workflow(eng)
    started = await eng.executions.execute(
        wf_id, {"k": 1}, wait=False, callback_url=receiver.url("/cb"), callback_secret=SECRET
    )
    assert started.callback_url == receiver.url("/cb")
    (request,) = await receiver.wait_for(1, "/cb")
    body = Verifier(SECRET).verify(request.body, request.headers)
    assert body["type"] == "execution.completed"
    data = body["data"]
    assert data["execution_id"] == started.execution_id
    assert data["workflow_id"] == wf_id
    assert data["status"] == "completed"
    assert data["result"] == {"sum": 3}
    assert data["parameters"] == {"k": 1}
    assert data["callback_url"] == receiver.url("/cb")
    assert "callback_secret" not in request.text
    final = await eng.executions.get(started.execution_id)
    assert data["completed_at"].endswith("Z")
    assert final.completed_at is not None
    (delivery,) = await _finished(eng, started.execution_id)
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert delivery.webhook_id is None
    assert delivery.execution_id == started.execution_id
    assert delivery.event_id == request.headers["webhook-id"]


@pytest.mark.anyio
async def test_failed_execution_calls_back_execution_failed(
    eng: Engine, receiver: Receiver
) -> None:
    """A failing execution's callback is execution.failed with the error in data."""
    wf_id = await _workflow(eng, FAILING)
    started = await eng.executions.execute(
        wf_id, {}, wait=False, callback_url=receiver.url("/cb"), callback_secret=SECRET
    )
    (request,) = await receiver.wait_for(1, "/cb")
    body = Verifier(SECRET).verify(request.body, request.headers)
    assert body["type"] == "execution.failed"
    assert body["data"]["execution_id"] == started.execution_id
    assert body["data"]["status"] == "failed"
    assert body["data"]["error"]["code"] == "WORKFLOW_EXECUTION_ERROR"


@pytest.mark.anyio
async def test_timed_out_execution_calls_back_execution_failed(
    eng: Engine, receiver: Receiver
) -> None:
    """An execution that times out ends timed_out and calls back with execution.failed."""
    wf_id = await _workflow(eng, SLOW)
    started = await eng.executions.execute(
        wf_id, {}, wait=False, timeout_seconds=0.2, callback_url=receiver.url("/cb")
    )
    (request,) = await receiver.wait_for(1, "/cb")
    body = request.body.decode()
    assert '"type":"execution.failed"' in body
    assert started.execution_id in body
    assert '"status":"timed_out"' in body


@pytest.mark.anyio
async def test_callback_without_secret_is_unsigned(eng: Engine, receiver: Receiver) -> None:
    """Without callback_secret: webhook-id and webhook-timestamp, but no webhook-signature."""
    wf_id = await _workflow(eng)
    await eng.executions.execute(wf_id, {}, wait=False, callback_url=receiver.url("/cb"))
    (request,) = await receiver.wait_for(1, "/cb")
    assert request.headers["webhook-id"].startswith("evt_")
    assert request.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in request.headers


@pytest.mark.anyio
async def test_callback_is_retried_and_recorded(eng: Engine, receiver: Receiver) -> None:
    """A failing callback URL is retried by the schedule; every attempt is recorded."""
    receiver.plan("/cb", [500, (200, 0.0)])
    wf_id = await _workflow(eng)
    started = await eng.executions.execute(
        wf_id, {}, wait=False, callback_url=receiver.url("/cb"), callback_secret=SECRET
    )
    first, second = await receiver.wait_for(2, "/cb")
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert second.at - first.at >= 0.05
    Verifier(SECRET).verify(second.body, second.headers)
    (delivery,) = await _finished(eng, started.execution_id)
    assert [a.status_code for a in delivery.attempts] == [500, 200]
    assert delivery.status is DeliveryStatus.SUCCEEDED


@pytest.mark.anyio
async def test_callback_and_webhook_both_receive_the_event(eng: Engine, receiver: Receiver) -> None:
    """A subscription to execution.completed and the callback get the same event id."""
    hook = await eng.webhooks.create(
        {"url": receiver.url("/hook"), "events": ["execution.completed"]}
    )
    wf_id = await _workflow(eng)
    await eng.executions.execute(wf_id, {}, wait=False, callback_url=receiver.url("/cb"))
    (to_hook,) = await receiver.wait_for(1, "/hook")
    (to_callback,) = await receiver.wait_for(1, "/cb")
    assert to_hook.headers["webhook-id"] == to_callback.headers["webhook-id"]
    assert to_hook.body == to_callback.body
    Verifier(hook.secret).verify(to_hook.body, to_hook.headers)


@pytest.mark.anyio
async def test_executions_without_callback_send_nothing(eng: Engine, receiver: Receiver) -> None:
    """No callback_url and no subscription: no delivery is made."""
    wf_id = await _workflow(eng)
    done = await eng.executions.execute(wf_id, {})
    await eventually(lambda: not eng.store.fan_out_pending())  # its events were fanned out
    assert await eng.webhooks.callback_deliveries(done.execution_id) == []
    assert receiver.received() == []


@pytest.mark.anyio
async def test_private_callback_url_refused_at_execute(make_engine: Callable[..., Engine]) -> None:
    """Without allow_private_urls a loopback callback_url is INVALID_REQUEST naming callback_url."""
    engine = make_engine(allow_private_urls=False)
    async with engine:
        wf_id = await _workflow(engine)
        with pytest.raises(InvalidRequest) as caught:
            await engine.executions.execute(
                wf_id, {}, wait=False, callback_url="http://127.0.0.1:9/cb"
            )
    assert caught.value.details["field"] == "callback_url"


@pytest.mark.anyio
async def test_private_callback_url_refused_at_delivery(
    make_engine: Callable[..., Engine], faulty_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A callback pending when a permissive engine stops is refused by a strict one."""
    receiver.plan("/cb", [500])
    permissive = faulty_engine(webhook_settings=fast(retry_schedule=(0.5, 0.05)))
    permissive.store.fail("claim_deliveries", times=10**9, after=1)  # type: ignore[attr-defined]
    async with permissive:  # one attempt only: the retries are the strict engine's
        wf_id = await _workflow(permissive)
        started = await permissive.executions.execute(
            wf_id, {}, wait=False, callback_url=receiver.url("/cb")
        )
        await _attempted(permissive, started.execution_id)
    strict = make_engine(allow_private_urls=False)
    async with strict:
        (delivery,) = await _finished(strict, started.execution_id)
    assert delivery.status is DeliveryStatus.FAILED
    assert [a.status_code for a in delivery.attempts][:1] == [500]
    assert all((a.error or "").startswith("URL refused") for a in delivery.attempts[1:])
    assert len(delivery.attempts) == 4  # the strict engine's schedule: 1 + 3 retries
    assert len(receiver.received()) == 1


@pytest.mark.anyio
async def test_callback_survives_a_restart(
    make_engine: Callable[..., Engine], faulty_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A callback still to be retried when the engine stops is delivered by the next engine."""
    receiver.plan("/cb", [503, 200])
    first = faulty_engine(webhook_settings=fast(retry_schedule=(0.5,)))
    first.store.fail("claim_deliveries", times=10**9, after=1)  # type: ignore[attr-defined]
    async with first:  # one attempt only: the retry is the next engine's
        wf_id = await _workflow(first)
        started = await first.executions.execute(
            wf_id, {}, wait=False, callback_url=receiver.url("/cb"), callback_secret=SECRET
        )
        await _attempted(first, started.execution_id)
    second = make_engine()
    async with second:
        (delivery,) = await _finished(second, started.execution_id)
    assert [a.status_code for a in delivery.attempts] == [503, 200]
    assert len(receiver.received("/cb")) == 2
    last = receiver.received("/cb")[-1]
    assert Verifier(SECRET).verify(last.body, last.headers)["data"]["status"] == "completed"


@pytest.mark.anyio
async def test_rest_execute_async_with_callback(eng: Engine, receiver: Receiver) -> None:
    """POST execute_async with callback_url and callback_secret: 202, then a signed callback."""
    token = eng.tokens.create_token("usr_cb")
    wf_id = await _workflow(eng)
    transport = httpx.ASGITransport(app=create_app(eng, rate_limit=None))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        r = await client.post(
            f"/workflows/{wf_id}/execute_async",
            json={
                "parameters": {"a": 1},
                "callback_url": receiver.url("/cb"),
                "callback_secret": SECRET,
            },
        )
        assert r.status_code == 202, r.text
        data = r.json()["data"]
        assert data["callback_url"] == receiver.url("/cb")
        assert "callback_secret" not in data
    (request,) = await receiver.wait_for(1, "/cb")
    body = Verifier(SECRET).verify(request.body, request.headers)
    assert body["data"]["execution_id"] == data["execution_id"]
    assert body["data"]["status"] == "completed"
