"""When schedules are due: cron in a time zone, intervals, one-time.

Cron expressions have five fields (minute hour day-of-month month
day-of-week, with names, ranges, steps and lists) or an alias (``@yearly``,
``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``,
``@hourly``); ``L`` and ``#`` are accepted too. They are evaluated on the
*wall clock* of the schedule's IANA time zone, and daylight-saving changes
are handled on purpose:

* a wall time that does not exist (the spring-forward gap) runs once, at the
  first valid instant after it (the end of the gap);
* a wall time that happens twice (the fall-back fold) runs once, at its first
  occurrence.

Intervals are fixed durations counted from the schedule's anchor (its
creation time, or ``start_time``), independent of time zones. All instants
in and out are aware UTC datetimes.
"""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import croniter

__all__ = [
    "ALIASES",
    "INTERVAL_UNITS",
    "CronSpec",
    "compile_cron",
    "next_cron",
    "next_interval",
    "resolve_local",
    "zone",
]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
INTERVAL_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
_MINUTE = timedelta(minutes=1)
_SEARCH_YEARS = 30
# croniter reads an equal range ("5-5", "sun-sun") as the whole field; cron means the one value.
_EQUAL_RANGE = re.compile(r"(?<![\w-])(\w+)-\1(?:/\d+)?(?![\w/-])", re.IGNORECASE)


@attrs.frozen
class CronSpec:
    """A parsed five-field cron expression (sets of allowed values per field)."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None
    months: frozenset[int]
    weekdays: frozenset[int] | None
    special: bool

    def day_matches(self, day: datetime) -> bool:
        """Standard cron rule: with both day fields restricted, either may match."""
        dom = self.days is None or day.day in self.days
        dow = self.weekdays is None or (day.isoweekday() % 7) in self.weekdays
        if self.days is not None and self.weekdays is not None:
            return dom or dow
        return dom and dow


@functools.lru_cache(maxsize=4096)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` when unknown."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _field(values: list[object], low: int, high: int) -> frozenset[int] | None:
    if values == ["*"]:
        return None
    found = frozenset(int(v) for v in values if isinstance(v, int))
    return frozenset(v for v in found if low <= v <= high)


@functools.lru_cache(maxsize=4096)
def compile_cron(expression: str) -> CronSpec:
    """Parse and check a cron expression; ``ValueError`` says what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError("the cron expression is empty")
    text = " ".join(expression.split())
    text = ALIASES.get(text.lower(), text)
    if text.startswith("@"):
        raise ValueError(f"unknown alias {expression!r} (use one of {', '.join(ALIASES)})")
    if len(text.split(" ")) != 5:
        raise ValueError("a cron expression has five fields: minute hour day month weekday")
    text = _EQUAL_RANGE.sub(r"\1", text)
    spec = _plain_spec(text) or _croniter_spec(text)
    # With both day fields restricted either may match, so only day-of-month alone can be impossible.
    if (
        spec.days is not None
        and spec.weekdays is None
        and not any(
            d <= {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}.get(m, 31)
            for d in spec.days
            for m in spec.months
        )
    ):
        raise ValueError("the expression never matches a real date")
    return spec


def _croniter_spec(text: str) -> CronSpec:
    """Any expression croniter accepts (``L``, ``W``, ``#``, wrapping ranges...)."""
    try:
        expanded, nth = croniter.expand(text)
    except Exception as exc:
        raise ValueError(f"invalid cron expression: {exc}") from None
    minutes, hours, days, months, weekdays = expanded
    special = bool(nth) or any(isinstance(v, str) and v != "*" for v in days)
    return CronSpec(
        expression=text,
        minutes=_field(minutes, 0, 59) or frozenset(range(60)),
        hours=_field(hours, 0, 23) or frozenset(range(24)),
        days=None if special else _field(days, 1, 31),
        months=_field(months, 1, 12) or frozenset(range(1, 13)),
        weekdays=None
        if special
        else _field([(v % 7 if isinstance(v, int) else v) for v in weekdays], 0, 6),
        special=special,
    )


# The plain syntax, parsed here because croniter.expand costs ~0.2 ms an expression:
# numbers, names, ``*``, ranges, steps and lists. Anything else goes to croniter.
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES: dict[int, dict[str, int]] = {
    3: {name: i for i, name in enumerate(_MONTHS, 1)},
    4: {name: i for i, name in enumerate(_WEEKDAYS)},
}
_TOKEN = re.compile(r"(\*|[0-9]{1,2}|[a-z]{3})(?:-([0-9]{1,2}|[a-z]{3}))?(?:/([0-9]{1,2}))?")


def _plain_values(text: str, index: int) -> frozenset[int] | None:
    """The values of one plain field; ``None`` when it is not plain (or not valid)."""
    low, high = _BOUNDS[index]
    names = _NAMES.get(index, {})
    values: set[int] = set()
    for token in text.lower().split(","):
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        first, last, step = match.groups()
        if first == "*":
            if last is not None:
                return None
            start, end = low, high
        else:
            start = int(first) if first.isdigit() else names.get(first, -1)
            end = start if last is None else int(last) if last.isdigit() else names.get(last, -1)
            if step is not None and last is None:
                end = high  # "5/15" counts from 5 to the end of the field
        every = 1 if step is None else int(step)
        if not (low <= start <= end <= high and 1 <= every <= high):
            return None
        values.update(range(start, end + 1, every))
    return frozenset(v % 7 for v in values) if index == 4 else frozenset(values)


def _plain_spec(text: str) -> CronSpec | None:
    fields = text.split(" ")
    parsed = [_plain_values(f, i) for i, f in enumerate(fields)]
    minutes, hours, days, months, weekdays = parsed
    if minutes is None or hours is None or days is None or months is None or weekdays is None:
        return None
    # A day field written other than "*" restricts (and is OR-ed with the other one);
    # one that covers every day anyway is left to croniter's own rules.
    if (fields[2] != "*" and len(days) == 31) or (fields[4] != "*" and len(weekdays) == 7):
        return None
    return CronSpec(
        expression=text,
        minutes=minutes,
        hours=hours,
        days=None if fields[2] == "*" else days,
        months=months,
        weekdays=None if fields[4] == "*" else weekdays,
        special=False,
    )


def _next_wall(spec: CronSpec, after: datetime) -> datetime:
    """The first wall time (naive, whole minute) strictly after ``after`` matching ``spec``."""
    if spec.special:
        return croniter(spec.expression, after).get_next(datetime)  # type: ignore[no-any-return]
    t = after.replace(second=0, microsecond=0) + _MINUTE
    limit = t.year + _SEARCH_YEARS
    while t.year <= limit:
        if t.month not in spec.months:
            year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
            t = datetime(year, month, 1)
            continue
        if not spec.day_matches(t):
            if spec.weekdays is None and spec.days is not None:  # jump to the next listed day
                length = calendar.monthrange(t.year, t.month)[1]
                later = [d for d in spec.days if t.day < d <= length]
                if later:
                    t = datetime(t.year, t.month, min(later))
                    continue
                t = datetime(t.year, t.month, length)
            t = datetime(t.year, t.month, t.day) + timedelta(days=1)
            continue
        if t.hour not in spec.hours:
            later = [h for h in spec.hours if h > t.hour]
            if not later:
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            t = t.replace(hour=min(later), minute=0)
            continue
        if t.minute not in spec.minutes:
            later = [m for m in spec.minutes if m > t.minute]
            if not later:
                t = t.replace(minute=0) + timedelta(hours=1)
                continue
            t = t.replace(minute=min(later))
            continue
        return t
    raise ValueError(f"{spec.expression!r} has no run in the next {_SEARCH_YEARS} years")


def resolve_local(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a wall time of ``tz`` stands for.

    An ambiguous wall time (fall-back fold) gives its first occurrence; a
    wall time that does not exist (spring-forward gap) gives the first
    instant after it, the end of the gap.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=1 reads the wall time with the offset after the change,
    # which lands before the gap; the end of the gap lies between the two.
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    low, high = min(low, first), max(low, first)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def next_cron(expression: str, timezone: str, after: datetime) -> datetime:
    """The first run of a cron schedule strictly after the instant ``after``."""
    spec = compile_cron(expression)
    tz = zone(timezone)
    wall = after.astimezone(tz).replace(tzinfo=None)
    for _ in range(10_000):
        wall = _next_wall(spec, wall)
        instant = resolve_local(wall, tz)
        if instant > after:
            return instant
    raise ValueError(f"no run of {expression!r} found after {after.isoformat()}")


def next_interval(anchor: datetime, every_seconds: int, after: datetime) -> datetime:
    """The first of ``anchor + k * every`` (k >= 0) strictly after ``after``.

    A future anchor (``start_time``) is itself the first run.
    """
    step_ms = every_seconds * 1000
    anchor_ms = _ms(anchor)
    elapsed = _ms(after) - anchor_ms
    k = max(0, elapsed // step_ms + 1)
    return _from_ms(anchor_ms + k * step_ms)


def _ms(value: datetime) -> int:
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _from_ms(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=value)
