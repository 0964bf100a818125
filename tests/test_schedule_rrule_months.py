"""MONTHLY and YEARLY rules re-anchored (#17): each step starts from the first of a month a
period or two before the wall time asked about, with the values dateutil takes from
DTSTART written out, instead of walking from DTSTART (a counted rule: up to COUNT
occurrences at every step). The steps are checked against dateutil's own full
expansion of the rule as written (``COUNT`` included).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from dateutil.rrule import rrulestr
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from abi_engine.schedule_rrule import RuleWalls, _explicit, compile_rrule

MINUTE = timedelta(minutes=1)


@st.composite
def month_rules(draw: st.DrawFn) -> str:
    """A random MONTHLY or YEARLY rule, with or without a day part, maybe counted."""
    freq = draw(st.sampled_from(["MONTHLY", "YEARLY"]))
    parts = [f"FREQ={freq}", f"INTERVAL={draw(st.integers(1, 3))}"]
    day = draw(st.sampled_from(["none", "monthday", "byday", "nth", "setpos", "yearly"]))
    if day == "monthday":
        days = draw(st.lists(st.sampled_from([1, 15, 28, 29, 30, 31, -1]), min_size=1, max_size=3))
        parts.append("BYMONTHDAY=" + ",".join(map(str, sorted(set(days)))))
    elif day == "byday":
        parts.append("BYDAY=" + draw(st.sampled_from(["MO", "SA,SU", "TU,TH"])))
    elif day == "nth":
        parts.append("BYDAY=" + draw(st.sampled_from(["1MO", "-1FR", "2TU,4TU"])))
    elif day == "setpos":
        parts.append("BYDAY=MO,TU,WE,TH,FR;BYSETPOS=" + draw(st.sampled_from(["1", "-1", "2,-2"])))
    elif day == "yearly" and freq == "YEARLY":
        parts.append(draw(st.sampled_from(["BYYEARDAY=1,100,-1", "BYWEEKNO=1,20;BYDAY=MO"])))
    if draw(st.booleans()):
        parts.append("BYMONTH=" + ",".join(map(str, sorted(set(draw(st.lists(
            st.integers(1, 12), min_size=1, max_size=3)))))))  # fmt: skip
    if draw(st.booleans()):
        parts.append(f"BYHOUR={draw(st.integers(0, 23))}")
    if draw(st.booleans()):
        parts.append(f"BYMINUTE={draw(st.integers(0, 59))}")
    if draw(st.integers(0, 3)) > 0:
        parts.append(f"COUNT={draw(st.integers(1, 120))}")
    return ";".join(parts)


STARTS = st.datetimes(min_value=datetime(1995, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(second=0, microsecond=0)
)


def _walls(text: str, start: datetime) -> RuleWalls:
    """The rule compiled in UTC (wall times are then instants, naive)."""
    try:
        return compile_rrule(text, None, "UTC", start.replace(tzinfo=UTC))
    except ValueError as exc:
        refused = str(exc)
    assert "empty set" in refused, refused
    assume(False)
    raise AssertionError(refused)


def _expansion(text: str, start: datetime, limit: int) -> list[datetime]:
    """dateutil's occurrences of the rule as written, from DTSTART (at most ``limit``)."""
    found = []
    for occurrence in rrulestr(text, dtstart=start):
        found.append(occurrence)
        if len(found) >= limit:
            break
    return found


@settings(max_examples=150, deadline=None)
@given(text=month_rules(), start=STARTS, picks=st.lists(st.integers(0, 10**6), max_size=6))
def test_monthly_and_yearly_steps_match_dateutils_full_expansion(
    text: str, start: datetime, picks: list[int]
) -> None:
    """Forward and backward steps from (and just before, and between) occurrences picked
    anywhere in the expansion are the expansion's neighbours; past a counted rule's last
    occurrence there is none."""
    walls = _walls(text, start)
    counted = "COUNT=" in text
    expected = _expansion(text, start, 10**6 if counted else 150)
    assume(expected)
    for pick in [0, len(expected) - 1, *picks]:
        i = pick % len(expected)
        occurrence = expected[i]
        following = expected[i + 1] if i + 1 < len(expected) else None
        if following is not None or counted:
            assert walls.next_wall(occurrence) == following, (text, start, occurrence)
        assert walls.next_wall(occurrence - MINUTE) == occurrence, (text, start, occurrence)
        assert walls.prev_wall(occurrence) == (expected[i - 1] if i else None), (text, start)
        assert walls.prev_wall(occurrence + MINUTE) == occurrence, (text, start, occurrence)
        if following is not None:
            between = occurrence + (following - occurrence) / 2
            between = between.replace(second=0, microsecond=0)
            if occurrence < between < following:
                assert walls.next_wall(between) == following
                assert walls.prev_wall(between) == occurrence
    if counted:
        assert walls.next_wall(expected[-1] + timedelta(days=400)) is None
        assert walls.prev_wall(expected[-1] + timedelta(days=4000)) == expected[-1]


@given(text=month_rules(), start=STARTS)
def test_the_written_out_rule_has_the_same_occurrences(text: str, start: datetime) -> None:
    """:func:`_explicit` writes out what dateutil takes from DTSTART: from DTSTART on, the
    rule so written has the occurrences of the rule as given."""
    try:
        given_rule = rrulestr(text, dtstart=start)
    except ValueError:
        assume(False)
        raise
    written = rrulestr(_explicit(text, start), dtstart=start)
    assert list(written.xafter(start, count=40, inc=True)) == list(
        given_rule.xafter(start, count=40, inc=True)
    )


def test_a_counted_monthly_rule_steps_without_walking_from_its_start() -> None:
    """Every weekday minute-quarter of a month, counted to 60,000 (two years and more):
    a step near its end walked the whole count from DTSTART (~0.2 s); re-anchored, it
    looks at the last months only."""
    start = datetime(2025, 1, 1)
    text = "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9,10,11,12;BYMINUTE=0,15,30,45;COUNT=60000"
    walls = compile_rrule(text, None, "UTC", start.replace(tzinfo=UTC))  # (walks it once)
    assert walls.last is not None
    wall = walls.last - timedelta(days=20)
    began = time.process_time()
    for _ in range(200):
        found = walls.next_wall(wall)
        assert found is not None
        wall = found
    elapsed = time.process_time() - began
    expected = list(rrulestr(text, dtstart=start).xafter(walls.last - timedelta(days=20)))[:200]
    assert wall == expected[-1]
    assert elapsed < 2.0, elapsed  # ~5 ms here; walking from DTSTART: ~40 s
