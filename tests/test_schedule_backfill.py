"""Backfill (#17 point 4): the due times of a past range run, each execution knowing its
due time, bounded, idempotent, dry run listing them. Both backends, REST and
WorkflowScheduler (embedded and remote)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from runtime_plugins.helpers import DatabaseFactory, EngineFactory, engines, new_workflow
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowScheduler
from abi_engine import Engine
from abi_engine.errors import InvalidRequest, ScheduleNotFound
from abi_engine.ids import format_time

pytestmark = pytest.mark.anyio

HOURLY = {"name": "hourly", "schedule_type": "cron", "cron_expression": "0 * * * *"}


def _range() -> tuple[datetime, datetime]:
    """Five past hours: from a whole hour five hours ago to half past the last one."""
    first = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    return first, first + timedelta(hours=4, minutes=30)


@pytest.fixture
def make(tmp_path: Path, databases: DatabaseFactory) -> Iterator[EngineFactory]:
    with engines(tmp_path, databases) as factory:
        yield factory


@pytest.fixture
async def eng(make: EngineFactory) -> AsyncIterator[Engine]:
    engine = make()
    async with engine:
        yield engine


async def a_workflow(engine: Engine) -> str:
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    return await new_workflow(engine, "custom", configuration={"steps": steps})


async def test_backfill_runs_each_due_time_once(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(workflow_id, {**HOURLY, "parameters": {"k": 1}})
    start, end = _range()
    body = {"start": format_time(start), "end": format_time(end)}
    dry = await eng.schedules.backfill(schedule.id, {**body, "dry_run": True})
    expected = [start + timedelta(hours=h) for h in range(5)]
    assert [i.due_at for i in dry.items] == expected
    assert all(i.execution_id is None for i in dry.items)
    assert dry.truncated is False
    ran = await eng.schedules.backfill(schedule.id, body)
    ids = [i.execution_id for i in ran.items]
    assert len(set(ids)) == 5
    for due, execution_id in zip(expected, ids, strict=True):
        assert execution_id is not None
        execution = await eng.executions.get(execution_id)
        assert execution.schedule_id == schedule.id
        assert execution.scheduled_for == due
        assert execution.parameters == {"k": 1}
    again = await eng.schedules.backfill(schedule.id, body)  # the same range: no new runs
    assert [i.execution_id for i in again.items] == ids


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
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert data["truncated"] is True
    assert len(data["items"]) == 3
    first = data["items"][0]
    run = client.get(f"/api/v1/workflow_executions/{first['execution_id']}").json()["data"]
    assert run["scheduled_for"] == first["due_at"]
    assert run["schedule_id"] == schedule.id
    bad = client.post(
        f"/api/v1/workflow_schedules/{schedule.id}/backfill",
        json={"start": format_time(start), "end": format_time(end), "max_runs": 5000},
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "INVALID_REQUEST"
    assert bad.json()["error"]["details"]["field"] == "max_runs"
