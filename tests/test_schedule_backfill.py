"""Backfill (#17 point 4): the due times of a past range run, each execution knowing its
due time, bounded, idempotent, dry run listing them; a durable job with progress, a
cancel, and a restart that starts no due time twice. Both backends, REST and
WorkflowScheduler (embedded and remote)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from runtime_plugins.helpers import DatabaseFactory, EngineFactory, new_workflow
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowScheduler
from abi_engine import Engine, hookimpl
from abi_engine.errors import (
    BackfillNotFound,
    InvalidRequest,
    InvalidState,
    NotFound,
    ScheduleNotFound,
)
from abi_engine.events import Event
from abi_engine.ids import format_time
from abi_engine.models_backfills import BackfillRun, BackfillStatus
from abi_engine.schedule_backfill import backfill_key
from abi_engine.storage.records_backfills import BackfillRecord

pytestmark = pytest.mark.anyio

HOURLY = {"name": "hourly", "schedule_type": "cron", "cron_expression": "0 * * * *"}


def _range() -> tuple[datetime, datetime]:
    """Five past hours: from a whole hour five hours ago to half past the last one."""
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    return first, first + timedelta(hours=4, minutes=30)


class Heard:
    """An ``abi_event`` hook keeping what it hears."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
async def eng(make: EngineFactory, heard: Heard) -> AsyncIterator[Engine]:
    engine = make(plugins=(heard,))
    async with engine:
        yield engine


async def a_workflow(engine: Engine) -> str:
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    return await new_workflow(engine, "custom", configuration={"steps": steps})


async def finished(engine: Engine, schedule_id: str, backfill_id: str) -> BackfillRun:
    """The backfill once it is over (polled, a generous deadline)."""
    deadline = anyio.current_time() + 120
    while True:
        run = await engine.schedules.get_backfill(schedule_id, backfill_id)
        if run.status is not BackfillStatus.RUNNING:
            return run
        assert anyio.current_time() < deadline, run
        await anyio.sleep(0.05)


async def executions_of(
    engine: Engine, workflow_id: str, schedule_id: str, dues: list[datetime]
) -> list[str | None]:
    """The execution started for each due time's backfill key (``None``: none)."""
    store = engine.store
    return [store.find_execution_by_key(workflow_id, backfill_key(schedule_id, d)) for d in dues]


async def test_backfill_runs_each_due_time_once(eng: Engine, heard: Heard) -> None:
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(workflow_id, {**HOURLY, "parameters": {"k": 1}})
    start, end = _range()
    body = {"start": format_time(start), "end": format_time(end)}
    dry = await eng.schedules.backfill(schedule.id, {**body, "dry_run": True})
    expected = [start + timedelta(hours=h) for h in range(5)]
    assert not isinstance(dry, BackfillRun)
    assert [i.due_at for i in dry.items] == expected
    assert all(i.execution_id is None for i in dry.items)
    assert dry.truncated is False
    job = await eng.schedules.backfill(schedule.id, body)
    assert isinstance(job, BackfillRun)
    assert job.id.startswith("bf_")
    assert job.total == 5
    run = await finished(eng, schedule.id, job.id)
    assert (run.status, run.started, run.skipped, run.failed) == ("completed", 5, 0, 0)
    assert run.finished_at is not None
    [ended] = [e for e in heard.events if e.type == "schedule.backfill_completed"]
    assert ended.data["id"] == job.id
    assert (ended.data["status"], ended.data["started"], ended.data["total"]) == ("completed", 5, 5)
    ids = await executions_of(eng, workflow_id, schedule.id, expected)
    assert len(set(ids)) == 5
    for due, execution_id in zip(expected, ids, strict=True):
        assert execution_id is not None
        execution = await eng.executions.get(execution_id)
        assert execution.schedule_id == schedule.id
        assert execution.scheduled_for == due
        assert execution.parameters == {"k": 1}
    again = await eng.schedules.backfill(schedule.id, body)  # the same range: no new runs
    assert isinstance(again, BackfillRun)
    second = await finished(eng, schedule.id, again.id)
    assert (second.status, second.started, second.skipped) == ("completed", 0, 5)
    assert await executions_of(eng, workflow_id, schedule.id, expected) == ids
    with pytest.raises(InvalidState):  # over: nothing to cancel
        await eng.schedules.cancel_backfill(schedule.id, again.id)
    with pytest.raises(BackfillNotFound):
        await eng.schedules.get_backfill(schedule.id, "bf_nope")
    other = await eng.schedules.create(workflow_id, HOURLY)
    with pytest.raises(BackfillNotFound):  # a backfill is read through its own schedule
        await eng.schedules.get_backfill(other.id, job.id)


async def test_a_cancel_stops_a_backfill_before_its_next_due_time(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    every_minute = {"name": "m", "schedule_type": "cron", "cron_expression": "* * * * *"}
    schedule = await eng.schedules.create(workflow_id, every_minute)
    end = datetime.now(UTC) - timedelta(minutes=1)
    body = {"start": format_time(end - timedelta(days=1)), "end": format_time(end)}
    job = await eng.schedules.backfill(schedule.id, {**body, "max_runs": 1000})
    assert isinstance(job, BackfillRun)
    assert job.truncated
    cancelled = await eng.schedules.cancel_backfill(schedule.id, job.id)
    assert cancelled.status is BackfillStatus.CANCELLED
    run = await eng.schedules.get_backfill(schedule.id, job.id)
    # The holder stops at its next due time: at most one more starts after the cancel.
    await anyio.sleep(1)
    later = await eng.schedules.get_backfill(schedule.id, job.id)
    assert later.status is BackfillStatus.CANCELLED
    assert later.started <= run.started + 1 < 1000
    page = await eng.executions.list(workflow_id=workflow_id, page_size=100)
    assert page.pagination.total_items == later.started


async def test_a_backfill_goes_on_after_a_restart_without_starting_twice(
    make: EngineFactory,
) -> None:
    every_minute = {"name": "m", "schedule_type": "cron", "cron_expression": "* * * * *"}
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    body = {"start": format_time(end - timedelta(minutes=299)), "end": format_time(end)}
    first = make("restart.db")
    async with first:
        workflow_id = await a_workflow(first)
        schedule = await first.schedules.create(workflow_id, every_minute)
        job = await first.schedules.backfill(schedule.id, {**body, "max_runs": 300})
        assert isinstance(job, BackfillRun)
        assert job.total == 300
    # Closed mid-backfill (or just after): what it had done is stored, its lease given back.
    stopped = first.store.get_backfill(job.id)
    assert stopped is not None
    second = make("restart.db")
    async with second:
        run = await finished(second, schedule.id, job.id)
        assert run.status is BackfillStatus.COMPLETED
        assert (run.started, run.skipped, run.failed) == (300, 0, 0), run
        dues = [end - timedelta(minutes=m) for m in range(300)]
        ids = await executions_of(second, workflow_id, schedule.id, dues)
        assert None not in ids
        assert len(set(ids)) == 300
        page = await second.executions.list(workflow_id=workflow_id, page_size=1)
        assert page.pagination.total_items == 300  # none started twice


async def test_a_crash_between_a_start_and_its_progress_starts_no_due_time_twice(
    make: EngineFactory,
) -> None:
    """The holder died after starting the execution of its position's due time, before
    writing its progress, and its lease ran out: the next holder finds that execution
    (by its idempotency key) and counts it, starting only the others."""
    engine = make("crash.db")
    async with engine:
        workflow_id = await a_workflow(engine)
        schedule = await engine.schedules.create(workflow_id, HOURLY)
        start, end = _range()
        body = {"start": format_time(start), "end": format_time(end), "dry_run": True}
        dry = await engine.schedules.backfill(schedule.id, body)
        dues = [i.due_at for i in dry.items]
        # Stored as a dead process left it: at position 2, due time 2 already started.
        now = datetime.now(UTC)
        record = BackfillRecord(
            run=BackfillRun(
                id="bf_crashed",
                schedule_id=schedule.id,
                status=BackfillStatus.RUNNING,
                start=start,
                end=end,
                max_runs=100,
                overlap_policy="allow",
                total=5,
                started=2,
                created_at=now - timedelta(minutes=5),
                updated_at=now - timedelta(minutes=4),
            ),
            due_times=dues,
            position=2,
            owner="bfo_dead",
            lease_until=now - timedelta(minutes=3),
        )
        for due in dues[:3]:
            await engine.executions.execute(
                workflow_id,
                {},
                wait=False,
                schedule_id=schedule.id,
                idempotency_key=backfill_key(schedule.id, due),
                scheduled_for=due,
            )
        before = await executions_of(engine, workflow_id, schedule.id, dues)
        engine.store.insert_backfill(record)
        engine.schedules.backfills.wake()
        run = await finished(engine, schedule.id, "bf_crashed")
        assert (run.status, run.started, run.skipped, run.failed) == ("completed", 5, 0, 0)
        after = await executions_of(engine, workflow_id, schedule.id, dues)
        assert after[:3] == before[:3]
        assert None not in after
        assert len(set(after)) == 5
        page = await engine.executions.list(workflow_id=workflow_id, page_size=1)
        assert page.pagination.total_items == 5


async def test_backfill_is_bounded_and_checked(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(workflow_id, HOURLY)
    start, end = _range()
    capped = await eng.schedules.backfill(
        schedule.id,
        {"start": format_time(start), "end": format_time(end), "dry_run": True, "max_runs": 2},
    )
    assert len(capped.items) == 2
    assert capped.truncated is True
    future = format_time(datetime.now(UTC) + timedelta(hours=1))
    for body, field in (
        ({"start": format_time(end), "end": format_time(start)}, "end"),
        ({"start": format_time(start), "end": future}, "end"),
        ({"start": format_time(start), "end": format_time(end), "max_runs": 1001}, "max_runs"),
        ({"start": format_time(start), "end": format_time(end), "max_runs": 0}, "max_runs"),
        ({"start": "yesterday", "end": format_time(end)}, "start"),
        ({"start": "0001-01-01T00:00:00Z", "end": format_time(end)}, "start"),
        (
            {"start": format_time(start), "end": format_time(end), "overlap_policy": "queue"},
            "overlap_policy",
        ),
    ):
        with pytest.raises(InvalidRequest) as refused:
            await eng.schedules.backfill(schedule.id, body)
        assert field in str(refused.value.details), (body, refused.value.details)
    with pytest.raises(ScheduleNotFound):
        await eng.schedules.backfill(
            "sched_nope", {"start": format_time(start), "end": format_time(end)}
        )


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


@pytest.mark.parametrize("way", WAYS)
def test_backfill_over_rest_and_the_python_api(api: Served, way: str) -> None:
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
    assert client.post(f"/api/v1/workflows/{workflow_id}/activate").status_code == 200
    schedule = scheduler.create_schedule(workflow_id, **HOURLY)
    start, end = _range()
    dry = scheduler.backfill_schedule(schedule.id, start, end, dry_run=True)
    assert len(dry.items) == 5
    answer = client.post(
        f"/api/v1/workflow_schedules/{schedule.id}/backfill",
        json={"start": format_time(start), "end": format_time(end), "max_runs": 3},
    )
    assert answer.status_code == 202, answer.text
    data = answer.json()["data"]
    assert data["truncated"] is True
    assert data["total"] == 3
    assert data["status"] in ("running", "completed")
    url = f"/api/v1/workflow_schedules/{schedule.id}/backfills/{data['id']}"
    deadline = time.monotonic() + 120
    while data["status"] == "running":
        assert time.monotonic() < deadline, data
        time.sleep(0.05)
        data = client.get(url).json()["data"]
    assert (data["status"], data["started"], data["skipped"], data["failed"]) == (
        "completed",
        3,
        0,
        0,
    )
    read = scheduler.get_backfill(schedule.id, data["id"])
    assert isinstance(read, BackfillRun)
    assert read.started == 3
    again = scheduler.backfill_schedule(schedule.id, start, end, max_runs=3)
    assert isinstance(again, BackfillRun)
    assert again.total == 3
    while again.status is BackfillStatus.RUNNING:
        assert time.monotonic() < deadline, again
        time.sleep(0.05)
        again = scheduler.get_backfill(schedule.id, again.id)
    assert (again.started, again.skipped) == (0, 3)  # the same due times: not started twice
    with pytest.raises(InvalidState):  # over: the Python API says so too, both ways
        scheduler.cancel_backfill(schedule.id, again.id)
    with pytest.raises(BackfillNotFound) as unknown:  # both ways (still a NotFound)
        scheduler.get_backfill(schedule.id, "bf_nope")
    assert isinstance(unknown.value, NotFound)
    assert unknown.value.details == {"backfill_id": "bf_nope"}
    over = client.post(f"{url}/cancel")
    assert over.status_code == 409, over.text
    assert over.json()["error"]["code"] == "INVALID_STATE"
    missing = client.get(f"/api/v1/workflow_schedules/{schedule.id}/backfills/bf_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "NOT_FOUND"
    runs = client.get(
        "/api/v1/workflow_executions", params={"schedule_id": schedule.id, "page_size": 100}
    ).json()["data"]
    urls = [f"/api/v1/workflow_executions/{r['execution_id']}" for r in runs["items"]]
    dues = [client.get(u).json()["data"]["scheduled_for"] for u in urls]
    assert sorted(dues) == [format_time(start + timedelta(hours=h)) for h in range(3)]
    bad = client.post(
        f"/api/v1/workflow_schedules/{schedule.id}/backfill",
        json={"start": format_time(start), "end": format_time(end), "max_runs": 5000},
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "INVALID_REQUEST"
    assert bad.json()["error"]["details"]["field"] == "max_runs"
