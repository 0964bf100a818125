"""Exclusion rules for every type (#17 point 1): ``exclude_rrule`` on cron, interval and
fixed-time schedules, against a brute-force oracle, and over the engine (both backends).

The oracle scans UTC minutes of a range: a minute is a due time when the schedule
fires then (the cron oracle of tests/test_schedule_dst.py, or the interval's
arithmetic, or the fixed time), and it runs unless its wall time in the zone is
in dateutil's own expansion of the exclusion rule (from the schedule's start on
the zone's wall clock, to the minute) or its day is an excluded date. The
backfill's listing and the preview must give exactly those.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_plugins.helpers import EngineFactory, new_workflow
from test_schedule_dst import fires
from test_schedule_math import Cron, cron_expressions, zone_and_instant
from test_schedule_silent import outcomes, started

from abi_engine import Engine
from abi_engine.errors import InvalidSchedule, WorkflowNotFound
from abi_engine.schedule_backfill import due_times
from abi_engine.schedule_exclusions import excluded_reason
from abi_engine.schedule_lifecycle import preview
from abi_engine.storage.records_schedules import ScheduleRecord

pytestmark = pytest.mark.anyio

MINUTE = timedelta(minutes=1)
SPAN = timedelta(hours=30)
GAPS = st.sampled_from(["shift", "skip"])
FOLDS = st.sampled_from(["first", "last", "both"])


@st.composite
def exclusion_rules(draw: st.DrawFn) -> str:
    """A random exclusion rule of whole minutes (daily hours, weekly days, hourly minutes)."""
    kind = draw(st.sampled_from(["DAILY", "WEEKLY", "HOURLY", "MINUTELY"]))
    if kind == "MINUTELY":
        return f"FREQ=MINUTELY;INTERVAL={draw(st.integers(2, 40))};BYSECOND=0"
    parts = [f"FREQ={kind}", "BYSECOND=0"]
    if kind != "HOURLY":
        hours = draw(st.lists(st.integers(0, 23), min_size=1, max_size=6, unique=True))
        parts.append("BYHOUR=" + ",".join(map(str, hours)))
    if draw(st.booleans()):
        minutes = draw(st.lists(st.integers(0, 59), min_size=1, max_size=20, unique=True))
        parts.append("BYMINUTE=" + ",".join(map(str, minutes)))
    if kind == "WEEKLY":
        days = draw(st.lists(st.sampled_from(["MO", "TU", "WE", "SA"]), min_size=1, unique=True))
        parts.append("BYDAY=" + ",".join(days))
    return ";".join(parts)


def _record(kind: str, name: str, start: datetime, **fields: object) -> ScheduleRecord:
    return ScheduleRecord(
        id="sched_x",
        workflow_id="wf_x",
        name="x",
        schedule_type=kind,
        anchor_at=start,
        timezone=name,
        created_at=start,
        updated_at=start,
        **fields,  # type: ignore[arg-type]
    )


def _excluded_walls(rule: str, tz: ZoneInfo, start: datetime, low: datetime) -> set[datetime]:
    dtstart = start.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    wall = low.astimezone(tz).replace(tzinfo=None)
    found = rrulestr(rule, dtstart=dtstart).between(
        wall - timedelta(hours=4), wall + SPAN + timedelta(hours=4), inc=True
    )
    return set(found)


def _check(record: ScheduleRecord, low: datetime, expected: list[datetime]) -> None:
    listed, _ = due_times(record, low, low + SPAN, 10_000)
    assert listed == expected, (record.cron_expression, record.exclude_rrule, record.timezone)
    if expected:  # the preview from the first one lists the same, excluded ones left out
        shown = preview(record, expected[0], min(len(expected), 100)).items
        assert [i.due_at for i in shown] == expected[: len(shown)]


@settings(max_examples=60, deadline=None)
@given(
    cron=cron_expressions(),
    rule=exclusion_rules(),
    where=zone_and_instant(),
    on_gap=GAPS,
    on_fold=FOLDS,
    back=st.integers(0, 400),
)
def test_cron_exclusions_match_the_oracle(
    cron: Cron,
    rule: str,
    where: tuple[str, datetime],
    on_gap: str,
    on_fold: str,
    back: int,
) -> None:
    name, low = where
    tz = ZoneInfo(name)
    start = low - timedelta(days=back)
    record = _record(
        "cron",
        name,
        start,
        cron_expression=cron.text,
        exclude_rrule=rule,
        on_gap=on_gap,
        on_fold=on_fold,
    )
    excluded = _excluded_walls(rule, tz, start, low)
    expected = []
    m = low.replace(second=0, microsecond=0)
    while m <= low + SPAN:
        wall = m.astimezone(tz).replace(tzinfo=None)
        if m >= low and fires(cron, tz, m, on_gap, on_fold) and wall not in excluded:
            expected.append(m)
        m += MINUTE
    _check(record, low, expected)


@settings(max_examples=60, deadline=None)
@given(
    rule=exclusion_rules(),
    where=zone_and_instant(),
    every=st.sampled_from([60, 300, 900, 3600, 5400]),
    back=st.integers(0, 400),
    dates=st.booleans(),
)
def test_interval_exclusions_match_the_oracle(
    rule: str, where: tuple[str, datetime], every: int, back: int, dates: bool
) -> None:
    name, low = where
    tz = ZoneInfo(name)
    start = (low - timedelta(days=back)).replace(second=0, microsecond=0)
    excluded_day = (low + timedelta(hours=12)).astimezone(tz).date().isoformat()
    record = _record(
        "interval",
        name,
        start,
        interval_value=every,
        interval_unit="seconds",
        exclude_rrule=rule,
        exclude_dates=[excluded_day] if dates else [],
    )
    excluded = _excluded_walls(rule, tz, start, low)
    expected = []
    m = low.replace(second=0, microsecond=0)
    while m <= low + SPAN:
        local = m.astimezone(tz)
        due = m >= low and (m - start).total_seconds() % every == 0
        day_out = dates and local.date().isoformat() == excluded_day
        if due and local.replace(tzinfo=None) not in excluded and not day_out:
            expected.append(m)
        m += MINUTE
    _check(record, low, expected)


def test_a_fixed_time_on_an_excluded_wall_time_does_not_run() -> None:
    at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Paris
    start = datetime(2026, 1, 1, tzinfo=UTC)
    kept = _record("fixed_time", "Europe/Paris", start, execution_time=at)
    assert due_times(kept, at - MINUTE, at, 10)[0] == [at]
    rule = "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0;BYSECOND=0"
    out = _record("fixed_time", "Europe/Paris", start, execution_time=at, exclude_rrule=rule)
    assert due_times(out, at - MINUTE, at, 10)[0] == []
    reason = excluded_reason(out, at)
    assert reason is not None
    assert "exclude_rrule" in reason
    assert preview(out, at, 5).items == []


async def test_a_cron_schedule_keeps_its_exclusion_rule_and_previews_without_it(
    eng: Engine,
) -> None:
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    workflow_id = await new_workflow(eng, "custom", configuration={"steps": steps})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    body = {
        "name": "hourly but noon",
        "schedule_type": "cron",
        "cron_expression": "0 * * * *",
        "start_time": "2026-01-01T00:00:00Z",
        "exclude_rrule": "FREQ=DAILY;BYHOUR=12;BYMINUTE=0",
    }
    schedule = await eng.schedules.create(workflow_id, body)
    assert schedule.exclude_rrule == body["exclude_rrule"]
    shown = await eng.schedules.preview(schedule.id, count=30)
    hours = {i.due_at.hour for i in shown.items}
    assert 12 not in hours
    assert len(hours) == 23
    interval = await eng.schedules.create(
        workflow_id,
        {
            "name": "every 30 min",
            "schedule_type": "interval",
            "interval_value": 30,
            "interval_unit": "minutes",
            "start_time": "2026-01-01T00:00:00Z",
            "exclude_rrule": "FREQ=HOURLY;BYMINUTE=30",
        },
    )
    listed = await eng.schedules.preview(interval.id, count=10)
    assert all(i.due_at.minute == 0 for i in listed.items)
    assert listed.items[0].due_at > start
    for kind, extra in (
        ("cron", {"cron_expression": "0 * * * *"}),
        ("interval", {"interval_value": 5, "interval_unit": "minutes"}),
        ("fixed_time", {"execution_time": "2030-01-01T00:00:00Z"}),
    ):
        with pytest.raises(InvalidSchedule) as refused:
            await eng.schedules.create(
                workflow_id,
                {"name": "bad", "schedule_type": kind, **extra, "exclude_rrule": "FREQ=NEVER"},
            )
        assert refused.value.details["field"] == "exclude_rrule"
    updated = await eng.schedules.update(schedule.id, {"exclude_rrule": "FREQ=DAILY;BYHOUR=13"})
    assert updated.exclude_rrule == "FREQ=DAILY;BYHOUR=13"
    shown = await eng.schedules.preview(schedule.id, count=30)
    assert {i.due_at.hour for i in shown.items} == set(range(24)) - {13}


async def test_a_firing_on_an_excluded_wall_time_is_skipped(eng: Engine) -> None:
    """The scheduler passes over a cron due time the exclusion rule gives (history
    skipped_excluded, saying so) and the schedule goes on to the next one."""
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    workflow_id = await new_workflow(eng, "custom", configuration={"steps": steps})
    body = {
        "name": "every minute but even ones",
        "schedule_type": "cron",
        "cron_expression": "* * * * *",
        "exclude_rrule": "FREQ=MINUTELY;INTERVAL=2;BYSECOND=0",
        "overlap_policy": "allow",
    }
    schedule = await eng.schedules.create(workflow_id, body)
    probe = await eng.schedules.preview_unsaved({**body, "exclude_rrule": None, "count": 4})
    kept = [i.due_at for i in (await eng.schedules.preview(schedule.id, count=2)).items]
    assert kept[1] - kept[0] == timedelta(minutes=2)
    for item in probe.items[:3]:
        await eng.scheduler.tick(item.due_at)
    assert [r.scheduled_for for r in started(eng, schedule.id)] == [
        d for d in (i.due_at for i in probe.items[:3]) if d in kept
    ]
    lines = await outcomes(eng, schedule.id)
    skipped = [detail for outcome, detail in lines if outcome == "skipped_excluded"]
    assert skipped
    assert all("exclude_rrule" in (detail or "") for detail in skipped)


async def test_a_create_checks_the_workflow_as_it_is_when_inserted(make: EngineFactory) -> None:
    """A create checks its parameters against the workflow this process last read, and its
    insert against that version: a workflow changed by another process meanwhile is read
    again (the schedule shows its new name), a deleted one is not found."""
    first, other = make("shared.db"), make("shared.db")
    async with first, other:
        steps = [{"name": "wait", "action": "delay", "seconds": 0}]
        workflow_id = await new_workflow(first, "custom", configuration={"steps": steps})
        body = {"name": "h", "schedule_type": "cron", "cron_expression": "0 * * * *"}
        await first.schedules.create(workflow_id, body)  # (its workflow now cached)
        await other.workflows.update(workflow_id, {"name": "renamed elsewhere"})
        created = await first.schedules.create(workflow_id, body)
        assert created.workflow_name == "renamed elsewhere"
        await other.workflows.deactivate(workflow_id)
        await other.workflows.delete(workflow_id)
        with pytest.raises(WorkflowNotFound):
            await first.schedules.create(workflow_id, body)
