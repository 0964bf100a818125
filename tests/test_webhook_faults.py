"""Webhook delivery under store faults: failing calls, dropped connections, racing claims.

Faults are real where they can be: :class:`~webhook_testing.FaultyStore` wraps
a real store (SQLite file or PostgreSQL schema) and makes chosen calls raise
the backend's own error; on PostgreSQL the engine's connections are also
killed for real (``pg_terminate_backend``). Deliveries go to a real HTTP
receiver on 127.0.0.1. Deadlines are generous (tens of seconds): nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)
from postgres_testing import create_schema, drop_schema
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    STEPS,
    FaultyStore,
    Receiver,
    all_finished,
    eventually,
    fast,
    faulty_engine_fixture,
    make_engine_fixture,
    make_workflow,
    open_store,
    receiver_fixture,
    until_deliveries,
)

from abi_engine import Engine
from abi_engine.events import Event
from abi_engine.ids import new_id, utcnow
from abi_engine.models_webhooks import Delivery, DeliveryStatus
from abi_engine.storage import SQLiteStore, Store
from abi_engine.storage.records_webhooks import AttemptOutcome, DeliveryJob, WebhookRecord

# The fixtures' types of tests/conftest.py (not imported: the suite has several conftests).
StoreFactory = Callable[..., Store]
DatabaseFactory = Callable[..., Any]

LOGGER = "abi_engine.webhooks"
DEADLINE = 30.0  # seconds: generous, whatever the load


def _worker_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]


def _check_quiet_streak(caplog: pytest.LogCaptureFixture) -> None:
    """The worker logged one line when calls started failing and one when they worked again,
    and no traceback."""
    lines = _worker_lines(caplog)
    assert not [r for r in lines if r.exc_info], "a traceback was logged"
    failed = [r.getMessage() for r in lines if "retrying with backoff" in r.getMessage()]
    healed = [r.getMessage() for r in lines if "works again" in r.getMessage()]
    assert len(failed) == 1, failed
    assert len(healed) == 1, healed
    assert "\n" not in failed[0]


# -- failing store calls --------------------------------------------------------------------

#: Store calls of the delivery worker, each failing three times in a row in one test.
WORKER_CALLS = [
    "fan_out_pending",
    "fan_out",
    "deliveries_due",
    "claim_deliveries",
    "next_delivery_due",
    "subscribed_event_types",
    "prune_deliveries",
]


@pytest.mark.anyio
@pytest.mark.parametrize("call", WORKER_CALLS)
async def test_worker_survives_a_failing_store_call(
    faulty_engine: Callable[..., Engine],
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
    call: str,
) -> None:
    """Each store call of the worker failing three times in a row: one log line, backoff, and
    the event is still delivered once."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    engine = faulty_engine()
    store: FaultyStore = engine.store  # type: ignore[assignment]
    hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    store.fail(call, times=3)
    async with engine:
        wf_id = await make_workflow(engine, active=False)
        await eventually(lambda: store.failures[call] == 3, timeout=DEADLINE)
        (request,) = await receiver.wait_for(1, timeout=DEADLINE)
        (delivery,) = await until_deliveries(engine, hook.id, all_finished, timeout=DEADLINE)
        await eventually(  # the round after the last failure says so
            lambda: any("works again" in r.getMessage() for r in _worker_lines(caplog)),
            timeout=DEADLINE,
        )
    assert wf_id in request.text
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert [a.attempt for a in delivery.attempts] == [1]
    assert len(receiver.received()) == 1
    _check_quiet_streak(caplog)


@pytest.mark.anyio
async def test_an_attempt_that_cannot_be_recorded_is_recorded_later(
    faulty_engine: Callable[..., Engine], receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """record_attempts failing five times: the attempt is kept and recorded once the store
    works, not lost (and not sent again: the lease still holds)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    engine = faulty_engine(webhook_settings=fast(lease_seconds=300))
    store: FaultyStore = engine.store  # type: ignore[assignment]
    hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    store.fail("record_attempts", times=5)
    async with engine:
        await make_workflow(engine, active=False)
        await receiver.wait_for(1, timeout=DEADLINE)
        (delivery,) = await until_deliveries(engine, hook.id, all_finished, timeout=DEADLINE)
    assert store.failures["record_attempts"] == 5
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert [(a.attempt, a.status_code) for a in delivery.attempts] == [(1, 200)]
    assert len(receiver.received()) == 1
    _check_quiet_streak(caplog)


class _LostReply(FaultyStore):
    """Runs ``record_attempts`` for real, then raises: a commit whose outcome was unknown."""

    def __init__(self, store: Store, times: int) -> None:
        super().__init__(store)
        self.lost = times

    def record_attempts(self, owner: str, outcomes: list[AttemptOutcome]) -> int:
        applied = int(self.inner.record_attempts(owner, outcomes))
        if self.lost > 0:
            self.lost -= 1
            raise self._error()
        return applied


@pytest.mark.anyio
async def test_a_record_retried_after_a_lost_reply_is_not_counted_twice(
    databases: DatabaseFactory, receiver: Receiver
) -> None:
    """A record that committed but whose reply was lost is retried and recognised (its claim):
    one attempt, not two."""
    store = _LostReply(open_store(databases()), times=2)
    engine = Engine(store, allow_private_urls=True, webhook_settings=fast())  # type: ignore[arg-type]
    try:
        hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        async with engine:
            await make_workflow(engine, active=False)
            (delivery,) = await until_deliveries(engine, hook.id, all_finished, timeout=DEADLINE)
            await eventually(lambda: store.lost == 0, timeout=DEADLINE)  # the retries happened
            await until_deliveries(engine, hook.id, all_finished, timeout=DEADLINE)
        (delivery,) = (await engine.webhooks.deliveries(hook.id)).items
    finally:
        engine.close()
    assert [(a.attempt, a.status_code) for a in delivery.attempts] == [(1, 200)]
    assert delivery.attempt_count == 1
    assert delivery.status is DeliveryStatus.SUCCEEDED


@pytest.mark.anyio
async def test_leases_are_handed_back_at_stop_despite_failures(
    faulty_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A stopping engine whose release fails twice keeps trying: the next engine sends the
    delivery at once, not after the (long) lease."""
    receiver.plan("/hook", [receiver.hold(500, lambda: len(receiver.received()) >= 2), 200])
    settings = fast(lease_seconds=600, timeout_seconds=120)
    first = faulty_engine(webhook_settings=settings)
    store: FaultyStore = first.store  # type: ignore[assignment]
    hook = await first.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    async with first:
        await make_workflow(first, active=False)
        await receiver.wait_for(1, timeout=DEADLINE)  # in flight, held by the receiver
        store.fail("release_deliveries", times=2)
    assert store.failures["release_deliveries"] == 2
    second = faulty_engine(webhook_settings=settings)
    async with second:
        await receiver.wait_for(2, timeout=DEADLINE)
        (delivery,) = await until_deliveries(second, hook.id, all_finished, timeout=DEADLINE)
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert delivery.attempts[-1].status_code == 200


# -- a real dropped connection (PostgreSQL) -----------------------------------------------------


def _named(url: str, application_name: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("application_name", application_name)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def pg_schema(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL schema's URL (dropped afterwards)."""
    schema, url = create_schema(postgres_server)
    try:
        yield url
    finally:
        drop_schema(postgres_server, schema)


class _Killer:
    """Terminates every connection named ``application_name``, over and over, in a thread."""

    def __init__(self, server: str, application_name: str) -> None:
        self.server = server
        self.name = application_name
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND pid <> pg_backend_pid()",
                    (self.name,),
                ).fetchall()
                self.killed += sum(1 for (done,) in rows if done)
                time.sleep(0.02)

    def __enter__(self) -> _Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


async def _through_dead_connections(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, again if it met a connection killed while idle in the pool (the pool does
    not check connections it hands out: the first use of each dead one fails)."""
    import psycopg

    for _ in range(10):
        try:
            return await call(*args, **kwargs)
        except psycopg.OperationalError:
            continue
    return await call(*args, **kwargs)


@pytest.mark.anyio
@pytest.mark.external_service
async def test_engine_survives_dropped_postgres_connections(
    postgres_server: str, pg_schema: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The engine's PostgreSQL connections killed again and again for seconds: the engine keeps
    running, and every event committed meanwhile is delivered once the database answers."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    name = f"abi_drop_{new_id('t')[-8:]}"
    engine = Engine(_named(pg_schema, name), allow_private_urls=True, webhook_settings=fast())
    writer = Engine(pg_schema)  # another process's view: its connections are not killed
    try:
        hook = await engine.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
        async with engine:
            await make_workflow(writer, active=False)
            await receiver.wait_for(1, timeout=DEADLINE)
            with _Killer(postgres_server, name) as killer:
                made = []
                for _ in range(10):
                    made.append(await make_workflow(writer, active=False))
                    await anyio.sleep(0.2)
            assert killer.killed > 0
            await receiver.wait_for(11, timeout=DEADLINE)
            made.append(await _through_dead_connections(make_workflow, engine, active=False))
            requests = await receiver.wait_for(12, timeout=DEADLINE)
            await until_deliveries(
                engine, hook.id, lambda items: len(items) == 12 and all_finished(items), DEADLINE
            )
    finally:
        engine.close()
        writer.close()
    delivered = {r.headers["webhook-id"] for r in requests}
    assert len(delivered) == 12
    assert all(any(wf_id in r.text for r in requests) for wf_id in made)
    lines = _worker_lines(caplog)
    assert any("retrying with backoff" in r.getMessage() for r in lines)  # the drops hit it
    assert not [r for r in lines if r.exc_info]


# -- two claims of one delivery -------------------------------------------------------------------


def _hook_and_events(store: Store, count: int) -> list[str]:
    """A subscription to workflow.created and ``count`` such events fanned out; the events' ids."""
    now = utcnow()
    store.insert_webhook(
        WebhookRecord(
            id=new_id("wh_"),
            url="https://example.com/hook",
            events=["workflow.created"],
            secret="whsec_" + "A" * 32,
            created_at=now,
            updated_at=now,
        )
    )
    events = [Event(type="workflow.created", data={"n": n}) for n in range(count)]
    store.insert_events(events)
    while store.fan_out(utcnow(), 100, ()):
        pass
    return [e.id for e in events]


def _outcome(job: DeliveryJob, code: int, retry_at: datetime | None = None) -> AttemptOutcome:
    ok = code == 200
    return AttemptOutcome(
        delivery_id=job.id,
        claim=job.claim,
        attempt=job.attempt_count + 1,
        status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.FAILED,
        status_code=code,
        duration_ms=1,
        error=None if ok else f"HTTP {code}",
        response_body="",
        created_at=utcnow(),
        delivery_status=DeliveryStatus.SUCCEEDED if ok else DeliveryStatus.PENDING,
        next_attempt_at=None if ok else retry_at or utcnow() + timedelta(hours=1),
    )


def _deliveries(store: Store, job_ids: list[str]) -> list[Delivery]:
    found = [store.get_delivery(i) for i in job_ids]
    assert all(d is not None for d in found)
    return [d for d in found if d is not None]


def test_racing_recorders_number_attempts_apart(make_store: StoreFactory) -> None:
    """Two processes record attempts of the same deliveries at once (the first one's lease was
    taken over): every attempt is kept, numbered 1 and 2, and only the holder moves them on."""
    first, second = make_store(), make_store(same=True)
    _hook_and_events(first, 30)
    now = utcnow()
    old = first.claim_deliveries("node-a", now, now, 100)  # a lease that ends at once
    later = now + timedelta(seconds=10)
    new = second.claim_deliveries("node-b", later, later + timedelta(minutes=5), 100)
    assert len(old) == len(new) == 30
    assert {j.claim for j in old}.isdisjoint({j.claim for j in new})
    applied: dict[str, int] = {}
    start = threading.Barrier(2)

    def record(store: Store, owner: str, jobs: list[DeliveryJob], code: int) -> None:
        start.wait(10)
        applied[owner] = sum(
            store.record_attempts(owner, [_outcome(job, code) for job in jobs[i : i + 3]])
            for i in range(0, len(jobs), 3)
        )

    threads = [
        threading.Thread(target=record, args=(first, "node-a", old, 500)),
        threading.Thread(target=record, args=(second, "node-b", new, 200)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert applied == {"node-a": 0, "node-b": 30}
    for delivery in _deliveries(first, [j.id for j in new]):
        assert sorted(a.attempt for a in delivery.attempts) == [1, 2]
        assert sorted(a.status_code or 0 for a in delivery.attempts) == [200, 500]
        assert delivery.attempt_count == 2
        assert delivery.status is DeliveryStatus.SUCCEEDED


def test_a_second_claim_by_the_same_node_fences_the_first(make_store: StoreFactory) -> None:
    """A node that claims a delivery again (its lease expired) holds it by the new claim only:
    the first attempt's outcome is recorded but does not move the delivery on."""
    store = make_store()
    _hook_and_events(store, 1)
    now = utcnow()
    (stale,) = store.claim_deliveries("node", now, now, 10)
    later = now + timedelta(seconds=10)
    (fresh,) = store.claim_deliveries("node", later, later + timedelta(minutes=5), 10)
    assert fresh.id == stale.id
    assert store.record_attempts("node", [_outcome(stale, 500)]) == 0
    (pending,) = _deliveries(store, [stale.id])
    assert pending.status is DeliveryStatus.PENDING
    assert [a.status_code for a in pending.attempts] == [500]
    assert store.deliveries_due(later + timedelta(seconds=1)) is False  # still leased
    assert store.record_attempts("node", [_outcome(fresh, 200)]) == 1
    (done,) = _deliveries(store, [stale.id])
    assert done.status is DeliveryStatus.SUCCEEDED
    assert [(a.attempt, a.status_code) for a in done.attempts] == [(1, 500), (2, 200)]
    assert store.record_attempts("node", [_outcome(fresh, 200)]) == 0  # a retry: no new attempt
    assert len(_deliveries(store, [stale.id])[0].attempts) == 2


@pytest.mark.anyio
async def test_two_engines_attempting_one_delivery_keep_both_attempts(
    faulty_engine: Callable[..., Engine], make_engine: Callable[..., Engine], receiver: Receiver
) -> None:
    """A lease that expires while its attempt is in flight: another engine claims and sends too;
    both attempts are recorded (numbers 1 and 2), the late one does not undo the delivery."""
    # The first request is answered 500 only once the second one has arrived.
    receiver.plan("/hook", [receiver.hold(500, lambda: len(receiver.received()) >= 2), 200])
    one = faulty_engine(webhook_settings=fast(lease_seconds=0.5, timeout_seconds=120))
    one.store.fail("claim_deliveries", times=10**9, after=1)  # type: ignore[attr-defined]
    two = make_engine(webhook_settings=fast(lease_seconds=600))
    hook = await one.webhooks.create({"url": receiver.url(), "events": ["workflow.created"]})
    async with one:  # claims once, for half a second, and sends: the answer is held
        await make_workflow(one, active=False)
        await receiver.wait_for(1, timeout=DEADLINE)
        async with two:  # takes the delivery over once that lease has expired
            first, second = await receiver.wait_for(2, timeout=DEADLINE)
            assert first.headers["webhook-id"] == second.headers["webhook-id"]

            def both_recorded(items: list[Delivery]) -> bool:
                return bool(items) and len(items[0].attempts) == 2

            (delivery,) = await until_deliveries(two, hook.id, both_recorded, timeout=DEADLINE)
    assert sorted(a.attempt for a in delivery.attempts) == [1, 2]
    assert sorted(a.status_code or 0 for a in delivery.attempts) == [200, 500]
    assert delivery.attempt_count == 2
    assert delivery.status is DeliveryStatus.SUCCEEDED
    assert len(receiver.received()) == 2


# -- the rule, for any interleaving -----------------------------------------------------------------


class ClaimsAndRecords(RuleBasedStateMachine):
    """Nodes claim one delivery (leases that may end at once) and record attempts in any order.

    Invariants: attempts are numbered 1..n without gaps, one per record of a claim (a
    repeated record adds none); the delivery moves on only by its current claim.
    """

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="abi-claims-"))
        self.store = SQLiteStore(self.dir / "claims.db")
        self.clock = utcnow()
        self.recorded: set[int] = set()
        self.current: int | None = None  # the claim that holds the delivery
        self.held = False  # ... under a lease that has not ended
        self.finished = False

    @initialize()
    def delivery(self) -> None:
        (delivery,) = _deliveries_of(self.store, _hook_and_events(self.store, 1))
        self.delivery_id = delivery.id

    @rule(target=jobs, node=st.sampled_from(["a", "b", "c"]), expiring=st.booleans())
    def claim(self, node: str, expiring: bool) -> Any:
        self.clock += timedelta(seconds=10)  # past a lease that ended at once, and a retry
        lease = self.clock if expiring else self.clock + timedelta(hours=1)
        found = self.store.claim_deliveries(node, self.clock, lease, 10)
        if self.finished or self.held:
            assert found == []
            return None
        (job,) = found
        self.current, self.held = job.claim, not expiring
        return (node, job)

    @rule(entry=consumes(jobs), code=st.sampled_from([200, 500]), repeat=st.booleans())
    def record(self, entry: tuple[str, DeliveryJob] | None, code: int, repeat: bool) -> None:
        if entry is None:
            return
        node, job = entry
        assert job.claim is not None
        holds = job.claim == self.current and not self.finished
        outcome = _outcome(job, code, retry_at=self.clock)  # due again at the next claim
        assert self.store.record_attempts(node, [outcome]) == (1 if holds else 0)
        if repeat:  # a retried write of the same attempt
            assert self.store.record_attempts(node, [outcome]) == 0
        self.recorded.add(job.claim)
        if holds:
            self.current, self.held = None, False
            self.finished = code == 200

    @invariant()
    def numbered_once_each(self) -> None:
        if not hasattr(self, "delivery_id"):
            return
        delivery = self.store.get_delivery(self.delivery_id)
        assert delivery is not None
        assert [a.attempt for a in delivery.attempts] == list(range(1, len(self.recorded) + 1))
        assert delivery.attempt_count == len(self.recorded)
        assert (delivery.status is DeliveryStatus.SUCCEEDED) == self.finished

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _deliveries_of(store: Store, event_ids: list[str]) -> list[Delivery]:
    (hook,), _ = store.list_webhooks(1, 1)
    items, _ = store.list_deliveries(hook.id, 1, 100)
    return [d for d in items if d.event_id in event_ids]


TestClaimsAndRecords = ClaimsAndRecords.TestCase
TestClaimsAndRecords.settings = settings(
    max_examples=40, stateful_step_count=15, suppress_health_check=[HealthCheck.too_slow]
)


def test_streaks_log_once_and_back_off_within_bounds(caplog: pytest.LogCaptureFixture) -> None:
    """A streak of failures logs one line (no traceback), waits double each time up to the
    bound, and one success logs the end and starts the waits over."""
    from abi_engine.runtime.delivery import Streaks

    caplog.set_level(logging.INFO, logger=LOGGER)
    streaks = Streaks(first=0.05, most=5.0)
    error = OSError("connection reset\nby peer")
    waits = [streaks.failed("fan-out", error) for _ in range(12)]
    for n, wait in enumerate(waits):
        ceiling = min(5.0, 0.05 * 2**n)
        assert 0.75 * ceiling <= wait <= ceiling
    assert max(waits) <= 5.0
    streaks.failed("recording", error)  # another kind of work: its own streak
    streaks.worked("fan-out")
    streaks.worked("fan-out")  # no streak to end: nothing logged
    assert streaks.failed("fan-out", error) <= 0.05
    messages = [r.getMessage() for r in _worker_lines(caplog)]
    assert messages == [
        "webhook delivery: fan-out failed (OSError: connection reset by peer);"
        " retrying with backoff until it works",
        "webhook delivery: recording failed (OSError: connection reset by peer);"
        " retrying with backoff until it works",
        "webhook delivery: fan-out works again after 12 failures",
        "webhook delivery: fan-out failed (OSError: connection reset by peer);"
        " retrying with backoff until it works",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and r.exc_info]
