"""Cron expressions compiled to the sets of values each field allows.

Five fields (minute hour day-of-month month day-of-week, with names, ranges,
steps and lists) or an alias (``@yearly``, ``@annually``, ``@monthly``,
``@weekly``, ``@daily``, ``@midnight``, ``@hourly``); ``L`` and ``#`` are
accepted too (``special``: evaluated by croniter). The arithmetic on them is in
:mod:`abi_engine.schedule_math`.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime

import attrs
from croniter import croniter

__all__ = ["ALIASES", "CronSpec", "compile_cron"]

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
