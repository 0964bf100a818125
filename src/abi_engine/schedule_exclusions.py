"""Due times a schedule leaves out, whatever its type: ``exclude_dates`` and ``exclude_rrule``.

A due time is excluded when its day, read in the schedule's zone, is one of
``exclude_dates``, or when its wall time in that zone is one the exclusion
rule ``exclude_rrule`` produces (an RFC 5545 rule, its DTSTART the
schedule's ``start_time`` or creation read on the zone's wall clock to the
minute, as an ``rrule`` schedule's). An ``rrule`` schedule applies its
exclusion rule to its own wall times already (they never become due times);
for the other types (cron, interval, fixed time) the scheduler passes over
an excluded due time (history ``skipped_excluded``), a preview leaves it
out, a backfill does not run it. No clock, no store.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from abi_engine.schedule_math import zone
from abi_engine.schedule_rrule import compile_rrule

__all__ = ["excluded_reason", "has_exclusions"]

_MICRO = timedelta(microseconds=1)


class _Excluding(Protocol):
    schedule_type: str
    timezone: str
    anchor_at: datetime
    exclude_dates: list[str]
    exclude_rrule: str | None


def _rule_applies(record: _Excluding) -> bool:
    """Whether the exclusion rule is checked due time by due time (not inside the rule)."""
    return record.exclude_rrule is not None and record.schedule_type != "rrule"


def has_exclusions(record: _Excluding) -> bool:
    """Whether any due time of the schedule may be excluded (checked one by one)."""
    return bool(record.exclude_dates) or _rule_applies(record)


def excluded_reason(record: _Excluding, due: datetime) -> str | None:
    """Why the due time ``due`` does not run (``None``: it runs)."""
    local = due.astimezone(zone(record.timezone))
    if record.exclude_dates:
        day = local.date().isoformat()
        if day in record.exclude_dates:
            return f"{day} is an excluded date"
    if _rule_applies(record):
        assert record.exclude_rrule is not None
        walls = compile_rrule(record.exclude_rrule, None, record.timezone, record.anchor_at)
        wall = local.replace(tzinfo=None)
        if walls.next_wall(wall - _MICRO) == wall:
            return f"{wall.isoformat()} is excluded by exclude_rrule"
    return None
