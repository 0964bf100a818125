"""Plain rules (``DAILY``/``WEEKLY``, interval 1, ``BYDAY``/``BYHOUR``/``BYMINUTE``/``BYMONTH``)
step as cron does, without dateutil: the same wall times as dateutil's expansion (#17)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dateutil.rrule import rrulestr
from hypothesis import given
from hypothesis import strategies as st

from abi_engine.schedule_rrule import compile_rrule

DAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


def _values(low: int, high: int) -> st.SearchStrategy[str]:
    return st.lists(st.integers(low, high), min_size=1, max_size=3).map(
        lambda v: ",".join(f"{x:02d}" if x % 3 == 0 else str(x) for x in v)
    )


@st.composite
def plain_rules(draw: st.DrawFn) -> str:
    parts = [f"FREQ={draw(st.sampled_from(['DAILY', 'WEEKLY']))}"]
    if draw(st.booleans()):
        parts.append("INTERVAL=1")
    if draw(st.booleans()):
        parts.append("BYDAY=" + ",".join(draw(st.lists(st.sampled_from(DAYS), min_size=1))))
    for key, low, high in [("BYHOUR", 0, 23), ("BYMINUTE", 0, 59), ("BYMONTH", 1, 12)]:
        if draw(st.integers(0, 2)) > 0 or (key == "BYMONTH" and draw(st.booleans())):
            parts.append(f"{key}={draw(_values(low, high))}")
    parts = draw(st.permutations(parts))
    text = ";".join(parts)
    return text if draw(st.booleans()) else "RRULE:" + text.lower()


INSTANTS = st.datetimes(datetime(1995, 1, 1), datetime(2150, 1, 1), timezones=st.just(UTC))


@given(
    text=plain_rules(),
    name=st.sampled_from(ZONES),
    start=INSTANTS,
    offset=st.integers(-3 * 86400, 800 * 86400),
)
def test_plain_rules_step_as_dateutil_expands_them(
    text: str, name: str, start: datetime, offset: int
) -> None:
    """The next wall time (strictly after any wall time, before or after DTSTART) is
    dateutil's, and the rule parsed only for it is dateutil's rule."""
    walls = compile_rrule(text, None, name, start)
    assert walls.plain is not None, text
    expected_rule = rrulestr(walls.text, dtstart=walls.dtstart)
    wall = walls.dtstart + timedelta(seconds=offset)
    assert walls.next_wall(wall) == expected_rule.after(wall), (text, walls.dtstart, wall)
    assert str(walls.rule) == str(expected_rule)


@pytest.mark.parametrize(
    "text",
    [
        "FREQ=DAILY;BYSECOND=0",
        "FREQ=DAILY;INTERVAL=2",
        "FREQ=WEEKLY;BYDAY=1MO",
        "FREQ=DAILY;COUNT=3",
        "FREQ=DAILY;UNTIL=20300101T000000",
        "FREQ=MONTHLY;BYHOUR=9",
        "FREQ=DAILY;BYHOUR=9;BYHOUR=10",
        "FREQ=WEEKLY;WKST=SU;BYDAY=MO",
    ],
)
def test_other_rules_are_left_to_dateutil(text: str) -> None:
    """Anything else is not plain: dateutil expands it."""
    walls = compile_rrule(text, None, "UTC", datetime(2026, 1, 1, tzinfo=UTC))
    assert walls.plain is None
    assert walls.next_wall(datetime(2026, 1, 1)) is not None


@pytest.mark.parametrize("text", ["FREQ=DAILY;BYMINUTE=75", "FREQ=DAILY;", "FREQ=DAILY;BYHOUR="])
def test_invalid_near_plain_rules_are_refused_by_dateutil_as_before(text: str) -> None:
    with pytest.raises(ValueError, match="invalid RRULE"):
        compile_rrule(text, None, "UTC", datetime(2026, 1, 1, tzinfo=UTC))


def test_a_rule_with_an_exclusion_rule_is_not_plain() -> None:
    walls = compile_rrule(
        "FREQ=DAILY;BYHOUR=9",
        "FREQ=WEEKLY;BYDAY=SA,SU;BYHOUR=9",
        "UTC",
        datetime(2026, 1, 5, tzinfo=UTC),
    )
    assert walls.plain is None
    assert walls.next_wall(datetime(2026, 1, 9, 10)) == datetime(2026, 1, 12, 9)
