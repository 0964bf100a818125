"""When schedules are due: cron in a time zone, intervals, one-time.

Cron expressions (compiled by :mod:`abi_engine.schedule_cron`) are
evaluated on the *wall clock* of the schedule's IANA time zone, and daylight-saving changes
are handled on purpose:

* a wall time that does not exist (the spring-forward gap) runs once, at the
  first valid instant after it (the end of the gap);
* a wall time that happens twice (the fall-back fold) runs once, at its first
  occurrence.

Intervals are fixed durations counted from the schedule's anchor (its
creation time, or ``start_time``), independent of time zones. All instants
in and out are aware UTC datetimes.

After downtime the scheduler needs a few of the due times it missed, never
all of them: :func:`~abi_engine.schedule_rules.plan_missed` works from the latest ones backwards
(:func:`prev_cron`, :func:`prev_interval`) and counts the others without
listing them (:func:`count_cron`: whole days by arithmetic on the cron
fields, daylight-saving changes by their rules; :func:`count_interval`:
division), so its cost follows the runs it starts, not the length of the
downtime.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import croniter

from abi_engine.schedule_cron import CronSpec, compile_cron, next_plain_wall
from abi_engine.schedule_dst import (
    WALK_LIMIT,
    Walls,
    changes,
    count_by_policy,
    fold_size,
    is_default,
    next_by_walls,
    prev_by_walls,
    resolve_local,
    transition,
)

__all__ = [
    "INTERVAL_UNITS",
    "Timing",
    "count_cron",
    "count_interval",
    "jitter_delay",
    "jittered",
    "logical_due",
    "next_by_rule",
    "next_cron",
    "next_interval",
    "occurrence_flags",
    "prev_cron",
    "prev_interval",
    "resolve_local",
    "upcoming",
    "zone",
]

INTERVAL_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
_MINUTE = timedelta(minutes=1)
_SEARCH_YEARS = 30


@functools.lru_cache(maxsize=4096)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ValueError`` when unknown."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _next_wall(spec: CronSpec, after: datetime) -> datetime:
    """The first wall time (naive, whole minute) strictly after ``after`` matching ``spec``."""
    if spec.special:
        return croniter(spec.expression, after).get_next(datetime)  # type: ignore[no-any-return]
    return next_plain_wall(spec, after)


def next_cron(
    expression: str,
    timezone: str,
    after: datetime,
    on_gap: str = "shift",
    on_fold: str = "first",
) -> datetime:
    """The first run of a cron schedule strictly after the instant ``after`` (daylight-saving
    choices ``on_gap`` and ``on_fold``, see :mod:`abi_engine.schedule_dst`)."""
    spec = compile_cron(expression)
    tz = zone(timezone)
    if not is_default(on_gap, on_fold):
        found = next_by_walls(lambda w: _next_wall(spec, w), tz, after, on_gap, on_fold)
        if found is None:
            raise ValueError(f"no run of {expression!r} found after {after.isoformat()}")
        return found
    wall = after.astimezone(tz).replace(tzinfo=None)
    for _ in range(10_000):
        wall = _next_wall(spec, wall)
        instant = resolve_local(wall, tz)
        if instant > after:
            return instant
    raise ValueError(f"no run of {expression!r} found after {after.isoformat()}")


def next_by_rule(
    walls: Walls, timezone: str, after: datetime, on_gap: str = "shift", on_fold: str = "first"
) -> datetime | None:
    """The first due time of a rule's wall times strictly after the instant ``after``
    (``None``: no more); under the default choices, walked as :func:`next_cron` does."""
    tz = zone(timezone)
    if not is_default(on_gap, on_fold):
        return next_by_walls(walls.next_wall, tz, after, on_gap, on_fold)
    wall: datetime | None = after.astimezone(tz).replace(tzinfo=None)
    for _ in range(WALK_LIMIT):
        assert wall is not None
        wall = walls.next_wall(wall)
        if wall is None:
            return None
        instant = resolve_local(wall, tz)
        if instant > after:
            return instant
    return None


def next_interval(anchor: datetime, every_seconds: int, after: datetime) -> datetime:
    """The first of ``anchor + k * every`` (k >= 0) strictly after ``after``.

    A future anchor (``start_time``) is itself the first run.
    """
    step_ms = every_seconds * 1000
    anchor_ms = _ms(anchor)
    elapsed = _ms(after) - anchor_ms
    k = max(0, elapsed // step_ms + 1)
    return _from_ms(anchor_ms + k * step_ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: datetime) -> int:
    delta = value - _EPOCH  # (aware: whatever its zone)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


def _from_ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


# -- backwards and counting: what a tick needs after downtime -----------------------------

_MICRO = timedelta(microseconds=1)
_DAY = timedelta(days=1)


def _prev_wall(spec: CronSpec, before: datetime) -> datetime:
    """The last wall time (naive, whole minute) strictly before ``before`` matching ``spec``."""
    if spec.special:
        return croniter(spec.expression, before).get_prev(datetime)  # type: ignore[no-any-return]
    t = before.replace(second=0, microsecond=0)
    if t == before:
        t -= _MINUTE
    limit = t.year - _SEARCH_YEARS
    while t.year >= limit:
        if t.month not in spec.months:
            t = datetime(t.year, t.month, 1) - _MINUTE
            continue
        if not spec.day_matches(t):
            if spec.weekdays is None and spec.days is not None:  # back to the previous listed day
                earlier = [d for d in spec.days if d < t.day]
                t = (
                    datetime(t.year, t.month, max(earlier), 23, 59)
                    if earlier
                    else datetime(t.year, t.month, 1) - _MINUTE
                )
                continue
            t = datetime(t.year, t.month, t.day) - _MINUTE
            continue
        if t.hour not in spec.hours:
            hours = [h for h in spec.hours if h < t.hour]
            t = (
                t.replace(hour=max(hours), minute=59)
                if hours
                else datetime(t.year, t.month, t.day) - _MINUTE
            )
            continue
        if t.minute not in spec.minutes:
            minutes = [m for m in spec.minutes if m < t.minute]
            t = t.replace(minute=max(minutes)) if minutes else t.replace(minute=0) - _MINUTE
            continue
        return t
    raise ValueError(f"{spec.expression!r} has no run in the previous {_SEARCH_YEARS} years")


def prev_cron(
    expression: str,
    timezone: str,
    before: datetime,
    on_gap: str = "shift",
    on_fold: str = "first",
) -> datetime | None:
    """The last run of a cron schedule strictly before the instant ``before``.

    The mirror of :func:`next_cron`, with the same daylight-saving rules;
    ``None`` when there is none in the 30 years before.
    """
    spec = compile_cron(expression)
    tz = zone(timezone)
    if not is_default(on_gap, on_fold):
        return prev_by_walls(_prev_wall_or_none(spec), tz, before, on_gap, on_fold)
    local = before.astimezone(tz)
    wall = local.replace(tzinfo=None)
    if local.fold:
        # In the second pass of a repeated hour, its later wall times ran at their
        # first pass, before ``before``: start the search after them.
        wall += fold_size(local)
    for _ in range(10_000):
        try:
            wall = _prev_wall(spec, wall)
        except ValueError:
            return None
        instant = resolve_local(wall, tz)
        if instant < before:  # not a wall time of the fold's second pass, nor a gap's end
            return instant
    return None


def _prev_wall_or_none(spec: CronSpec) -> Callable[[datetime], datetime | None]:
    def step(wall: datetime) -> datetime | None:
        try:
            return _prev_wall(spec, wall)
        except ValueError:
            return None

    return step


def _wall(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _wall_limit(instant: datetime, tz: ZoneInfo) -> datetime:
    """The wall time ``W`` of ``tz`` such that the runs of the wall times before ``W``, and
    only those, happen at or before ``instant`` (runs follow wall time, see
    :func:`resolve_local`)."""
    local = instant.astimezone(tz)
    if local.fold:  # second pass of a repeated hour: all of that hour ran at its first pass
        change = transition(tz, instant - fold_size(local), instant)
        return _wall(change - _MICRO, tz) + _MICRO
    return local.replace(tzinfo=None, second=0, microsecond=0) + _MINUTE


def _ceil_minute(wall: datetime) -> datetime:
    floor = wall.replace(second=0, microsecond=0)
    return floor if floor == wall else floor + _MINUTE


@functools.lru_cache(maxsize=4096)
def _special_days(expression: str, year: int, month: int) -> frozenset[int]:
    """The days of a month on which an expression with ``L``, ``W`` or ``#`` runs."""
    fields = expression.split(" ")
    days = croniter(f"0 0 {fields[2]} {fields[3]} {fields[4]}", datetime(year, month, 1) - _MINUTE)
    found: set[int] = set()
    for _ in range(32):
        try:
            day = days.get_next(datetime)
        except Exception:  # croniter found none within its search horizon
            break
        if (day.year, day.month) != (year, month):
            break
        found.add(day.day)
    return frozenset(found)


def _day_runs(spec: CronSpec, day: date) -> bool:
    if day.month not in spec.months:
        return False
    if spec.special:
        return day.day in _special_days(spec.expression, day.year, day.month)
    return spec.day_matches(datetime(day.year, day.month, day.day))


def _count_in_day(spec: CronSpec, first: int, end: int) -> int:
    """Matching times of day from minute ``first`` (included) to ``end`` (excluded)."""
    if end <= first:
        return 0
    minutes = sorted(spec.minutes)
    found = 0
    for hour in spec.hours:
        low, high = first - 60 * hour, end - 60 * hour
        if high > 0 and low < 60:
            found += bisect.bisect_left(minutes, high) - bisect.bisect_left(minutes, low)
    return found


def _count_walls(spec: CronSpec, low: datetime, high: datetime) -> int:
    """Matching wall times (naive, whole minutes) in ``[low, high)``, by whole days."""
    low, high = _ceil_minute(low), _ceil_minute(high)
    per_day = len(spec.hours) * len(spec.minutes)
    found = 0
    day = low.date()
    while (start := datetime(day.year, day.month, day.day)) < high:
        if day.month not in spec.months:  # straight to the next month
            day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
            continue
        if _day_runs(spec, day):
            end = start + _DAY
            if low <= start and end <= high:
                found += per_day
            else:
                first = (max(low, start) - start) // _MINUTE
                found += _count_in_day(spec, first, (min(high, end) - start) // _MINUTE)
        day += _DAY
    return found


def count_cron(
    expression: str,
    timezone: str,
    after: datetime,
    until: datetime,
    on_gap: str = "shift",
    on_fold: str = "first",
) -> int:
    """How many runs of a cron schedule fall in ``(after, until]`` (exact, without listing them).

    Counts the matching wall times between the two instants day by day, then
    applies the daylight-saving rules of :func:`next_cron`: the wall times of a
    spring-forward gap and its end run once together; the second pass of a
    repeated hour runs nothing (the bounds of the count already say so).
    """
    if until <= after:
        return 0
    if not is_default(on_gap, on_fold):
        return count_by_policy(
            lambda a, u: count_cron(expression, timezone, a, u),
            lambda a: next_cron(expression, timezone, a),
            lambda a: next_cron(expression, timezone, a, on_gap, on_fold),
            zone(timezone),
            after,
            until,
        )
    spec = compile_cron(expression)
    tz = zone(timezone)
    found = _count_walls(spec, _wall_limit(after, tz), _wall_limit(until, tz))
    for change in changes(tz, after, until):
        start, end = _wall(change - _MICRO, tz) + _MICRO, _wall(change, tz)
        if end > start:  # a gap: every wall time from its start to its end runs at `change`
            together = _count_walls(spec, start, end.replace(second=0, microsecond=0) + _MINUTE)
            found -= max(0, together - 1)
    return found


def prev_interval(anchor: datetime, every_seconds: int, before: datetime) -> datetime | None:
    """The last of ``anchor + k * every`` (k >= 0) strictly before ``before`` (``None``: none)."""
    step_ms = every_seconds * 1000
    anchor_ms = _ms(anchor)
    last_ms = _ms(before - _MICRO)  # the last whole millisecond before ``before``
    if last_ms < anchor_ms:
        return None
    return _from_ms(anchor_ms + (last_ms - anchor_ms) // step_ms * step_ms)


def count_interval(anchor: datetime, every_seconds: int, after: datetime, until: datetime) -> int:
    """How many of ``anchor + k * every`` (k >= 0) fall in ``(after, until]``."""
    if until <= after:
        return 0
    step_ms = every_seconds * 1000
    anchor_ms = _ms(anchor)

    def upto(instant: datetime) -> int:  # how many at or before ``instant``
        elapsed = _ms(instant) - anchor_ms
        return 0 if elapsed < 0 else elapsed // step_ms + 1

    return upto(until) - upto(after)


@attrs.frozen(kw_only=True)
class Timing:
    """When a schedule is due: ``kind`` is ``cron`` (``cron_expression`` on the wall clock
    of ``timezone``), ``interval`` (every ``every_seconds`` from ``anchor``) or
    ``fixed_time`` (once, ``at``). ``on_gap`` and ``on_fold`` are the daylight-saving
    choices of wall-clock kinds (:mod:`abi_engine.schedule_dst`)."""

    kind: str
    cron_expression: str = ""
    timezone: str = "UTC"
    anchor: datetime | None = None
    every_seconds: int = 1
    at: datetime | None = None
    on_gap: str = "shift"
    on_fold: str = "first"
    #: The wall times of an ``rrule`` schedule (:func:`abi_engine.schedule_rrule.compile_rrule`).
    walls: Walls | None = None

    def next_after(self, after: datetime) -> datetime | None:
        """The first due time strictly after ``after`` (``None``: never again)."""
        if self.kind == "cron":
            return next_cron(self.cron_expression, self.timezone, after, self.on_gap, self.on_fold)
        if self.kind == "interval":
            assert self.anchor is not None
            return next_interval(self.anchor, self.every_seconds, after)
        if self.walls is not None:
            return next_by_rule(self.walls, self.timezone, after, self.on_gap, self.on_fold)
        return self.at if self.at is not None and self.at > after else None

    def prev_before(self, before: datetime) -> datetime | None:
        """The last due time strictly before ``before`` (``None``: none)."""
        if self.kind == "cron":
            return prev_cron(self.cron_expression, self.timezone, before, self.on_gap, self.on_fold)
        if self.kind == "interval":
            assert self.anchor is not None
            return prev_interval(self.anchor, self.every_seconds, before)
        if self.walls is not None:
            tz = zone(self.timezone)
            return prev_by_walls(self.walls.prev_wall, tz, before, self.on_gap, self.on_fold)
        return self.at if self.at is not None and self.at < before else None

    def count(self, after: datetime, until: datetime) -> int:
        """How many due times fall in ``(after, until]``."""
        if self.kind == "cron":
            return count_cron(
                self.cron_expression, self.timezone, after, until, self.on_gap, self.on_fold
            )
        if self.kind == "interval":
            assert self.anchor is not None
            return count_interval(self.anchor, self.every_seconds, after, until)
        if self.walls is not None:  # a rule has no arithmetic: its due times are listed
            found, due = 0, self.next_after(after)
            while due is not None and due <= until:
                found, due = found + 1, self.next_after(due)
            return found
        return int(self.at is not None and after < self.at <= until)


def occurrence_flags(
    expression: str,
    timezone: str,
    due: datetime,
    on_gap: str = "shift",
    walls: Walls | None = None,
) -> tuple[bool, bool]:
    """Whether the cron due time ``due`` was shifted by a spring-forward gap (a wall time
    of the expression did not exist, and runs at the end of the gap: never with ``on_gap``
    ``skip``), and whether its wall time repeats in a fall-back fold (it runs at the pass,
    or passes, ``on_fold`` says). ``walls``: those of an rrule schedule instead of the
    cron ``expression``."""
    next_wall = walls.next_wall if walls is not None else _cron_walls(expression)
    tz = zone(timezone)
    local = due.astimezone(tz)
    wall = local.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    repeated = first is not None and second is not None and first > second
    before = (due - timedelta(seconds=1)).astimezone(tz).utcoffset()
    after = local.utcoffset()
    shifted = False
    if on_gap == "shift" and before is not None and after is not None and after > before:
        gap_start = wall - (after - before)  # the first wall time that did not exist
        found = next_wall(gap_start - _MICRO)
        shifted = found is not None and found < wall
    return shifted, repeated


def _cron_walls(expression: str) -> Callable[[datetime], datetime | None]:
    spec = compile_cron(expression)
    return lambda wall: _next_wall(spec, wall)


def upcoming(
    timing: Timing, first: datetime | None, count: int
) -> list[tuple[datetime, bool, bool]]:
    """The ``count`` due times from ``first`` (included) on, each with the flags of
    :func:`occurrence_flags` (always ``False`` for intervals and fixed times)."""
    found: list[tuple[datetime, bool, bool]] = []
    due = first
    while due is not None and len(found) < count:
        flags = (False, False)
        if timing.kind in ("cron", "rrule"):
            flags = occurrence_flags(
                timing.cron_expression, timing.timezone, due, timing.on_gap, timing.walls
            )
        found.append((due, *flags))
        due = timing.next_after(due)
    return found


def jitter_delay(
    schedule_id: str, due: datetime, jitter_seconds: float, following: datetime | None
) -> timedelta:
    """How long after ``due`` the schedule's run starts: a pseudo-random amount below
    ``jitter_seconds``, the same for the same schedule and due time in every process
    (a hash of both), and under half the way to the ``following`` due time (so the due
    time a delayed run stands for is always the last one before it)."""
    if jitter_seconds <= 0:
        return timedelta(0)
    key = f"{schedule_id}|{_ms(due)}".encode()
    fraction = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    delay = timedelta(milliseconds=int(fraction * jitter_seconds * 1000))
    if following is not None:
        delay = min(delay, (following - due) / 2)
    return timedelta(milliseconds=int(delay.total_seconds() * 1000))


def jittered(
    timing: Timing, schedule_id: str, due: datetime | None, jitter_seconds: float
) -> datetime | None:
    """When the run of due time ``due`` starts: ``due`` plus its :func:`jitter_delay`."""
    if due is None or jitter_seconds <= 0:
        return due
    return due + jitter_delay(schedule_id, due, jitter_seconds, timing.next_after(due))


def logical_due(timing: Timing, start: datetime, jitter_seconds: float) -> datetime:
    """The due time a run starting at ``start`` (a :func:`jittered` instant) stands for:
    the last due time at or before it (``start`` itself without jitter)."""
    if jitter_seconds <= 0:
        return start
    return timing.prev_before(start + timedelta(microseconds=1)) or start
