"""Schedules: CRUD in the seed's shapes, validation, events, firing, misfire and overlap
policies, the REST operations, the seed's Python block, and ticks at scale.

Downtime is simulated by calling ``engine.scheduler.tick(now=...)`` with a
``now`` long after several due times (no sleeping), and once for real by
stopping the engine and starting another on the same database.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import httpx
import pytest
import uvicorn
from abi_asgi import create_app
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    EngineFactory,
    engines,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus, Scope, hookimpl
from abi_engine.converter import unstructure
from abi_engine.errors import (
    InvalidRequest,
    InvalidSchedule,
    ScheduleNotFound,
    WorkflowNotFound,
)
from abi_engine.events import Event
from abi_engine.ids import format_time, parse_time, utcnow
from abi_engine.models import Page, Schedule, ScheduleHistoryEntry, ScheduleSummary
from abi_engine.storage.records import ExecutionQuery

pytestmark = pytest.mark.anyio

#: The seed's "Schedule Workflow" request body.
SEED_CREATE = {
    "name": "Daily Feedback Analysis",
    "description": "Runs feedback analysis every night at midnight",
    "schedule_type": "cron",
    "cron_expression": "0 0 * * *",
    "parameters": {"source": "daily_report", "include_recommendations": True},
    "enabled": True,
    "timezone": "UTC",
}
#: The seed's "Update Schedule" request body.
SEED_UPDATE = {
    "name": "Daily Feedback Analysis",
    "description": "Runs feedback analysis every night at 2 AM",
    "cron_expression": "0 2 * * *",
    "parameters": {
        "source": "daily_report",
        "include_recommendations": True,
        "generate_report": True,
    },
    "enabled": True,
}
#: Keys of the seed's create answer.
SEED_KEYS = {
    "id",
    "workflow_id",
    "name",
    "description",
    "schedule_type",
    "cron_expression",
    "parameters",
    "enabled",
    "timezone",
    "next_execution",
    "created_at",
    "updated_at",
    "created_by",
}
#: Keys of the seed's list items.
SEED_LIST_KEYS = {
    "id",
    "workflow_id",
    "workflow_name",
    "name",
    "description",
    "schedule_type",
    "cron_expression",
    "enabled",
    "next_execution",
    "created_at",
    "updated_at",
}
#: What the engine shows beyond the seed (policies, status, the zone on list items, the
#: fields of other schedule types, last execution and failed firings: null when empty).
EXTRA_KEYS = {
    "workflow_name",
    "status",
    "misfire_policy",
    "misfire_grace_seconds",
    "catch_up_limit",
    "overlap_policy",
    "priority",
    "interval_value",
    "interval_unit",
    "execution_time",
    "start_time",
    "last_execution",
    "failed_firings",
    "last_failure",
    # Never silent, paused with a reason (#17).
    "failed_count",
    "missed_count",
    "last_error",
    "consecutive_failures",
    "max_consecutive_failures",
    "paused_by",
    "paused_reason",
    "paused_at",
    "end_time",
    "max_runs",
    "runs_count",
    "jitter_seconds",
    "exclude_dates",
    # Daylight-saving choices (#17).
    "on_gap",
    "on_fold",
    # RRULE schedules (#17).
    "rrule",
    "exclude_rrule",
}
ZONE_KOLKATA = ZoneInfo("Asia/Kolkata")
LAST_EXECUTION_KEYS = {"execution_id", "status", "started_at", "completed_at"}
#: A trivial ``custom`` workflow: one transform step echoing a parameter.
TRANSFORM = {
    "steps": [
        {"name": "echo", "action": "transform", "expressions": {"source": "parameters['source']"}}
    ]
}


class Recorder:
    """A test plugin keeping every event it observes."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)

    def types(self, prefix: str = "schedule.") -> list[str]:
        return [e.type for e in self.events if e.type.startswith(prefix)]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def eng(make: EngineFactory, recorder: Recorder) -> AsyncIterator[Engine]:
    """A running engine (test types, custom type, an event recorder) on a fresh SQLite file."""
    engine = make(plugins=(recorder,))
    async with engine:
        yield engine


async def custom_workflow(engine: Engine, *, active: bool = True, name: str = "Echo") -> str:
    return await new_workflow(engine, "custom", active=active, configuration=TRANSFORM, name=name)


async def history(engine: Engine, schedule_id: str) -> list[ScheduleHistoryEntry]:
    """The schedule's history, oldest first."""
    page = await engine.schedules.history(schedule_id, page_size=100)
    return list(reversed(page.items))


def outcomes(entries: list[ScheduleHistoryEntry]) -> list[str]:
    return [e.outcome for e in entries]


def executions_of(engine: Engine, schedule_id: str) -> list[tuple[str, str]]:
    """(execution id, status) of the executions the schedule started, oldest first
    (``"%"``: of every schedule)."""
    found: list[Any] = []
    page = 1
    while True:
        records, total = engine.store.list_executions(ExecutionQuery(page=page, page_size=100))
        found.extend(r for r in records if r.schedule_id is not None)
        if page * 100 >= total:
            break
        page += 1
    found.sort(key=lambda r: (r.created_at, r.id))
    return [(r.id, r.status.value) for r in found if schedule_id in ("%", r.schedule_id)]


def interval(seconds: int = 60, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": fields.pop("name", f"every {seconds}s"),
        "schedule_type": "interval",
        "interval_value": seconds,
        "interval_unit": "seconds",
    }
    body.update(fields)
    return body


def next_midnight(after: datetime) -> datetime:
    return datetime(after.year, after.month, after.day, tzinfo=UTC) + timedelta(days=1)


# -- CRUD ---------------------------------------------------------------------------------------


async def test_create_answers_in_the_seed_shape(eng: Engine, make_principal: Any) -> None:
    """Creating with the seed's body answers the seed's fields, next_execution and created_by."""
    wf = await custom_workflow(eng)
    actor = make_principal("usr_987654321", [Scope.SCHEDULES_WRITE])
    before = utcnow()
    schedule = await eng.schedules.create(wf, SEED_CREATE, actor=actor)
    data = unstructure(schedule)
    assert SEED_KEYS <= set(data) <= SEED_KEYS | EXTRA_KEYS
    assert data["id"].startswith("sched_")
    assert data["workflow_id"] == wf
    for key, value in SEED_CREATE.items():
        assert data[key] == value
    assert data["created_by"] == "usr_987654321"
    assert parse_time(data["next_execution"]) == next_midnight(before)
    assert data["created_at"] == data["updated_at"]
    assert data["created_at"].endswith("Z")
    assert data["status"] == "active"
    assert (data["misfire_policy"], data["overlap_policy"]) == ("run_once", "skip")


async def test_get_shows_workflow_name_and_last_execution(eng: Engine) -> None:
    """get() has workflow_name and, once fired, last_execution {execution_id, status, started_at, completed_at}."""
    wf = await custom_workflow(eng, name="Enhanced Customer Feedback Analysis")
    created = await eng.schedules.create(wf, interval(60, parameters={"source": "x"}))
    fetched = await eng.schedules.get(created.id)
    assert fetched.workflow_name == "Enhanced Customer Feedback Analysis"
    assert fetched.last_execution is None
    assert unstructure(fetched)["last_execution"] is None

    assert created.next_execution is not None
    await eng.scheduler.tick(created.next_execution)
    [(execution_id, _)] = executions_of(eng, created.id)
    await wait_status(eng, execution_id, ExecutionStatus.COMPLETED)
    fetched = await eng.schedules.get(created.id)
    data = unstructure(fetched)
    assert set(data["last_execution"]) == LAST_EXECUTION_KEYS
    assert data["last_execution"]["execution_id"] == execution_id
    assert data["last_execution"]["status"] == "completed"
    assert parse_time(data["last_execution"]["started_at"]) <= parse_time(
        data["last_execution"]["completed_at"]
    )
    assert fetched.next_execution == created.next_execution + timedelta(seconds=60)


async def test_list_filters_and_pages(eng: Engine) -> None:
    """list() filters by workflow_id and enabled, pages newest first, and shows the seed's item keys."""
    wf_a = await custom_workflow(eng, name="A")
    wf_b = await custom_workflow(eng, name="B")

    async def create(wf: str, body: dict[str, Any]) -> Schedule:
        await anyio.sleep(0.002)  # "newest first" is to the millisecond
        return await eng.schedules.create(wf, body)

    a = [await create(wf_a, interval(60, name=f"a{i}")) for i in range(3)]
    off = await create(wf_a, interval(60, name="a-off", enabled=False))
    b = [await create(wf_b, interval(60, name=f"b{i}")) for i in range(2)]

    everything = await eng.schedules.list(page_size=100)
    assert isinstance(everything, Page)
    assert [s.id for s in everything.items] == [s.id for s in reversed([*a, off, *b])]
    assert all(isinstance(s, ScheduleSummary) for s in everything.items)

    of_a = await eng.schedules.list(workflow_id=wf_a)
    assert {s.id for s in of_a.items} == {s.id for s in [*a, off]}
    assert {s.workflow_name for s in of_a.items} == {"A"}
    enabled_a = await eng.schedules.list(workflow_id=wf_a, enabled=True)
    assert {s.id for s in enabled_a.items} == {s.id for s in a}
    disabled = await eng.schedules.list(enabled="false")
    assert [s.id for s in disabled.items] == [off.id]
    assert disabled.items[0].next_execution is None
    assert disabled.items[0].status == "disabled"

    page2 = await eng.schedules.list(page=2, page_size=2)
    assert [s.id for s in page2.items] == [off.id, a[2].id]
    assert unstructure(page2.pagination) == {
        "page": 2,
        "page_size": 2,
        "total_items": 6,
        "total_pages": 3,
    }
    assert (await eng.schedules.list(workflow_id="wf_nothing")).pagination.total_items == 0
    with pytest.raises(InvalidRequest):
        await eng.schedules.list(enabled="maybe")
    with pytest.raises(InvalidRequest):
        await eng.schedules.list(page_size=0)


async def test_update_with_the_seed_body_recomputes_next_execution(eng: Engine) -> None:
    """The seed's PUT body moves next_execution to 02:00 and replaces parameters; created_at stays."""
    wf = await custom_workflow(eng)
    created = await eng.schedules.create(wf, SEED_CREATE)
    before = utcnow()
    updated = await eng.schedules.update(created.id, SEED_UPDATE)
    assert updated.cron_expression == "0 2 * * *"
    assert updated.description == "Runs feedback analysis every night at 2 AM"
    assert updated.parameters == SEED_UPDATE["parameters"]
    assert updated.schedule_type.value == "cron"
    assert updated.timezone == "UTC"
    expected = datetime(before.year, before.month, before.day, 2, tzinfo=UTC)
    if expected <= before:
        expected += timedelta(days=1)
    assert updated.next_execution == expected
    assert updated.created_at == created.created_at
    assert updated.updated_at >= created.updated_at
    assert await eng.schedules.get(created.id) == updated

    # Changing only the description keeps the due time; a zone change recomputes it.
    same = await eng.schedules.update(created.id, {"description": "nightly"})
    assert same.next_execution == updated.next_execution
    zoned = await eng.schedules.update(created.id, {"timezone": "Asia/Kolkata"})
    assert zoned.next_execution is not None
    assert zoned.next_execution.astimezone(ZONE_KOLKATA).strftime("%H:%M") == "02:00"

    # Disabling hides next_execution; enabling again shows a fresh one.
    off = await eng.schedules.update(created.id, {"enabled": False})
    assert (off.enabled, off.next_execution, off.status) == (False, None, "disabled")
    on = await eng.schedules.update(created.id, {"enabled": True})
    assert on.next_execution == zoned.next_execution

    with pytest.raises(InvalidRequest) as info:
        await eng.schedules.update(created.id, {"next_execution": "2030-01-01T00:00:00Z"})
    assert info.value.details["field"] == "next_execution"
    with pytest.raises(InvalidSchedule) as bad:
        await eng.schedules.update(created.id, {"cron_expression": "0 25 * * *"})
    assert bad.value.details["field"] == "cron_expression"


async def test_delete(eng: Engine) -> None:
    """delete() answers {id, deleted: true}; the schedule is gone, its history too."""
    wf = await custom_workflow(eng)
    created = await eng.schedules.create(wf, SEED_CREATE)
    assert unstructure(await eng.schedules.delete(created.id)) == {
        "id": created.id,
        "deleted": True,
    }
    with pytest.raises(ScheduleNotFound):
        await eng.schedules.get(created.id)
    with pytest.raises(ScheduleNotFound):
        await eng.schedules.delete(created.id)
    assert (await eng.schedules.list()).items == []


async def test_unknown_schedule_is_schedule_not_found(eng: Engine) -> None:
    """get, update, delete and history of an unknown id raise SCHEDULE_NOT_FOUND (404) naming it."""
    for call in (
        eng.schedules.get("sched_missing"),
        eng.schedules.update("sched_missing", {"name": "x"}),
        eng.schedules.delete("sched_missing"),
        eng.schedules.history("sched_missing"),
    ):
        with pytest.raises(ScheduleNotFound) as info:
            await call
        assert (info.value.code, info.value.http_status) == ("SCHEDULE_NOT_FOUND", 404)
        assert info.value.details == {"schedule_id": "sched_missing"}
    with pytest.raises(WorkflowNotFound):
        await eng.schedules.create("wf_missing", SEED_CREATE)


def _future(seconds: int = 3600) -> str:
    return format_time(utcnow() + timedelta(seconds=seconds))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"schedule_type": "cron", "cron_expression": "61 * * * *"}, "cron_expression"),
        ({"schedule_type": "cron", "cron_expression": "* * * * * *"}, "cron_expression"),
        ({"schedule_type": "cron", "cron_expression": "@fortnightly"}, "cron_expression"),
        ({"schedule_type": "cron", "cron_expression": "0 0 31 2 *"}, "cron_expression"),
        ({"schedule_type": "cron"}, "cron_expression"),
        (
            {"schedule_type": "cron", "cron_expression": "0 0 * * *", "timezone": "Mars/Olympus"},
            "timezone",
        ),
        (
            {"schedule_type": "interval", "interval_value": 0, "interval_unit": "minutes"},
            "interval_value",
        ),
        (
            {"schedule_type": "interval", "interval_value": -5, "interval_unit": "minutes"},
            "interval_value",
        ),
        ({"schedule_type": "interval", "interval_value": 30}, "interval_unit"),
        (
            {"schedule_type": "interval", "interval_value": 30, "interval_unit": "weeks"},
            "interval_unit",
        ),
        ({"schedule_type": "interval", "interval_unit": "hours"}, "interval_value"),
        (
            {"schedule_type": "fixed_time", "execution_time": "2023-06-01T12:00:00Z"},
            "execution_time",
        ),
        ({"schedule_type": "fixed_time", "execution_time": "not a time"}, "execution_time"),
        ({"schedule_type": "fixed_time"}, "execution_time"),
        ({"schedule_type": "monthly", "cron_expression": "0 0 * * *"}, "schedule_type"),
        (
            {"schedule_type": "cron", "cron_expression": "0 0 * * *", "misfire_policy": "maybe"},
            "misfire_policy",
        ),
        (
            {"schedule_type": "cron", "cron_expression": "0 0 * * *", "catch_up_limit": 0},
            "catch_up_limit",
        ),
        ({"schedule_type": "cron", "cron_expression": "0 0 * * *", "name": ""}, "name"),
    ],
)
async def test_invalid_schedule_names_the_field(
    eng: Engine, body: dict[str, Any], field: str
) -> None:
    """Each invalid definition raises INVALID_SCHEDULE (400) with details.field naming the problem."""
    wf = await custom_workflow(eng)
    with pytest.raises(InvalidSchedule) as info:
        await eng.schedules.create(wf, {"name": "bad", **body})
    assert (info.value.code, info.value.http_status) == ("INVALID_SCHEDULE", 400)
    assert info.value.details["field"] == field, info.value.details
    assert (await eng.schedules.list()).items == []


async def test_events_for_each_change_and_trigger(eng: Engine, recorder: Recorder) -> None:
    """create, update, delete and a firing emit schedule.created/.updated/.triggered/.deleted."""
    wf = await custom_workflow(eng)
    created = await eng.schedules.create(wf, interval(60, parameters={"source": "ev"}))
    await eng.schedules.update(created.id, {"description": "changed"})
    assert created.next_execution is not None
    await eng.scheduler.tick(created.next_execution)
    [(execution_id, _)] = executions_of(eng, created.id)
    await eng.schedules.delete(created.id)
    assert recorder.types() == [
        "schedule.created",
        "schedule.updated",
        "schedule.triggered",
        "schedule.deleted",
    ]
    by_type = {e.type: e.data for e in recorder.events}
    assert by_type["schedule.created"]["id"] == created.id
    assert by_type["schedule.updated"]["description"] == "changed"
    assert by_type["schedule.triggered"] == {
        "schedule_id": created.id,
        "workflow_id": wf,
        "execution_id": execution_id,
        "due_at": format_time(created.next_execution),
    }
    assert by_type["schedule.deleted"]["id"] == created.id


async def test_schedule_events_follow_the_subscriptions_of_any_process(
    make: EngineFactory,
) -> None:
    """With no hook, schedule events are stored once a subscription wants them, even one
    made by another engine a moment ago (read in the write transaction, not from a cache)."""
    here = make(allow_private_urls=True)
    other = make(allow_private_urls=True)  # another process on the same database
    async with here:
        wf = await custom_workflow(here)
        await here.schedules.create(wf, interval(3600, name="before"))
        await other.webhooks.create(
            {
                "url": "http://127.0.0.1:9/hook",
                "events": ["schedule.created", "schedule.triggered", "schedule.deleted"],
            }
        )
        assert "schedule.created" not in here.events.outbox_types  # not noticed by this one yet
        after = await here.schedules.create(wf, interval(60, name="after"))
        await here.schedules.update(after.id, {"description": "not subscribed"})
        assert after.next_execution is not None
        await here.scheduler.tick(after.next_execution)
        [(execution_id, _)] = executions_of(here, after.id)
        await here.schedules.delete(after.id)
    stored = [s.event for s in here.store.events_after(0, limit=1000)]
    events = [e for e in stored if isinstance(e, Event) and e.type.startswith("schedule.")]
    assert [e.type for e in events] == [
        "schedule.created",
        "schedule.triggered",
        "schedule.deleted",
    ]
    created, triggered, deleted = events
    assert created.data == unstructure(after)
    assert triggered.data == {
        "schedule_id": after.id,
        "workflow_id": wf,
        "execution_id": execution_id,
        "due_at": format_time(after.next_execution),
    }
    assert deleted.data["id"] == after.id
    assert deleted.data["description"] == "not subscribed"
    assert len({e.id for e in events}) == 3


# -- firing -------------------------------------------------------------------------------------


async def test_interval_schedule_fires_with_its_parameters(eng: Engine) -> None:
    """A 1-second interval fires on its own; the execution carries the parameters and schedule_id."""
    wf = await custom_workflow(eng)
    schedule = await eng.schedules.create(wf, interval(1, parameters={"source": "every second"}))
    assert schedule.next_execution == schedule.created_at + timedelta(seconds=1)
    await until(lambda: len(executions_of(eng, schedule.id)) >= 2, timeout=6, what="two runs")
    first_id = executions_of(eng, schedule.id)[0][0]
    execution = await wait_status(eng, first_id, ExecutionStatus.COMPLETED)
    assert execution.parameters == {"source": "every second"}
    assert execution.result == {"source": "every second"}
    assert execution.schedule_id == schedule.id
    fetched = await eng.schedules.get(schedule.id)
    assert fetched.last_execution is not None
    assert fetched.next_execution is not None
    assert fetched.next_execution > schedule.next_execution
    assert (fetched.next_execution - schedule.created_at) % timedelta(seconds=1) == timedelta(0)
    fired = [h for h in await history(eng, schedule.id) if h.outcome == "fired"]
    assert fired[0].due_at == schedule.next_execution
    assert fired[0].execution_id == first_id
    dues = [h.due_at for h in fired if h.due_at is not None]
    assert dues == sorted(set(dues))
    assert len(dues) == len(fired)


async def test_fixed_time_fires_once_then_completed(eng: Engine) -> None:
    """A fixed_time schedule fires once at its time, then shows status completed and no next_execution."""
    wf = await custom_workflow(eng)
    at = utcnow() + timedelta(milliseconds=700)
    schedule = await eng.schedules.create(
        wf,
        {
            "name": "once",
            "schedule_type": "fixed_time",
            "execution_time": format_time(at),
            "parameters": {"source": "once"},
        },
    )
    assert schedule.next_execution == at
    await until(lambda: executions_of(eng, schedule.id), timeout=5, what="the run")
    [(execution_id, _)] = executions_of(eng, schedule.id)
    await wait_status(eng, execution_id, ExecutionStatus.COMPLETED)
    done = await eng.schedules.get(schedule.id)
    assert (done.status, done.next_execution) == ("completed", None)
    assert done.last_execution is not None
    assert done.last_execution.execution_id == execution_id
    await eng.scheduler.tick(at + timedelta(days=1))
    assert len(executions_of(eng, schedule.id)) == 1
    assert outcomes(await history(eng, schedule.id)) == ["fired"]
    # A later edit that does not change the time keeps it done, even when it echoes
    # the (now past) execution_time, as a client sending back what it read does.
    assert (await eng.schedules.update(schedule.id, {"description": "x"})).status == "completed"
    echoed = await eng.schedules.update(
        schedule.id, {"execution_time": format_time(at), "schedule_type": "fixed_time"}
    )
    assert (echoed.status, echoed.next_execution) == ("completed", None)
    with pytest.raises(InvalidSchedule) as info:
        await eng.schedules.update(schedule.id, {"execution_time": format_time(at - timedelta(1))})
    assert info.value.details["field"] == "execution_time"


async def test_disabled_schedule_does_not_fire_and_says_why(eng: Engine) -> None:
    """A disabled schedule starts nothing at its due times; history records skipped_disabled."""
    wf = await custom_workflow(eng)
    schedule = await eng.schedules.create(wf, interval(60, enabled=False))
    record = eng.store.get_schedule(schedule.id)
    assert record is not None
    assert record.next_due is not None
    await eng.scheduler.tick(record.next_due + timedelta(seconds=150))
    assert executions_of(eng, schedule.id) == []
    [entry] = await history(eng, schedule.id)
    assert entry.outcome == "skipped_disabled"
    assert entry.detail == "the schedule is disabled (3 due times)"
    # Then it is parked: no due time, nothing more recorded, until enabled again.
    parked = eng.store.get_schedule(schedule.id)
    assert parked is not None
    assert parked.next_due is None
    await eng.scheduler.tick(record.next_due + timedelta(days=1))
    assert len(await history(eng, schedule.id)) == 1
    enabled = await eng.schedules.update(schedule.id, {"enabled": True})
    assert enabled.next_execution is not None
    assert enabled.next_execution > utcnow()
    await eng.scheduler.tick(enabled.next_execution)
    # (enabling again is a line too, saying what passed while paused: #17)
    assert outcomes(await history(eng, schedule.id)) == ["skipped_disabled", "resumed", "fired"]


async def test_inactive_workflow_does_not_fire_and_says_why(eng: Engine) -> None:
    """A schedule of an inactive workflow starts nothing; history records skipped_inactive."""
    wf = await custom_workflow(eng, active=False)
    schedule = await eng.schedules.create(wf, interval(60))
    assert schedule.next_execution is not None
    await eng.scheduler.tick(schedule.next_execution)
    assert executions_of(eng, schedule.id) == []
    assert outcomes(await history(eng, schedule.id)) == ["skipped_inactive"]
    # Activated, it fires at its next due time.
    await eng.workflows.activate(wf)
    await eng.scheduler.tick(schedule.next_execution + timedelta(seconds=60))
    assert len(executions_of(eng, schedule.id)) == 1
    assert outcomes(await history(eng, schedule.id)) == ["skipped_inactive", "fired"]


async def test_deleted_workflow_disables_its_schedules(eng: Engine) -> None:
    """When its workflow is deleted, a schedule fires no more, is disabled, and says workflow_deleted."""
    wf = await custom_workflow(eng)
    schedule = await eng.schedules.create(wf, interval(60))
    await eng.workflows.delete(wf)
    assert schedule.next_execution is not None
    await eng.scheduler.tick(schedule.next_execution + timedelta(minutes=10))
    assert executions_of(eng, schedule.id) == []
    fetched = await eng.schedules.get(schedule.id)
    assert (fetched.enabled, fetched.next_execution) == (False, None)
    [entry] = await history(eng, schedule.id)
    assert entry.outcome == "workflow_deleted"
    await eng.scheduler.tick(schedule.next_execution + timedelta(days=1))
    assert len(await history(eng, schedule.id)) == 1


# -- misfires -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "limit", "runs", "skipped"),
    [
        ("skip", 10, 0, 10),
        ("run_once", 10, 1, 9),
        ("catch_up", 3, 3, 7),
        ("catch_up", 20, 10, 0),
    ],
)
async def test_misfire_policies_after_downtime(
    eng: Engine, policy: str, limit: int, runs: int, skipped: int
) -> None:
    """Ten due times missed: skip runs none, run_once one, catch_up min(missed, catch_up_limit)."""
    wf = await custom_workflow(eng)
    schedule = await eng.schedules.create(
        wf,
        interval(
            60,
            misfire_policy=policy,
            catch_up_limit=limit,
            misfire_grace_seconds=5,
            parameters={"source": "m"},
        ),
    )
    first = schedule.next_execution
    assert first is not None
    now = first + timedelta(minutes=9, seconds=30)  # due times first .. first+9min, all late
    await eng.scheduler.tick(now)
    entries = await history(eng, schedule.id)
    fired = [e for e in entries if e.outcome == "fired"]
    assert len(fired) == runs
    assert len(executions_of(eng, schedule.id)) == runs
    # The runs kept are the latest due times, in order.
    assert [e.due_at for e in fired] == [
        first + timedelta(minutes=9 - i) for i in reversed(range(runs))
    ]
    misfires = [e for e in entries if e.outcome == "skipped_misfire"]
    if skipped:
        [entry] = misfires
        assert entry.due_at == first
        assert entry.detail == f"{skipped} due time(s) missed ({policy})"
    else:
        assert misfires == []
    after = await eng.schedules.get(schedule.id)
    assert after.next_execution == first + timedelta(minutes=10)
    # A second tick at the same instant does nothing more.
    await eng.scheduler.tick(now)
    assert len(executions_of(eng, schedule.id)) == runs


async def test_late_within_grace_simply_runs(eng: Engine) -> None:
    """A due time late by less than misfire_grace_seconds runs, even with the skip policy."""
    wf = await custom_workflow(eng)
    schedule = await eng.schedules.create(
        wf, interval(60, misfire_policy="skip", misfire_grace_seconds=30)
    )
    assert schedule.next_execution is not None
    await eng.scheduler.tick(schedule.next_execution + timedelta(seconds=29))
    assert outcomes(await history(eng, schedule.id)) == ["fired"]


async def test_zero_grace_still_tolerates_the_loops_own_lateness(eng: Engine) -> None:
    """misfire_grace_seconds 0 with skip: a due time reached under a second late still runs."""
    wf = await custom_workflow(eng)
    schedule = await eng.schedules.create(
        wf, interval(60, misfire_policy="skip", misfire_grace_seconds=0)
    )
    assert schedule.next_execution is not None
    await eng.scheduler.tick(schedule.next_execution + timedelta(milliseconds=900))
    await eng.scheduler.tick(schedule.next_execution + timedelta(seconds=62))
    assert outcomes(await history(eng, schedule.id)) == ["fired", "skipped_misfire"]


async def test_misfire_policies_across_a_real_engine_restart(make: EngineFactory) -> None:
    """With the engine stopped across due times, each policy applies when another engine starts."""
    first = make()
    wf = await custom_workflow(first)
    ids = {}
    for policy in ("skip", "run_once", "catch_up"):
        created = await first.schedules.create(
            wf,
            interval(
                1,
                name=policy,
                misfire_policy=policy,
                misfire_grace_seconds=0,
                overlap_policy="allow",  # caught-up runs never hold back the next one
            ),
        )
        ids[policy] = created.id
    # Downtime: no engine runs across about four due times.
    await anyio.sleep(4.5)
    second = make()
    async with second:
        await until(
            lambda: all(executions_of(second, i) for i in (ids["run_once"], ids["catch_up"])),
            timeout=5,
            what="runs after the restart",
        )
        await second.scheduler.tick()
    # The first tick after the restart saw about four due times; those over a second late
    # (at least three) are misfires, a later one runs on time.
    entries = {p: await history(second, i) for p, i in ids.items()}
    for policy, lines in entries.items():
        late_line = lines[0]
        if policy == "skip":
            assert late_line.outcome == "skipped_misfire", lines
            assert late_line.detail is not None
            missed = int(late_line.detail.split()[0])
            assert missed >= 3
        elif policy == "run_once":
            assert [e.outcome for e in lines[:2]] in (
                ["skipped_misfire", "fired"],
                ["fired", "skipped_misfire"],
            ), lines
        else:
            fired = [e.due_at for e in lines if e.outcome == "fired" and e.due_at]
            assert "skipped_misfire" not in outcomes(lines)
            assert len(fired) >= 4
            assert fired == [fired[0] + timedelta(seconds=k) for k in range(len(fired))]


# -- overlap ------------------------------------------------------------------------------------


async def _slow_schedule(eng: Engine, overlap: str) -> tuple[Schedule, datetime]:
    """A schedule whose runs wait on PROBE gate "slow"; its first run fired and running."""
    wf = await new_workflow(eng, "test_three")
    schedule = await eng.schedules.create(
        wf,
        interval(60, overlap_policy=overlap, parameters={"do": {"first": {"gate": "slow"}}}),
    )
    first = schedule.next_execution
    assert first is not None
    await eng.scheduler.tick(first)
    [(execution_id, _)] = executions_of(eng, schedule.id)
    await wait_status(eng, execution_id, ExecutionStatus.RUNNING)
    return schedule, first


async def test_overlap_skip(eng: Engine) -> None:
    """overlap skip: a due time while the last run still runs starts nothing (skipped_overlap)."""
    schedule, first = await _slow_schedule(eng, "skip")
    await eng.scheduler.tick(first + timedelta(seconds=60))
    assert len(executions_of(eng, schedule.id)) == 1
    entries = await history(eng, schedule.id)
    assert outcomes(entries) == ["fired", "skipped_overlap"]
    assert entries[1].detail is not None
    assert "still running" in entries[1].detail
    PROBE.gate("slow").set()
    await wait_status(eng, executions_of(eng, schedule.id)[0][0], ExecutionStatus.COMPLETED)
    await eng.scheduler.tick(first + timedelta(seconds=120))
    assert len(executions_of(eng, schedule.id)) == 2


async def test_overlap_allow(eng: Engine) -> None:
    """overlap allow: the next due time starts a second run while the first still runs."""
    schedule, first = await _slow_schedule(eng, "allow")
    await eng.scheduler.tick(first + timedelta(seconds=60))
    runs = executions_of(eng, schedule.id)
    assert len(runs) == 2
    await wait_status(eng, runs[1][0], ExecutionStatus.RUNNING)
    assert (await eng.executions.get(runs[0][0])).status is ExecutionStatus.RUNNING
    PROBE.gate("slow").set()
    for execution_id, _ in runs:
        await wait_status(eng, execution_id, ExecutionStatus.COMPLETED)


async def test_overlap_queue(eng: Engine) -> None:
    """overlap queue: one run waits for the running one, then starts; further due times are skipped."""
    schedule, first = await _slow_schedule(eng, "queue")
    await eng.scheduler.tick(first + timedelta(seconds=60))
    await eng.scheduler.tick(first + timedelta(seconds=120))
    assert len(executions_of(eng, schedule.id)) == 1
    assert outcomes(await history(eng, schedule.id)) == ["fired", "queued", "skipped_overlap"]
    PROBE.gate("slow").set()
    await until(lambda: len(executions_of(eng, schedule.id)) == 2, timeout=5, what="queued run")
    first_run, queued_run = [
        e.execution_id for e in await history(eng, schedule.id) if e.outcome == "fired"
    ]
    assert first_run is not None
    assert queued_run is not None
    finished = await wait_status(eng, first_run, ExecutionStatus.COMPLETED)
    queued = await wait_status(eng, queued_run, ExecutionStatus.COMPLETED)
    assert finished.completed_at is not None
    assert queued.started_at is not None
    assert queued.started_at >= finished.completed_at
    await anyio.sleep(0.3)
    await eng.scheduler.tick()
    assert len(executions_of(eng, schedule.id)) == 2
    assert outcomes(await history(eng, schedule.id)) == [
        "fired",
        "queued",
        "skipped_overlap",
        "fired",
    ]


# -- REST ---------------------------------------------------------------------------------------


@pytest.fixture
async def rest(make: EngineFactory) -> AsyncIterator[tuple[Engine, httpx.AsyncClient, str]]:
    """A running engine, an httpx client on its ASGI app with an all-scopes token, and a workflow."""
    engine = make()
    token = engine.tokens.create_token("usr_987654321")
    app = create_app(engine, rate_limit=None)
    async with engine:
        wf = await custom_workflow(engine, name="Enhanced Customer Feedback Analysis")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield engine, client, wf


def _data(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


async def test_rest_crud_in_the_seed_shapes(rest: tuple[Engine, httpx.AsyncClient, str]) -> None:
    """POST 201, GET, GET list, PUT (next_execution 02:00) and DELETE answer the seed's shapes."""
    engine, client, wf = rest
    before = utcnow()
    created = _data(await client.post(f"/workflows/{wf}/schedules", json=SEED_CREATE), 201)
    assert set(created) >= SEED_KEYS
    assert {k: created[k] for k in SEED_CREATE} == SEED_CREATE
    assert created["workflow_id"] == wf
    assert created["created_by"] == "usr_987654321"
    assert created["next_execution"] == format_time(next_midnight(before))
    sid = created["id"]

    got = _data(await client.get(f"/workflow_schedules/{sid}"), 200)
    assert got["workflow_name"] == "Enhanced Customer Feedback Analysis"
    assert {k: got[k] for k in SEED_KEYS} == {k: created[k] for k in SEED_KEYS}

    listed = _data(
        await client.get(
            "/workflow_schedules",
            params={"workflow_id": wf, "enabled": "true", "page": 1, "page_size": 10},
        ),
        200,
    )
    assert listed["pagination"] == {"page": 1, "page_size": 10, "total_items": 1, "total_pages": 1}
    [item] = listed["items"]
    assert set(item) >= SEED_LIST_KEYS
    assert item["workflow_name"] == "Enhanced Customer Feedback Analysis"
    assert (
        _data(await client.get("/workflow_schedules", params={"enabled": "false"}), 200)["items"]
        == []
    )

    updated = _data(await client.put(f"/workflow_schedules/{sid}", json=SEED_UPDATE), 200)
    assert updated["cron_expression"] == "0 2 * * *"
    assert updated["parameters"] == SEED_UPDATE["parameters"]
    assert updated["timezone"] == "UTC"
    assert updated["created_at"] == created["created_at"]
    assert parse_time(updated["next_execution"]).strftime("%H:%M:%S") == "02:00:00"
    assert parse_time(updated["next_execution"]) - before <= timedelta(days=1)

    history_page = _data(await client.get(f"/workflow_schedules/{sid}/history"), 200)
    assert history_page["items"] == []

    assert _data(await client.delete(f"/workflow_schedules/{sid}"), 200) == {
        "id": sid,
        "deleted": True,
    }
    error = _error(await client.get(f"/workflow_schedules/{sid}"), 404, "SCHEDULE_NOT_FOUND")
    assert error["details"] == {"schedule_id": sid}
    assert engine.store.get_schedule(sid) is None


async def test_rest_errors(rest: tuple[Engine, httpx.AsyncClient, str]) -> None:
    """404 for unknown ids, 400 INVALID_SCHEDULE naming the field, 403 without schedules:write."""
    engine, client, wf = rest
    _error(
        await client.put("/workflow_schedules/sched_nope", json=SEED_UPDATE),
        404,
        "SCHEDULE_NOT_FOUND",
    )
    _error(await client.delete("/workflow_schedules/sched_nope"), 404, "SCHEDULE_NOT_FOUND")
    _error(
        await client.post("/workflows/wf_nope/schedules", json=SEED_CREATE),
        404,
        "WORKFLOW_NOT_FOUND",
    )
    bad = _error(
        await client.post(
            f"/workflows/{wf}/schedules", json={**SEED_CREATE, "cron_expression": "0 0 * *"}
        ),
        400,
        "INVALID_SCHEDULE",
    )
    assert bad["details"]["field"] == "cron_expression"
    zone = _error(
        await client.post(
            f"/workflows/{wf}/schedules", json={**SEED_CREATE, "timezone": "Nowhere"}
        ),
        400,
        "INVALID_SCHEDULE",
    )
    assert zone["details"]["field"] == "timezone"
    _error(
        await client.post(f"/workflows/{wf}/schedules", content=b"{not json"),
        400,
        "INVALID_REQUEST",
    )
    _error(
        await client.get("/workflow_schedules", params={"enabled": "perhaps"}),
        400,
        "INVALID_REQUEST",
    )

    reader = engine.tokens.create_token("usr_reader", [Scope.SCHEDULES_READ])
    headers = {"Authorization": f"Bearer {reader}"}
    _error(
        await client.post(f"/workflows/{wf}/schedules", json=SEED_CREATE, headers=headers),
        403,
        "FORBIDDEN",
    )
    assert _data(await client.get("/workflow_schedules", headers=headers), 200)["items"] == []
    _error(
        await client.get("/workflow_schedules", headers={"Authorization": "Bearer nope"}),
        401,
        "UNAUTHORIZED",
    )


# -- the seed's Python block ------------------------------------------------------------------

# The seed's "Python API / Workflow Scheduling" block, verbatim.
SEED_WORKFLOW_SCHEDULING = """
from abi.workflows import WorkflowScheduler

# Initialize the workflow scheduler
scheduler = WorkflowScheduler(access_token=access_token)

# Create a schedule
schedule = scheduler.create_schedule(
    workflow_id="wf_123456789",
    name="Daily Feedback Analysis",
    description="Runs feedback analysis every night at midnight",
    schedule_type="cron",
    cron_expression="0 0 * * *",
    parameters={
        "source": "daily_report",
        "include_recommendations": True
    },
    enabled=True,
    timezone="UTC"
)

print(f"Created schedule with ID: {schedule.id}")
print(f"Next execution: {schedule.next_execution}")

# Get a schedule
schedule = scheduler.get_schedule(schedule.id)

# List schedules
schedules = scheduler.list_schedules(
    workflow_id="wf_123456789",
    enabled=True,
    page=1,
    page_size=10
)

for sched in schedules.items:
    print(f"{sched.id}: {sched.name} - Next run: {sched.next_execution}")

# Update a schedule
schedule.cron_expression = "0 2 * * *"
schedule.description = "Runs feedback analysis every night at 2 AM"
schedule.parameters["generate_report"] = True

updated_schedule = scheduler.update_schedule(schedule)

# Delete a schedule
scheduler.delete_schedule(schedule.id)
"""


@contextmanager
def serving(engine: Engine) -> Iterator[str]:
    """The engine's REST API under uvicorn on a free 127.0.0.1 port (a thread); its root URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine), log_level="warning", ws="none", http="h11")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.mark.parametrize("where", ["engine", "base_url"])
def test_seed_scheduling_block(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's block runs in-process and over HTTP (workflow id substituted), with its effects."""
    recorder = Recorder()
    with engines(tmp_path) as make_engine, ExitStack() as stack:
        engine = make_engine(plugins=(recorder,))
        token = engine.tokens.create_token("usr_seed")
        wf = engine.call(custom_workflow, engine)
        target: Any = engine if where == "engine" else stack.enter_context(serving(engine))
        source = SEED_WORKFLOW_SCHEDULING.replace("wf_123456789", wf).replace(
            "WorkflowScheduler(access_token=access_token)",
            f"WorkflowScheduler(access_token=access_token, {where}={where})",
        )
        assert source.count(wf) == 2
        namespace: dict[str, Any] = {"access_token": token, where: target}
        before = utcnow()
        exec(compile(source, "<seed: Workflow Scheduling>", "exec"), namespace)
        stack.callback(namespace["scheduler"].close)

        schedule = namespace["schedule"]
        assert isinstance(schedule, Schedule)
        assert schedule.workflow_name == "Echo"
        assert schedule.created_by == "usr_seed"
        created_line, next_line, list_line = capsys.readouterr().out.splitlines()
        assert created_line == f"Created schedule with ID: {schedule.id}"
        assert next_line == f"Next execution: {next_midnight(before)}"
        assert list_line == (
            f"{schedule.id}: Daily Feedback Analysis - Next run: {next_midnight(before)}"
        )

        page = namespace["schedules"]
        assert isinstance(page, Page)
        assert [s.id for s in page.items] == [schedule.id]
        assert isinstance(page.items[0], ScheduleSummary)

        updated = namespace["updated_schedule"]
        assert isinstance(updated, Schedule)
        assert updated.id == schedule.id
        assert updated.cron_expression == "0 2 * * *"
        assert updated.description == "Runs feedback analysis every night at 2 AM"
        assert updated.parameters == {
            "source": "daily_report",
            "include_recommendations": True,
            "generate_report": True,
        }
        assert updated.next_execution is not None
        assert updated.next_execution.strftime("%H:%M") == "02:00"
        assert updated.next_execution - before <= timedelta(days=1)

        assert recorder.types() == ["schedule.created", "schedule.updated", "schedule.deleted"]
        [changed] = [e for e in recorder.events if e.type == "schedule.updated"]
        assert changed.data["cron_expression"] == "0 2 * * *"
        assert engine.store.get_schedule(schedule.id) is None
        with pytest.raises(ScheduleNotFound):
            namespace["scheduler"].get_schedule(schedule.id)


# -- at scale -----------------------------------------------------------------------------------


@pytest.mark.sqlite_only
async def test_tick_with_many_schedules_reads_only_what_is_due(make: EngineFactory) -> None:
    """With 20,000 schedules stored and none due, a tick's queries use the indexes and read no row."""
    engine = make()
    wf = await custom_workflow(engine)
    for i in range(100):
        await engine.schedules.create(
            wf,
            {
                "name": f"s{i}",
                "schedule_type": "cron",
                "cron_expression": f"{i % 60} {i % 24} * * *",
                "timezone": "Europe/Paris",
            },
        )
    # 200 copies of each (other ids, the same definitions and due times): 20,000 in all.
    with sqlite3.connect(engine.db_url) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(schedules)") if r[1] != "id"]
        names = ", ".join(columns)
        conn.execute(
            f"WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 199)"
            f" INSERT INTO schedules (id, {names}) SELECT id || '_' || k, {names}"
            " FROM schedules, n"
        )
    assert (await engine.schedules.list()).pagination.total_items == 20_000

    statements: list[str] = []
    reader = engine.store._reader()  # the connection of this (the loop's) thread
    reader.set_trace_callback(statements.append)
    try:
        started = time.perf_counter()
        more = await engine.scheduler.tick(utcnow())
        elapsed = time.perf_counter() - started
    finally:
        reader.set_trace_callback(None)
    assert more is False
    assert elapsed < 0.5
    assert statements, "the tick ran no query"
    assert executions_of(engine, "%") == []
    with sqlite3.connect(engine.db_url) as conn:
        for sql in statements:
            assert conn.execute(sql).fetchall() == [], sql  # nothing due, nothing queued
            plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
            # No scan of schedules, except of the partial index of queued runs (empty here).
            assert "SCAN s " not in plan.replace("SCAN s USING INDEX idx_schedules_pending", ""), (
                plan
            )
            if "next_due <=" in sql:
                assert "USING INDEX idx_schedules_due (next_due<?)" in plan, plan
        plan = " | ".join(
            r[3]
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT min(next_due) FROM schedules WHERE next_due IS NOT NULL"
            )
        )
    assert "idx_schedules_due" in plan
    assert engine.store.next_schedule_due() is not None
