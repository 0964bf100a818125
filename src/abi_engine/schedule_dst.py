"""Daylight-saving choices of wall-clock schedules: which instants a wall time runs at.

A cron or rrule schedule gives *wall times* of its zone; each runs at the
instants :func:`candidates` says, by the schedule's two choices:

* ``on_gap`` for a wall time that does not exist (the spring-forward gap):
  ``shift`` (default) runs it at the end of the gap (all the gap's wall times
  of the schedule run there once, together), ``skip`` does not run it;
* ``on_fold`` for a wall time that happens twice (the fall-back fold):
  ``first`` (default) runs it at its first pass, ``last`` at its second,
  ``both`` at each.

The walkers :func:`next_by_walls` and :func:`prev_by_walls` turn any
generator of wall times (cron fields, an RFC 5545 rule) into due instants with
these choices, and :func:`count_by_policy` counts them from the count under the
defaults, correcting only around the zone's changes. Pure functions; every
instant in and out is an aware UTC datetime, every wall time naive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = [
    "FOLD_CHOICES",
    "GAP_CHOICES",
    "Walls",
    "candidates",
    "changes",
    "count_by_policy",
    "fold_size",
    "is_default",
    "next_by_walls",
    "prev_by_walls",
    "resolve_local",
    "transition",
]

GAP_CHOICES = ("shift", "skip")
FOLD_CHOICES = ("first", "last", "both")
#: Wall-time steps a walker takes at most before giving up (a rule firing only in gaps...).
WALK_LIMIT = 10_000
_MICRO = timedelta(microseconds=1)
#: How often :func:`changes` samples a zone's offset (no zone changes twice within it).
_OFFSET_SAMPLE = timedelta(hours=12)

#: The first wall time strictly after (or before) a wall time; ``None``: there is none.
WallStep = Callable[[datetime], "datetime | None"]


class Walls(Protocol):
    """A source of wall times in order (a compiled RFC 5545 rule)."""

    def next_wall(self, wall: datetime) -> datetime | None: ...

    def prev_wall(self, wall: datetime) -> datetime | None: ...


def is_default(on_gap: str, on_fold: str) -> bool:
    """Whether the choices are the defaults (``shift``, ``first``)."""
    return on_gap == "shift" and on_fold == "first"


def resolve_local(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant a wall time of ``tz`` stands for under the defaults.

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


def _offsets(wall: datetime, tz: ZoneInfo) -> tuple[timedelta, timedelta]:
    first = wall.replace(tzinfo=tz, fold=0).utcoffset()
    second = wall.replace(tzinfo=tz, fold=1).utcoffset()
    assert first is not None
    assert second is not None
    return first, second


def candidates(wall: datetime, tz: ZoneInfo, on_gap: str, on_fold: str) -> tuple[datetime, ...]:
    """The instants the wall time ``wall`` of ``tz`` runs at, by the choices (oldest first)."""
    first, second = _offsets(wall, tz)
    if first == second:
        return ((wall - first).replace(tzinfo=UTC),)
    if first > second:  # happens twice
        one, two = (wall - first).replace(tzinfo=UTC), (wall - second).replace(tzinfo=UTC)
        return (one,) if on_fold == "first" else (two,) if on_fold == "last" else (one, two)
    return (resolve_local(wall, tz),) if on_gap == "shift" else ()


def _latest(wall: datetime, tz: ZoneInfo) -> datetime:
    """The last instant any choice runs ``wall`` at (monotone in ``wall``)."""
    first, second = _offsets(wall, tz)
    if first > second:
        return (wall - second).replace(tzinfo=UTC)
    return resolve_local(wall, tz)


def fold_size(local: datetime) -> timedelta:
    """How much the clock goes back at the fold the aware ``local`` time is in (0: none)."""
    first = local.replace(fold=0).utcoffset()
    second = local.replace(fold=1).utcoffset()
    assert first is not None
    assert second is not None
    return max(timedelta(0), first - second)


def next_by_walls(
    next_wall: WallStep, tz: ZoneInfo, after: datetime, on_gap: str, on_fold: str
) -> datetime | None:
    """The first instant strictly after ``after`` that a wall time of ``next_wall`` runs at.

    Walks the wall times in order and keeps the earliest instant found; it
    stops once a wall time's first instant passes it (first instants grow
    with wall times). A second pass of a wall time before ``after``'s may
    still come: when ``after`` is in a fold's first pass, the walk starts
    the fold's length earlier.
    """
    local = after.astimezone(tz)
    wall: datetime | None = local.replace(tzinfo=None)
    assert wall is not None
    if not local.fold and on_fold != "first":
        wall -= fold_size(local)
    best: datetime | None = None
    for _ in range(WALK_LIMIT):
        wall = next_wall(wall)
        if wall is None:
            break
        found = [c for c in candidates(wall, tz, on_gap, on_fold) if c > after]
        if best is not None and resolve_local(wall, tz) > best:
            break
        if found:
            best = min(found) if best is None else min(best, *found)
    return best


def prev_by_walls(
    prev_wall: WallStep, tz: ZoneInfo, before: datetime, on_gap: str, on_fold: str
) -> datetime | None:
    """The last instant strictly before ``before`` that a wall time of ``prev_wall`` runs at
    (the mirror of :func:`next_by_walls`)."""
    local = before.astimezone(tz)
    wall: datetime | None = local.replace(tzinfo=None)
    assert wall is not None
    if local.fold:  # the first passes of later wall times came before ``before``
        wall += fold_size(local)
    best: datetime | None = None
    for _ in range(WALK_LIMIT):
        wall = prev_wall(wall)
        if wall is None:
            break
        if best is not None and _latest(wall, tz) < best:
            break
        found = [c for c in candidates(wall, tz, on_gap, on_fold) if c < before]
        if found:
            best = max(found) if best is None else max(best, *found)
    return best


def transition(tz: ZoneInfo, low: datetime, high: datetime) -> datetime:
    """The instant in ``(low, high]`` where ``tz`` changes its offset (exactly one change)."""
    offset = low.astimezone(tz).utcoffset()
    low_s, high_s = math.floor(low.timestamp()), math.ceil(high.timestamp())
    while high_s - low_s > 1:
        middle = (low_s + high_s) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset:
            low_s = middle
        else:
            high_s = middle
    return datetime.fromtimestamp(high_s, UTC)


def changes(tz: ZoneInfo, after: datetime, until: datetime) -> Iterator[datetime]:
    """The instants in ``(after, until]`` where ``tz`` changes its UTC offset."""
    offset = after.astimezone(tz).utcoffset()
    low = after
    while low < until:
        high = min(low + _OFFSET_SAMPLE, until)
        now = high.astimezone(tz).utcoffset()
        if now != offset:
            yield transition(tz, low, high)
            offset = now
        low = high


def _enumerate(
    next_after: Callable[[datetime], datetime | None], low: datetime, high: datetime
) -> int:
    """How many instants of ``next_after`` fall in ``(low, high]`` (a short window)."""
    found, due = 0, next_after(low)
    while due is not None and due <= high:
        found += 1
        due = next_after(due)
    return found


def count_by_policy(
    count_default: Callable[[datetime, datetime], int],
    next_default: Callable[[datetime], datetime | None],
    next_policy: Callable[[datetime], datetime | None],
    tz: ZoneInfo,
    after: datetime,
    until: datetime,
) -> int:
    """How many due times of a schedule with other choices fall in ``(after, until]``.

    The count under the defaults (``count_default``), corrected around each of
    the zone's changes: the choices only move instants within a change's
    size of it, so both are listed there (a few) and the difference added.
    """
    if until <= after:
        return 0
    found = count_default(after, until)
    margin = timedelta(days=1)
    for change in changes(tz, after - margin, until + margin):
        before = (change - _MICRO).astimezone(tz).utcoffset()
        later = change.astimezone(tz).utcoffset()
        assert before is not None
        assert later is not None
        size = abs(later - before)
        low, high = max(after, change - size - _MICRO), min(until, change + size)
        if high > low:
            found += _enumerate(next_policy, low, high) - _enumerate(next_default, low, high)
    return found
