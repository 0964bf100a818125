"""RRULE schedules (#17 point 1): the rule's due times against dateutil's own expansion,
and the schedules over the engine (both backends), REST and WorkflowScheduler.

The oracle expands each random rule with dateutil itself (an ``rruleset`` with
the exclusion rule as ``exrule``), from its DTSTART on the zone's wall clock,
and scans UTC minute by minute with the rules of tests/test_schedule_dst.py
(a wall time runs at the passes ``on_fold`` keeps; with ``on_gap`` ``shift``
the minute ending a gap runs if a wall time of the gap is in the expansion).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import attrs
import pytest
from dateutil.rrule import rruleset, rrulestr
from hypothesis import assume, given
from hypothesis import strategies as st
from runtime_plugins.helpers import DatabaseFactory, new_workflow
from served_engines import WAYS, Served, served
from test_schedule_dst import fires
from test_schedule_math import zone_and_instant

from abi_engine import Engine
from abi_engine.errors import InvalidSchedule
from abi_engine.schedule_math import Timing, zone
from abi_engine.schedule_rrule import RuleWalls, compile_rrule

pytestmark = pytest.mark.anyio

MINUTE = timedelta(minutes=1)
SCAN = timedelta(days=2)
GAPS = st.sampled_from(["shift", "skip"])
FOLDS = st.sampled_from(["first", "last", "both"])


@attrs.frozen
class Expanded:
    """A rule's wall times near an instant, listed by dateutil (``matches`` as a cron's)."""

    walls: frozenset[datetime]

    def matches(self, wall: datetime) -> bool:
        return wall in self.walls


@st.composite
def rules(draw: st.DrawFn) -> tuple[str, str | None, int]:
    """A random rule (whole minutes), maybe an exclusion rule, and how many days before the
    instant its DTSTART lies (short for the frequent ones: dateutil walks from it)."""
    freq = draw(st.sampled_from(["MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}", f"INTERVAL={draw(st.integers(1, 4))}"]
    if freq == "MINUTELY":
        parts[1] = f"INTERVAL={draw(st.integers(5, 45))}"
    if freq != "MINUTELY" and draw(st.booleans()):
        hours = draw(st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True))
        parts.append("BYHOUR=" + ",".join(map(str, hours)))
    if freq not in ("MINUTELY", "HOURLY") or draw(st.booleans()):
        minutes = draw(st.lists(st.integers(0, 59), min_size=1, max_size=3, unique=True))
        parts.append("BYMINUTE=" + ",".join(map(str, minutes)))
    if draw(st.integers(0, 2)) == 0:
        days = draw(
            st.lists(
                st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        parts.append("BYDAY=" + ",".join(days))
    if freq in ("MONTHLY", "YEARLY") and draw(st.booleans()):
        parts.append(f"BYMONTHDAY={draw(st.sampled_from([1, 15, 28, -1]))}")
    parts.append("BYSECOND=0")
    if draw(st.integers(0, 4)) == 0:
        parts.append(f"COUNT={draw(st.integers(1, 50))}")
    exclude = None
    if draw(st.integers(0, 3)) == 0:
        exclude = f"FREQ=DAILY;BYHOUR={draw(st.integers(0, 23))};BYSECOND=0"
        if "BYMINUTE" in ";".join(parts):
            exclude += ";" + next(p for p in parts if p.startswith("BYMINUTE"))
    back = draw(st.integers(0, 3 if freq in ("MINUTELY", "HOURLY") else 400))
    return ";".join(parts), exclude, back


def _expansion(
    text: str, exclude: str | None, dtstart: datetime, low: datetime, high: datetime
) -> Expanded:
    found = rruleset()
    found.rrule(rrulestr(text, dtstart=dtstart))
    if exclude is not None:
        found.exrule(rrulestr(exclude, dtstart=dtstart))
    return Expanded(frozenset(found.between(low, high, inc=True)))


def _compiled(text: str, exclude: str | None, name: str, start: datetime) -> RuleWalls:
    """The rule compiled; dateutil refuses some random ones (a BYxxx set that is empty)."""
    try:
        return compile_rrule(text, exclude, name, start)
    except ValueError as exc:
        refused = str(exc)
    assert "empty set" in refused
    assume(False)
    raise AssertionError(refused)


@given(rule=rules(), where=zone_and_instant(), on_gap=GAPS, on_fold=FOLDS)
def test_rrule_due_times_match_dateutils_expansion(
    rule: tuple[str, str | None, int], where: tuple[str, datetime], on_gap: str, on_fold: str
) -> None:
    """The next due time of a random rule is the first firing minute of a scan over
    dateutil's own expansion, under every daylight-saving choice; going backwards from it
    finds a due time at or before the start."""
    text, exclude, back = rule
    name, after = where
    tz = ZoneInfo(name)
    start = (after - timedelta(days=back)).replace(second=0, microsecond=0)
    walls = _compiled(text, exclude, name, start)
    timing = Timing(kind="rrule", timezone=name, walls=walls, on_gap=on_gap, on_fold=on_fold)
    got = timing.next_after(after)
    dtstart = start.astimezone(tz).replace(tzinfo=None)
    wall = after.astimezone(tz).replace(tzinfo=None)
    near = _expansion(
        text, exclude, dtstart, wall - timedelta(hours=4), wall + SCAN + timedelta(hours=4)
    )
    m = after.replace(second=0, microsecond=0) + MINUTE
    expected = None
    while m <= after + SCAN:
        if fires(near, tz, m, on_gap, on_fold):  # type: ignore[arg-type]
            expected = m
            break
        m += MINUTE
    if expected is not None:
        assert got == expected, (text, exclude, name, after, start)
    elif got is not None:
        assert got > after + SCAN
        late = got.astimezone(tz).replace(tzinfo=None)
        around = _expansion(
            text, exclude, dtstart, late - timedelta(hours=4), late + timedelta(hours=4)
        )
        assert fires(around, tz, got, on_gap, on_fold)  # type: ignore[arg-type]
    if got is not None:
        before = timing.prev_before(got)
        assert before is None or before <= after
        if before is not None:
            assert timing.next_after(before) == got


@given(rule=rules(), where=zone_and_instant(), span=st.integers(1, 3 * 1440))
def test_rrule_count_is_the_number_of_due_times(
    rule: tuple[str, str | None, int], where: tuple[str, datetime], span: int
) -> None:
    text, exclude, back = rule
    name, after = where
    start = (after - timedelta(days=back)).replace(second=0, microsecond=0)
    timing = Timing(kind="rrule", timezone=name, walls=_compiled(text, exclude, name, start))
    until = after + timedelta(minutes=span)
    listed, due = 0, timing.next_after(after)
    while due is not None and due <= until:
        listed, due = listed + 1, timing.next_after(due)
    assert timing.count(after, until) == listed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("FREQ=SECONDLY", "SECONDLY"),
        ("BYHOUR=9", "FREQ"),
        ("FREQ=DAILY;BYHOUR=25", "invalid RRULE"),
        ("FREQ=FORTNIGHTLY", "invalid RRULE"),
        ("FREQ=DAILY;COUNT=1000001", "COUNT"),
        ("DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "one RRULE"),
    ],
)
def test_bad_rules_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_rrule(text, None, "UTC", datetime(2026, 1, 1, tzinfo=UTC))


def test_until_in_utc_is_read_on_the_wall_clock() -> None:
    """``UNTIL=...Z`` bounds the rule at that instant, though the rule runs in wall time."""
    walls = compile_rrule(
        "RRULE:FREQ=DAILY;BYHOUR=9;BYMINUTE=0;UNTIL=20260105T080000Z",
        None,
        "Europe/Paris",
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    timing = Timing(kind="rrule", timezone="Europe/Paris", walls=walls)
    due = timing.next_after(datetime(2026, 1, 1, tzinfo=UTC))
    runs = []
    while due is not None:
        runs.append(due)
        due = timing.next_after(due)
    assert runs == [datetime(2026, 1, d, 8, tzinfo=UTC) for d in range(1, 6)]


def test_a_minutely_rule_a_year_old_steps_as_fast_as_a_new_one() -> None:
    """Re-anchoring: dateutil would walk a year of minutes from DTSTART at every step."""
    import time

    start = datetime(2025, 1, 1, tzinfo=UTC)
    walls = compile_rrule("FREQ=MINUTELY;INTERVAL=5", None, "Europe/Paris", start)
    timing = Timing(kind="rrule", timezone="Europe/Paris", walls=walls)
    after = datetime(2026, 3, 29, 0, 58, tzinfo=UTC)
    began = time.perf_counter()
    for _ in range(100):
        due = timing.next_after(after)
    elapsed = time.perf_counter() - began
    assert due == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert elapsed < 1.0, elapsed  # ~0.1 ms a step here; without it, ~100 ms


# -- the engine --------------------------------------------------------------------------------


async def a_workflow(engine: Engine) -> str:
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    return await new_workflow(engine, "custom", configuration={"steps": steps})


WEEKDAYS_9 = {
    "name": "weekdays",
    "schedule_type": "rrule",
    "rrule": "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9;BYMINUTE=0;BYSECOND=0",
    "timezone": "America/New_York",
}


async def test_an_rrule_schedule_is_stored_and_previewed(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(
        workflow_id, {**WEEKDAYS_9, "exclude_rrule": "FREQ=WEEKLY;BYDAY=WE;BYHOUR=9;BYMINUTE=0"}
    )
    assert schedule.schedule_type.value == "rrule"
    assert schedule.rrule == WEEKDAYS_9["rrule"]
    assert schedule.start_time is not None
    read = await eng.schedules.get(schedule.id)
    assert read.exclude_rrule == "FREQ=WEEKLY;BYDAY=WE;BYHOUR=9;BYMINUTE=0"
    preview = await eng.schedules.preview(schedule.id, count=20)
    assert preview.items[0].due_at == schedule.next_execution
    local = [datetime.fromisoformat(i.local_time) for i in preview.items]
    assert all(t.hour == 9 and t.minute == 0 for t in local)
    assert {t.isoweekday() for t in local} == {1, 2, 4, 5}  # Wednesdays excluded


async def test_count_ends_the_schedule_and_a_rule_that_never_fires_is_refused(eng: Engine) -> None:
    workflow_id = await a_workflow(eng)
    three = await eng.schedules.create(
        workflow_id, {**WEEKDAYS_9, "rrule": "FREQ=DAILY;BYHOUR=9;BYMINUTE=0;COUNT=3"}
    )
    preview = await eng.schedules.preview(three.id, count=10)
    assert len(preview.items) == 3
    with_max = await eng.schedules.preview_unsaved(
        {**WEEKDAYS_9, "rrule": "FREQ=DAILY;COUNT=30", "max_runs": 2, "count": 10}
    )
    assert len(with_max.items) == 2
    for body, field in (
        ({**WEEKDAYS_9, "rrule": "FREQ=DAILY;UNTIL=20200101T000000Z"}, "rrule"),
        ({**WEEKDAYS_9, "rrule": "FREQ=DAILY;BYHOUR=9", "exclude_rrule": "FREQ=HOURLY"}, "rrule"),
        ({**WEEKDAYS_9, "rrule": None}, "rrule"),
        ({**WEEKDAYS_9, "rrule": "FREQ=SECONDLY"}, "rrule"),
        ({**WEEKDAYS_9, "exclude_rrule": "FREQ=NEVER"}, "exclude_rrule"),
        ({**WEEKDAYS_9, "start_time": "0001-01-01T00:00:00Z"}, "start_time"),
        ({**WEEKDAYS_9, "start_time": "9999-12-31T23:59:00Z"}, "start_time"),
    ):
        with pytest.raises(InvalidSchedule) as refused:
            await eng.schedules.create(workflow_id, body)
        assert refused.value.details["field"] == field, body


async def test_an_every_second_minute_rule_fires(eng: Engine) -> None:
    """A rule due now-ish fires through the scheduler loop like any schedule."""
    workflow_id = await a_workflow(eng)
    schedule = await eng.schedules.create(
        workflow_id,
        {"name": "r", "schedule_type": "rrule", "rrule": "FREQ=MINUTELY;INTERVAL=1", "max_runs": 1},
    )
    assert schedule.next_execution is not None
    assert schedule.next_execution - datetime.now(UTC) <= timedelta(seconds=61)


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


@pytest.mark.parametrize("way", WAYS)
def test_rrule_over_rest_and_the_python_api(api: Served, way: str) -> None:
    from abi.workflows import WorkflowScheduler

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
        name="weekdays",
        schedule_type="rrule",
        rrule=WEEKDAYS_9["rrule"],
        timezone="America/New_York",
        on_fold="both",
    )
    data = client.get(f"/api/v1/workflow_schedules/{schedule.id}").json()["data"]
    assert (data["schedule_type"], data["rrule"], data["on_fold"]) == (
        "rrule",
        WEEKDAYS_9["rrule"],
        "both",
    )
    schedule.rrule = "FREQ=DAILY;BYHOUR=7;BYMINUTE=30"
    updated = scheduler.update_schedule(schedule)
    assert updated.rrule == "FREQ=DAILY;BYHOUR=7;BYMINUTE=30"
    assert updated.next_execution is not None
    assert updated.next_execution.astimezone(zone("America/New_York")).strftime("%H:%M") == "07:30"
    bad = client.put(
        f"/api/v1/workflow_schedules/{schedule.id}", json={"rrule": "FREQ=DAILY;BYHOUR=99"}
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["details"]["field"] == "rrule"


def test_an_exclusion_rule_keeps_its_own_frequency_and_start() -> None:
    """A minutely rule excluding ``FREQ=DAILY;BYHOUR=3`` skips 03:00 (the exclusion's
    minute is its DTSTART's, 0): re-anchoring the exclusion by the rule's one-minute
    period once moved that minute, and 03:00 ran."""
    walls = compile_rrule(
        "FREQ=MINUTELY", "FREQ=DAILY;BYHOUR=3", "Europe/Paris", datetime(2025, 11, 1, tzinfo=UTC)
    )
    assert walls.next_wall(datetime(2026, 1, 2, 2, 59)) == datetime(2026, 1, 2, 3, 1)
    assert walls.prev_wall(datetime(2026, 1, 2, 3, 1)) == datetime(2026, 1, 2, 2, 59)


def test_a_counted_rule_steps_without_walking_from_its_start() -> None:
    """A counted minutely rule (COUNT=90000, two months of minutes) with an exclusion:
    each step re-anchors near the instant asked about (the count kept as the last
    occurrence) instead of walking tens of thousands of minutes from DTSTART, which
    took a third of a second a step (a hypothesis example ran for many minutes). The
    steps agree with dateutil's own counted expansion."""
    start = datetime(2025, 11, 1, tzinfo=UTC)
    rule, exclude = "FREQ=MINUTELY;COUNT=90000", "FREQ=DAILY;BYHOUR=3;BYSECOND=0"
    walls = compile_rrule(rule, exclude, "Europe/Paris", start)
    dtstart = start.astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
    oracle = rruleset()
    oracle.rrule(rrulestr(rule, dtstart=dtstart))
    oracle.exrule(rrulestr(exclude, dtstart=dtstart))
    wall = datetime(2026, 1, 1, 2, 50)
    expected = oracle.between(wall, wall + timedelta(hours=2))
    got = []
    for _ in range(len(expected)):
        wall = walls.next_wall(wall)
        got.append(wall)
    assert got == expected
    assert datetime(2026, 1, 1, 3, 0) not in got
    last = list(rrulestr(rule, dtstart=dtstart))[-1]
    assert walls.next_wall(last - timedelta(minutes=1)) == last
    assert walls.next_wall(last) is None
    assert walls.prev_wall(last + timedelta(days=30)) == last
