"""Due times: cron on a zone's wall clock (DST gaps and folds), intervals, validation, and
the planning of missed due times after downtime.

The property tests compare :func:`next_cron` with an independent brute-force
oracle that walks UTC minute by minute. A UTC minute ``m`` fires when

(a) its wall time in the zone matches the expression and is the first
    occurrence of that wall time (``fold == 0`` after ``astimezone``), or
(b) ``m`` is the first minute after a spring-forward gap and some wall
    minute inside the gap (strictly between the wall times of ``m - 1 min``
    and ``m``) matches.

The oracle matches wall times against value sets built by the expression
strategy itself, not by the code under test.

Going backwards (:func:`prev_cron`), counting (:func:`count_cron`) and the
misfire planning built on them (:func:`plan_missed`) are checked against
plain enumeration with :func:`next_cron`, which the oracle vouches for.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from abi_engine.schedule_cron import ALIASES, _croniter_spec, _plain_spec, compile_cron
from abi_engine.schedule_math import (
    Timing,
    count_cron,
    count_interval,
    next_cron,
    next_interval,
    prev_cron,
    prev_interval,
    resolve_local,
    zone,
)
from abi_engine.schedule_rules import MAX_FIRED_PER_TICK, Missed, plan_missed

MINUTE = timedelta(minutes=1)
ZONES = [
    "America/New_York",
    "Europe/London",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Santiago",
    "UTC",
]
#: How far the oracle scans before trusting a far-away answer by other checks.
SCAN = timedelta(days=2)
MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MONTH_DAYS = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}


# -- the oracle ------------------------------------------------------------------------------


@attrs.frozen
class Cron:
    """An expression and, independently built, the values each field allows (None: ``*``)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None
    months: frozenset[int]
    weekdays: frozenset[int] | None

    def matches(self, wall: datetime) -> bool:
        """Standard cron matching of a naive wall time (day fields OR-ed when both restricted)."""
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        dom = self.days is None or wall.day in self.days
        dow = self.weekdays is None or wall.isoweekday() % 7 in self.weekdays
        if self.days is not None and self.weekdays is not None:
            return dom or dow
        return dom and dow

    def possible(self) -> bool:
        """Whether some real calendar date matches the day and month fields."""
        if self.days is None or self.weekdays is not None:
            return True
        return any(d <= MONTH_DAYS.get(m, 31) for d in self.days for m in self.months)


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def fires(cron: Cron, tz: ZoneInfo, m: datetime) -> bool:
    """Whether the UTC minute ``m`` is a run of ``cron`` in ``tz`` (rules (a) and (b) above)."""
    local = m.astimezone(tz)
    wall = local.replace(tzinfo=None)
    if local.fold == 0 and cron.matches(wall):
        return True
    before = _wall(m - MINUTE, tz)
    if wall - before > MINUTE:
        t = before + MINUTE
        while t < wall:
            if cron.matches(t):
                return True
            t += MINUTE
    return False


def oracle_scan(cron: Cron, tz: ZoneInfo, after: datetime, span: timedelta) -> datetime | None:
    """The first UTC minute in ``(after, after + span]`` that fires, scanning minute by minute.

    The same rules as :func:`fires`, with each minute's wall time computed once.
    """
    m = after.replace(second=0, microsecond=0) + MINUTE
    end = after + span
    before = _wall(m - MINUTE, tz)
    while m <= end:
        local = m.astimezone(tz)
        wall = local.replace(tzinfo=None)
        if local.fold == 0 and cron.matches(wall):
            return m
        if wall - before > MINUTE:
            t = before + MINUTE
            while t < wall:
                if cron.matches(t):
                    return m
                t += MINUTE
        before = wall
        m += MINUTE
    return None


# -- strategies ------------------------------------------------------------------------------


def _atoms(low: int, high: int) -> st.SearchStrategy[tuple[str, frozenset[int]]]:
    number = st.integers(low, high).map(lambda n: (str(n), frozenset({n})))

    @st.composite
    def ranged(draw: st.DrawFn) -> tuple[str, frozenset[int]]:
        a = draw(st.integers(low, high))
        b = draw(st.integers(a, high))
        if draw(st.booleans()):
            step = draw(st.integers(1, max(1, high - low)))
            return f"{a}-{b}/{step}", frozenset(range(a, b + 1, step))
        return f"{a}-{b}", frozenset(range(a, b + 1))

    return st.one_of(number, ranged())


@st.composite
def cron_field(
    draw: st.DrawFn,
    low: int,
    high: int,
    *,
    star_steps: bool = True,
    names: list[str] | None = None,
    fold7: bool = False,
) -> tuple[str, frozenset[int] | None]:
    """One field's text and its allowed values (``None`` for ``*``)."""
    kind = draw(st.sampled_from(["star", "star", "atom", "list", "star_step", "name"]))
    if kind == "star":
        return "*", None
    if kind == "star_step" and star_steps:
        step = draw(st.integers(1, high - low))
        return f"*/{step}", frozenset(range(low, high + 1, step))
    if kind == "name" and names:
        index = draw(st.integers(0, len(names) - 1))
        name = draw(st.sampled_from([names[index], names[index].upper()]))
        return name, frozenset({index + low})
    if kind == "list":
        parts = draw(st.lists(_atoms(low, high), min_size=2, max_size=4))
    else:
        parts = [draw(_atoms(low, high))]
    values = frozenset().union(*(v for _, v in parts))
    if fold7:
        values = frozenset(v % 7 for v in values)
    return ",".join(t for t, _ in parts), values


@st.composite
def day_field(
    draw: st.DrawFn,
    low: int,
    high: int,
    full: int,
    names: list[str] | None = None,
    fold7: bool = False,
) -> tuple[str, frozenset[int] | None]:
    """A day-of-month or day-of-week field: ``*`` or a proper subset (dialects agree on those)."""
    text, values = draw(cron_field(low, high, star_steps=False, names=names, fold7=fold7))
    if values is not None and len(values) >= full:
        return "*", None
    return text, values


@st.composite
def cron_expressions(draw: st.DrawFn) -> Cron:
    """Random five-field expressions (or aliases) with their independently computed value sets."""
    if draw(st.integers(0, 9)) == 0:
        alias = draw(st.sampled_from(sorted(ALIASES)))
        star = {"*": None}
        fields = ALIASES[alias].split()
        return Cron(
            text=draw(st.sampled_from([alias, alias.upper()])),
            minutes=frozenset({0}),
            hours=frozenset(range(24)) if fields[1] == "*" else frozenset({0}),
            days=star.get(fields[2], frozenset({1})),
            months=frozenset(range(1, 13)) if fields[3] == "*" else frozenset({1}),
            weekdays=star.get(fields[4], frozenset({0})),
        )
    minute_text, minutes = draw(cron_field(0, 59))
    hour_text, hours = draw(cron_field(0, 23))
    dom_text, days = draw(day_field(1, 31, 31))
    month_text, months = draw(cron_field(1, 12, names=MONTH_NAMES))
    dow_text, weekdays = draw(day_field(0, 7, 7, names=DOW_NAMES, fold7=True))
    return Cron(
        text=" ".join([minute_text, hour_text, dom_text, month_text, dow_text]),
        minutes=minutes if minutes is not None else frozenset(range(60)),
        hours=hours if hours is not None else frozenset(range(24)),
        days=days,
        months=months if months is not None else frozenset(range(1, 13)),
        weekdays=weekdays,
    )


@functools.cache
def transitions(name: str) -> tuple[datetime, ...]:
    """The UTC instants (to the hour) where ``name``'s UTC offset changes in 2020-2030."""
    tz = ZoneInfo(name)
    found = []
    day = datetime(2020, 1, 1, tzinfo=UTC)
    offset = day.astimezone(tz).utcoffset()
    while day.year < 2031:
        following = day + timedelta(days=1)
        if following.astimezone(tz).utcoffset() != offset:
            hour = day
            while hour.astimezone(tz).utcoffset() == offset:
                hour += timedelta(hours=1)
            found.append(hour)
            offset = hour.astimezone(tz).utcoffset()
        day = following
    return tuple(found)


@st.composite
def zone_and_instant(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an instant in 2020-2030, often within a few days of one of its DST changes."""
    name = draw(st.sampled_from(ZONES))
    changes = transitions(name)
    if changes and draw(st.integers(0, 2)) > 0:
        base = draw(st.sampled_from(changes))
        instant = base + timedelta(minutes=draw(st.integers(-2 * 1440, 1440)))
    else:
        instant = draw(
            st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC))
        ).replace(second=0, microsecond=0)
    if draw(st.booleans()):
        instant += timedelta(
            seconds=draw(st.integers(0, 59)), microseconds=draw(st.integers(0, 999_999))
        )
    return name, instant


# -- next_cron against the oracle ------------------------------------------------------------


def _check_against_oracle(cron: Cron, name: str, after: datetime) -> None:
    tz = ZoneInfo(name)
    if not cron.possible():
        with pytest.raises(ValueError, match="never matches"):
            compile_cron(cron.text)
        return
    got = next_cron(cron.text, name, after)
    expected = oracle_scan(cron, tz, after, SCAN)
    if expected is not None:
        assert got == expected, (cron.text, name, after)
        return
    # Nothing within the scan: the answer lies beyond it, is itself a run, and
    # nothing fires in the stretch just before it either.
    assert got > after + SCAN, (cron.text, name, after, got)
    assert (got.second, got.microsecond) == (0, 0)
    assert fires(cron, tz, got), (cron.text, name, got)
    start = max(after, got - SCAN)
    assert oracle_scan(cron, tz, start, got - start) == got, (cron.text, name, after, got)


@given(cron=cron_expressions(), where=zone_and_instant())
@example(
    cron=Cron("30 2 * * *", frozenset({30}), frozenset({2}), None, frozenset(range(1, 13)), None),
    where=("America/New_York", datetime(2024, 3, 9, 12, tzinfo=UTC)),
)
@example(
    cron=Cron("0 0 * * *", frozenset({0}), frozenset({0}), None, frozenset(range(1, 13)), None),
    where=("America/Santiago", datetime(2024, 9, 7, 12, tzinfo=UTC)),
)
@example(
    cron=Cron("15 2 * * *", frozenset({15}), frozenset({2}), None, frozenset(range(1, 13)), None),
    where=("Australia/Lord_Howe", datetime(2024, 10, 5, 12, tzinfo=UTC)),
)
@example(
    cron=Cron(
        "*/7 1 * * *",
        frozenset(range(0, 60, 7)),
        frozenset({1}),
        None,
        frozenset(range(1, 13)),
        None,
    ),
    where=("Europe/London", datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),
)
def test_next_cron_matches_brute_force_oracle(cron: Cron, where: tuple[str, datetime]) -> None:
    """next_cron equals the first firing minute a minute-by-minute scan in UTC finds."""
    name, after = where
    _check_against_oracle(cron, name, after)


@given(cron=cron_expressions(), where=zone_and_instant())
def test_consecutive_runs_have_no_gaps_or_repeats(cron: Cron, where: tuple[str, datetime]) -> None:
    """Chaining next_cron gives strictly increasing runs with no run of the oracle between them."""
    name, after = where
    if not cron.possible():
        return
    tz = ZoneInfo(name)
    earlier = after
    for _ in range(3):
        later = next_cron(cron.text, name, earlier)
        assert later > earlier
        if later - earlier > timedelta(days=1):
            break
        assert oracle_scan(cron, tz, earlier, later - earlier) == later
        earlier = later


@given(cron=cron_expressions())
@example(
    cron=Cron("0 0 * * 7", frozenset({0}), frozenset({0}), None, frozenset({1}), frozenset({0}))
)
def test_plain_parser_agrees_with_croniter(cron: Cron) -> None:
    """The built-in parser of plain expressions gives what croniter's expansion gives."""
    if not cron.possible():
        return
    spec = compile_cron(cron.text)
    plain = _plain_spec(spec.expression)
    assert plain is None or plain == _croniter_spec(spec.expression), spec.expression
    assert spec == (plain or _croniter_spec(spec.expression))


# -- explicit DST cases ----------------------------------------------------------------------


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_spring_forward_gap_runs_once_at_end_of_gap() -> None:
    """02:30 New York does not exist on 2024-03-10: it runs once, at 03:00 EDT (07:00Z)."""
    first = next_cron("30 2 * * *", "America/New_York", _utc(2024, 3, 10, 0, 0))
    assert first == _utc(2024, 3, 10, 7, 0)
    assert next_cron("30 2 * * *", "America/New_York", first) == _utc(2024, 3, 11, 6, 30)


def test_fall_back_fold_runs_once_at_first_occurrence() -> None:
    """01:30 happens twice in New York on 2024-11-03: it runs at 05:30Z (EDT), not at 06:30Z."""
    first = next_cron("30 1 * * *", "America/New_York", _utc(2024, 11, 3, 0, 0))
    assert first == _utc(2024, 11, 3, 5, 30)
    second = next_cron("30 1 * * *", "America/New_York", first)
    assert second == _utc(2024, 11, 4, 6, 30)
    # Asked from inside the second 01:30 (06:00Z), the next run is the next day.
    assert next_cron("30 1 * * *", "America/New_York", _utc(2024, 11, 3, 6, 0)) == second


def test_hourly_cron_across_spring_forward() -> None:
    """Hourly in New York on 2024-03-10: 01:00 EST, then the missing 02:00 and 03:00 both at 07:00Z."""
    runs, t = [], _utc(2024, 3, 10, 5, 30)
    for _ in range(4):
        t = next_cron("0 * * * *", "America/New_York", t)
        runs.append(t)
    assert runs == [
        _utc(2024, 3, 10, 6, 0),  # 01:00 EST
        _utc(2024, 3, 10, 7, 0),  # 02:00 (gap) and 03:00 EDT, once
        _utc(2024, 3, 10, 8, 0),  # 04:00 EDT
        _utc(2024, 3, 10, 9, 0),
    ]


def test_hourly_cron_across_fall_back() -> None:
    """Hourly in New York on 2024-11-03: the repeated 01:00 runs once (05:00Z), then 02:00 EST."""
    runs, t = [], _utc(2024, 11, 3, 3, 30)
    for _ in range(4):
        t = next_cron("0 * * * *", "America/New_York", t)
        runs.append(t)
    assert runs == [
        _utc(2024, 11, 3, 4, 0),  # 00:00 EDT
        _utc(2024, 11, 3, 5, 0),  # 01:00 EDT (first occurrence)
        _utc(2024, 11, 3, 7, 0),  # 02:00 EST; 06:00Z is the second 01:00, skipped
        _utc(2024, 11, 3, 8, 0),
    ]


def test_half_hour_dst_in_lord_howe() -> None:
    """Lord Howe moves 30 minutes: 02:15 on 2024-10-06 is in the gap and runs at 02:30 local."""
    run = next_cron("15 2 * * *", "Australia/Lord_Howe", _utc(2024, 10, 5, 12, 0))
    assert run.astimezone(zone("Australia/Lord_Howe")).strftime("%H:%M") == "02:30"
    assert run == _utc(2024, 10, 5, 15, 30)


def test_midnight_gap_in_santiago() -> None:
    """Santiago springs forward at midnight: @daily on 2024-09-08 runs at 01:00 local."""
    run = next_cron("@daily", "America/Santiago", _utc(2024, 9, 7, 12, 0))
    local = run.astimezone(zone("America/Santiago"))
    assert (local.day, local.hour, local.minute) == (8, 1, 0)


def test_resolve_local_gap_fold_and_plain() -> None:
    """resolve_local: a plain wall time, the first of a fold, the end of a gap."""
    ny = zone("America/New_York")
    assert resolve_local(datetime(2024, 7, 1, 12, 0), ny) == _utc(2024, 7, 1, 16, 0)
    assert resolve_local(datetime(2024, 11, 3, 1, 30), ny) == _utc(2024, 11, 3, 5, 30)
    assert resolve_local(datetime(2024, 3, 10, 2, 30), ny) == _utc(2024, 3, 10, 7, 0)


def test_kolkata_and_chatham_offsets() -> None:
    """Zones with :30 and :45 offsets: 09:00 Kolkata is 03:30Z; 09:00 Chatham in July is 20:15Z."""
    assert next_cron("0 9 * * *", "Asia/Kolkata", _utc(2024, 7, 1)) == _utc(2024, 7, 1, 3, 30)
    assert next_cron("0 9 * * *", "Pacific/Chatham", _utc(2024, 7, 1)) == _utc(2024, 7, 1, 20, 15)


def test_result_is_strictly_after() -> None:
    """An instant that is itself a run gives the following run."""
    assert next_cron("0 0 * * *", "UTC", _utc(2024, 1, 1)) == _utc(2024, 1, 2)
    just_before = _utc(2024, 1, 1) - timedelta(microseconds=1)
    assert next_cron("0 0 * * *", "UTC", just_before) == _utc(2024, 1, 1)


# -- aliases, rare dates, invalid input ------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "after", "expected"),
    [
        ("@yearly", _utc(2024, 5, 5), _utc(2025, 1, 1)),
        ("@annually", _utc(2024, 5, 5), _utc(2025, 1, 1)),
        ("@monthly", _utc(2024, 5, 5), _utc(2024, 6, 1)),
        ("@weekly", _utc(2024, 5, 5), _utc(2024, 5, 12)),  # 2024-05-05 is a Sunday
        ("@daily", _utc(2024, 5, 5, 10), _utc(2024, 5, 6)),
        ("@midnight", _utc(2024, 5, 5, 10), _utc(2024, 5, 6)),
        ("@hourly", _utc(2024, 5, 5, 10, 1), _utc(2024, 5, 5, 11)),
        ("@DAILY", _utc(2024, 5, 5, 10), _utc(2024, 5, 6)),
    ],
)
def test_aliases(alias: str, after: datetime, expected: datetime) -> None:
    """Each @alias means its five-field expression."""
    assert next_cron(alias, "UTC", after) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("5-5 * * * *", _utc(2024, 1, 1, 0, 5)),
        ("0 3-3 * * *", _utc(2024, 1, 1, 3)),
        ("0 0 * * 7-7", _utc(2024, 1, 7)),  # 2024-01-07 is a Sunday
        ("0 0 * * sun-SUN", _utc(2024, 1, 7)),
        ("0 0 1 jun-jun *", _utc(2024, 6, 1)),
        ("5-5/10 * * * *", _utc(2024, 1, 1, 0, 5)),
    ],
)
def test_equal_range_is_one_value(expression: str, expected: datetime) -> None:
    """An equal range ("5-5", "sun-sun") is that one value, as in cron (croniter reads it as "*")."""
    assert next_cron(expression, "UTC", _utc(2024, 1, 1)) == expected


def test_leap_day_and_day_fields_or() -> None:
    """29 February runs in leap years only; with both day fields set, either day may match."""
    assert next_cron("0 0 29 2 *", "UTC", _utc(2025, 1, 1)) == _utc(2028, 2, 29)
    # 31 February never exists, but "or Monday" does: Mondays of February.
    assert next_cron("0 0 31 2 1", "UTC", _utc(2025, 1, 1)) == _utc(2025, 2, 3)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "five fields"),
        ("* * * * * *", "five fields"),
        ("0 0 * * * 2024", "five fields"),
        ("@every 5m", "alias"),
        ("@reboot", "alias"),
        ("60 * * * *", "invalid"),
        ("* 24 * * *", "invalid"),
        ("* * 0 * *", "invalid"),
        ("* * 32 * *", "invalid"),
        ("* * * 13 *", "invalid"),
        ("* * * * 8", "invalid"),
        ("a b c d e", "invalid"),
        ("*/0 * * * *", "invalid"),
        ("0 0 31 2 *", "never matches"),
        ("0 0 30,31 2 *", "never matches"),
        ("0 0 31 4,6,9,11 *", "never matches"),
    ],
)
def test_invalid_expressions(expression: str, message: str) -> None:
    """Malformed, six-field, unknown-alias and impossible expressions raise ValueError saying why."""
    with pytest.raises(ValueError, match=message):
        compile_cron(expression)


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "America/../UTC", "EST5EDT6"]
)
def test_unknown_zones(name: str) -> None:
    """Unknown or path-like zone names raise ValueError; next_cron refuses them too."""
    with pytest.raises(ValueError, match="unknown time zone"):
        zone(name)
    with pytest.raises(ValueError, match="unknown time zone"):
        next_cron("0 0 * * *", name, _utc(2024, 1, 1))


# -- intervals -------------------------------------------------------------------------------

_MS = st.integers(0, 999).map(lambda ms: timedelta(milliseconds=ms))
_INSTANTS = st.datetimes(datetime(2020, 1, 1), datetime(2030, 12, 31), timezones=st.just(UTC))


@given(
    anchor=_INSTANTS.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    every=st.sampled_from([1, 5, 60, 90, 3600, 86400, 7 * 86400]) | st.integers(1, 10**6),
    offset=st.integers(-(10**9), 10**9).map(lambda ms: timedelta(milliseconds=ms)),
    extra=st.integers(0, 999).map(lambda us: timedelta(microseconds=us)),
)
def test_next_interval_properties(
    anchor: datetime, every: int, offset: timedelta, extra: timedelta
) -> None:
    """next_interval is after `after`, on the anchor's grid, and the first such point."""
    after = anchor + offset + extra
    result = next_interval(anchor, every, after)
    step = timedelta(seconds=every)
    assert result > after
    assert (result - anchor) % step == timedelta(0)
    assert result >= anchor
    if after >= anchor:
        assert result - step <= after
    else:
        assert result == anchor  # a future anchor (start_time) is the first run


def test_next_interval_examples() -> None:
    """Every 30 minutes from 09:00: after 09:00 comes 09:30; after 09:59 comes 10:00."""
    anchor = _utc(2024, 1, 1, 9)
    assert next_interval(anchor, 1800, anchor) == _utc(2024, 1, 1, 9, 30)
    assert next_interval(anchor, 1800, _utc(2024, 1, 1, 9, 59)) == _utc(2024, 1, 1, 10)
    assert next_interval(anchor, 1800, _utc(2024, 1, 1, 8)) == anchor


@given(
    anchor=_INSTANTS.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    every=st.sampled_from([1, 60, 90, 3600, 86400]) | st.integers(1, 10**6),
    offset=st.integers(-(10**9), 10**9).map(lambda ms: timedelta(milliseconds=ms)),
    extra=st.integers(0, 999).map(lambda us: timedelta(microseconds=us)),
    span=st.integers(0, 10**10).map(lambda ms: timedelta(milliseconds=ms)),
)
def test_prev_and_count_interval_agree_with_next_interval(
    anchor: datetime, every: int, offset: timedelta, extra: timedelta, span: timedelta
) -> None:
    """prev_interval is the grid point next_interval steps over; count_interval counts the grid."""
    before = anchor + offset + extra
    found = prev_interval(anchor, every, before)
    if found is None:
        assert next_interval(anchor, every, before - timedelta(days=400 * 366)) >= before
    else:
        assert found < before
        assert next_interval(anchor, every, found - timedelta(microseconds=1)) == found
        assert next_interval(anchor, every, found) >= before
    until = before + span
    step = timedelta(seconds=every)
    start = next_interval(anchor, every, before)
    expected = 0 if start > until else (until - start) // step + 1
    assert count_interval(anchor, every, before, until) == expected


# -- backwards, counting, and the misfire plan for cron -------------------------------------

#: Expressions with L and # (croniter's own day rules), which the strategy does not draw.
SPECIAL = ["0 0 L * *", "0 12 * * 1#2", "*/30 1-3 L * *", "10 3 1,L * *", "0 0 L 2 *"]


def _runs(expression: str, name: str, after: datetime, until: datetime) -> list[datetime]:
    """Every run in ``(after, until]``, by chaining next_cron."""
    found = []
    t = next_cron(expression, name, after)
    while t <= until:
        found.append(t)
        t = next_cron(expression, name, t)
    return found


def _expression(cron: Cron, special: int | None) -> str | None:
    if special is not None:
        return SPECIAL[special]
    return cron.text if cron.possible() else None


_SPANS = st.integers(0, 3 * 1440).map(lambda m: timedelta(minutes=m)) | st.integers(
    0, 3 * 86400
).map(lambda s: timedelta(seconds=s))
_SPECIAL = st.none() | st.none() | st.integers(0, len(SPECIAL) - 1)


@given(cron=cron_expressions(), where=zone_and_instant(), special=_SPECIAL)
@example(
    cron=Cron(
        "* * * * *", frozenset(range(60)), frozenset(range(24)), None, frozenset(range(1, 13)), None
    ),
    where=("America/New_York", datetime(2024, 11, 3, 6, 30, 15, tzinfo=UTC)),
    special=None,
)
@example(
    cron=Cron(
        "* * * * *", frozenset(range(60)), frozenset(range(24)), None, frozenset(range(1, 13)), None
    ),
    where=("America/New_York", datetime(2024, 3, 10, 7, tzinfo=UTC)),
    special=None,
)
def test_prev_cron_is_the_run_before(
    cron: Cron, where: tuple[str, datetime], special: int | None
) -> None:
    """prev_cron gives a run strictly before the instant with no run between them (DST included)."""
    name, before = where
    expression = _expression(cron, special)
    if expression is None:
        return
    found = prev_cron(expression, name, before)
    assert found is not None
    assert found < before
    assert next_cron(expression, name, found - timedelta(microseconds=1)) == found
    assert next_cron(expression, name, found) >= before


@given(cron=cron_expressions(), where=zone_and_instant(), span=_SPANS, special=_SPECIAL)
@example(
    cron=Cron(
        "* * * * *", frozenset(range(60)), frozenset(range(24)), None, frozenset(range(1, 13)), None
    ),
    where=("America/New_York", datetime(2024, 11, 3, 5, 30, 15, tzinfo=UTC)),
    span=timedelta(hours=2),
    special=None,
)
@example(
    cron=Cron(
        "*/7 1-3 * * *",
        frozenset(range(0, 60, 7)),
        frozenset({1, 2, 3}),
        None,
        frozenset(range(1, 13)),
        None,
    ),
    where=("Australia/Lord_Howe", datetime(2024, 10, 5, 14, tzinfo=UTC)),
    span=timedelta(days=1),
    special=None,
)
def test_count_cron_counts_the_runs(
    cron: Cron, where: tuple[str, datetime], span: timedelta, special: int | None
) -> None:
    """count_cron equals the number of runs next_cron enumerates between two instants."""
    name, after = where
    expression = _expression(cron, special)
    if expression is None:
        return
    if special is not None:
        span *= 30  # monthly runs: months of them
    until = after + span
    assert count_cron(expression, name, after, until) == len(_runs(expression, name, after, until))


def _brute_plan(
    timing: Timing, first: datetime, now: datetime, grace: timedelta, policy: str, limit: int
) -> Missed:
    """The plan the scheduler made before: list every missed due time, then apply the policy
    (and leave the on-time due times past the per-tick limit for the next tick)."""
    missed = [first]
    following = timing.next_after(first)
    while following is not None and following <= now:
        missed.append(following)
        following = timing.next_after(following)
    on_time = [d for d in missed if now - d <= grace]
    late = [d for d in missed if now - d > grace]
    next_due = following
    if len(on_time) > MAX_FIRED_PER_TICK:
        next_due = on_time[MAX_FIRED_PER_TICK]
        on_time = on_time[:MAX_FIRED_PER_TICK]
    fire, skipped = list(on_time), 0
    if late:
        if policy == "catch_up":
            kept = late[-limit:]
            fire, skipped = kept + on_time, len(late) - len(kept)
        elif policy == "run_once" and not on_time:
            fire, skipped = [late[-1]], len(late) - 1
        else:
            skipped = len(late)
    return Missed(
        count=len(missed),
        last=missed[-1],
        late=len(late),
        fire=tuple(fire),
        skipped=skipped,
        following=following,
        next_due=next_due,
    )


_POLICIES = st.sampled_from(["skip", "run_once", "catch_up"])
_GRACES = st.sampled_from([1, 60, 3600, 86400]).map(lambda s: timedelta(seconds=s))
_LIMITS = st.integers(1, 20) | st.just(1000)


@given(
    cron=cron_expressions(),
    where=zone_and_instant(),
    special=_SPECIAL,
    span=_SPANS,
    grace=_GRACES,
    policy=_POLICIES,
    limit=_LIMITS,
)
@example(
    cron=Cron("30 2 * * *", frozenset({30}), frozenset({2}), None, frozenset(range(1, 13)), None),
    where=("America/New_York", datetime(2024, 3, 1, tzinfo=UTC)),
    special=None,
    span=timedelta(days=3),
    grace=timedelta(seconds=60),
    policy="catch_up",
    limit=3,
)
def test_cron_misfire_plan_equals_enumerating_every_missed_due_time(
    cron: Cron,
    where: tuple[str, datetime],
    special: int | None,
    span: timedelta,
    grace: timedelta,
    policy: str,
    limit: int,
) -> None:
    """plan_missed for cron (any zone, across DST changes) equals listing every missed due time."""
    name, after = where
    expression = _expression(cron, special)
    if expression is None:
        return
    timing = Timing(kind="cron", cron_expression=expression, timezone=name)
    first = next_cron(expression, name, after)
    now = first + span * (30 if special is not None else 1)
    got = plan_missed(timing, first, now, grace=grace, policy=policy, catch_up_limit=limit)
    assert got == _brute_plan(timing, first, now, grace, policy, limit)


@given(
    anchor=_INSTANTS.map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
    every=st.sampled_from([1, 60, 90, 3600, 86400]) | st.integers(1, 10**5),
    steps=st.integers(0, 3000),
    extra=st.integers(0, 10**6).map(lambda ms: timedelta(milliseconds=ms)),
    grace=_GRACES,
    policy=_POLICIES,
    limit=_LIMITS,
)
def test_interval_misfire_plan_equals_enumerating_every_missed_due_time(
    anchor: datetime,
    every: int,
    steps: int,
    extra: timedelta,
    grace: timedelta,
    policy: str,
    limit: int,
) -> None:
    """plan_missed for intervals equals listing every missed due time, whatever the policy."""
    timing = Timing(kind="interval", anchor=anchor, every_seconds=every)
    first = anchor + timedelta(seconds=every)
    now = first + timedelta(seconds=every) * steps + min(extra, timedelta(seconds=every))
    got = plan_missed(timing, first, now, grace=grace, policy=policy, catch_up_limit=limit)
    assert got == _brute_plan(timing, first, now, grace, policy, limit)


def test_fixed_time_misfire_plan() -> None:
    """A missed fixed time: run_once and catch_up run it, skip counts it; nothing follows."""
    at = _utc(2024, 1, 1, 9)
    timing = Timing(kind="fixed_time", at=at)
    now = at + timedelta(hours=2)
    for policy, fire, skipped in [("run_once", (at,), 0), ("catch_up", (at,), 0), ("skip", (), 1)]:
        got = plan_missed(
            timing, at, now, grace=timedelta(minutes=1), policy=policy, catch_up_limit=10
        )
        assert (got.count, got.late, got.fire, got.skipped) == (1, 1, fire, skipped)
        assert (got.following, got.next_due) == (None, None)


def test_on_time_due_times_past_the_per_tick_limit_wait_for_the_next_tick() -> None:
    """With more due times within the grace than one tick fires, the rest stay due, in order."""
    anchor = _utc(2024, 1, 1)
    timing = Timing(kind="interval", anchor=anchor, every_seconds=1)
    first = anchor + timedelta(seconds=1)
    now = first + timedelta(seconds=25)
    got = plan_missed(
        timing, first, now, grace=timedelta(days=1), policy="skip", catch_up_limit=1, limit=10
    )
    assert got.fire == tuple(first + timedelta(seconds=k) for k in range(10))
    assert got.next_due == first + timedelta(seconds=10)
    assert got.following == now + timedelta(seconds=1)
    rest = plan_missed(
        timing, got.next_due, now, grace=timedelta(days=1), policy="skip", catch_up_limit=1
    )
    assert rest.fire == tuple(first + timedelta(seconds=k) for k in range(10, 26))
    assert rest.next_due == got.following


def test_eighty_days_of_every_minute_are_counted_exactly_and_quickly() -> None:
    """After 80 days down, an every-minute cron's plan counts its 115,200 due times in
    milliseconds; a spring-forward gap merges the runs it should."""
    now = _utc(2024, 6, 1, 12)
    start = now - timedelta(days=80)  # Paris springs forward on 2024-03-31, in between
    for expression, name, count, fire in [
        ("* * * * *", "UTC", 80 * 1440, (now,)),
        ("* * * * *", "Europe/Paris", 80 * 1440, (now,)),  # the gap skips wall minutes only
        # 80 days of 02:00, 02:30, 03:00 and 03:30; on 2024-03-31 the first three run together.
        ("0,30 2-3 * * *", "Europe/Paris", 80 * 4 - 2, ()),
    ]:
        timing = Timing(kind="cron", cron_expression=expression, timezone=name)
        first = timing.next_after(start)
        assert first is not None
        started = time.process_time()
        got = plan_missed(
            timing, first, now, grace=timedelta(seconds=30), policy="skip", catch_up_limit=10
        )
        assert time.process_time() - started < 0.5
        assert got.count == count
        assert (got.late, got.skipped, got.fire) == (count - len(fire), count - len(fire), fire)
