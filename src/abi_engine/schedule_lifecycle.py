"""Schedules paused and resumed, and previewed: the rules :mod:`abi_engine.schedules` applies.

:func:`pause_or_resume` sets the pause fields of an updated schedule
(``paused_by``, ``paused_reason``, ``paused_at``) and, when it is enabled
again, applies its ``resume`` mode (``from_now``, ``run_once``,
``catch_up``) to the due times that passed while it was paused, writing the
``resumed`` history line. :func:`preview` lists a schedule's coming due times
with their daylight-saving flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from abi_engine.auth import Principal
from abi_engine.ids import format_time
from abi_engine.models import ResumeMode, ScheduleOccurrence, SchedulePreview
from abi_engine.runtime.firing import timing as timing_of
from abi_engine.schedule_exclusions import excluded_reason
from abi_engine.schedule_math import (
    Timing,
    jittered,
    logical_due,
    upcoming,
    zone,
)
from abi_engine.storage.records_schedules import HistoryRecord, ScheduleRecord

__all__ = ["pause_or_resume", "preview", "timing_of"]


def pause_or_resume(
    current: ScheduleRecord,
    record: ScheduleRecord,
    data: Mapping[str, Any],
    now: datetime,
    actor: Principal | None,
) -> tuple[HistoryRecord, ...]:
    """Set the pause fields of ``record`` (an update of ``current``); the history lines."""
    if current.enabled and not record.enabled:
        record.paused_by = actor.user_id if actor else None
        record.paused_reason, record.paused_at = data.get("paused_reason"), now
        record.resume_policy = None
        return ()  # (the schedule shows who paused it; the resume tells what passed)
    if not record.enabled:
        if "paused_reason" in data:
            record.paused_reason = data["paused_reason"]
        return ()
    if current.enabled or current.completed:
        return ()
    return (_resume(current, record, ResumeMode(data.get("resume") or "from_now"), now),)


def _resume(
    current: ScheduleRecord, record: ScheduleRecord, mode: ResumeMode, now: datetime
) -> HistoryRecord:
    """Enable ``record`` again under ``mode``; the ``resumed`` line saying what passed."""
    since = current.paused_at or current.updated_at
    timing = timing_of(record)
    passed = timing.count(since, now)
    record.paused_by = record.paused_reason = record.paused_at = None
    record.resume_policy = None
    detail = f"{mode.value}: {passed} due time(s) passed while paused"
    if passed and mode is not ResumeMode.FROM_NOW:
        # The next tick decides about them once, as the misfire policy ``mode`` would
        # (bounded: counted, not listed; at most ``catch_up_limit`` run).
        record.next_due = timing.next_after(since)
        record.resume_policy = mode.value
    elif passed:
        first, last = timing.next_after(since), timing.prev_before(now)
        detail += f" ({_time(first)} to {_time(last)}), none run"
    return _line(record, "resumed", detail, now)


def _line(record: ScheduleRecord, outcome: str, detail: str, now: datetime) -> HistoryRecord:
    return HistoryRecord(
        schedule_id=record.id, due_at=None, recorded_at=now, outcome=outcome, detail=detail
    )


def preview(record: ScheduleRecord, first: datetime | None, count: int) -> SchedulePreview:
    timing = timing_of(record)
    if first is not None:  # (a stored next_due is the run's start: its due time is before)
        first = logical_due(timing, first, record.jitter_seconds)
    items: list[ScheduleOccurrence] = []
    # Excluded due times (dates, exclusion rule) are passed over: a bounded walk (at most 100 pages).
    for _ in range(100):
        page = upcoming(timing, first, count) if first is not None else []
        for due, shifted, repeated in page:
            if record.end_time is not None and due > record.end_time:
                page = []  # ends here
                break
            if excluded_reason(record, due) is None:
                items.append(_occurrence(record, timing, due, shifted, repeated))
        if len(page) < count or len(items) >= count:
            break
        first = timing.next_after(page[-1][0])
    del items[count:]
    if record.max_runs is not None:
        del items[max(0, record.max_runs - record.runs_count) :]
    return SchedulePreview(schedule_id=record.id, timezone=record.timezone, items=items)


def _occurrence(
    record: ScheduleRecord, timing: Timing, due: datetime, shifted: bool, repeated: bool
) -> ScheduleOccurrence:
    return ScheduleOccurrence(
        due_at=due,
        local_time=due.astimezone(zone(record.timezone)).isoformat(timespec="seconds"),
        run_at=jittered(timing, record.id, due, record.jitter_seconds) or due,
        shifted_by_gap=shifted,
        repeated_by_fold=repeated,
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)
