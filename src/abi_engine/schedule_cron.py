"""Cron expressions compiled to the sets of values each field allows.

Five fields (minute hour day-of-month month day-of-week, with names, ranges,
steps and lists) or an alias (``@yearly``, ``@annually``, ``@monthly``,
``@weekly``, ``@daily``, ``@midnight``, ``@hourly``); ``L`` and ``#`` are
accepted too (``special``: evaluated by croniter). The arithmetic on them is in
:mod:`abi_engine.schedule_math`.
"""

from __future__ import annotations

import bisect
import functools
import re
from datetime import date, datetime, timedelta

import attrs
from croniter import croniter

__all__ = ["ALIASES", "CronSpec", "compile_cron", "next_plain_wall"]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

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


def _field(values: list[object], low: int, high: int) -> frozenset[int] | None:
    if values == ["*"]:
        return None
    found = frozenset(int(v) for v in values if isinstance(v, int))
    return frozenset(v for v in found if low <= v <= high)


#: The longest a month can be, of those shorter than 31 days.
_LONGEST = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}


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
    if "-" in text:
        text = _EQUAL_RANGE.sub(r"\1", text)
    spec = _plain_spec(text) or _croniter_spec(text)
    # With both day fields restricted either may match, so only day-of-month alone can be impossible.
    if (
        spec.days is not None
        and spec.weekdays is None
        and (
            not spec.days
            or not spec.months
            or min(spec.days) > max(_LONGEST.get(m, 31) for m in spec.months)
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


@functools.lru_cache(maxsize=1024)
def _plain_values(text: str, index: int) -> frozenset[int] | None:
    """The values of one plain field; ``None`` when it is not plain (or not valid).

    Cached by field: expressions differ in their combination far more often than in
    their fields (``5 9 * * *`` and ``5 17 * * 1-5`` share two), so an expression missing
    the expressions' cache mostly finds its fields here."""
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


# -- the next wall time of a plain expression ----------------------------------------------

_MINUTE = timedelta(minutes=1)
_SEARCH_YEARS = 30
_LENGTHS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@functools.lru_cache(maxsize=1024)
def _ordered(values: frozenset[int]) -> tuple[int, ...]:
    return tuple(sorted(values))


def _day_ok(spec: CronSpec, year: int, month: int, day: int) -> bool:
    """:meth:`CronSpec.day_matches` on a date given as numbers."""
    dom = spec.days is None or day in spec.days
    if spec.weekdays is None:
        return dom
    dow = date(year, month, day).isoweekday() % 7 in spec.weekdays
    return (dom or dow) if spec.days is not None else dow


def next_plain_wall(spec: CronSpec, after: datetime) -> datetime:
    """The first wall time (naive, whole minute) strictly after ``after`` matching the
    plain (not ``special``) ``spec``: walked on numbers, by jumps to the next allowed
    value of each field, a datetime built only for the answer."""
    # The minute after ``after``'s (a minute of 60 carries over below, as any overflow).
    year, month, day, hour, minute = (
        after.year,
        after.month,
        after.day,
        after.hour,
        after.minute + 1,
    )
    hours, minutes = _ordered(spec.hours), _ordered(spec.minutes)
    listed = _ordered(spec.days) if spec.weekdays is None and spec.days is not None else None
    limit = year + _SEARCH_YEARS
    while year <= limit:
        length = _LENGTHS[month] + (
            month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        )
        if month not in spec.months or day > length:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            day, hour, minute = 1, 0, 0
            continue
        if not _day_ok(spec, year, month, day):
            if listed is not None:  # jump to the next listed day (past the month's end: next)
                i = bisect.bisect_right(listed, day)
                day = listed[i] if i < len(listed) else 32
            else:
                day += 1
            hour = minute = 0
            continue
        i = bisect.bisect_left(hours, hour)
        if i == len(hours):
            day, hour, minute = day + 1, 0, 0
            continue
        if hours[i] != hour:
            hour, minute = hours[i], 0
        j = bisect.bisect_left(minutes, minute)
        if j == len(minutes):
            hour, minute = hour + 1, 0
            continue
        return datetime(year, month, day, hour, minutes[j])
    raise ValueError(f"{spec.expression!r} has no run in the next {_SEARCH_YEARS} years")
