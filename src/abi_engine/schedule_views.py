"""Schedules as answers show them: the record as a :class:`~abi_engine.models.Schedule`,
its list item, and its JSON written out (answers and events; a test compares it with
``unstructure``)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, TypeVar

from abi_engine.ids import format_time, parse_time
from abi_engine.models import (
    ExecutionStatus,
    FiringFailure,
    FoldPolicy,
    GapPolicy,
    IntervalUnit,
    LastExecution,
    MisfirePolicy,
    OverlapPolicy,
    Schedule,
    ScheduleSummary,
    ScheduleType,
)
from abi_engine.storage.records_schedules import ScheduleRecord

__all__ = ["definition", "schedule_json"]

#: Types whose ``start_time`` is stored (an interval's first run, a rule's DTSTART).
_ANCHORED = (ScheduleType.INTERVAL, ScheduleType.RRULE)


_E = TypeVar("_E", bound=enum.Enum)


def _member(cls: type[_E], value: Any) -> _E:
    """``cls(value)``, a dict look-up first (``Enum.__call__`` costs ~0.5 us, six a view)."""
    found = cls._value2member_map_.get(value)
    return found if found is not None else cls(value)  # type: ignore[return-value]


def definition(record: ScheduleRecord) -> dict[str, Any]:
    """The fields a schedule's request and its view share, from the record: what the
    schedule was asked to be (the request of :func:`~abi_engine.schedule_requests.as_request`)."""
    return {
        "name": record.name,
        "description": record.description,
        "schedule_type": _member(ScheduleType, record.schedule_type),
        "cron_expression": record.cron_expression,
        "interval_value": record.interval_value,
        "interval_unit": _member(IntervalUnit, record.interval_unit)
        if record.interval_unit
        else None,
        "execution_time": record.execution_time,
        "start_time": record.anchor_at if record.schedule_type in _ANCHORED else None,
        "rrule": record.rrule,
        "exclude_rrule": record.exclude_rrule,
        "parameters": record.parameters,
        "enabled": record.enabled,
        "timezone": record.timezone,
        "misfire_policy": _member(MisfirePolicy, record.misfire_policy),
        "misfire_grace_seconds": record.misfire_grace_seconds,
        "catch_up_limit": record.catch_up_limit,
        "overlap_policy": _member(OverlapPolicy, record.overlap_policy),
        "max_consecutive_failures": record.max_consecutive_failures,
        "paused_reason": None if record.enabled else record.paused_reason,
        "end_time": record.end_time,
        "max_runs": record.max_runs,
        "jitter_seconds": record.jitter_seconds,
        "exclude_dates": list(record.exclude_dates),
        "on_gap": _member(GapPolicy, record.on_gap),
        "on_fold": _member(FoldPolicy, record.on_fold),
        "priority": record.priority,
    }


def _last_execution(record: ScheduleRecord) -> LastExecution | None:
    """The execution the schedule started last, as the view tells it."""
    if not (record.last_execution_id and record.last_status):
        return None
    return LastExecution(
        execution_id=record.last_execution_id,
        status=ExecutionStatus(record.last_status),
        started_at=record.last_started_at,
        completed_at=record.last_completed_at,
    )


def _last_failure(record: ScheduleRecord) -> FiringFailure | None:
    """The last due time at which no execution could be started."""
    if not record.last_failure:
        return None
    due_at = record.last_failure.get("due_at")
    return FiringFailure(
        at=parse_time(record.last_failure["at"]),
        due_at=parse_time(due_at) if due_at else None,
        code=record.last_failure["code"],
        message=record.last_failure["message"],
    )


def _view(record: ScheduleRecord) -> Schedule:
    failure = _last_failure(record)
    return Schedule(
        **definition(record),
        id=record.id,
        workflow_id=record.workflow_id,
        workflow_name=record.workflow_name,
        status=_status(record),
        next_execution=record.next_due if record.enabled else None,
        last_execution=_last_execution(record),
        failed_firings=record.failed_firings,
        last_failure=failure,
        failed_count=record.failed_firings,
        missed_count=record.missed_count,
        last_error=failure,
        consecutive_failures=record.consecutive_failures,
        paused_by=None if record.enabled else record.paused_by,
        paused_at=None if record.enabled else record.paused_at,
        runs_count=record.runs_count,
        created_at=record.created_at,
        updated_at=record.updated_at,
        created_by=record.created_by,
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def schedule_json(s: Schedule) -> dict[str, Any]:
    """``unstructure(schedule)``, written out (answers and events); a test compares the two."""
    data: dict[str, Any] = {"id": s.id, "workflow_id": s.workflow_id}
    data["workflow_name"] = s.workflow_name
    data["name"] = s.name
    data["description"] = s.description
    data["schedule_type"] = s.schedule_type.value
    data["cron_expression"] = s.cron_expression
    data["interval_value"] = s.interval_value
    data["interval_unit"] = None if s.interval_unit is None else s.interval_unit.value
    data["execution_time"] = _time(s.execution_time)
    data["start_time"] = _time(s.start_time)
    data["parameters"] = s.parameters
    data["enabled"] = s.enabled
    data["timezone"] = s.timezone
    data["status"] = s.status
    data["next_execution"] = _time(s.next_execution)
    last = s.last_execution
    data["last_execution"] = (
        None
        if last is None
        else {
            "execution_id": last.execution_id,
            "status": last.status.value,
            "started_at": _time(last.started_at),
            "completed_at": _time(last.completed_at),
        }
    )
    data["misfire_policy"] = s.misfire_policy.value
    data["misfire_grace_seconds"] = s.misfire_grace_seconds
    data["catch_up_limit"] = s.catch_up_limit
    data["overlap_policy"] = s.overlap_policy.value
    data["priority"] = s.priority
    data["failed_firings"] = s.failed_firings
    data["last_failure"] = _failure_json(s.last_failure)
    data["failed_count"] = s.failed_count
    data["missed_count"] = s.missed_count
    data["last_error"] = _failure_json(s.last_error)
    data["consecutive_failures"] = s.consecutive_failures
    data["max_consecutive_failures"] = s.max_consecutive_failures
    data["paused_by"] = s.paused_by
    data["paused_reason"] = s.paused_reason
    data["paused_at"] = _time(s.paused_at)
    data["end_time"] = _time(s.end_time)
    data["max_runs"] = s.max_runs
    data["runs_count"] = s.runs_count
    data["jitter_seconds"] = s.jitter_seconds
    data["exclude_dates"] = s.exclude_dates
    data["on_gap"] = s.on_gap.value
    data["on_fold"] = s.on_fold.value
    data["rrule"] = s.rrule
    data["exclude_rrule"] = s.exclude_rrule
    data["created_at"] = format_time(s.created_at)
    data["updated_at"] = format_time(s.updated_at)
    data["created_by"] = s.created_by
    return data


def _failure_json(failure: FiringFailure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {
        "at": format_time(failure.at),
        "due_at": _time(failure.due_at),
        "code": failure.code,
        "message": failure.message,
    }


def _status(record: ScheduleRecord) -> str:
    if record.completed:
        return "completed"
    return "active" if record.enabled else "disabled"


def _summary(record: ScheduleRecord) -> ScheduleSummary:
    view = _view(record)
    return ScheduleSummary(
        id=view.id,
        workflow_id=view.workflow_id,
        workflow_name=view.workflow_name,
        name=view.name,
        description=view.description,
        schedule_type=view.schedule_type,
        cron_expression=view.cron_expression,
        interval_value=view.interval_value,
        interval_unit=view.interval_unit,
        execution_time=view.execution_time,
        enabled=view.enabled,
        timezone=view.timezone,
        status=view.status,
        next_execution=view.next_execution,
        failed_firings=view.failed_firings,
        failed_count=view.failed_count,
        missed_count=view.missed_count,
        paused_reason=view.paused_reason,
        created_at=view.created_at,
        updated_at=view.updated_at,
    )
