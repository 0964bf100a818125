"""Daylight-saving choices (``on_gap``, ``on_fold``) against the brute-force oracle.

The oracle of tests/test_schedule_math.py, with the choices: a UTC minute
``m`` fires when

(a) its wall time matches the expression and either happens once, or happens
    twice and ``m`` is a pass ``on_fold`` keeps (``first``: ``fold == 0``,
    ``last``: ``fold == 1``, ``both``: either), or
(b) ``on_gap`` is ``shift``, ``m`` is the first minute after a spring-forward
    gap and some wall minute inside the gap matches.

Going backwards and counting are checked against enumeration with
:func:`next_cron` (vouched for by the oracle), as for the defaults.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_schedule_math import SCAN, Cron, cron_expressions, zone_and_instant

from abi_engine.schedule_math import (
    Timing,
    count_cron,
    next_cron,
    occurrence_flags,
    prev_cron,
    upcoming,
)
from abi_engine.schedule_rules import plan_missed

MINUTE = timedelta(minutes=1)
GAPS = st.sampled_from(["shift", "skip"])
FOLDS = st.sampled_from(["first", "last", "both"])


def _ambiguous(wall: datetime, tz: ZoneInfo) -> bool:
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    assert first is not None
    assert second is not None
    return first > second


def fires(cron: Cron, tz: ZoneInfo, m: datetime, on_gap: str, on_fold: str) -> bool:
    """Rules (a) and (b) of the module docstring, for the UTC minute ``m``."""
    local = m.astimezone(tz)
    wall = local.replace(tzinfo=None)
    if cron.matches(wall):
        if not _ambiguous(wall, tz) or on_fold == "both":
            return True
        if (on_fold == "first") == (local.fold == 0):
            return True
    if on_gap == "skip":
        return False
    before = (m - MINUTE).astimezone(tz).replace(tzinfo=None)
    t = before + MINUTE
    while t < wall:
        if cron.matches(t):
            return True
        t += MINUTE
    return False


def oracle(
    cron: Cron, tz: ZoneInfo, after: datetime, span: timedelta, on_gap: str, on_fold: str
) -> datetime | None:
    m = after.replace(second=0, microsecond=0) + MINUTE
    while m <= after + span:
        if fires(cron, tz, m, on_gap, on_fold):
            return m
        m += MINUTE
    return None


@given(cron=cron_expressions(), where=zone_and_instant(), on_gap=GAPS, on_fold=FOLDS)
@example(
    cron=Cron("30 1 * * *", frozenset({30}), frozenset({1}), None, frozenset(range(1, 13)), None),
    where=("America/New_York", datetime(2024, 11, 3, 5, 40, tzinfo=UTC)),
    on_gap="shift",
    on_fold="last",
)
@example(
    cron=Cron("30 2 * * *", frozenset({30}), frozenset({2}), None, frozenset(range(1, 13)), None),
    where=("America/New_York", datetime(2024, 3, 9, 12, tzinfo=UTC)),
    on_gap="skip",
    on_fold="first",
)
def test_next_cron_with_choices_matches_the_oracle(
    cron: Cron, where: tuple[str, datetime], on_gap: str, on_fold: str
) -> None:
    """next_cron with any choice equals the first firing minute of a minute-by-minute scan."""
    name, after = where
    if not cron.possible():
        return
    tz = ZoneInfo(name)
    got = next_cron(cron.text, name, after, on_gap, on_fold)
    expected = oracle(cron, tz, after, SCAN, on_gap, on_fold)
    if expected is not None:
        assert got == expected, (cron.text, name, after, on_gap, on_fold)
        return
    assert got > after + SCAN
    assert fires(cron, tz, got, on_gap, on_fold), (cron.text, name, got)
    start = max(after, got - SCAN)
    assert oracle(cron, tz, start, got - start, on_gap, on_fold) == got


def _runs(text: str, name: str, after: datetime, until: datetime, gap: str, fold: str) -> list:
    found, due = [], next_cron(text, name, after, gap, fold)
    while due <= until:
        found.append(due)
        due = next_cron(text, name, due, gap, fold)
    return found


@given(
    cron=cron_expressions(),
    where=zone_and_instant(),
    span=st.integers(1, 3 * 1440),
    on_gap=GAPS,
    on_fold=FOLDS,
)
def test_prev_and_count_with_choices_agree_with_next(
    cron: Cron, where: tuple[str, datetime], span: int, on_gap: str, on_fold: str
) -> None:
    """prev_cron is the run before, count_cron the number of runs, under any choice."""
    name, after = where
    if not cron.possible():
        return
    until = after + timedelta(minutes=span)
    runs = _runs(cron.text, name, after, until, on_gap, on_fold)
    assert count_cron(cron.text, name, after, until, on_gap, on_fold) == len(runs)
    following = next_cron(cron.text, name, after, on_gap, on_fold)
    previous = prev_cron(cron.text, name, following, on_gap, on_fold)
    assert previous is None or previous <= after
    if previous is not None:
        assert next_cron(cron.text, name, previous, on_gap, on_fold) == following
    if runs:
        assert (
            prev_cron(cron.text, name, until + timedelta(microseconds=1), on_gap, on_fold)
            == (runs[-1])
        )


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("on_fold", "expected"),
    [
        ("first", [_utc(2024, 11, 3, 4), _utc(2024, 11, 3, 5), _utc(2024, 11, 3, 7)]),
        ("last", [_utc(2024, 11, 3, 4), _utc(2024, 11, 3, 6), _utc(2024, 11, 3, 7)]),
        (
            "both",
            [
                _utc(2024, 11, 3, 4),
                _utc(2024, 11, 3, 5),
                _utc(2024, 11, 3, 6),
                _utc(2024, 11, 3, 7),
            ],
        ),
    ],
)
def test_hourly_on_the_fall_back_day(on_fold: str, expected: list[datetime]) -> None:
    """New York, 2024-11-03: 01:00 happens at 05:00Z (EDT) and at 06:00Z (EST)."""
    start = _utc(2024, 11, 3, 3, 30)
    runs = _runs("0 * * * *", "America/New_York", start, _utc(2024, 11, 3, 7), "shift", on_fold)
    assert runs == expected
    timing = Timing(
        kind="cron", cron_expression="0 * * * *", timezone="America/New_York", on_fold=on_fold
    )
    flags = [repeated for _, _, repeated in upcoming(timing, expected[0], len(expected))]
    assert flags == [False] + [True] * (len(expected) - 2) + [False]


@pytest.mark.parametrize(
    ("on_gap", "expected"),
    [("shift", _utc(2024, 3, 10, 7)), ("skip", _utc(2024, 3, 11, 6, 30))],
)
def test_gap_shift_or_skip(on_gap: str, expected: datetime) -> None:
    """02:30 does not exist in New York on 2024-03-10: shifted to 03:00 EDT, or skipped."""
    got = next_cron("30 2 * * *", "America/New_York", _utc(2024, 3, 9, 12), on_gap)
    assert got == expected
    shifted, _ = occurrence_flags("30 2 * * *", "America/New_York", got, on_gap)
    assert shifted is (on_gap == "shift")


def test_skip_keeps_the_wall_time_at_the_end_of_the_gap() -> None:
    """With skip, 03:00 (which exists) still runs; 02:00 and 02:30 (in the gap) do not."""
    runs = _runs(
        "0,30 2,3 * * *",
        "America/New_York",
        _utc(2024, 3, 10, 5),
        _utc(2024, 3, 10, 8),
        "skip",
        "first",
    )
    assert runs == [_utc(2024, 3, 10, 7), _utc(2024, 3, 10, 7, 30)]


def test_plan_missed_counts_both_passes() -> None:
    """A downtime over the fall-back hour with ``both``: the misfire count includes the
    repeated hour's two passes, exactly."""
    timing = Timing(
        kind="cron", cron_expression="*/15 * * * *", timezone="Europe/Paris", on_fold="both"
    )
    first = _utc(2024, 10, 26, 22)
    now = _utc(2024, 10, 27, 3, 1)
    missed = plan_missed(
        timing, first, now, grace=timedelta(seconds=60), policy="skip", catch_up_limit=10
    )
    # 22:00Z to 03:00Z is five hours: 21 due times, none lost nor doubled by the fold.
    assert missed.count == 21
    default = Timing(kind="cron", cron_expression="*/15 * * * *", timezone="Europe/Paris")
    # The default runs the repeated 02:xx once: four fewer.
    assert (
        plan_missed(
            default, first, now, grace=timedelta(seconds=60), policy="skip", catch_up_limit=10
        ).count
        == 17
    )
