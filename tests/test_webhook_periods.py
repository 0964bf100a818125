"""Which subscriptions an event goes to: the ones listening to its type when it happened.

A subscription's enabled state and event types are applied as they were when
the event was committed, not when the fan-out runs: an event that happened
while a subscription was enabled reaches it even if it is disabled (parked
until enabled again) or changed before the fan-out; one that happened while it
was disabled, or before it existed, never does. On both stores, and through a
running engine delivering to a real HTTP receiver.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    Receiver,
    all_finished,
    eventually,
    fast,
    make_engine_fixture,
    make_workflow,
    receiver_fixture,
    until_deliveries,
)

from abi_engine import Engine
from abi_engine.events import Event
from abi_engine.ids import new_id, utcnow
from abi_engine.models_webhooks import Delivery, DeliveryStatus
from abi_engine.storage import Store
from abi_engine.storage._codec import to_ms
from abi_engine.storage.records_webhooks import AttemptOutcome, WebhookRecord

# The fixtures' types of tests/conftest.py (not imported: the suite has several conftests).
StoreFactory = Callable[..., Store]

CREATED, UPDATED = "workflow.created", "workflow.updated"
DEADLINE = 30.0


def _subscribe(store: Store, events: list[str], *, enabled: bool = True) -> WebhookRecord:
    now = utcnow()
    hook = WebhookRecord(
        id=new_id("wh_"),
        url="https://example.com/hook",
        events=events,
        secret="whsec_" + "A" * 32,
        enabled=enabled,
        created_at=now,
        updated_at=now,
    )
    store.insert_webhook(hook)
    return hook


def _change(store: Store, hook: WebhookRecord, **fields: Any) -> WebhookRecord:
    changed = attrs.evolve(hook, updated_at=utcnow(), **fields)
    assert store.update_webhook(changed, utcnow())
    return changed


def _event(store: Store, event_type: str = CREATED) -> str:
    event = Event(type=event_type, data={"n": new_id("n_")})
    store.insert_events([event])
    return event.id


def _fan_out(store: Store) -> None:
    while store.fan_out(utcnow(), 100, ()):
        pass


def _deliveries(store: Store, hook: WebhookRecord) -> list[Delivery]:
    items, _total = store.list_deliveries(hook.id, 1, 100)
    return items


def test_event_of_an_enabled_subscription_survives_its_disabling(make_store: StoreFactory) -> None:
    """Enabled at the event, disabled before the fan-out: a delivery is made, parked, and due
    once the subscription is enabled again."""
    store = make_store()
    hook = _subscribe(store, [CREATED])
    event_id = _event(store)
    hook = _change(store, hook, enabled=False)
    _event(store)  # while disabled: not for it
    _fan_out(store)
    (parked,) = _deliveries(store, hook)
    assert parked.event_id == event_id
    assert parked.status is DeliveryStatus.PENDING
    assert parked.next_attempt_at is None
    assert not store.deliveries_due(utcnow())
    _change(store, hook, enabled=True)
    assert store.deliveries_due(utcnow())
    now = utcnow()
    (job,) = store.claim_deliveries("node", now, now, 10)
    assert job.event_id == event_id


def test_event_of_a_disabled_subscription_stays_undelivered_after_enabling(
    make_store: StoreFactory,
) -> None:
    """Disabled at the event, enabled before the fan-out: no delivery for that event; the next
    one is delivered."""
    store = make_store()
    hook = _subscribe(store, [CREATED], enabled=False)
    _event(store)
    hook = _change(store, hook, enabled=True)
    later = _event(store)
    _fan_out(store)
    assert [d.event_id for d in _deliveries(store, hook)] == [later]


def test_event_types_apply_as_they_were_at_the_event(make_store: StoreFactory) -> None:
    """A change of event types before the fan-out: earlier events follow the old types, later
    ones the new."""
    store = make_store()
    hook = _subscribe(store, [CREATED])
    old_created = _event(store, CREATED)
    _event(store, UPDATED)
    hook = _change(store, hook, events=[UPDATED])
    _event(store, CREATED)
    new_updated = _event(store, UPDATED)
    _fan_out(store)
    assert sorted(d.event_id for d in _deliveries(store, hook)) == sorted(
        [old_created, new_updated]
    )


def test_a_subscription_gets_nothing_from_before_it_existed(make_store: StoreFactory) -> None:
    """Events written before a subscription was created never reach it, even with a creation
    time set in the past."""
    store = make_store()
    before = _event(store)
    _fan_out(store)
    _event(store)  # written, not fanned out yet
    now = utcnow()
    hook = WebhookRecord(
        id=new_id("wh_"),
        url="https://example.com/hook",
        events=[CREATED],
        secret="whsec_" + "A" * 32,
        created_at=now.replace(year=2000),
        updated_at=now,
    )
    store.insert_webhook(hook)
    after = _event(store)
    _fan_out(store)
    assert [d.event_id for d in _deliveries(store, hook)] == [after]
    assert before != after


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.sampled_from([CREATED, UPDATED])),
        st.tuples(st.just("toggle"), st.none()),
        st.tuples(st.just("types"), st.sampled_from([(CREATED,), (UPDATED,), (CREATED, UPDATED)])),
        st.tuples(st.just("fan_out"), st.none()),
    ),
    max_size=25,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS, start_enabled=st.booleans())
def test_fan_out_follows_the_subscription_at_each_event(
    store: Store, ops: list[tuple[str, Any]], start_enabled: bool
) -> None:
    """Any mix of events, enable/disable, type changes and fan-outs: an event reaches the
    subscription iff it was enabled and asked for that type when the event was written
    (one store per backend for all examples, one new subscription each)."""
    _fan_out(store)  # what earlier examples left
    hook = _subscribe(store, [CREATED], enabled=start_enabled)
    expected: list[str] = []
    for op, arg in ops:
        if op == "event":
            event_id = _event(store, arg)
            if hook.enabled and arg in hook.events:
                expected.append(event_id)
        elif op == "toggle":
            hook = _change(store, hook, enabled=not hook.enabled)
        elif op == "types":
            hook = _change(store, hook, events=list(arg))
        else:
            _fan_out(store)
    _fan_out(store)
    found = _deliveries(store, hook)
    assert sorted(d.event_id for d in found) == sorted(expected)
    assert all((d.next_attempt_at is None) == (not hook.enabled) for d in found)


# -- through a running engine ---------------------------------------------------------------


@pytest.mark.anyio
async def test_engine_delivers_what_happened_while_enabled_once_re_enabled(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """An event committed while the webhook was enabled, disabled before any worker ran: it is
    delivered once the webhook is enabled again; the event of the disabled time never is."""
    idle = make_engine()  # not started: nothing fans out yet
    hook = await idle.webhooks.create({"url": receiver.url(), "events": [CREATED]})
    while_enabled = await make_workflow(idle, active=False)
    await idle.webhooks.update(hook.id, {"enabled": False})
    while_disabled = await make_workflow(idle, active=False)
    idle.close()
    engine = make_engine()
    async with engine:
        await eventually(lambda: not engine.store.fan_out_pending(), timeout=DEADLINE)
        (parked,) = (await engine.webhooks.deliveries(hook.id)).items
        assert parked.status is DeliveryStatus.PENDING
        assert parked.next_attempt_at is None
        assert receiver.received() == []
        await engine.webhooks.update(hook.id, {"enabled": True})
        after = await make_workflow(engine, active=False)
        requests = await receiver.wait_for(2, timeout=DEADLINE)
        items = await until_deliveries(
            engine, hook.id, lambda d: len(d) == 2 and all_finished(d), timeout=DEADLINE
        )
    sent = sorted(json.loads(r.body)["data"]["id"] for r in requests)
    assert sent == sorted([while_enabled, after])
    assert while_disabled not in sent
    assert all(d.status is DeliveryStatus.SUCCEEDED for d in items)


@pytest.mark.anyio
async def test_engine_skips_what_happened_while_disabled_though_enabled_before_fan_out(
    make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """An event committed while the webhook was disabled, enabled before any worker ran: never
    delivered; the next event is."""
    idle = make_engine()
    hook = await idle.webhooks.create(
        {"url": receiver.url(), "events": [CREATED], "enabled": False}
    )
    while_disabled = await make_workflow(idle, active=False)
    await idle.webhooks.update(hook.id, {"enabled": True})
    idle.close()
    engine = make_engine(webhook_settings=fast())
    async with engine:
        after = await make_workflow(engine, active=False)
        (request,) = await receiver.wait_for(1, timeout=DEADLINE)
        await eventually(lambda: not engine.store.fan_out_pending(), timeout=DEADLINE)
        (delivery,) = await until_deliveries(engine, hook.id, all_finished, timeout=DEADLINE)
    assert json.loads(request.body)["data"]["id"] == after
    assert delivery.event_id == request.headers["webhook-id"]
    assert while_disabled != after


# -- the migration ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.external_service)])
def schema_8_store(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Store, Callable[[], Store]]]:
    """A store at schema 8 (before m009) and a function reopening its database at the latest."""
    from abi_engine.storage import SQLiteStore, postgres_migrations
    from abi_engine.storage import migrations as sqlite_migrations

    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        monkeypatch.setattr(
            "abi_engine.storage.sqlite.MIGRATIONS", sqlite_migrations.MIGRATIONS[:8]
        )
        opened.append(SQLiteStore(path))
        monkeypatch.undo()

        def reopen() -> Store:
            opened.append(SQLiteStore(path))
            return opened[-1]

        yield opened[0], reopen
        for store in opened:
            store.close()
        return
    from postgres_testing import create_schema, drop_schema

    from abi_engine.storage.postgres import PostgresStore

    server: str = request.getfixturevalue("postgres_server")
    schema, url = create_schema(server)
    monkeypatch.setattr(postgres_migrations, "MIGRATIONS", postgres_migrations.MIGRATIONS[:8])
    opened.append(PostgresStore(url))
    monkeypatch.undo()

    def reopen_pg() -> Store:
        opened.append(PostgresStore(url))
        return opened[-1]

    try:
        yield opened[0], reopen_pg
    finally:
        for store in opened:
            store.close()
        drop_schema(server, schema)


def test_m009_gives_subscriptions_of_before_their_periods(
    schema_8_store: tuple[Store, Callable[[], Store]],
) -> None:
    """Upgrading: an enabled subscription gets the pending events from after its creation, a
    disabled one none; an old delivery's attempts go on numbering after the ones it has."""
    old, reopen = schema_8_store
    assert old.schema_version() == 8
    mark = "?" if type(old).__name__ == "SQLiteStore" else "%s"
    t0 = utcnow().replace(microsecond=0)
    e0, e1, e2 = (
        Event(type=CREATED, data={"n": n}, timestamp=t0 + timedelta(minutes=m))
        for n, m in enumerate([-2, -1, 1])
    )
    old.insert_events([e0])
    old.insert_events([e1])
    old.insert_events([e2])
    seq0 = old.events_after(0)[0].seq
    rows = [  # as the code of schema 8 wrote them
        (
            "INSERT INTO webhooks (id, url, events, secret, enabled, created_at, updated_at)"
            f" VALUES ({mark}, 'https://example.com/a', {mark}, 'whsec_AAAA', {mark}, {mark},"
            f" {mark})",
            [
                (hook, json.dumps([CREATED]), enabled, to_ms(t0), to_ms(t0))
                for hook, enabled in (("wh_on", True), ("wh_off", False))
            ],
        ),
        (
            "INSERT INTO webhook_deliveries (id, target, webhook_id, event_seq, event_index,"
            " event_id, event_type, status, tries, attempt_count, next_attempt_at, created_at,"
            f" updated_at) VALUES ('dlv_old', 'wh_on', 'wh_on', {mark}, 0, {mark}, {mark},"
            f" 'pending', 1, 1, {mark}, {mark}, {mark})",
            [(seq0, e0.id, CREATED, to_ms(t0), to_ms(t0), to_ms(t0))],
        ),
        (
            "INSERT INTO webhook_attempts (delivery_id, attempt, status, status_code,"
            " duration_ms, created_at) VALUES ('dlv_old', 1, 'failed', 500, 1, "
            f"{mark})",
            [(to_ms(t0),)],
        ),
        (f"UPDATE webhook_cursor SET seq = {mark}", [(seq0,)]),
    ]

    def write(conn: Any) -> None:
        for sql, params in rows:
            for values in params:
                conn.execute(sql, values)

    old.write(write)  # type: ignore[attr-defined]
    store = reopen()
    assert store.schema_version() >= 9  # m009 and any later migration
    _fan_out(store)
    on = store.get_webhook("wh_on")
    off = store.get_webhook("wh_off")
    assert on is not None
    assert off is not None
    assert sorted(d.event_id for d in _deliveries(store, on)) == sorted([e0.id, e2.id])
    assert _deliveries(store, off) == []
    now = utcnow()
    jobs = {j.id: j for j in store.claim_deliveries("node", now, now, 10)}
    outcome = AttemptOutcome(
        delivery_id="dlv_old",
        claim=jobs["dlv_old"].claim,
        attempt=2,
        status=DeliveryStatus.SUCCEEDED,
        status_code=200,
        duration_ms=1,
        error=None,
        response_body="",
        created_at=now,
        delivery_status=DeliveryStatus.SUCCEEDED,
    )
    assert store.record_attempts("node", [outcome]) == 1
    done = store.get_delivery("dlv_old")
    assert done is not None
    assert [(a.attempt, a.status_code) for a in done.attempts] == [(1, 500), (2, 200)]
