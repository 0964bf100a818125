"""Listing a schedule's backfills (#17 point 4): ``GET /workflow_schedules/{id}/backfills``,
newest first, paginated as every list, filtered by ``status``. Both backends, the
store, the service, REST and WorkflowScheduler (embedded and remote)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_plugins.helpers import DatabaseFactory, new_workflow
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowScheduler
from abi_engine import Engine
from abi_engine.errors import InvalidRequest, ScheduleNotFound
from abi_engine.models import Page
from abi_engine.models_backfills import BackfillRun, BackfillStatus
from abi_engine.storage.base import Store
from abi_engine.storage.records_backfills import BackfillRecord

pytestmark = pytest.mark.anyio

HOURLY = {"name": "hourly", "schedule_type": "cron", "cron_expression": "0 * * * *"}
BASE = datetime(2026, 11, 1, tzinfo=UTC)
STATUSES = list(BackfillStatus)


def stored(
    store: Store, schedule_id: str, status: BackfillStatus, minutes: int, tag: str = ""
) -> BackfillRun:
    """A backfill stored as created ``minutes`` after BASE. A running one is held by
    another (live) process, so this engine's background task leaves it alone."""
    created = BASE + timedelta(minutes=minutes)
    running = status is BackfillStatus.RUNNING
    run = BackfillRun(
        id=f"bf_{tag}{uuid.uuid4().hex[:12]}",
        schedule_id=schedule_id,
        status=status,
        start=BASE - timedelta(days=2),
        end=BASE - timedelta(days=1),
        max_runs=10,
        overlap_policy="allow",
        total=3,
        started=0 if running else 3,
        created_at=created,
        updated_at=created,
        finished_at=None if running else created,
    )
    far = datetime.now(UTC) + timedelta(hours=1)
    store.insert_backfill(
        BackfillRecord(
            run=run,
            due_times=[BASE - timedelta(days=2, hours=-h) for h in range(3)],
            owner="bfo_elsewhere" if running else None,
            lease_until=far if running else None,
        )
    )
    return run


def newest_first(runs: list[BackfillRun]) -> list[str]:
    return [r.id for r in sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)]


async def a_schedule(engine: Engine) -> str:
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    workflow_id = await new_workflow(engine, "custom", configuration={"steps": steps})
    return (await engine.schedules.create(workflow_id, HOURLY)).id


async def test_backfills_are_listed_newest_first_by_page_and_status(eng: Engine) -> None:
    schedule_id = await a_schedule(eng)
    other_id = await a_schedule(eng)
    stored(eng.store, other_id, BackfillStatus.COMPLETED, 99)  # another schedule's
    statuses = [STATUSES[i % 4] for i in range(7)]
    runs = [stored(eng.store, schedule_id, s, i) for i, s in enumerate(statuses)]
    want = newest_first(runs)
    pages = [
        await eng.schedules.list_backfills(schedule_id, page=p, page_size=3) for p in (1, 2, 3)
    ]
    assert [[r.id for r in p.items] for p in pages] == [want[:3], want[3:6], want[6:]]
    assert all(p.pagination.total_items == 7 and p.pagination.total_pages == 3 for p in pages)
    past = await eng.schedules.list_backfills(schedule_id, page=4, page_size=3)
    assert past.items == []
    assert past.pagination.total_items == 7
    first = (await eng.schedules.list_backfills(schedule_id)).items[0]
    assert first == await eng.schedules.get_backfill(schedule_id, first.id)
    for status in STATUSES:
        page = await eng.schedules.list_backfills(schedule_id, status=status.value)
        assert [r.id for r in page.items] == newest_first([r for r in runs if r.status is status])
        assert {r.status for r in page.items} <= {status}
        assert page.pagination.total_items == statuses.count(status)
    empty = await eng.schedules.list_backfills(await a_schedule(eng))
    assert empty.items == []
    assert empty.pagination.total_items == 0


async def test_listing_checks_its_input(eng: Engine) -> None:
    schedule_id = await a_schedule(eng)
    with pytest.raises(ScheduleNotFound):
        await eng.schedules.list_backfills("sched_nope")
    for kwargs, field in (
        ({"status": "done"}, "status"),
        ({"status": ""}, "status"),
        ({"page": 0}, "page"),
        ({"page_size": 101}, "page_size"),
        ({"page_size": "many"}, "page_size"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            await eng.schedules.list_backfills(schedule_id, **kwargs)  # type: ignore[arg-type]
        assert refused.value.details["field"] == field, kwargs


async def test_pages_of_backfills_hold_each_once_in_order(eng: Engine) -> None:
    """Property: for any backfills (ties in created_at included), page size and status
    filter, the pages concatenated are the filtered backfills newest first, each once,
    and each page's counts agree with Page.build."""
    store = eng.store

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        specs=st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(0, 5)), max_size=14),
        page_size=st.integers(1, 6),
        status=st.none() | st.sampled_from(STATUSES),
    )
    def check(
        specs: list[tuple[BackfillStatus, int]], page_size: int, status: BackfillStatus | None
    ) -> None:
        schedule_id = f"sched_{uuid.uuid4().hex}"
        runs = [stored(store, schedule_id, s, m) for s, m in specs]
        want = newest_first([r for r in runs if status is None or r.status is status])
        seen: list[str] = []
        pages = max(1, math.ceil(len(want) / page_size))
        for number in range(1, pages + 2):
            records, total = store.list_backfills(
                schedule_id, None if status is None else status.value, number, page_size
            )
            built = Page.build([r.run for r in records], number, page_size, total)
            assert total == len(want)
            assert built.pagination.total_pages == math.ceil(len(want) / page_size)
            assert len(records) == max(0, min(page_size, len(want) - (number - 1) * page_size))
            seen += [r.run.id for r in records]
        assert seen == want

    check()


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


@pytest.mark.parametrize("way", WAYS)
def test_backfills_over_rest_and_the_python_api(api: Served, way: str) -> None:
    scheduler = api.facade(WorkflowScheduler, way)
    client = api.client()
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    workflow = client.post(
        "/api/v1/workflows",
        json={"name": "w", "type": "custom", "configuration": {"steps": steps}},
    )
    workflow_id = workflow.json()["data"]["id"]
    assert client.post(f"/api/v1/workflows/{workflow_id}/activate").status_code == 200
    schedule_id = scheduler.create_schedule(workflow_id, **HOURLY).id
    statuses = [STATUSES[i % 4] for i in range(5)]
    runs = [stored(api.engine.store, schedule_id, s, i) for i, s in enumerate(statuses)]
    want = newest_first(runs)
    url = f"/api/v1/workflow_schedules/{schedule_id}/backfills"
    answer = client.get(url, params={"page": 2, "page_size": 2})
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]
    assert [i["id"] for i in data["items"]] == want[2:4]
    assert data["pagination"] == {"page": 2, "page_size": 2, "total_items": 5, "total_pages": 3}
    for item in data["items"]:  # each item as GET of one shows it
        assert item == client.get(f"{url}/{item['id']}").json()["data"]
    default = client.get(url).json()["data"]
    assert default["pagination"]["page_size"] == 10
    assert [i["id"] for i in default["items"]] == want
    done = client.get(url, params={"status": "completed"}).json()["data"]
    assert [i["id"] for i in done["items"]] == newest_first(
        [r for r in runs if r.status is BackfillStatus.COMPLETED]
    )
    for params, field in (({"status": "done"}, "status"), ({"page_size": 0}, "page_size")):
        bad = client.get(url, params=params)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "INVALID_REQUEST"
        assert bad.json()["error"]["details"]["field"] == field
    missing = client.get("/api/v1/workflow_schedules/sched_nope/backfills")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "SCHEDULE_NOT_FOUND"

    page = scheduler.list_backfills(schedule_id, page=1, page_size=3)
    assert [r.id for r in page.items] == want[:3]
    assert all(isinstance(r, BackfillRun) for r in page.items)
    assert page.pagination.total_pages == 2
    cancelled = scheduler.list_backfills(schedule_id, status=BackfillStatus.CANCELLED)
    assert [r.id for r in cancelled.items] == newest_first(
        [r for r in runs if r.status is BackfillStatus.CANCELLED]
    )
    assert scheduler.list_backfills(schedule_id, status="failed").pagination.total_items == 1
    with pytest.raises(InvalidRequest) as refused:
        scheduler.list_backfills(schedule_id, status="done")
    assert refused.value.details["field"] == "status"
    with pytest.raises(ScheduleNotFound):
        scheduler.list_backfills("sched_nope")
