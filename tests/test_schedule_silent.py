"""Schedules that never fail silently, know their logical time, and pause with a reason (#17).

Point 7: a firing that cannot start an execution (a required integration
missing, the workflow inactive) is counted (``failed_count``, ``last_error``),
due times missed by the misfire policy are counted (``missed_count``) and
emitted (``schedule.missed``), and ``max_consecutive_failures`` pauses the
schedule with a ``paused_reason``. Point 8: a scheduled execution carries its
due time (``scheduled_for``, ``ctx.scheduled_for``). Point 6: disabling records
who, why and when; enabling takes ``resume``: ``from_now``, ``run_once`` or
``catch_up``, and the history says what passed while paused. Both backends.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_plugins.helpers import DatabaseFactory, EngineFactory, new_workflow
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowScheduler
from abi_engine import Engine, ExecutionStatus, Scope, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidParameters, InvalidRequest, InvalidSchedule
from abi_engine.events import Event
from abi_engine.ids import format_time, utcnow
from abi_engine.schedule_math import Timing, jittered, logical_due, next_cron, upcoming
from abi_engine.storage.records import ExecutionQuery

pytestmark = pytest.mark.anyio


class Logical(WorkflowType):
    """One step returning the execution's ``ctx.scheduled_for``."""

    name = "test_logical"
    description = "Returns its logical due time"

    @step
    async def report(self, ctx: StepContext) -> Any:
        when = ctx.scheduled_for
        return {"scheduled_for": None if when is None else format_time(when)}


class Plugin:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Logical)

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.type == kind]


@pytest.fixture
def plugin() -> Plugin:
    return Plugin()


@pytest.fixture
async def eng(make: EngineFactory, plugin: Plugin) -> AsyncIterator[Engine]:
    engine = make(plugins=(plugin,))
    async with engine:
        yield engine


def every_minute(**fields: Any) -> dict[str, Any]:
    return {
        "name": "every minute",
        "schedule_type": "interval",
        "interval_value": 60,
        "interval_unit": "seconds",
        **fields,
    }


async def needs_crm(engine: Engine) -> str:
    return await new_workflow(
        engine,
        "custom",
        configuration={"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
        integrations=[{"id": "int_crm", "required": True}],
    )


async def outcomes(engine: Engine, schedule_id: str) -> list[tuple[str, str | None]]:
    """(outcome, detail) of the history, oldest first."""
    page = await engine.schedules.history(schedule_id, page_size=100)
    return [(h.outcome, h.detail) for h in reversed(page.items)]


def started(engine: Engine, schedule_id: str) -> list[Any]:
    records, _ = engine.store.list_executions(
        ExecutionQuery(schedule_id=schedule_id, page_size=100)
    )
    return sorted(records, key=lambda r: r.scheduled_for)


# -- point 7: never silent -------------------------------------------------------------------


async def test_failures_in_a_row_pause_the_schedule(eng: Engine, plugin: Plugin) -> None:
    """Each failed firing counts (failed_count, consecutive_failures, last_error); the third
    in a row pauses the schedule (max_consecutive_failures 3) with a paused_reason and a
    history line; it fires no more until enabled."""
    schedule = await eng.schedules.create(
        await needs_crm(eng), every_minute(max_consecutive_failures=3)
    )
    assert schedule.max_consecutive_failures == 3
    due = schedule.next_execution
    for expected in (1, 2):
        assert due is not None
        await eng.scheduler.tick(due)
        current = await eng.schedules.get(schedule.id)
        assert (current.failed_count, current.consecutive_failures) == (expected, expected)
        assert current.enabled
        due = current.next_execution
    assert due is not None
    await eng.scheduler.tick(due)
    paused = await eng.schedules.get(schedule.id)
    assert paused.failed_count == 3
    assert paused.last_error is not None
    assert paused.last_error.code == "INTEGRATION_MISSING"
    assert paused.last_error.due_at == due
    assert not paused.enabled
    assert paused.status == "disabled"
    assert paused.next_execution is None
    assert paused.paused_by is None  # the engine paused it
    assert paused.paused_reason is not None
    assert "max_consecutive_failures 3" in paused.paused_reason
    assert "INTEGRATION_MISSING" in paused.paused_reason
    assert paused.paused_at is not None
    assert [o for o, _ in await outcomes(eng, schedule.id)] == [
        "failed",
        "failed",
        "failed",
        "paused",
    ]
    assert len(plugin.of("schedule.failed")) == 3
    await eng.scheduler.tick(due + timedelta(minutes=10))
    assert (await eng.schedules.get(schedule.id)).failed_count == 3


async def test_a_started_execution_resets_the_failures_in_a_row(eng: Engine) -> None:
    """consecutive_failures goes back to 0 when an execution starts; failed_count stays."""
    schedule = await eng.schedules.create(
        await needs_crm(eng), every_minute(max_consecutive_failures=2)
    )
    assert schedule.next_execution is not None
    await eng.scheduler.tick(schedule.next_execution)
    await eng.integrations.put("int_crm", "http", {"base_url": "https://crm.example.com"})
    once = await eng.schedules.get(schedule.id)
    assert once.next_execution is not None
    await eng.scheduler.tick(once.next_execution)
    fired = await eng.schedules.get(schedule.id)
    assert (fired.failed_count, fired.consecutive_failures) == (1, 0)
    assert fired.enabled
    assert fired.last_execution is not None


async def test_an_inactive_workflow_is_a_failed_firing(eng: Engine, plugin: Plugin) -> None:
    """A due time of an inactive workflow still says skipped_inactive in the history, and
    counts as a failure (INVALID_STATE) with a schedule.failed event."""
    workflow_id = await new_workflow(eng, "test_logical", active=False)
    schedule = await eng.schedules.create(workflow_id, every_minute())
    assert schedule.next_execution is not None
    await eng.scheduler.tick(schedule.next_execution)
    failed = await eng.schedules.get(schedule.id)
    assert failed.failed_count == 1
    assert failed.last_error is not None
    assert failed.last_error.code == "INVALID_STATE"
    assert [o for o, _ in await outcomes(eng, schedule.id)] == ["skipped_inactive"]
    [event] = plugin.of("schedule.failed")
    assert event.data["error"]["code"] == "INVALID_STATE"
    assert event.data["due_at"] == format_time(schedule.next_execution)


async def test_missed_due_times_are_counted_and_emitted(eng: Engine, plugin: Plugin) -> None:
    """Due times the misfire policy skips (run_once after a downtime) count in
    missed_count, with one schedule.missed event telling how many."""
    workflow_id = await new_workflow(eng, "test_logical")
    schedule = await eng.schedules.create(workflow_id, every_minute(misfire_policy="run_once"))
    first = schedule.next_execution
    assert first is not None
    await eng.scheduler.tick(first + timedelta(minutes=10, seconds=30))  # 11 due times came
    after = await eng.schedules.get(schedule.id)
    assert after.missed_count == 10
    assert len(started(eng, schedule.id)) == 1
    [event] = plugin.of("schedule.missed")
    assert event.data["count"] == 10
    assert event.data["schedule_id"] == schedule.id
    assert event.data["first_due_at"] == format_time(first)


async def test_max_consecutive_failures_is_checked(eng: Engine) -> None:
    """max_consecutive_failures below 1 is refused naming the field."""
    workflow_id = await new_workflow(eng, "test_logical")
    with pytest.raises(InvalidSchedule) as refused:
        await eng.schedules.create(workflow_id, every_minute(max_consecutive_failures=0))
    assert "max_consecutive_failures" in str(refused.value.details)


# -- point 8: the logical time ----------------------------------------------------------------


async def test_a_scheduled_execution_knows_its_due_time(eng: Engine) -> None:
    """The execution a firing starts stores its due time, shows it as scheduled_for, and
    its steps see it as ctx.scheduled_for, even when it runs late; a direct execution has none."""
    workflow_id = await new_workflow(eng, "test_logical")
    schedule = await eng.schedules.create(workflow_id, every_minute())
    due = schedule.next_execution
    assert due is not None
    await eng.scheduler.tick(due + timedelta(seconds=30))  # late, within the grace
    [record] = started(eng, schedule.id)
    assert record.scheduled_for == due
    done = await eng.executions.wait(record.id, 60)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.scheduled_for == due
    assert done.result == {"scheduled_for": format_time(due)}
    direct = await eng.executions.execute(workflow_id, {}, timeout_seconds=60)
    assert direct.scheduled_for is None
    assert direct.result == {"scheduled_for": None}


async def test_catch_up_runs_each_know_their_own_due_time(eng: Engine) -> None:
    """Each run of a catch-up carries its own due time, oldest first (the latest three
    misfires, then the one on time)."""
    workflow_id = await new_workflow(eng, "test_logical")
    schedule = await eng.schedules.create(
        workflow_id, every_minute(misfire_policy="catch_up", catch_up_limit=3)
    )
    first = schedule.next_execution
    assert first is not None
    await eng.scheduler.tick(first + timedelta(minutes=5, seconds=30))
    whens = [r.scheduled_for for r in started(eng, schedule.id)]
    assert whens == [first + timedelta(minutes=m) for m in (2, 3, 4, 5)]


# -- point 6: pause with a reason, resume by choice --------------------------------------------


async def paused_schedule(eng: Engine, make_user: Any, **fields: Any) -> Any:
    """A schedule due every minute since an hour ago, paused by usr_ops for maintenance."""
    workflow_id = await new_workflow(eng, "test_logical")
    since = format_time(utcnow() - timedelta(hours=1, seconds=30))
    schedule = await eng.schedules.create(workflow_id, every_minute(start_time=since, **fields))
    actor = make_user("usr_ops", [Scope.SCHEDULES_WRITE])
    paused = await eng.schedules.update(
        schedule.id, {"enabled": False, "paused_reason": "maintenance"}, actor=actor
    )
    return schedule, paused


@pytest.fixture
def make_user(eng: Engine) -> Callable[..., Any]:
    def make(user: str, scopes: list[Scope]) -> Any:
        return eng.tokens.authenticate(eng.tokens.create_token(user, scopes))

    return make


async def _back_in_time(eng: Engine, schedule_id: str, due_times: int) -> None:
    """Pretend the schedule was paused ``due_times`` due times ago (its paused_at, in the store)."""
    record = eng.store.get_schedule(schedule_id)
    assert record is not None
    assert record.paused_at is not None
    assert record.next_due is not None
    # (next_due is the first due time after now, one minute after the last one)
    back = record.next_due - timedelta(minutes=due_times + 1, milliseconds=-1)
    since = int(back.timestamp() * 1000)
    eng.store.write(  # type: ignore[attr-defined]
        lambda conn: conn.execute(
            "UPDATE schedules SET paused_at = ? WHERE id = ?", (since, schedule_id)
        )
    )


async def test_disabling_records_who_why_and_when(eng: Engine, make_user: Any) -> None:
    """A disabled schedule shows paused_by (the token's user), paused_reason and paused_at;
    enabling again clears them."""
    before = utcnow()
    _, paused = await paused_schedule(eng, make_user)
    assert (paused.enabled, paused.paused_by, paused.paused_reason) == (
        False,
        "usr_ops",
        "maintenance",
    )
    assert paused.paused_at is not None
    assert paused.paused_at >= before - timedelta(seconds=1)
    again = await eng.schedules.update(paused.id, {"enabled": True})
    assert (again.paused_by, again.paused_reason, again.paused_at) == (None, None, None)
    [(outcome, detail)] = await outcomes(eng, paused.id)
    assert outcome == "resumed"
    assert detail is not None
    assert detail.startswith("from_now: 0 due time(s)")


@pytest.mark.parametrize(
    ("resume", "runs", "detail"),
    [
        ("from_now", 0, "from_now: 5 due time(s) passed while paused"),
        ("run_once", 1, "run_once: 5 due time(s) passed while paused"),
        ("catch_up", 3, "catch_up: 5 due time(s) passed while paused"),
    ],
)
async def test_resume_modes(
    eng: Engine, make_user: Any, resume: str, runs: int, detail: str
) -> None:
    """Paused for five due times, then enabled: from_now runs none (the history names them),
    run_once runs one, catch_up the latest catch_up_limit (3); each knows its due time."""
    schedule, _ = await paused_schedule(eng, make_user, catch_up_limit=3)
    await _back_in_time(eng, schedule.id, due_times=5)
    resumed = await eng.schedules.update(schedule.id, {"enabled": True, "resume": resume})
    assert resumed.enabled
    assert resumed.next_execution is not None
    now = utcnow()
    if resume != "from_now":
        assert resumed.next_execution < now
    await eng.scheduler.tick(now)
    runs_of = started(eng, schedule.id)
    assert len(runs_of) == runs
    whens = [r.scheduled_for for r in runs_of]
    assert whens == sorted(whens)
    assert all(w <= now for w in whens)
    lines = await outcomes(eng, schedule.id)
    assert lines[0][0] == "resumed"
    assert lines[0][1] is not None
    assert lines[0][1].startswith(detail)
    after = await eng.schedules.get(schedule.id)
    assert after.missed_count == 0  # passed while paused: told by the history, not "missed"
    assert after.next_execution is not None
    assert after.next_execution > now
    assert eng.store.get_schedule(schedule.id).resume_policy is None  # type: ignore[union-attr]


async def test_resume_is_checked(eng: Engine, make_user: Any) -> None:
    """An unknown resume mode is refused naming the field."""
    schedule, _ = await paused_schedule(eng, make_user)
    with pytest.raises(InvalidSchedule) as refused:
        await eng.schedules.update(schedule.id, {"enabled": True, "resume": "sometime"})
    assert "resume" in str(refused.value.details)


# -- over REST and the Python API ---------------------------------------------------------------


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


@pytest.mark.parametrize("way", WAYS)
def test_pause_and_resume_through_the_python_api(api: Served, way: str) -> None:
    """WorkflowScheduler.pause_schedule / resume_schedule, embedded and remote; the JSON
    shows the counters and the pause fields."""
    scheduler = api.facade(WorkflowScheduler, way)
    client = api.client()
    workflow = client.post(
        "/api/v1/workflows",
        json={
            "name": "w",
            "type": "custom",
            "configuration": {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
        },
    )
    assert workflow.status_code == 201, workflow.text
    workflow_id = workflow.json()["data"]["id"]
    schedule = scheduler.create_schedule(
        workflow_id,
        name="nightly",
        schedule_type="cron",
        cron_expression="0 0 * * *",
        max_consecutive_failures=5,
    )
    paused = scheduler.pause_schedule(schedule.id, reason="quarter close")
    assert (paused.enabled, paused.paused_reason) == (False, "quarter close")
    assert paused.paused_by is not None
    assert paused.paused_by.startswith("usr_")
    data = client.get(f"/api/v1/workflow_schedules/{schedule.id}").json()["data"]
    for key in ("failed_count", "missed_count", "last_error", "max_consecutive_failures"):
        assert key in data
    assert data["paused_reason"] == "quarter close"
    assert data["max_consecutive_failures"] == 5
    resumed = scheduler.resume_schedule(schedule.id, resume="run_once")
    assert resumed.enabled
    assert resumed.paused_reason is None
    bad = client.put(
        f"/api/v1/workflow_schedules/{schedule.id}", json={"enabled": True, "resume": "later"}
    )
    assert bad.status_code == 400, bad.text


# -- point 2: preview -----------------------------------------------------------------------------


async def test_preview_of_a_saved_schedule(eng: Engine) -> None:
    """The next N due times from next_execution, in UTC and in the zone; count is bounded."""
    workflow_id = await new_workflow(eng, "test_logical")
    schedule = await eng.schedules.create(
        workflow_id,
        {
            "name": "nightly",
            "schedule_type": "cron",
            "cron_expression": "30 2 * * *",
            "timezone": "Europe/Berlin",
        },
    )
    preview = await eng.schedules.preview(schedule.id, count=5)
    assert preview.schedule_id == schedule.id
    assert preview.timezone == "Europe/Berlin"
    assert len(preview.items) == 5
    assert preview.items[0].due_at == schedule.next_execution
    for item in preview.items:
        assert item.local_time[11:19] in ("02:30:00", "03:00:00")
        assert item.local_time[19:] in ("+01:00", "+02:00")
    dues = [i.due_at for i in preview.items]
    assert dues == sorted(dues)
    for count in (0, 101, "x"):
        with pytest.raises(InvalidRequest) as refused:
            await eng.schedules.preview(schedule.id, count=count)
        assert refused.value.details["field"] == "count"


async def test_preview_flags_dst_gap_and_fold(eng: Engine) -> None:
    """02:30 in Berlin does not exist on 2026-03-29 (runs at 03:00, shifted_by_gap) and
    happens twice on 2026-10-25 (repeated_by_fold, first pass); an unsaved body previews."""
    body = {
        "schedule_type": "cron",
        "cron_expression": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "count": 100,
    }
    preview = await eng.schedules.preview_unsaved(body)
    assert preview.schedule_id is None
    assert len(preview.items) == 100
    items = list(preview.items)
    # The flags themselves, checked on the math of the preview (any year's changes).
    timing = Timing(kind="cron", cron_expression="30 2 * * *", timezone="Europe/Berlin")
    start = next_cron("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 27, tzinfo=UTC))
    walked = {d.date().isoformat(): (s, r) for d, s, r in upcoming(timing, start, 220)}
    assert walked["2026-03-29"] == (True, False)
    assert walked["2026-10-25"] == (False, True)
    assert sum(s or r for s, r in walked.values()) == 2
    assert all(not i.shifted_by_gap or i.local_time[11:16] == "03:00" for i in items)


async def test_preview_of_an_unsaved_body_is_checked_like_a_create(eng: Engine) -> None:
    """A bad cron expression or refused parameters: the errors a create would give."""
    with pytest.raises(InvalidSchedule) as refused:
        await eng.schedules.preview_unsaved({"schedule_type": "cron", "cron_expression": "nope"})
    assert refused.value.details["field"] == "cron_expression"
    workflow_id = await new_workflow(eng, "test_typed")
    with pytest.raises(InvalidParameters) as wrong:
        await eng.schedules.preview_unsaved(
            {
                "schedule_type": "interval",
                "interval_value": 5,
                "interval_unit": "minutes",
                "workflow_id": workflow_id,
                "parameters": {"customer_id": "c1", "quantity": 1, "bogus": 1},
            }
        )
    assert wrong.value.details["field"] == "parameters.bogus"
    ok = await eng.schedules.preview_unsaved(
        {"schedule_type": "interval", "interval_value": 5, "interval_unit": "minutes", "count": 3}
    )
    assert [b.due_at - a.due_at for a, b in itertools.pairwise(ok.items)] == [
        timedelta(minutes=5)
    ] * 2


@pytest.mark.parametrize("way", WAYS)
def test_preview_over_rest_and_the_python_api(api: Served, way: str) -> None:
    """GET .../preview?count=N and POST /workflow_schedules/preview, through REST and
    WorkflowScheduler (embedded and remote); count 0 or 101 is 400 INVALID_REQUEST."""
    scheduler = api.facade(WorkflowScheduler, way)
    client = api.client()
    workflow = client.post(
        "/api/v1/workflows",
        json={
            "name": "w",
            "type": "custom",
            "configuration": {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
        },
    )
    workflow_id = workflow.json()["data"]["id"]
    schedule = scheduler.create_schedule(
        workflow_id,
        name="hourly",
        schedule_type="cron",
        cron_expression="0 * * * *",
        timezone="America/New_York",
    )
    answer = client.get(f"/api/v1/workflow_schedules/{schedule.id}/preview?count=3")
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["schedule_id"] == schedule.id
    assert data["timezone"] == "America/New_York"
    assert [set(i) for i in data["items"]] == [
        {"due_at", "local_time", "run_at", "shifted_by_gap", "repeated_by_fold"}
    ] * 3
    assert data["items"][0]["due_at"] == format_time(schedule.next_execution)
    for count in ("0", "101", "many"):
        bad = client.get(f"/api/v1/workflow_schedules/{schedule.id}/preview?count={count}")
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "INVALID_REQUEST"
        assert bad.json()["error"]["details"]["field"] == "count"
    assert len(scheduler.preview_schedule(schedule.id, count=7).items) == 7
    unsaved = client.post(
        "/api/v1/workflow_schedules/preview",
        json={"schedule_type": "interval", "interval_value": 1, "interval_unit": "hours"},
    )
    assert unsaved.status_code == 200, unsaved.text
    assert len(unsaved.json()["data"]["items"]) == 10
    assert unsaved.json()["data"]["schedule_id"] is None
    refused = client.post(
        "/api/v1/workflow_schedules/preview",
        json={"schedule_type": "cron", "cron_expression": "0 * * * *", "count": 1000},
    )
    assert refused.status_code == 400, refused.text
    assert "count" in refused.text
    preview = scheduler.preview(
        count=2, schedule_type="cron", cron_expression="0 0 * * *", workflow_id=workflow_id
    )
    assert len(preview.items) == 2
    assert preview.items[0].local_time.endswith("T00:00:00+00:00")


# -- point 1 (part): end_time and max_runs for every type ------------------------------------------


async def test_max_runs_completes_the_schedule(eng: Engine) -> None:
    """max_runs 3: one run, then a catch-up of five starts only the two left (the oldest
    of those planned); runs_count says so, the schedule is completed with no next due
    time; preview lists at most what is left."""
    workflow_id = await new_workflow(eng, "test_logical")
    schedule = await eng.schedules.create(
        workflow_id,
        every_minute(
            misfire_policy="catch_up", catch_up_limit=5, max_runs=3, overlap_policy="allow"
        ),
    )
    assert len((await eng.schedules.preview(schedule.id, count=10)).items) == 3
    first = schedule.next_execution
    assert first is not None
    await eng.scheduler.tick(first)
    once = await eng.schedules.get(schedule.id)
    assert (once.runs_count, once.status) == (1, "active")
    assert len((await eng.schedules.preview(schedule.id, count=10)).items) == 2
    await eng.scheduler.tick(first + timedelta(minutes=6, seconds=30))
    done = await eng.schedules.get(schedule.id)
    assert done.runs_count == 3
    assert done.status == "completed"
    assert done.next_execution is None
    assert len(started(eng, schedule.id)) == 3
    await eng.scheduler.tick(first + timedelta(minutes=30))
    assert len(started(eng, schedule.id)) == 3
    more = await eng.schedules.update(schedule.id, {"max_runs": 4})  # goes on, from now
    assert (more.status, more.runs_count) == ("active", 3)
    assert more.next_execution is not None
    assert more.next_execution > utcnow()


async def test_end_time_ends_a_cron_schedule(eng: Engine) -> None:
    """No due time after end_time: the due times up to it fire, then the schedule is
    completed; an end_time in the past, or before start_time, is refused naming it."""
    workflow_id = await new_workflow(eng, "test_logical")
    now = utcnow()
    end = now + timedelta(minutes=2, seconds=30)
    schedule = await eng.schedules.create(
        workflow_id,
        {
            "name": "a few",
            "schedule_type": "cron",
            "cron_expression": "* * * * *",
            "end_time": format_time(end),
        },
    )
    assert schedule.end_time is not None
    previewed = (await eng.schedules.preview(schedule.id, count=10)).items
    assert 2 <= len(previewed) <= 3
    assert all(i.due_at <= end for i in previewed)
    assert schedule.next_execution is not None
    await eng.scheduler.tick(end + timedelta(seconds=20))  # within the grace of the last
    done = await eng.schedules.get(schedule.id)
    assert done.status == "completed"
    assert done.next_execution is None
    assert all(r.scheduled_for <= end for r in started(eng, schedule.id))
    for bad in (
        {"end_time": format_time(now - timedelta(hours=1))},
        {
            "start_time": format_time(now + timedelta(hours=2)),
            "end_time": format_time(now + timedelta(hours=1)),
        },
    ):
        with pytest.raises(InvalidSchedule) as refused:
            await eng.schedules.create(workflow_id, every_minute(**bad))
        assert refused.value.details["field"] == "end_time"


# -- point 5: jitter ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    every=st.integers(min_value=1, max_value=86_400),
    jitter=st.floats(min_value=0, max_value=86_400, allow_nan=False),
    step=st.integers(min_value=0, max_value=10_000),
    schedule_id=st.text(min_size=1, max_size=20),
)
def test_jitter_is_stable_bounded_and_invertible(
    every: int, jitter: float, step: int, schedule_id: str
) -> None:
    """A due time's delay is the same at every call (so two processes agree), below
    jitter_seconds and below half the way to the next due time, and the due time a
    delayed start stands for is found again from it."""
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    timing = Timing(kind="interval", anchor=anchor, every_seconds=every)
    due = anchor + timedelta(seconds=every * step)
    start = jittered(timing, schedule_id, due, jitter)
    assert start is not None
    assert start == jittered(timing, schedule_id, due, jitter)
    delay = start - due
    assert timedelta(0) <= delay <= timedelta(seconds=jitter)
    assert delay <= timedelta(seconds=every) / 2
    assert logical_due(timing, start, jitter) == due


async def test_jitter_delays_runs_but_not_their_due_time(eng: Engine) -> None:
    """With jitter_seconds, next_execution is the due time plus its stable delay (preview's
    run_at); the run started then carries the due time itself (scheduled_for, history)."""
    workflow_id = await new_workflow(eng, "test_logical")
    schedule = await eng.schedules.create(
        workflow_id, every_minute(jitter_seconds=20, overlap_policy="allow")
    )
    assert schedule.jitter_seconds == 20
    [item, following] = (await eng.schedules.preview(schedule.id, count=2)).items
    assert schedule.next_execution == item.run_at
    assert timedelta(0) <= item.run_at - item.due_at <= timedelta(seconds=20)
    assert following.due_at - item.due_at == timedelta(minutes=1)
    await eng.scheduler.tick(item.run_at)
    [record] = started(eng, schedule.id)
    assert record.scheduled_for == item.due_at
    after = await eng.schedules.get(schedule.id)
    assert after.next_execution == following.run_at
    page = await eng.schedules.history(schedule.id)
    assert [(h.outcome, h.due_at) for h in page.items] == [("fired", item.due_at)]
    assert after.missed_count == 0


async def test_excluded_dates_do_not_run(eng: Engine) -> None:
    """A due time on an excluded date (in the schedule's zone) does not run (history
    skipped_excluded) and the schedule goes on; preview passes over it; a date not written
    YYYY-MM-DD is refused naming it."""
    workflow_id = await new_workflow(eng, "test_logical")
    body = {"name": "noon", "schedule_type": "cron", "cron_expression": "0 12 * * *"}
    probe = await eng.schedules.preview_unsaved({**body, "count": 3})
    skipped = probe.items[1].due_at
    schedule = await eng.schedules.create(
        workflow_id, {**body, "exclude_dates": [skipped.date().isoformat()]}
    )
    assert schedule.exclude_dates == [skipped.date().isoformat()]
    shown = [i.due_at for i in (await eng.schedules.preview(schedule.id, count=3)).items]
    assert shown == [probe.items[0].due_at, probe.items[2].due_at, shown[2]]
    assert shown[2] - probe.items[2].due_at == timedelta(days=1)
    await eng.scheduler.tick(probe.items[0].due_at)
    await eng.scheduler.tick(skipped)
    assert [r.scheduled_for for r in started(eng, schedule.id)] == [probe.items[0].due_at]
    lines = [(o, d) for o, d in await outcomes(eng, schedule.id)]
    assert lines[-1][0] == "skipped_excluded"
    after = await eng.schedules.get(schedule.id)
    assert after.next_execution == probe.items[2].due_at
    for bad in (["2026-13-01"], ["tomorrow"], ["2026-1-5"]):
        with pytest.raises(InvalidSchedule) as refused:
            await eng.schedules.create(workflow_id, {**body, "exclude_dates": bad})
        assert refused.value.details["field"] == "exclude_dates[0]"
