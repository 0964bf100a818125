"""Daylight-saving choices of schedules (#17 point 3): ``on_gap`` and ``on_fold`` stored,
validated, previewed and passed through REST and WorkflowScheduler. Both backends.

The arithmetic itself is checked against the brute-force oracle in
tests/test_schedule_dst.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from runtime_plugins.helpers import DatabaseFactory, new_workflow
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowScheduler
from abi_engine import Engine
from abi_engine.errors import InvalidSchedule
from abi_engine.models import FoldPolicy

pytestmark = pytest.mark.anyio

NIGHTLY_BERLIN = {
    "name": "nightly",
    "schedule_type": "cron",
    "cron_expression": "30 2 * * *",
    "timezone": "Europe/Berlin",
}


async def a_workflow(engine: Engine) -> str:
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    return await new_workflow(engine, "custom", configuration={"steps": steps})


def _days(preview: object) -> dict[str, list[tuple[str, bool, bool]]]:
    found: dict[str, list[tuple[str, bool, bool]]] = {}
    for item in preview.items:  # type: ignore[attr-defined]
        found.setdefault(item.local_time[:10], []).append(
            (item.local_time[11:], item.shifted_by_gap, item.repeated_by_fold)
        )
    return found


async def test_defaults_are_shift_and_first(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(workflow_id, NIGHTLY_BERLIN)
    assert (schedule.on_gap.value, schedule.on_fold.value) == ("shift", "first")
    again = await eng.schedules.get(schedule.id)
    assert (again.on_gap.value, again.on_fold.value) == ("shift", "first")


async def test_choices_are_stored_and_previewed(eng: Engine) -> None:
    """Berlin, Sundays 02:30 (a hundred Sundays cover both changes of a year): on the
    spring-forward Sunday 02:30 does not exist, on the fall-back one it happens twice.
    ``skip`` drops the first day, ``both`` runs the second twice, ``last`` at +01:00."""
    workflow_id = await a_workflow(eng)
    sundays = {**NIGHTLY_BERLIN, "cron_expression": "30 2 * * 0", "count": 100}
    schedule = await eng.schedules.create(
        workflow_id, {**NIGHTLY_BERLIN, "on_gap": "skip", "on_fold": "both"}
    )
    stored = await eng.schedules.get(schedule.id)
    assert (stored.on_gap.value, stored.on_fold.value) == ("skip", "both")
    default = _days(await eng.schedules.preview_unsaved(sundays))
    gap = [day for day, runs in default.items() if runs[0][1]]
    fold = [day for day, runs in default.items() if runs[0][2]]
    assert gap
    assert fold
    assert all(default[day] == [("03:00:00+02:00", True, False)] for day in gap)
    assert all(default[day] == [("02:30:00+02:00", False, True)] for day in fold)
    both = _days(
        await eng.schedules.preview_unsaved({**sundays, "on_gap": "skip", "on_fold": "both"})
    )
    for day in gap:
        assert day not in both
    for day in fold[:-1]:  # (the last one may be cut by the count)
        assert both[day] == [("02:30:00+02:00", False, True), ("02:30:00+01:00", False, True)]
    last = _days(await eng.schedules.preview_unsaved({**sundays, "on_fold": "last"}))
    assert all(last[day] == [("02:30:00+01:00", False, True)] for day in fold)
    assert all(last[day] == default[day] for day in gap)


async def test_an_update_changing_a_choice_moves_the_next_due_time(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(workflow_id, NIGHTLY_BERLIN)
    updated = await eng.schedules.update(schedule.id, {"on_fold": "last", "on_gap": "skip"})
    assert (updated.on_gap.value, updated.on_fold.value) == ("skip", "last")
    assert updated.next_execution is not None
    read = await eng.schedules.get(schedule.id)
    assert (read.on_gap.value, read.on_fold.value) == ("skip", "last")


@pytest.mark.parametrize(
    ("field", "value"), [("on_gap", "later"), ("on_fold", "second"), ("on_gap", 3)]
)
async def test_bad_choices_name_the_field(eng: Engine, field: str, value: object) -> None:
    workflow_id = await a_workflow(eng)
    with pytest.raises(InvalidSchedule) as refused:
        await eng.schedules.create(workflow_id, {**NIGHTLY_BERLIN, field: value})
    assert refused.value.details["field"] == field
    schedule = await eng.schedules.create(workflow_id, NIGHTLY_BERLIN)
    with pytest.raises(InvalidSchedule) as refused:
        await eng.schedules.update(schedule.id, {field: value})
    assert refused.value.details["field"] == field


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


@pytest.mark.parametrize("way", WAYS)
def test_choices_over_rest_and_the_python_api(api: Served, way: str) -> None:
    """WorkflowScheduler passes on_gap / on_fold through (embedded and remote); REST shows
    them, refuses a bad one with 400 naming the field; the OpenAPI document lists them."""
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
        name="nightly",
        schedule_type="cron",
        cron_expression="30 1 * * *",
        timezone="America/New_York",
        on_gap="skip",
        on_fold="last",
    )
    assert (schedule.on_gap.value, schedule.on_fold.value) == ("skip", "last")
    data = client.get(f"/api/v1/workflow_schedules/{schedule.id}").json()["data"]
    assert (data["on_gap"], data["on_fold"]) == ("skip", "last")
    schedule.on_fold = FoldPolicy.BOTH
    assert scheduler.update_schedule(schedule).on_fold.value == "both"
    bad = client.put(f"/api/v1/workflow_schedules/{schedule.id}", json={"on_fold": "never"})
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "INVALID_SCHEDULE"
    assert bad.json()["error"]["details"]["field"] == "on_fold"
    created = client.post(
        f"/api/v1/workflows/{workflow_id}/schedules",
        json={**NIGHTLY_BERLIN, "on_gap": "sometimes"},
    )
    assert created.status_code == 400, created.text
    assert created.json()["error"]["details"]["field"] == "on_gap"
    spec = client.get("/api/v1/openapi.json").json()
    text = str(spec)
    assert "'on_gap'" in text
    assert "'both'" in text
