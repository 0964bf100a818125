"""Webhook subscriptions, Standard Webhooks signing and durable, retried delivery.

Deliveries go to a real HTTP receiver on 127.0.0.1 (``webhook_receiver``),
which the engines here may reach because they allow private URLs, except
where a test checks that an engine without that permission refuses them.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from abi_asgi import create_app
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError
from webhook_receiver import Receiver, running_receiver

from abi_engine import EVENT_TYPES, Engine
from abi_engine.errors import InvalidRequest, InvalidState, NotFound, WebhookNotFound
from abi_engine.ids import utcnow
from abi_engine.models_webhooks import Delivery, DeliveryStatus, Webhook
from abi_engine.webhook_signing import mask_secret, secret_key, sign
from abi_engine.webhooks import STANDARD_RETRY_SCHEDULE, WebhookSettings

STEPS = {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "1 + 1"}}]}
FAILING = {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "parameters['x']"}}]}


def fast(**overrides: Any) -> WebhookSettings:
    """Settings for tests: retries after 50, 100 and 200 ms, short timeout, quick polling."""
    values: dict[str, Any] = {
        "retry_schedule": (0.05, 0.1, 0.2),
        "jitter": 0.0,
        "timeout_seconds": 1.0,
        "poll_interval": 0.05,
        "subscription_refresh_seconds": 0.1,
    }
    values.update(overrides)
    return WebhookSettings(**values)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running HTTP receiver on 127.0.0.1."""
    with running_receiver() as rx:
        yield rx


@pytest.fixture
def make_engine(db_path: Path) -> Iterator[Callable[..., Engine]]:
    """Engines on the test's database (private URLs allowed unless told otherwise)."""
    made: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("allow_private_urls", True)
        kwargs.setdefault("webhook_settings", fast())
        engine = Engine(db_path, **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture
async def eng(make_engine: Callable[..., Engine]) -> AsyncIterator[Engine]:
    """A running engine with fast delivery settings."""
    engine = make_engine()
    async with engine:
        yield engine


async def _workflow(engine: Engine, config: dict[str, Any] = STEPS, *, active: bool = True) -> str:
    wf = await engine.workflows.create({"name": "wh", "type": "custom", "configuration": config})
    if active:
        await engine.workflows.activate(wf.id)
    return wf.id


async def _until(
    engine: Engine, webhook_id: str, done: Callable[[list[Delivery]], bool], timeout: float = 10
) -> list[Delivery]:
    """Poll the webhook's deliveries until ``done(deliveries)``; return them (newest first)."""
    with anyio.fail_after(timeout):
        while True:
            page = await engine.webhooks.deliveries(webhook_id, page_size=100)
            if done(page.items):
                return page.items
            await anyio.sleep(0.02)


def _all_finished(items: list[Delivery]) -> bool:
    return bool(items) and all(d.status is not DeliveryStatus.PENDING for d in items)


# -- subscriptions -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_generated_secret_is_shown_once_then_masked(engine: Engine) -> None:
    """Without a secret the engine makes whsec_+base64(24 bytes), shown whole only on create."""
    created = await engine.webhooks.create(
        {"url": "https://example.com/hook", "events": ["workflow.created"]}
    )
    assert created.id.startswith("wh_")
    assert created.secret.startswith("whsec_")
    assert len(base64.b64decode(created.secret.removeprefix("whsec_"), validate=True)) == 24
    shown = await engine.webhooks.get(created.id)
    assert shown.secret == "whsec_****" + created.secret[-4:]
    assert created.secret not in json.dumps(
        [w.secret for w in (await engine.webhooks.list()).items]
    )
    assert shown.enabled is True
    assert shown.events == ["workflow.created"]


@pytest.mark.anyio
async def test_given_secret_kept_and_masked(engine: Engine) -> None:
    """The seed's request (url, events, secret, description) is stored as given; reads mask it."""
    body = {
        "url": "https://example.com/webhooks/workflows",
        "events": ["workflow.created", "workflow.executed", "execution.completed"],
        "secret": "whsec_abcdefghijklmnopqrstuvwxyz",
        "description": "Production webhook for workflow events",
    }
    created = await engine.webhooks.create(body)
    assert (created.url, created.events, created.secret, created.description) == (
        body["url"],
        body["events"],
        body["secret"],
        body["description"],
    )
    assert (await engine.webhooks.get(created.id)).secret == "whsec_****wxyz"
    assert mask_secret("whsec_short") == "whsec_****"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("events", "field"),
    [
        (["workflow.created", "workflow.exploded"], "events[1]"),
        (["nope"], "events[0]"),
        ([], "events"),
        ("workflow.created", "events"),
        ([1], "events"),
    ],
)
async def test_bad_events_name_the_field(engine: Engine, events: Any, field: str) -> None:
    """Unknown event types, empty or non-list events: INVALID_REQUEST naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        await engine.webhooks.create({"url": "https://example.com/h", "events": events})
    assert caught.value.details["field"] == field


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://metadata.google.internal/",
        "https://user:pw@example.com/",
    ],
)
async def test_bad_or_private_urls_refused_at_registration(engine: Engine, url: str) -> None:
    """Non-http(s), malformed and private URLs are refused when private URLs are not allowed."""
    with pytest.raises(InvalidRequest) as caught:
        await engine.webhooks.create({"url": url, "events": ["workflow.created"]})
    assert caught.value.details["field"] == "url"
    assert (await engine.webhooks.list()).pagination.total_items == 0


@pytest.mark.anyio
@pytest.mark.parametrize("secret", ["abc", "whsec_", "whsec_has space", "whsec_" + "a" * 600, 42])
async def test_bad_secrets_refused(engine: Engine, secret: Any) -> None:
    """A secret must be 'whsec_' and 1..512 printable, spaceless characters."""
    with pytest.raises(InvalidRequest) as caught:
        await engine.webhooks.create(
            {"url": "https://example.com/h", "events": ["workflow.created"], "secret": secret}
        )
    assert caught.value.details["field"] == "secret"


@pytest.mark.anyio
async def test_update_replaces_given_fields_only(engine: Engine) -> None:
    """PUT semantics: given fields replace, absent ones stay; rotate_secret shows the new one once."""
    hook = await engine.webhooks.create(
        {"url": "https://example.com/a", "events": ["workflow.created"], "description": "d"}
    )
    updated = await engine.webhooks.update(hook.id, {"events": ["workflow.deleted"]})
    assert (updated.url, updated.events, updated.description) == (
        "https://example.com/a",
        ["workflow.deleted"],
        "d",
    )
    assert updated.updated_at >= hook.updated_at
    updated = await engine.webhooks.update(
        hook.id, {"url": "https://example.org/b", "description": None, "enabled": False}
    )
    assert (updated.url, updated.description, updated.enabled) == (
        "https://example.org/b",
        None,
        False,
    )
    assert updated.secret == mask_secret(hook.secret)
    rotated = await engine.webhooks.update(hook.id, {"rotate_secret": True})
    assert rotated.secret.startswith("whsec_")
    assert "****" not in rotated.secret
    assert rotated.secret != hook.secret
    assert (await engine.webhooks.get(hook.id)).secret == mask_secret(rotated.secret)
    given_secret = await engine.webhooks.update(hook.id, {"secret": "whsec_" + "Z" * 32})
    assert given_secret.secret == "whsec_****ZZZZ"
    for body, field in [
        ({"colour": "red"}, "colour"),
        ({"events": ["bogus"]}, "events[0]"),
        ({"url": "http://127.0.0.1/"}, "url"),
        ({"secret": "nope"}, "secret"),
        ({"secret": "whsec_" + "a" * 20, "rotate_secret": True}, "rotate_secret"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            await engine.webhooks.update(hook.id, body)
        assert caught.value.details["field"] == field
    assert (await engine.webhooks.get(hook.id)).url == "https://example.org/b"


@pytest.mark.anyio
async def test_unknown_webhook_is_not_found(engine: Engine) -> None:
    """Get, update, delete, deliveries and redeliver of a missing webhook: WEBHOOK_NOT_FOUND."""
    hook = await engine.webhooks.create(
        {"url": "https://example.com/a", "events": ["workflow.created"]}
    )
    assert (await engine.webhooks.delete(hook.id)).deleted is True
    calls = [
        engine.webhooks.get(hook.id),
        engine.webhooks.update(hook.id, {"enabled": False}),
        engine.webhooks.delete(hook.id),
        engine.webhooks.deliveries(hook.id),
        engine.webhooks.redeliver(hook.id, "dlv_x"),
    ]
    for call in calls:
        with pytest.raises(WebhookNotFound) as caught:
            await call
        assert caught.value.code == "WEBHOOK_NOT_FOUND"
        assert caught.value.http_status == 404
        assert caught.value.details == {"webhook_id": hook.id}


@pytest.mark.anyio
async def test_list_pages_newest_first(engine: Engine) -> None:
    """Subscriptions list newest first in pages; bad page values are INVALID_REQUEST."""
    ids = []
    for n in range(3):
        hook = await engine.webhooks.create(
            {"url": f"https://example.com/{n}", "events": ["workflow.created"]}
        )
        ids.append(hook.id)
        await anyio.sleep(0.002)
    first = await engine.webhooks.list(page=1, page_size=2)
    second = await engine.webhooks.list(page=2, page_size=2)
    assert [w.id for w in first.items + second.items] == ids[::-1]
    assert (first.pagination.total_items, first.pagination.total_pages) == (3, 2)
    assert all(w.secret.startswith("whsec_****") for w in first.items)
    with pytest.raises(InvalidRequest):
        await engine.webhooks.list(page_size=101)


@pytest.mark.anyio
async def test_outbox_keeps_what_subscriptions_ask_for(make_engine: Callable[..., Engine]) -> None:
    """Execution events are kept only while an enabled subscription wants them, in every process."""
    one, two = make_engine(), make_engine()
    assert not one.wants_event("execution.step_completed")
    assert one.wants_event("workflow.created")  # always kept
    hook = await one.webhooks.create(
        {"url": "https://example.com/a", "events": ["execution.step_completed", "workflow.created"]}
    )
    assert one.wants_event("execution.step_completed")
    assert not two.wants_event("execution.step_completed")
    two.webhooks.refresh_subscriptions()  # what the worker does every refresh interval
    assert two.wants_event("execution.step_completed")
    await one.webhooks.update(hook.id, {"enabled": False})
    assert not one.wants_event("execution.step_completed")
    assert one.wants_event("workflow.created")  # the engine's own types stay
    await one.webhooks.update(hook.id, {"enabled": True})
    await one.webhooks.delete(hook.id)
    assert not one.wants_event("execution.step_completed")
    assert make_engine().wants_event("execution.step_completed") is False


# -- delivery ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delivery_is_signed_per_standard_webhooks(eng: Engine, receiver: Receiver) -> None:
    """Headers webhook-id (the event id), -timestamp and -signature verify with standardwebhooks."""
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    before = int(time.time())
    wf_id = await _workflow(eng, active=False)
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
    (delivery,) = await _until(eng, hook.id, _all_finished)
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
    wf_id = await _workflow(eng)  # created, activated
    await eng.workflows.update(wf_id, {"description": "changed"})
    await eng.executions.execute(wf_id, {})  # executed, step_completed, completed
    failing = await _workflow(eng, FAILING)
    execution = await eng.executions.execute(failing, {}, wait=False)
    await eng.executions.wait(execution.execution_id, timeout=5)  # execution.failed
    schedule = await eng.schedules.create(
        wf_id,
        {"name": "s", "schedule_type": "interval", "interval_value": 1, "interval_unit": "seconds"},
    )
    await eng.schedules.update(schedule.id, {"description": "every second"})
    seen: set[str] = set()
    with anyio.fail_after(10):
        while "schedule.triggered" not in seen:
            seen = {json.loads(r.body)["type"] for r in receiver.received("/all")}
            await anyio.sleep(0.05)
    await eng.schedules.delete(schedule.id)
    await eng.workflows.deactivate(wf_id)
    await eng.workflows.delete(wf_id)
    with anyio.fail_after(10):
        while seen != set(EVENT_TYPES):
            seen = {json.loads(r.body)["type"] for r in receiver.received("/all")}
            await anyio.sleep(0.05)
    verifier = Verifier(everything.secret)
    for request in receiver.received("/all"):
        assert verifier.verify(request.body, request.headers)["type"] in EVENT_TYPES
    created = {json.loads(r.body)["type"] for r in receiver.received("/created")}
    assert created == {"workflow.created"}
    assert len(receiver.received("/created")) == 2  # the two workflows
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
        await _workflow(eng, active=False)
        requests = await receiver.wait_for(3)
        (delivery,) = await _until(eng, hook.id, _all_finished)
        await anyio.sleep(0.3)
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    assert 0.2 <= gaps[0] < 1.2, gaps
    assert 0.4 <= gaps[1] < 1.4, gaps
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
    await _workflow(eng, active=False)
    (delivery,) = await _until(eng, hook.id, _all_finished)
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
    receiver.plan("/hook", [(200, 2.0), 200])
    engine = make_engine(webhook_settings=fast(timeout_seconds=0.3))
    async with engine:
        hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        await _workflow(engine, active=False)
        (delivery,) = await _until(engine, hook.id, _all_finished)
    first, second = delivery.attempts
    assert first.status is DeliveryStatus.FAILED
    assert first.status_code is None
    assert first.error == "timed out after 0.3 s"
    assert 250 <= first.duration_ms < 1500
    assert second.status is DeliveryStatus.SUCCEEDED
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
    await _workflow(eng, active=False)
    (lost,) = await _until(eng, dead.id, _all_finished)
    (redirected,) = await _until(eng, moved.id, _all_finished)
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
        await _workflow(engine, active=False)
        (delivery,) = await _until(engine, hook.id, _all_finished)
    assert delivery.attempts[0].response_body == "answer 2"


@pytest.mark.anyio
async def test_deliveries_are_listed_newest_first_in_pages(eng: Engine, receiver: Receiver) -> None:
    """GET deliveries pages through every delivery of the webhook, newest event first."""
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    ids = [await _workflow(eng, active=False) for _ in range(5)]
    await _until(eng, hook.id, lambda items: len(items) == 5 and _all_finished(items))
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
    await _workflow(eng, active=False)
    (failed,) = await _until(eng, hook.id, _all_finished)
    assert failed.status is DeliveryStatus.FAILED
    receiver.plan("/hook", [200])
    again = await eng.webhooks.redeliver(hook.id, failed.id)
    assert again.id == failed.id
    assert again.status is DeliveryStatus.PENDING
    (done,) = await _until(eng, hook.id, _all_finished)
    assert done.status is DeliveryStatus.SUCCEEDED
    assert [a.attempt for a in done.attempts] == [1, 2, 3, 4, 5]
    assert done.attempts[-1].status_code == 200
    assert len({r.headers["webhook-id"] for r in receiver.received()}) == 1
    receiver.plan("/hook", [500])
    await eng.webhooks.redeliver(hook.id, done.id)  # a succeeded one may be replayed too
    with pytest.raises(InvalidState):
        await eng.webhooks.redeliver(hook.id, done.id)  # still pending
    with pytest.raises(NotFound) as caught:
        await eng.webhooks.redeliver(hook.id, "dlv_unknown")
    assert caught.value.details["delivery_id"] == "dlv_unknown"


@pytest.mark.anyio
async def test_disabled_webhook_parks_its_deliveries(eng: Engine, receiver: Receiver) -> None:
    """A disabled webhook gets nothing new; its pending deliveries go out once it is enabled."""
    eng.webhooks.settings.retry_schedule = (0.5,)
    receiver.plan("/hook", [500, 200])
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await _workflow(eng, active=False)
    await receiver.wait_for(1)
    await eng.webhooks.update(hook.id, {"enabled": False})
    await _workflow(eng, active=False)  # not for a disabled webhook
    await anyio.sleep(0.8)
    assert len(receiver.received()) == 1
    (parked,) = (await eng.webhooks.deliveries(hook.id)).items
    assert parked.status is DeliveryStatus.PENDING
    assert parked.next_attempt_at is None
    await eng.webhooks.update(hook.id, {"enabled": True})
    await receiver.wait_for(2)
    (done,) = await _until(eng, hook.id, _all_finished)
    assert done.status is DeliveryStatus.SUCCEEDED


@pytest.mark.anyio
async def test_deleted_webhook_gets_nothing_more(eng: Engine, receiver: Receiver) -> None:
    """Deleting a webhook drops its pending deliveries: no further request reaches it."""
    eng.webhooks.settings.retry_schedule = (0.3,)
    receiver.plan("/hook", [500])
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await _workflow(eng, active=False)
    await receiver.wait_for(1)
    await eng.webhooks.delete(hook.id)
    await _workflow(eng, active=False)
    await anyio.sleep(0.6)
    assert len(receiver.received()) == 1


@pytest.mark.anyio
async def test_rotated_secret_signs_next_to_the_previous_one(
    eng: Engine, receiver: Receiver
) -> None:
    """After a rotation both secrets sign during the grace period; both verify."""
    hook = await eng.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    rotated = await eng.webhooks.update(hook.id, {"rotate_secret": True})
    await _workflow(eng, active=False)
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
        await _workflow(engine, active=False)
        (request,) = await receiver.wait_for(1)
    Verifier(rotated.secret).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(hook.secret).verify(request.body, request.headers)


# -- durability -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pending_retry_survives_a_restart(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A delivery waiting for its retry when the engine stops is completed by the next engine."""
    receiver.plan("/hook", [500, 200])
    first = make_engine(webhook_settings=fast(retry_schedule=(0.6,)))
    async with first:
        hook = await first.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        await _workflow(first, active=False)
        await receiver.wait_for(1)
        (pending,) = await _until(
            first, hook.id, lambda items: bool(items) and items[0].attempt_count == 1
        )
        assert pending.status is DeliveryStatus.PENDING
    first.close()
    assert len(receiver.received()) == 1
    second = make_engine()
    async with second:
        (done,) = await _until(second, hook.id, _all_finished)
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
    wf_ids = [await _workflow(idle, active=False) for _ in range(3)]
    idle.close()
    assert receiver.received() == []
    engine = make_engine()
    async with engine:
        requests = await receiver.wait_for(3)
        await _until(engine, hook.id, lambda items: len(items) == 3 and _all_finished(items))
    assert sorted(json.loads(r.body)["data"]["id"] for r in requests) == sorted(wf_ids)


@pytest.mark.anyio
async def test_lease_of_a_dead_worker_is_taken_over(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A delivery claimed by a process that died is delivered once its lease expires."""
    idle = make_engine()
    hook = await idle.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    await _workflow(idle, active=False)
    store = idle.store
    assert store.fan_out(utcnow(), 100, ()) >= 1
    now = utcnow()
    (job,) = store.claim_deliveries("ghost:1:dead", now, now + timedelta(seconds=0.5), 10)
    assert job.webhook_id == hook.id
    engine = make_engine()
    async with engine:
        await anyio.sleep(0.25)
        assert receiver.received() == []  # still leased
        await receiver.wait_for(1)
        (done,) = await _until(engine, hook.id, _all_finished)
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
            await _workflow(one if n % 2 else two, active=False)
        await _until(one, hook.id, lambda items: len(items) == 20 and _all_finished(items))
        await anyio.sleep(0.2)
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
        await _workflow(strict, active=False)
        (delivery,) = await _until(strict, hook.id, _all_finished)
    assert delivery.status is DeliveryStatus.FAILED
    assert len(delivery.attempts) == 4
    for attempt in delivery.attempts:
        assert attempt.status_code is None
        assert (attempt.error or "").startswith("URL refused")
    assert receiver.received() == []


# -- REST -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rest_webhooks(eng: Engine, receiver: Receiver) -> None:
    """The REST operations: create 201, list, get, put, deliveries, redeliver 202, delete, errors."""
    admin = eng.tokens.create_token("usr_admin", ["webhooks:admin"])
    reader = eng.tokens.create_token("usr_reader", ["workflows:read"])
    transport = httpx.ASGITransport(app=create_app(eng, rate_limit=None))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/api/v1",
        headers={"Authorization": f"Bearer {admin}"},
    ) as client:
        body = {
            "url": receiver.url(),
            "events": ["workflow.created", "workflow.executed", "execution.completed"],
            "secret": "whsec_abcdefghijklmnopqrstuvwxyz",
            "description": "Production webhook for workflow events",
        }
        r = await client.post("/webhooks", json=body)
        assert r.status_code == 201, r.text
        created = r.json()["data"]
        assert created["secret"] == body["secret"]
        assert created["created_by"] == "usr_admin"
        hook_id = created["id"]
        r = await client.get(f"/webhooks/{hook_id}")
        assert r.json()["data"]["secret"] == "whsec_****wxyz"
        r = await client.get("/webhooks", params={"page": 1, "page_size": 5})
        assert r.json()["data"]["pagination"]["total_items"] == 1
        r = await client.put(f"/webhooks/{hook_id}", json={"description": "new"})
        assert r.status_code == 200
        assert r.json()["data"]["description"] == "new"
        receiver.plan("/hook", [500])
        await _workflow(eng, active=False)
        await _until(eng, hook_id, _all_finished)
        r = await client.get(f"/webhooks/{hook_id}/deliveries")
        page = r.json()["data"]
        assert page["pagination"]["total_items"] == 1
        delivery = page["items"][0]
        assert delivery["status"] == "failed"
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500, 500]
        assert "next_attempt_at" not in delivery
        receiver.plan("/hook", [200])
        r = await client.post(f"/webhooks/{hook_id}/deliveries/{delivery['id']}/redeliver")
        assert r.status_code == 202, r.text
        assert r.json()["data"]["status"] == "pending"
        await _until(eng, hook_id, _all_finished)
        r = await client.post(f"/webhooks/{hook_id}/deliveries/dlv_nope/redeliver")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")
        r = await client.post("/webhooks", json={**body, "events": ["workflow.created", "x"]})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "INVALID_REQUEST"
        assert r.json()["error"]["details"]["field"] == "events[1]"
        r = await client.post("/webhooks", json={"url": "http://10.0.0.1/", "events": []})
        assert r.status_code == 400
        r = await client.get("/webhooks", headers={"Authorization": f"Bearer {reader}"})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "FORBIDDEN")
        r = await client.delete(f"/webhooks/{hook_id}")
        assert r.json()["data"] == {"id": hook_id, "deleted": True}
        for method, path in [
            ("GET", f"/webhooks/{hook_id}"),
            ("PUT", f"/webhooks/{hook_id}"),
            ("DELETE", f"/webhooks/{hook_id}"),
            ("GET", f"/webhooks/{hook_id}/deliveries"),
        ]:
            r = await client.request(method, path, json={} if method == "PUT" else None)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "WEBHOOK_NOT_FOUND")
        spec = (await client.get("/openapi.json")).json()
        assert "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver" in spec["paths"]
        assert "Webhook" in spec["components"]["schemas"]


def test_models_round_trip_through_the_converter() -> None:
    """Webhook and Delivery JSON carries RFC 3339 times and leaves out absent optional fields."""
    from abi_engine.converter import unstructure

    now = utcnow()
    hook = Webhook(
        id="wh_1", url="https://e.com", secret="whsec_****", created_at=now, updated_at=now
    )
    data = unstructure(hook)
    assert data["created_at"].endswith("Z")
    delivery = Delivery(
        id="dlv_1",
        event_id="evt_1",
        event_type="workflow.created",
        status=DeliveryStatus.SUCCEEDED,
        created_at=now,
        updated_at=now,
    )
    shown = unstructure(delivery)
    assert "webhook_id" not in shown
    assert "next_attempt_at" not in shown
    assert shown["status"] == "succeeded"


# -- signing --------------------------------------------------------------------------------


def test_standard_retry_schedule_by_default() -> None:
    """By default: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts)."""
    settings = WebhookSettings()
    assert (
        settings.retry_schedule
        == STANDARD_RETRY_SCHEDULE
        == (5, 300, 1800, 7200, 18000, 36000, 36000)
    )
    assert settings.max_attempts == 8
    assert settings.delay_after(8) is None
    delays = [settings.delay_after(n) for n in range(1, 8)]
    for delay, nominal in zip(delays, STANDARD_RETRY_SCHEDULE, strict=True):
        assert delay is not None
        assert nominal * 0.9 <= delay <= nominal * 1.1
    with pytest.raises(ValueError, match="retry delays"):
        WebhookSettings(retry_schedule=(1, -1))


_NOW = int(time.time())


@given(
    key=st.binary(min_size=1, max_size=64),
    msg_id=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=40),
    body=st.text(max_size=300),
    offset=st.integers(min_value=-200, max_value=200),
)
@hsettings(suppress_health_check=[HealthCheck.too_slow])
def test_signature_property_matches_standardwebhooks(
    key: bytes, msg_id: str, body: str, offset: int
) -> None:
    """Sign then verify with standardwebhooks for random secrets, bodies, ids and times; tampering fails."""
    secret = "whsec_" + base64.b64encode(key).decode()
    timestamp = str(int(time.time()) + offset)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    verifier = Verifier(secret)
    assert verifier.verify(body, headers, json_parse=False) is None
    for tampered in (
        (body + "x", headers),
        (body, {**headers, "webhook-id": msg_id + "x"}),
        (body, {**headers, "webhook-timestamp": str(int(timestamp) + 1)}),
    ):
        with pytest.raises(WebhookVerificationError):
            verifier.verify(tampered[0], tampered[1], json_parse=False)


@given(
    secret_body=st.text(
        st.characters(codec="ascii", min_codepoint=33, max_codepoint=126), min_size=1, max_size=60
    )
)
def test_key_derivation_matches_the_reference_library(secret_body: str) -> None:
    """Any secret the library accepts gives its key; one it cannot decode keys with its UTF-8 bytes."""
    secret = "whsec_" + secret_body
    try:
        reference = Verifier(secret)._whsecret
    except Exception:  # the library cannot decode it at all
        assert secret_key(secret) == secret_body.encode("utf-8")
    else:
        assert secret_key(secret) == reference
        timestamp = str(int(time.time()))
        headers = {
            "webhook-id": "evt_1",
            "webhook-timestamp": timestamp,
            "webhook-signature": sign(secret, "evt_1", timestamp, "{}"),
        }
        Verifier(secret).verify("{}", headers)


# -- the Python API (abi.workflows.WebhookManager) ----------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _manager_scenario(manager: Any, workflows: Any, receiver: Receiver) -> None:
    from abi.workflows import WorkflowConfig

    hook = manager.create_webhook(
        receiver.url(), ["workflow.created"], description="py", secret="whsec_" + "b" * 32
    )
    assert isinstance(hook, Webhook)
    assert hook.secret == "whsec_" + "b" * 32
    assert manager.get_webhook(hook.id).secret == "whsec_****bbbb"
    assert [w.id for w in manager.list_webhooks(page_size=5).items] == [hook.id]
    receiver.plan("/hook", [500])
    workflows.create_workflow(WorkflowConfig(name="py", type="custom", configuration=STEPS))

    def failed() -> bool:
        items = manager.list_deliveries(hook.id).items
        return bool(items) and items[0].status is DeliveryStatus.FAILED

    _wait(failed)
    (delivery,) = manager.list_deliveries(hook.id, page=1, page_size=10).items
    assert [a.status_code for a in delivery.attempts] == [500, 500, 500, 500]
    receiver.plan("/hook", [200])
    assert manager.redeliver(hook.id, delivery.id).status is DeliveryStatus.PENDING
    _wait(lambda: manager.list_deliveries(hook.id).items[0].status is DeliveryStatus.SUCCEEDED)
    Verifier(hook.secret).verify(receiver.received()[-1].body, receiver.received()[-1].headers)
    with pytest.raises(NotFound):
        manager.redeliver(hook.id, "dlv_missing")
    updated = manager.update_webhook(hook.id, enabled=False, description=None)
    assert (updated.enabled, updated.description) == (False, None)
    with pytest.raises(InvalidRequest) as caught:
        manager.update_webhook(hook.id, events=["nope"])
    assert caught.value.details["field"] == "events[0]"
    assert manager.delete_webhook(hook.id).deleted is True
    with pytest.raises(WebhookNotFound):
        manager.get_webhook(hook.id)
    with pytest.raises(WebhookNotFound):
        manager.get_webhook("../x")


def test_webhook_manager_in_process(tmp_path: Path, receiver: Receiver) -> None:
    """WebhookManager drives an in-process engine: create, list, deliveries, redeliver, errors."""
    from abi.workflows import WebhookManager, WorkflowManager

    engine = Engine(tmp_path / "py.db", allow_private_urls=True, webhook_settings=fast())
    try:
        token = engine.tokens.create_token("usr_py", ["webhooks:admin", "workflows:write"])
        with (
            WebhookManager(access_token=token, engine=engine) as manager,
            WorkflowManager(access_token=token, engine=engine) as workflows,
        ):
            _manager_scenario(manager, workflows, receiver)
    finally:
        engine.close()


def test_webhook_manager_over_http(tmp_path: Path, receiver: Receiver) -> None:
    """WebhookManager over a real uvicorn server behaves as in-process."""
    import socket
    import threading

    import uvicorn

    from abi.workflows import WebhookManager, WorkflowManager

    engine = Engine(tmp_path / "http.db", allow_private_urls=True, webhook_settings=fast())
    token = engine.tokens.create_token("usr_py", ["webhooks:admin", "workflows:write"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", http="h11"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started)
        base_url = f"http://127.0.0.1:{port}"
        with (
            WebhookManager(access_token=token, base_url=base_url) as manager,
            WorkflowManager(access_token=token, base_url=base_url) as workflows,
        ):
            _manager_scenario(manager, workflows, receiver)
            with pytest.raises(WebhookNotFound):
                manager.delete_webhook("wh_none")
    finally:
        server.should_exit = True
        thread.join(15)
        engine.close()
    assert not thread.is_alive()


# -- the command line -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("allow", [True, False])
def test_serve_allow_private_urls(tmp_path: Path, receiver: Receiver, allow: bool) -> None:
    """`abi-engine serve` delivers to 127.0.0.1 with --allow-private-urls and refuses it without."""
    import os
    import socket
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    db = str(tmp_path / "serve.db")
    token = subprocess.run(
        [sys.executable, "-m", "abi_engine", "token", "create", "--db", db, "--user", "ops"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["serve", "--db", db, "--port", str(port)] + (["--allow-private-urls"] if allow else [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "abi_engine", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:

            def up() -> bool:
                try:
                    return client.get("/health").status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(up, timeout=30)
            r = client.post(
                "/webhooks", json={"url": receiver.url(), "events": ["workflow.created"]}
            )
            if not allow:
                assert r.status_code == 400
                assert r.json()["error"]["code"] == "INVALID_REQUEST"
                assert r.json()["error"]["details"]["field"] == "url"
                return
            assert r.status_code == 201, r.text
            secret = r.json()["data"]["secret"]
            r = client.post(
                "/workflows", json={"name": "cli", "type": "custom", "configuration": STEPS}
            )
            assert r.status_code == 201, r.text
            _wait(lambda: len(receiver.received()) == 1)
            request = receiver.received()[0]
            body = Verifier(secret).verify(request.body, request.headers)
            assert body["data"]["id"] == r.json()["data"]["id"]
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


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
        await _workflow(engine, active=False)
        (delivery,) = await _until(engine, hook.id, _all_finished)
    assert delivery.status is DeliveryStatus.FAILED
    assert all(
        a.error == "URL refused: hooks.example.com resolves to a private address (10.0.0.7)"
        for a in delivery.attempts
    )


@pytest.mark.anyio
async def test_delivery_connects_to_the_address_it_checked(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request goes to the checked address, with the original Host header and TLS name."""
    from abi_engine._webhook_delivery import DeliveryWorker

    _fake_dns(monkeypatch, {"hooks.example.com": "93.184.216.34"})
    engine = make_engine(allow_private_urls=False)
    worker = DeliveryWorker(engine.webhooks, engine, engine.webhooks.settings)
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
