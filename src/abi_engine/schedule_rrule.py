"""RFC 5545 recurrence rules (``schedule_type: "rrule"``) on a zone's wall clock.

A rule (``FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=9;BYMINUTE=0``, with or without
``RRULE:``) is expanded by python-dateutil from ``DTSTART``: the schedule's
``start_time`` (or its creation) read on the wall clock of its zone, to the
minute. Its wall
times become instants with the daylight-saving choices of cron
(:mod:`abi_engine.schedule_dst`). An optional exclusion rule (same syntax, same
``DTSTART``) removes the wall times it produces. ``COUNT`` and ``UNTIL`` bound
the rule (``UNTIL`` written in UTC, ``...Z``, or as a wall time of the zone).

Cost: dateutil walks a rule from its ``DTSTART``; rules are re-anchored to a
start a period or two before the instant asked about (the same occurrences:
``MINUTELY`` to ``WEEKLY`` repeat after fixed lengths of wall time, ``MONTHLY``
and ``YEARLY`` after whole months, from the first of a month once the values
dateutil takes from ``DTSTART`` are written out), so a step costs the same a
year later; a counted rule is walked once to find its last occurrence.
``SECONDLY`` is refused (use an interval schedule), ``COUNT`` is at most
100,000. A plain rule (``DAILY`` or ``WEEKLY``, interval 1, no ``COUNT`` nor
``UNTIL``, only ``BYDAY`` without ordinals, ``BYHOUR``, ``BYMINUTE`` and
``BYMONTH``) has the wall times of a cron expression from ``DTSTART`` on: its
next wall time is computed as cron's, and dateutil parses it only when asked
for more (every create computes a first due time).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

import attrs
from dateutil.rrule import rrule, rrulestr

from abi_engine.schedule_cron import CronSpec
from abi_engine.schedule_dst import WALK_LIMIT
from abi_engine.schedule_math import _next_wall, zone

__all__ = ["RuleWalls", "compile_rrule", "rule_walls"]

MAX_COUNT = 100_000
_PERIODS = {
    "MINUTELY": timedelta(minutes=1),
    "HOURLY": timedelta(hours=1),
    "DAILY": timedelta(days=1),
    "WEEKLY": timedelta(weeks=1),
}
_MONTHS = {"MONTHLY": 1, "YEARLY": 12}
#: Parts giving the days of a rule (without any, dateutil takes DTSTART's day).
_DAY_PARTS = frozenset({"BYWEEKNO", "BYYEARDAY", "BYMONTHDAY", "BYDAY", "BYWEEKDAY", "BYEASTER"})
#: A rule's re-anchoring step: a length of wall time, or a number of months.
Period = timedelta | int
_FREQ = re.compile(r"(?:^|;)FREQ=([A-Z]+)")
_INTERVAL = re.compile(r"(?:^|;)INTERVAL=(\d+)")
_COUNT = re.compile(r"(?:^|;)COUNT=(\d+)")
_UNTIL_UTC = re.compile(r"UNTIL=(\d{8}T\d{6})Z")


def _normalized(text: str, tz_name: str) -> str:
    """The rule's text upper-cased without ``RRULE:``; an UTC ``UNTIL`` read on the zone's
    wall clock (the rule is expanded in wall time)."""
    rule = _upper(text)
    tz = zone(tz_name)
    if "UNTIL=" not in rule:
        return rule

    def local(match: re.Match[str]) -> str:
        instant = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        return "UNTIL=" + instant.astimezone(tz).strftime("%Y%m%dT%H%M%S")

    return _UNTIL_UTC.sub(local, rule)


def _upper(text: str) -> str:
    """The rule's text upper-cased without ``RRULE:`` (checked to be one rule)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the rule is empty")
    rule = text.strip().upper()
    rule = rule.removeprefix("RRULE:")
    if "\n" in rule or ":" in rule or "DTSTART" in rule:
        raise ValueError("one RRULE only (its DTSTART is the schedule's start_time)")
    return rule


@attrs.define
class RuleWalls:
    """A compiled rule (and exclusion rule) giving wall times, naive, in order.

    ``plain``: the cron fields of a plain rule without exclusion rule (its
    dateutil rule is then parsed from ``text`` only when first needed).

    Each rule is re-anchored by its own period (``None``: walked from DTSTART): the
    exclusion rule's occurrences depend on its own frequency and DTSTART, not on the
    rule's. A counted rule is kept without its ``COUNT`` and with
    its last occurrence (found once), so it re-anchors too. Going forward, the
    exclusion rule is walked once beside the rule's candidates (a merge of two
    ordered streams), not again from its start for each candidate.
    """

    text: str
    exclude: rrule | None
    period: Period | None  # re-anchoring step (None: walk from DTSTART)
    dtstart: datetime
    exclude_period: Period | None = None
    #: The last occurrence of a counted rule, of the rule and of the exclusion rule.
    last: datetime | None = None
    exclude_last: datetime | None = None
    plain: CronSpec | None = None
    _rule: rrule | None = None

    @property
    def rule(self) -> rrule:
        """The dateutil rule (parsed once; a counted one opened, see the class)."""
        if self._rule is None:
            self._rule, self.last = _open(_parse(self.text, self.dtstart), self.text)
        return self._rule

    def _anchored(self, rule: rrule, period: Period | None, wall: datetime) -> rrule:
        """``rule`` from a start a whole number of ``period`` before ``wall``, at least two
        periods before it (the same occurrences from there on). A period of months starts
        on the first of its month: a ``MONTHLY`` or ``YEARLY`` rule's set of each period
        does not depend on its ``DTSTART`` once :func:`_explicit` wrote out its defaults."""
        start = self.dtstart
        if isinstance(period, int):
            months = (wall.year - start.year) * 12 + wall.month - start.month
            if months < 4 * period:
                return rule
            index = start.year * 12 + start.month - 1 + (months // period - 2) * period
            return rule.replace(dtstart=datetime(index // 12, index % 12 + 1, 1))
        if period is None or wall - start < 4 * period:
            return rule
        steps = (wall - start) // period - 2
        return rule.replace(dtstart=start + steps * period)

    def _excluded(self, wall: datetime) -> bool:
        if self.exclude is None:
            return False
        if self.exclude_last is not None and wall > self.exclude_last:
            return False
        rule = self._anchored(self.exclude, self.exclude_period, wall)
        return rule.after(wall, inc=True) == wall  # type: ignore[no-any-return]

    def next_wall(self, wall: datetime) -> datetime | None:
        """The first wall time of the rule strictly after ``wall`` (``None``: no more, or
        none among the next ``WALK_LIMIT`` of the rule)."""
        if self.plain is not None:  # the first at or after DTSTART (a whole minute)
            return _next_wall(self.plain, max(wall, self.dtstart - _MINUTE))
        candidates = self._anchored(self.rule, self.period, wall).xafter(wall)
        exclusions: Iterator[datetime] | None = None
        excluded: datetime | None = None
        for _, found in zip(range(WALK_LIMIT), candidates, strict=False):
            if self.last is not None and found > self.last:
                return None
            if self.exclude is None:
                return found  # type: ignore[no-any-return]
            if exclusions is None:  # from the first candidate on
                anchored = self._anchored(self.exclude, self.exclude_period, found)
                exclusions = anchored.xafter(found, inc=True)
                excluded = next(exclusions, None)
            while excluded is not None and excluded < found:
                excluded = next(exclusions, None)
            if excluded != found or (self.exclude_last is not None and found > self.exclude_last):
                return found  # type: ignore[no-any-return]
        return None

    def prev_wall(self, wall: datetime) -> datetime | None:
        """The last wall time of the rule strictly before ``wall`` (``None``: none)."""
        rule = self.rule  # (parsed first: a counted rule's last occurrence is known then)
        for _ in range(WALK_LIMIT):
            if self.last is not None and wall > self.last:
                return self.last if not self._excluded(self.last) else self.prev_wall(self.last)
            found = self._anchored(rule, self.period, wall).before(wall)
            if found is None and self.period is not None:
                found = rule.before(wall)  # (a sparse rule: its last one may be far)
            if found is None or not self._excluded(found):
                return found  # type: ignore[no-any-return]
            wall = found
        return None


def _parse(text: str, dtstart: datetime) -> rrule:
    try:
        rule = rrulestr(_explicit(text, dtstart), dtstart=dtstart)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise ValueError(f"invalid RRULE: {exc}") from None
    if not isinstance(rule, rrule):
        raise ValueError("one RRULE only")
    return rule


def compile_rrule(text: str, exclude: str | None, timezone: str, start: datetime) -> RuleWalls:
    """The rule ``text`` (and ``exclude``) from the instant ``start`` on the wall clock of
    ``timezone``; ``ValueError`` says what is wrong.

    Cached by the minute of ``start`` (the DTSTART is read to the minute, and every
    zone since 1970 is a whole number of minutes from UTC), so the schedules created
    within a minute with the same rule share one parse.
    """
    return _compiled(text, exclude, timezone, start.replace(second=0, microsecond=0))


@functools.lru_cache(maxsize=4096)
def _compiled(text: str, exclude: str | None, timezone: str, start: datetime) -> RuleWalls:
    rule_text, plain_fields, period = _checked(text, timezone)
    # Whole minutes, as cron: a rule without BYSECOND (and its exclusion rule) runs at :00.
    dtstart = start.astimezone(zone(timezone)).replace(tzinfo=None, second=0, microsecond=0)
    plain = None
    if exclude is None and plain_fields is not None:
        plain = _plain_cron(rule_text, plain_fields, dtstart)
    rule = last = None
    if plain is None:
        rule, last = _open(_parse(rule_text, dtstart), rule_text)
    excluded = exclude_period = exclude_last = None
    if exclude is not None:
        exclude_text = _normalized(exclude, timezone)
        excluded, exclude_last = _open(_parse(exclude_text, dtstart), exclude_text)
        exclude_period = _period(exclude_text)
    return RuleWalls(
        text=rule_text,
        exclude=excluded,
        period=period,
        dtstart=dtstart,
        exclude_period=exclude_period,
        last=last,
        exclude_last=exclude_last,
        plain=plain,
        rule=rule,
    )


def _checked(text: str, timezone: str) -> tuple[str, _PlainFields | None, Period | None]:
    """The rule's normalized text, checked (what does not depend on its DTSTART), its
    plain fields if plain (see :func:`_plain_fields`) and its period."""
    if "UNTIL=" in text.upper():  # (read in the zone: see _normalized)
        return _checked_text(_normalized(text, timezone))
    rule_text = _upper(text)
    zone(timezone)
    return _checked_text(rule_text)


@functools.lru_cache(maxsize=4096)
def _checked_text(rule_text: str) -> tuple[str, _PlainFields | None, Period | None]:
    """:func:`_checked` of a normalized text, cached by it, as schedules share rules far
    more often than start minutes (the compiled rules' cache key)."""
    freq = _FREQ.search(rule_text)
    if freq is None:
        raise ValueError("FREQ is required")
    if freq.group(1) == "SECONDLY":
        raise ValueError("FREQ=SECONDLY is not supported (use an interval schedule)")
    count = _COUNT.search(rule_text)
    if count is not None and int(count.group(1)) > MAX_COUNT:
        raise ValueError(f"COUNT is at most {MAX_COUNT} (max_runs bounds runs too)")
    return rule_text, _plain_fields(rule_text), _period(rule_text)


def _open(rule: rrule, rule_text: str) -> tuple[rrule, datetime | None]:
    """A counted rule of a period as the same rule without ``COUNT`` and its last
    occurrence (found once, here: at most ``MAX_COUNT`` steps), so that each later step
    re-anchors instead of walking again from DTSTART; any other rule as it is."""
    if _COUNT.search(rule_text) is None or _period(rule_text) is None:
        return rule, None
    last = None
    for last in rule:  # noqa: B007 (the loop finds the last)
        pass
    return rule.replace(count=None), last


def _period(rule_text: str) -> Period | None:
    """The length of wall time after which the rule repeats its pattern (its frequency
    times its interval): a ``timedelta``, or a number of months for ``MONTHLY`` and
    ``YEARLY``; ``None`` without a known frequency."""
    freq = _FREQ.search(rule_text)
    if freq is None:
        return None
    interval = _INTERVAL.search(rule_text)
    every = int(interval.group(1)) if interval else 1
    months = _MONTHS.get(freq.group(1))
    if months is not None:
        return months * every
    period = _PERIODS.get(freq.group(1))
    return None if period is None else period * every


def _explicit(rule_text: str, dtstart: datetime) -> str:
    """A ``MONTHLY`` or ``YEARLY`` rule with the values dateutil takes from ``DTSTART``
    written out (the day of the month, and of the year, when no day is given; the hour,
    minute and second when not given): the same occurrences from ``dtstart``, and the
    same from any other start in an earlier period of the rule, which re-anchoring needs.
    Other rules as they are."""
    freq = _FREQ.search(rule_text)
    if freq is None or freq.group(1) not in _MONTHS:
        return rule_text
    names = {part.partition("=")[0] for part in rule_text.split(";")}
    extra = []
    if not names & _DAY_PARTS:
        extra.append(f"BYMONTHDAY={dtstart.day}")
        if freq.group(1) == "YEARLY" and "BYMONTH" not in names:
            extra.append(f"BYMONTH={dtstart.month}")
    for name, value in (
        ("BYHOUR", dtstart.hour),
        ("BYMINUTE", dtstart.minute),
        ("BYSECOND", dtstart.second),
    ):
        if name not in names:
            extra.append(f"{name}={value}")
    return ";".join([rule_text, *extra])


_MINUTE = timedelta(minutes=1)
_DAYS = {"SU": 0, "MO": 1, "TU": 2, "WE": 3, "TH": 4, "FR": 5, "SA": 6}
_PLAIN_PART = re.compile(
    r"(FREQ)=(DAILY|WEEKLY)|(INTERVAL)=(1)|(BYDAY)=((?:MO|TU|WE|TH|FR|SA|SU)(?:,(?:MO|TU|WE|TH|FR|SA|SU))*)"
    r"|(BYHOUR|BYMINUTE|BYMONTH)=([0-9]{1,2}(?:,[0-9]{1,2})*)"
)
_PLAIN_BOUNDS = {"BYHOUR": (0, 23), "BYMINUTE": (0, 59), "BYMONTH": (1, 12)}


#: The parts of a plain rule: FREQ, then BYMINUTE, BYHOUR, BYMONTH and BYDAY (``None``:
#: not given).
_PlainFields = tuple[
    str, frozenset[int] | None, frozenset[int] | None, frozenset[int] | None, frozenset[int] | None
]


def _plain_fields(text: str) -> _PlainFields | None:
    """The parts of the rule ``text`` if it is plain (``None``: it is not)."""
    parts: dict[str, str] = {}
    for part in text.split(";"):
        match = _PLAIN_PART.fullmatch(part)
        if match is None:
            return None
        key, value = (g for g in match.groups() if g is not None)
        if key in parts:
            return None
        parts[key] = value
    if "FREQ" not in parts:
        return None
    numbers: dict[str, frozenset[int]] = {}
    for key, (low, high) in _PLAIN_BOUNDS.items():
        if key in parts:
            values = frozenset(int(v) for v in parts[key].split(","))
            if not all(low <= v <= high for v in values):
                return None
            numbers[key] = values
    weekdays = None
    if "BYDAY" in parts:
        weekdays = frozenset(_DAYS[d] for d in parts["BYDAY"].split(","))
    return (
        parts["FREQ"],
        numbers.get("BYMINUTE"),
        numbers.get("BYHOUR"),
        numbers.get("BYMONTH"),
        weekdays,
    )


def _plain_cron(text: str, fields: _PlainFields, dtstart: datetime) -> CronSpec:
    """The cron fields giving the same wall times as the plain rule ``text`` (of parts
    ``fields``) from ``dtstart`` on. dateutil's defaults: the hour and minute of
    ``dtstart``, and for ``WEEKLY`` its weekday."""
    freq, minutes, hours, months, weekdays = fields
    if weekdays is None and freq == "WEEKLY":
        weekdays = frozenset([dtstart.isoweekday() % 7])
    return CronSpec(
        expression=text,
        minutes=minutes if minutes is not None else frozenset([dtstart.minute]),
        hours=hours if hours is not None else frozenset([dtstart.hour]),
        days=None,
        months=months if months is not None else _ALL_MONTHS,
        weekdays=weekdays,
        special=False,
    )


_ALL_MONTHS = frozenset(range(1, 13))


class _RuleFields(Protocol):
    schedule_type: str
    rrule: str | None
    exclude_rrule: str | None
    timezone: str
    anchor_at: datetime


def rule_walls(record: _RuleFields) -> RuleWalls | None:
    """The wall times of an ``rrule`` schedule (``None`` for the other types)."""
    if record.schedule_type != "rrule" or record.rrule is None:
        return None
    return compile_rrule(record.rrule, record.exclude_rrule, record.timezone, record.anchor_at)
