"""Webhook delivery: Standard Webhooks signatures, retries, timeouts, durability, URL rules.

Every test posts to a real HTTP receiver on 127.0.0.1 (``webhook_testing``)
that fails, answers slowly or succeeds on purpose.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    FAILING,
    STEPS,
    Receiver,
    all_finished,
    eng_fixture,
    eventually,
    fast,
    faulty_engine_fixture,
    make_engine_fixture,
    make_workflow,
    receiver_fixture,
    running_receiver,
    until_deliveries,
)

from abi_engine import EVENT_TYPES, Engine, hookimpl
from abi_engine.converter import unstructure
from abi_engine.errors import InvalidRequest, InvalidState, NotFound
from abi_engine.events import Event
from abi_engine.execution_views import event_data
from abi_engine.ids import format_time, utcnow
from abi_engine.models_webhooks import Delivery, DeliveryStatus
from abi_engine.runtime.delivery import DeliveryWorker
from abi_engine.runtime.settings import WebhookSettings
from abi_engine.webhook_signing import sign

# -- delivery ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delivery_is_signed_per_standard_webhooks(eng: Engine, receiver: Receiver) -> None:
    """Headers webhook-id (the event id), -timestamp and -signature verify with standardwebhooks."""
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    before = int(time.time())
    wf_id = await make_workflow(eng, active=False)
    (request,) = await receiver.wait_for(1)
    payload = Verifier(hook.secret).verify(request.body, request.headers)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "workflow.created"
    assert payload["data"]["id"] == wf_id
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("evt_")
    assert before <= int(request.headers["webhook-timestamp"]) <= int(time.time())
    version, _signature = request.headers["webhook-signature"].split(",")
    assert version == "v1"
    expected = sign(
        hook.secret,
        request.headers["webhook-id"],
        request.headers["webhook-timestamp"],
        request.body,
    )
    assert request.headers["webhook-signature"] == expected
    with pytest.raises(WebhookVerificationError):
        Verifier(hook.secret).verify(request.body.replace(b"wh", b"WH"), request.headers)
    (delivery,) = await until_deliveries(eng, hook.id, all_finished)
    assert delivery.event_id == request.headers["webhook-id"]
    assert delivery.status is DeliveryStatus.SUCCEEDED


@pytest.mark.anyio
async def test_every_event_type_reaches_its_subscribers(eng: Engine, receiver: Receiver) -> None:
    """All event types of the seed's table are delivered to a subscription to all of them only."""
    everything = await eng.webhooks.create(
        {"url": receiver.url("/all"), "events": list(EVENT_TYPES)}
    )
    only_created = await eng.webhooks.create(
        {"url": receiver.url("/created"), "events": ["workflow.created"]}
    )
    wf_id = await make_workflow(eng)  # created, activated
    await eng.workflows.update(wf_id, {"description": "changed"})
    await eng.executions.execute(wf_id, {})  # executed, step_completed, completed
    failing = await make_workflow(eng, FAILING)
    execution = await eng.executions.execute(failing, {}, wait=False)
    await eng.executions.wait(execution.execution_id, timeout=30)  # execution.failed
    rerun = await eng.executions.rerun(execution.execution_id)  # execution.rerun (#16)
    await eng.executions.wait(rerun.execution_id, timeout=30)
    schedule = await eng.schedules.create(
        wf_id,
        {"name": "s", "schedule_type": "interval", "interval_value": 1, "interval_unit": "seconds"},
    )
    await eng.schedules.update(schedule.id, {"description": "every second"})
    # A schedule whose firings cannot start an execution: schedule.failed.
    needs_crm = await eng.workflows.create(
        {
            "name": "needs crm",
            "type": "custom",
            "configuration": STEPS,
            "integrations": [{"id": "int_crm", "required": True}],
        }
    )
    await eng.workflows.activate(needs_crm.id)
    failing_schedule = await eng.schedules.create(
        needs_crm.id,
        {"name": "f", "schedule_type": "interval", "interval_value": 1, "interval_unit": "seconds"},
    )
    # Due times the misfire policy skips (as after a downtime): schedule.missed (#17).
    skipping = await eng.schedules.create(
        wf_id,
        {
            "name": "m",
            "schedule_type": "interval",
            "interval_value": 1,
            "interval_unit": "hours",
            "misfire_policy": "skip",
            "misfire_grace_seconds": 0,
        },
    )
    assert skipping.next_execution is not None
    await eng.scheduler.tick(skipping.next_execution + timedelta(hours=3, minutes=1))
    # One request replaced by a later one within its debounce window: execution.skipped.
    debounced = await eng.workflows.create(
        {"name": "d", "type": "custom", "configuration": STEPS, "debounce": {"seconds": 1}}
    )
    await eng.workflows.activate(debounced.id)
    for _ in range(2):
        await eng.executions.execute(debounced.id, {}, wait=False)
    # A backfill that ends: schedule.backfill_completed (#17).
    hourly = await eng.schedules.create(
        wf_id, {"name": "h", "schedule_type": "cron", "cron_expression": "0 * * * *"}
    )
    now = datetime.now(UTC)
    await eng.schedules.backfill(
        hourly.id,
        {"start": format_time(now - timedelta(hours=3)), "end": format_time(now)},
    )
    seen: set[str] = set()
    with anyio.fail_after(30):
        while not {"schedule.triggered", "schedule.failed", "schedule.backfill_completed"} <= seen:
            seen = {json.loads(r.body)["type"] for r in receiver.received("/all")}
            await anyio.sleep(0.05)
    await eng.schedules.delete(schedule.id)
    await eng.schedules.delete(failing_schedule.id)
    await eng.schedules.delete(skipping.id)
    await eng.schedules.delete(hourly.id)
    await eng.workflows.deactivate(wf_id)
    await eng.workflows.delete(wf_id)
    with anyio.fail_after(30):
        while seen != set(EVENT_TYPES):
            seen = {json.loads(r.body)["type"] for r in receiver.received("/all")}
            await anyio.sleep(0.05)
    verifier = Verifier(everything.secret)
    for request in receiver.received("/all"):
        assert verifier.verify(request.body, request.headers)["type"] in EVENT_TYPES
    created = {json.loads(r.body)["type"] for r in receiver.received("/created")}
    assert created == {"workflow.created"}
    assert len(receiver.received("/created")) == 4  # the four workflows
    assert only_created.id != everything.id


@pytest.mark.anyio
async def test_retries_follow_the_schedule_then_succeed(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """Failures (500) are retried after each delay of the schedule, with the same webhook-id."""
    receiver.plan("/hook", [500, 503, 200])
    eng = make_engine(webhook_settings=fast(retry_schedule=(0.2, 0.4, 0.8)))
    async with eng:
        hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        await make_workflow(eng, active=False)
        requests = await receiver.wait_for(3)
        (delivery,) = await until_deliveries(eng, hook.id, all_finished)
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    # Never early; how late depends on the machine's load (the deadlines are generous).
    assert gaps[0] >= 0.2, gaps
    assert gaps[1] >= 0.4, gaps
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert delivery.attempt_count == 3
    assert [(a.attempt, a.status, a.status_code) for a in delivery.attempts] == [
        (1, DeliveryStatus.FAILED, 500),
        (2, DeliveryStatus.FAILED, 503),
        (3, DeliveryStatus.SUCCEEDED, 200),
    ]
    assert [a.error for a in delivery.attempts] == ["HTTP 500", "HTTP 503", None]
    assert delivery.attempts[0].response_body == "answer 500 to /hook"
    assert all(a.duration_ms >= 0 for a in delivery.attempts)
    assert delivery.attempts[0].created_at < delivery.attempts[1].created_at
    assert len(receiver.received()) == 3


@pytest.mark.anyio
async def test_failed_after_the_last_attempt(eng: Engine, receiver: Receiver) -> None:
    """A receiver that always fails gets 1 + len(schedule) attempts; then the delivery is failed."""
    receiver.plan("/hook", [500])
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await make_workflow(eng, active=False)
    (delivery,) = await until_deliveries(eng, hook.id, all_finished)
    assert delivery.status is DeliveryStatus.FAILED
    assert delivery.next_attempt_at is None
    assert [a.attempt for a in delivery.attempts] == [1, 2, 3, 4]
    assert all(a.status is DeliveryStatus.FAILED for a in delivery.attempts)
    await anyio.sleep(0.4)
    assert len(receiver.received()) == 4


@pytest.mark.anyio
async def test_slow_receiver_times_out_and_is_retried(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """An answer slower than timeout_seconds is a failed attempt ('timed out'), then retried."""
    receiver.plan("/hook", [(200, 60.0), 200])
    engine = make_engine(webhook_settings=fast(timeout_seconds=2.0))
    async with engine:
        hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        await make_workflow(engine, active=False)
        (delivery,) = await until_deliveries(engine, hook.id, all_finished)
    first, *_others, last = delivery.attempts
    assert first.status is DeliveryStatus.FAILED
    assert first.status_code is None
    assert first.error == "timed out after 2 s"
    assert 1900 <= first.duration_ms < 60_000
    # The answers after the first are immediate; a machine stalled for seconds may time out
    # one of them too, so only the last is sure to succeed.
    assert all(a.error == "timed out after 2 s" for a in delivery.attempts[:-1])
    assert last.status is DeliveryStatus.SUCCEEDED
    assert delivery.status is DeliveryStatus.SUCCEEDED


@pytest.mark.anyio
async def test_connection_refused_and_redirects_are_failures(
    eng: Engine, receiver: Receiver
) -> None:
    """A closed port is a connection error; a 3xx answer is not followed and counts as failed."""
    with running_receiver() as gone:
        dead_url = gone.url()
    receiver.plan("/moved", [302])
    dead = await eng.webhooks.create({"url": dead_url, "events": ["workflow.created"]})
    moved = await eng.webhooks.create(
        {"url": receiver.url("/moved"), "events": ["workflow.created"]}
    )
    await make_workflow(eng, active=False)
    (lost,) = await until_deliveries(eng, dead.id, all_finished)
    (redirected,) = await until_deliveries(eng, moved.id, all_finished)
    assert lost.status is DeliveryStatus.FAILED
    assert all(a.status_code is None and a.error for a in lost.attempts)
    assert "ConnectError" in (lost.attempts[0].error or "")
    assert redirected.status is DeliveryStatus.FAILED
    assert {a.status_code for a in redirected.attempts} == {302}
    assert {r.path for r in receiver.received()} == {"/moved"}


@pytest.mark.anyio
async def test_response_body_is_truncated(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """Only response_body_limit characters of an answer are kept."""
    engine = make_engine(webhook_settings=fast(response_body_limit=8))
    async with engine:
        hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        await make_workflow(engine, active=False)
        (delivery,) = await until_deliveries(engine, hook.id, all_finished)
    assert delivery.attempts[0].response_body == "answer 2"


@pytest.mark.anyio
async def test_deliveries_are_listed_newest_first_in_pages(eng: Engine, receiver: Receiver) -> None:
    """GET deliveries pages through every delivery of the webhook, newest event first."""
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    ids = [await make_workflow(eng, active=False) for _ in range(5)]
    await until_deliveries(eng, hook.id, lambda items: len(items) == 5 and all_finished(items))
    pages = [await eng.webhooks.deliveries(hook.id, page=p, page_size=2) for p in (1, 2, 3)]
    assert [p.pagination.total_items for p in pages] == [5, 5, 5]
    assert pages[0].pagination.total_pages == 3
    assert [len(p.items) for p in pages] == [2, 2, 1]
    delivered = [d for p in pages for d in p.items]
    by_event = {
        json.loads(r.body)["data"]["id"]: r.headers["webhook-id"] for r in receiver.received()
    }
    assert [d.event_id for d in delivered] == [by_event[i] for i in reversed(ids)]
    assert all(d.event_type == "workflow.created" and d.webhook_id == hook.id for d in delivered)
    with pytest.raises(InvalidRequest):
        await eng.webhooks.deliveries(hook.id, page=0)


@pytest.mark.anyio
async def test_redeliver_a_failed_delivery(eng: Engine, receiver: Receiver) -> None:
    """A failed delivery is sent again on request with the same webhook-id and a new schedule."""
    receiver.plan("/hook", [500])
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await make_workflow(eng, active=False)
    (failed,) = await until_deliveries(eng, hook.id, all_finished)
    assert failed.status is DeliveryStatus.FAILED
    receiver.plan("/hook", [200])
    again = await eng.webhooks.redeliver(hook.id, failed.id)
    assert again.id == failed.id
    assert again.status is DeliveryStatus.PENDING
    (done,) = await until_deliveries(eng, hook.id, all_finished)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert [a.attempt for a in done.attempts] == [1, 2, 3, 4, 5]
    assert done.attempts[-1].status_code == 200
    assert len({r.headers["webhook-id"] for r in receiver.received()}) == 1
    released = threading.Event()
    receiver.plan("/hook", [receiver.hold(500, released.is_set)])
    await eng.webhooks.redeliver(hook.id, done.id)  # a succeeded one may be replayed too
    with pytest.raises(InvalidState):
        await eng.webhooks.redeliver(hook.id, done.id)  # still pending (its attempt is held)
    released.set()
    with pytest.raises(NotFound) as caught:
        await eng.webhooks.redeliver(hook.id, "dlv_unknown")
    assert caught.value.details["delivery_id"] == "dlv_unknown"


@pytest.mark.anyio
async def test_disabled_webhook_parks_its_deliveries(eng: Engine, receiver: Receiver) -> None:
    """A disabled webhook gets nothing new; its pending deliveries go out once it is enabled."""
    eng.webhooks.settings.retry_schedule = (0.2,)
    disabled = threading.Event()  # the first attempt is answered once the webhook is disabled
    receiver.plan("/hook", [receiver.hold(500, disabled.is_set), 200])
    receiver.plan("/marker", [500, 200])
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await make_workflow(eng, active=False)
    await receiver.wait_for(1, "/hook")
    await eng.webhooks.update(hook.id, {"enabled": False})
    disabled.set()

    def parked(items: list[Delivery]) -> bool:
        return bool(items) and items[0].attempt_count == 1 and items[0].next_attempt_at is None

    (delivery,) = await until_deliveries(eng, hook.id, parked)
    assert delivery.status is DeliveryStatus.PENDING
    # A marker subscription, failing once with the same retry delay: once its retry has
    # arrived, the parked delivery's retry (due earlier) would have gone out too.
    await eng.webhooks.create({"url": receiver.url("/marker"), "events": ["workflow.created"]})
    await make_workflow(eng, active=False)  # not for the disabled webhook
    await receiver.wait_for(2, "/marker")
    assert len(receiver.received("/hook")) == 1
    assert [d.id for d in (await eng.webhooks.deliveries(hook.id)).items] == [delivery.id]
    await eng.webhooks.update(hook.id, {"enabled": True})
    await receiver.wait_for(2, "/hook")
    (done,) = await until_deliveries(eng, hook.id, all_finished)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert [a.status_code for a in done.attempts] == [500, 200]


@pytest.mark.anyio
async def test_deleted_webhook_gets_nothing_more(eng: Engine, receiver: Receiver) -> None:
    """Deleting a webhook drops its pending deliveries: no further request reaches it."""
    eng.webhooks.settings.retry_schedule = (0.2,)
    gone = threading.Event()  # set once the webhook is deleted: only then the answer comes
    receiver.plan("/hook", [receiver.hold(500, gone.is_set)])
    receiver.plan("/marker", [500, 200])
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await make_workflow(eng, active=False)
    await receiver.wait_for(1, "/hook")  # in flight until the webhook is gone
    await eng.webhooks.delete(hook.id)
    gone.set()
    marker = await eng.webhooks.create(
        {"url": receiver.url("/marker"), "events": ["workflow.created"]}
    )
    await make_workflow(eng, active=False)
    await receiver.wait_for(2, "/marker")  # a retry delay has passed
    await until_deliveries(eng, marker.id, all_finished)
    assert len(receiver.received("/hook")) == 1


@pytest.mark.anyio
async def test_rotated_secret_signs_next_to_the_previous_one(
    eng: Engine, receiver: Receiver
) -> None:
    """After a rotation both secrets sign during the grace period; both verify."""
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    rotated = await eng.webhooks.update(hook.id, {"rotate_secret": True})
    await make_workflow(eng, active=False)
    (request,) = await receiver.wait_for(1)
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Verifier(hook.secret).verify(request.body, request.headers)
    Verifier(rotated.secret).verify(request.body, request.headers)


@pytest.mark.anyio
async def test_rotation_without_grace_signs_with_the_new_secret_only(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """With no grace period only the new secret signs."""
    engine = make_engine(webhook_settings=fast(secret_rotation_grace_seconds=0))
    async with engine:
        hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        rotated = await engine.webhooks.update(hook.id, {"rotate_secret": True})
        await make_workflow(engine, active=False)
        (request,) = await receiver.wait_for(1)
    Verifier(rotated.secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(hook.secret).verify(request.body, request.headers)


# -- durability -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pending_retry_survives_a_restart(
    make_engine: Callable[..., Engine], faulty_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A delivery waiting for its retry when the engine stops is completed by the next engine."""
    receiver.plan("/hook", [500, 200])
    first = faulty_engine(webhook_settings=fast(retry_schedule=(0.6,)))
    first.store.fail("claim_deliveries", times=10**9, after=1)  # type: ignore[attr-defined]
    async with first:  # it claims the first attempt only: the retry is left to the next engine
        hook = await first.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        await make_workflow(first, active=False)
        await receiver.wait_for(1)
        (pending,) = await until_deliveries(
            first, hook.id, lambda items: bool(items) and items[0].attempt_count == 1
        )
        assert pending.status is DeliveryStatus.PENDING
    first.close()
    assert len(receiver.received()) == 1
    second = make_engine()
    async with second:
        (done,) = await until_deliveries(second, hook.id, all_finished)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert [a.status_code for a in done.attempts] == [500, 200]
    ids = {r.headers["webhook-id"] for r in receiver.received()}
    assert ids == {done.event_id}


@pytest.mark.anyio
async def test_events_of_a_stopped_engine_are_delivered_on_start(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """Events committed while no worker runs stay in the outbox until an engine starts."""
    idle = make_engine()
    hook = await idle.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    wf_ids = [await make_workflow(idle, active=False) for _ in range(3)]
    idle.close()
    assert receiver.received() == []
    engine = make_engine()
    async with engine:
        requests = await receiver.wait_for(3)
        await until_deliveries(
            engine, hook.id, lambda items: len(items) == 3 and all_finished(items)
        )
    assert sorted(json.loads(r.body)["data"]["id"] for r in requests) == sorted(wf_ids)


@pytest.mark.anyio
async def test_lease_of_a_dead_worker_is_taken_over(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A delivery claimed by a process that died is delivered once its lease expires, not before."""
    idle = make_engine()
    hook = await idle.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await make_workflow(idle, active=False)
    store = idle.store
    assert store.fan_out(utcnow(), 100, ()) >= 1
    now, claimed_at = utcnow(), time.monotonic()
    lease = 2.0
    (job,) = store.claim_deliveries("ghost:1:dead", now, now + timedelta(seconds=lease), 10)
    assert job.webhook_id == hook.id
    engine = make_engine()
    async with engine:
        (request,) = await receiver.wait_for(1)
        (done,) = await until_deliveries(engine, hook.id, all_finished)
    assert request.at - claimed_at >= lease - 0.01  # not before the lease ended
    assert done.status is DeliveryStatus.SUCCEEDED
    assert store.record_attempts("ghost:1:dead", []) == 0


@pytest.mark.anyio
async def test_two_engines_on_one_database_deliver_each_event_once(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """Two running engines share the outbox: every event is delivered exactly once."""
    one, two = make_engine(), make_engine()
    async with one, two:
        hook = await one.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        for n in range(20):
            await make_workflow(one if n % 2 else two, active=False)
        items = await until_deliveries(
            one, hook.id, lambda items: len(items) == 20 and all_finished(items)
        )
    assert all(len(d.attempts) == 1 for d in items)  # no attempt failed, none was repeated
    ids = [r.headers["webhook-id"] for r in receiver.received()]
    assert len(ids) == 20
    assert len(set(ids)) == 20


@pytest.mark.anyio
async def test_private_url_refused_again_at_delivery(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A URL registered where private URLs were allowed is refused by an engine that does not."""
    permissive = make_engine(allow_private_urls=True)
    hook = await permissive.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    permissive.close()
    strict = make_engine(allow_private_urls=False)
    async with strict:
        await make_workflow(strict, active=False)
        (delivery,) = await until_deliveries(strict, hook.id, all_finished)
    assert delivery.status is DeliveryStatus.FAILED
    assert len(delivery.attempts) == 4
    for attempt in delivery.attempts:
        assert attempt.status_code is None
        assert (attempt.error or "").startswith("URL refused")
    assert receiver.received() == []


# -- DNS at delivery (no DNS server is reachable here: getaddrinfo is stood in for) ----------


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, str]) -> None:
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.anyio
async def test_name_resolving_to_a_private_address_is_refused_at_delivery(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A public-looking name that resolves to a private address passes registration, not delivery."""
    _fake_dns(monkeypatch, {"hooks.example.com": "10.0.0.7"})
    engine = make_engine(allow_private_urls=False)
    async with engine:
        hook = await engine.webhooks.create(
            {"url": "https://hooks.example.com/in", "events": ["workflow.created"]}
        )
        await make_workflow(engine, active=False)
        (delivery,) = await until_deliveries(engine, hook.id, all_finished)
    assert delivery.status is DeliveryStatus.FAILED
    assert all(
        a.error == "URL refused: hooks.example.com: the address is not allowed"
        " (loopback, private or reserved)"
        for a in delivery.attempts
    )  # not which address it resolved to (#11)


@pytest.mark.anyio
async def test_delivery_connects_to_the_address_it_checked(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request goes to the checked address, with the original Host header and TLS name."""

    _fake_dns(monkeypatch, {"hooks.example.com": "93.184.216.34"})
    engine = make_engine(allow_private_urls=False)
    worker = _worker(engine, engine.webhooks.settings)
    headers: dict[str, str] = {}
    url, extensions = await worker._pinned("https://hooks.example.com:8443/in?x=1", headers)
    assert str(url) == "https://93.184.216.34:8443/in?x=1"
    assert headers == {"host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}
    headers = {}
    url, extensions = await worker._pinned("http://hooks.example.com/in", headers)
    assert (str(url), headers, extensions) == (
        "http://93.184.216.34/in",
        {"host": "hooks.example.com"},
        {},
    )


#: A minute of in-worker sleeps (each a second at most: longer ones park the execution).
BUSY = {"steps": [{"name": f"wait{n}", "action": "delay", "seconds": 1} for n in range(60)]}


@pytest.mark.anyio
async def test_delivery_yields_to_running_executions(make_engine: Callable[..., Engine]) -> None:
    """While busy_threshold executions run here, only busy_concurrency attempts may be in flight
    (busy_cpu_share 0: executions alone count)."""

    settings = fast(concurrency=16, busy_concurrency=1, busy_threshold=2, busy_cpu_share=0.0)
    engine = make_engine(webhook_settings=settings)
    worker = _worker(engine, settings)
    slow = BUSY  # cancelled below
    async with engine:
        wf_id = await make_workflow(engine, slow)
        assert worker._capacity() == 16
        started = [await engine.executions.execute(wf_id, {}, wait=False) for _ in range(2)]
        await eventually(lambda: engine.runtime.in_flight == 2)
        assert worker._capacity() == 1
        for execution in started:
            await engine.executions.cancel(execution.execution_id)
        await eventually(lambda: engine.runtime.in_flight == 0)
        assert worker._capacity() == 16


@pytest.mark.anyio
async def test_executions_waiting_on_io_do_not_hold_deliveries_back(
    make_engine: Callable[..., Engine],
) -> None:
    """Executions that mostly wait (CPU idle) leave the worker its full concurrency."""

    settings = fast(concurrency=16, busy_concurrency=1, busy_threshold=2)
    engine = make_engine(webhook_settings=settings)
    worker = _worker(engine, settings)
    slow = BUSY  # cancelled below
    async with engine:
        wf_id = await make_workflow(engine, slow)
        started = [await engine.executions.execute(wf_id, {}, wait=False) for _ in range(3)]
        await eventually(lambda: engine.runtime.in_flight == 3)
        worker._capacity()  # opens a window of the load meter
        await anyio.sleep(0.3)
        assert engine.runtime.in_flight == 3
        assert worker._load.cpu_share() < settings.busy_cpu_share
        assert worker._capacity() == 16
        for execution in started:
            await engine.executions.cancel(execution.execution_id)


def test_load_meter_measures_the_cpu_share_of_a_window() -> None:
    """The meter reads CPU seconds per wall second of its window: high while burning the CPU,
    near 0 while sleeping; a window not yet full keeps the last value."""
    from abi_engine.runtime.delivery import LoadMeter

    meter = LoadMeter(window=0.2)
    wall, cpu = time.perf_counter(), time.process_time()
    while time.process_time() - cpu < 0.3:  # 0.3 s of CPU, however long other load makes it
        pass
    busy = meter.cpu_share()
    expected = (time.process_time() - cpu) / (time.perf_counter() - wall)
    assert busy == pytest.approx(expected, rel=0.25)
    time.sleep(0.3)
    idle = meter.cpu_share()
    assert idle < min(0.1, busy / 2)
    waiting = LoadMeter(window=3600, initial=0.5)
    assert waiting.cpu_share() == 0.5  # no full window yet
    assert waiting.cpu_share() == 0.5


def test_concurrent_fan_out_and_claims_never_share_a_delivery(tmp_path: Any) -> None:
    """Two stores on one file, in threads: every event fanned out once, every delivery claimed once."""
    import threading
    from datetime import datetime

    from abi_engine.events import Event
    from abi_engine.storage import SQLiteStore
    from abi_engine.storage.records_webhooks import WebhookRecord

    path = tmp_path / "race.db"
    stores = [SQLiteStore(path), SQLiteStore(path)]
    try:
        created = datetime(2020, 1, 1, tzinfo=utcnow().tzinfo)
        stores[0].insert_webhook(
            WebhookRecord(
                id="wh_race",
                url="https://example.com/",
                events=["workflow.created"],
                secret="whsec_" + "a" * 32,
                created_at=created,
                updated_at=created,
            )
        )
        events = [Event(type="workflow.created", data={"n": n}) for n in range(300)]
        stores[0].insert_events(events)
        claimed: list[list[str]] = [[], []]

        def work(index: int) -> None:
            store = stores[index]
            for _ in range(200):
                store.fan_out(utcnow(), 7, ())
                now = utcnow()
                jobs = store.claim_deliveries(f"node{index}", now, now + timedelta(minutes=5), 5)
                claimed[index].extend(job.event_id for job in jobs)

        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        everything = claimed[0] + claimed[1]
        assert sorted(everything) == sorted(e.id for e in events)
        assert not stores[0].fan_out_pending()
    finally:
        for store in stores:
            store.close()


# -- execution events kept by reference ---------------------------------------------------

TWO_STEPS = {
    "steps": [
        {"name": "first", "action": "transform", "expressions": {"a": "parameters['x'] + 1"}},
        {"name": "second", "action": "transform", "expressions": {"b": "results['first']['a']"}},
    ]
}
EXECUTION_EVENTS = [
    "workflow.executed",
    "execution.step_completed",
    "execution.completed",
    "execution.failed",
]


@pytest.mark.anyio
async def test_execution_events_by_reference_carry_the_data_of_their_moment(
    eng: Engine, receiver: Receiver
) -> None:
    """Bodies built at delivery time show the execution as it was at each event, not as it ends."""
    await eng.webhooks.create({"url": receiver.url(), "events": EXECUTION_EVENTS})
    wf_id = await make_workflow(eng, TWO_STEPS)
    execution = await eng.executions.execute(wf_id, {"x": 1})
    stored = eng.store.events_after(0, limit=100)
    assert {type(s.event).__name__ for s in stored if s.event.type in EXECUTION_EVENTS} == {
        "ExecutionEventRef"
    }
    requests = await receiver.wait_for(4)
    bodies = {}
    for request in requests:
        body = json.loads(request.body)
        key = body["type"]
        if key == "execution.step_completed":
            key += ":" + body["data"]["step"]["name"]
        bodies[key] = body["data"]
    final = unstructure(await eng.executions.get(execution.execution_id))
    assert bodies["execution.completed"] == final
    started = bodies["workflow.executed"]
    assert started["status"] == "running"
    assert started["completed_at"] is None
    assert started["result"] is None
    assert started["started_at"] == final["started_at"]
    assert started["parameters"] == {"x": 1}
    assert [(s["name"], s["status"]) for s in started["steps"]] == [
        ("first", "running"),
        ("second", "pending"),
    ]
    for index, name in enumerate(["first", "second"]):
        data = bodies[f"execution.step_completed:{name}"]
        assert data["execution_id"] == execution.execution_id
        assert data["workflow_id"] == wf_id
        shown = dict(final["steps"][index])
        assert data["step"] == {**shown, "attempts": 1}


class _Hook:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.mark.anyio
async def test_hook_events_equal_the_data_built_by_reference(
    make_engine: Callable[..., Engine],
) -> None:
    """With an abi_event hook, events carry their data; it equals what a reference would build."""
    hook = _Hook()
    eng = make_engine(plugins=[hook])
    async with eng:
        wf_id = await make_workflow(eng, TWO_STEPS)
        done = await eng.executions.execute(wf_id, {"x": 2})
        failing = await make_workflow(eng, FAILING)
        failed = await eng.executions.execute(failing, {}, wait=False)
        await eng.executions.wait(failed.execution_id, timeout=5)
    expected = {
        done.execution_id: {"workflow.executed", "execution.step_completed", "execution.completed"},
        failed.execution_id: {"workflow.executed", "execution.failed"},
    }
    for execution_id, types in expected.items():
        record = eng.store.get_execution(execution_id)
        assert record is not None
        steps = eng.store.get_steps(execution_id)
        seen = [
            e
            for e in hook.events
            if e.type in EXECUTION_EVENTS and execution_id in json.dumps(e.data)
        ]
        assert {e.type for e in seen} == types
        for event in seen:
            index = None
            if event.type == "execution.step_completed":
                names = [s.name for s in steps]
                index = steps[names.index(event.data["step"]["name"])].index
            assert event_data(event.type, record, steps, index) == event.data, event.type


@pytest.mark.anyio
async def test_reference_events_of_a_commit_share_a_row_and_keep_their_own_ids(
    eng: Engine, receiver: Receiver
) -> None:
    """Executions committed together pack their events in few rows; each is delivered once, with its own id."""
    await eng.webhooks.create({"url": receiver.url(), "events": EXECUTION_EVENTS})
    wf_id = await make_workflow(eng, TWO_STEPS)
    count = 20
    started = [await eng.executions.execute(wf_id, {"x": n}, wait=False) for n in range(count)]
    for execution in started:
        await eng.executions.wait(execution.execution_id, timeout=10)
    expected = count * 4  # executed, two steps, completed
    requests = await receiver.wait_for(expected, timeout=20)
    stored = [
        s for s in eng.store.events_after(0, limit=10_000) if s.event.type in EXECUTION_EVENTS
    ]
    assert len(stored) == expected
    assert len({s.seq for s in stored}) < expected  # packed: fewer rows than events
    ids = [s.event.id for s in stored]
    assert len(set(ids)) == expected
    assert sorted(r.headers["webhook-id"] for r in requests) == sorted(ids)
    seen: dict[str, list[str]] = {}
    for request in requests:
        body = json.loads(request.body)
        data = body["data"]
        execution_id = data["execution_id"]
        seen.setdefault(execution_id, []).append(body["type"])
        if body["type"] == "execution.completed":
            final = unstructure(await eng.executions.get(execution_id))
            assert data == final
            assert final["result"] == {"b": final["parameters"]["x"] + 1}
    assert sorted(seen) == sorted(e.execution_id for e in started)
    for types in seen.values():
        assert sorted(types) == sorted(
            [
                "workflow.executed",
                "execution.step_completed",
                "execution.step_completed",
                "execution.completed",
            ]
        )


@pytest.mark.anyio
async def test_attempts_ending_during_a_slow_record_are_recorded_too(
    make_engine: Callable[..., Engine],
) -> None:
    """Attempts that end while a batch is being written (a blocking store) are written next."""

    from abi_engine.storage.records_webhooks import AttemptOutcome

    engine = make_engine()
    worker = _worker(engine, fast())
    written: list[list[str]] = []

    class SlowStore:  # records in a thread, slowly, as a PostgreSQL store would
        blocking = True

        def record_attempts(self, owner: str, outcomes: list[AttemptOutcome]) -> int:
            time.sleep(0.1)
            written.append([o.delivery_id for o in outcomes])
            return len(outcomes)

    worker._store = SlowStore()  # type: ignore[assignment]

    def outcome(n: int) -> AttemptOutcome:
        return AttemptOutcome(
            delivery_id=f"dlv_{n}",
            attempt=1,
            status=DeliveryStatus.SUCCEEDED,
            status_code=200,
            duration_ms=1,
            error=None,
            response_body="",
            created_at=utcnow(),
            delivery_status=DeliveryStatus.SUCCEEDED,
        )

    async def later(n: int, delay: float) -> None:
        await anyio.sleep(delay)
        await worker._record(outcome(n))

    async with anyio.create_task_group() as tg:
        tg.start_soon(later, 1, 0)
        tg.start_soon(later, 2, 0.001)
        tg.start_soon(later, 3, 0.05)  # while the first batch is being written
    await eventually(lambda: sum(len(batch) for batch in written) >= 3)
    assert sorted(d for batch in written for d in batch) == ["dlv_1", "dlv_2", "dlv_3"]
    assert len(written) == 2  # the first two together, the third after
    engine.close()


def _worker(engine: Engine, settings: WebhookSettings) -> DeliveryWorker:
    return DeliveryWorker(
        engine.webhooks,
        settings,
        store=engine.store,
        in_flight=lambda: engine.runtime.in_flight,
        allow_private_urls=lambda: engine.allow_private_urls,
    )
