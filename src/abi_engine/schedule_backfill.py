"""Backfill: run the due times a schedule had in a past range (``POST .../backfill``).

Each due time of ``start`` to ``end`` (both included, on the schedule's own
timing, less its ``exclude_dates``) starts one execution of the schedule's
workflow with its parameters, ``schedule_id`` set and ``scheduled_for`` its
due time (the logical time the run stands for). Each carries the idempotency
key ``backfill:<schedule id>:<due time>``: that marks it as a backfill, and
running the same range again returns the executions already started instead
of starting them twice. Bounded: at most ``max_runs`` (1 to 1000) due times;
``dry_run`` lists them without starting anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import attrs

from abi_engine.auth import Principal
from abi_engine.converter import structure
from abi_engine.errors import InvalidRequest, InvalidState
from abi_engine.ids import format_time, utcnow
from abi_engine.limits import Number
from abi_engine.models import BackfillItem, OverlapPolicy, ScheduleBackfill
from abi_engine.schedule_lifecycle import timing_of
from abi_engine.schedule_math import zone
from abi_engine.schedule_rules import UNFINISHED
from abi_engine.storage.records_schedules import ScheduleRecord

if TYPE_CHECKING:
    from abi_engine.executions import ExecutionService

__all__ = ["MAX_BACKFILL", "BackfillRequest", "backfill"]

#: Due times one backfill runs at most.
MAX_BACKFILL = 1000


@attrs.define(kw_only=True)
class BackfillRequest:
    """The body of ``POST /workflow_schedules/{id}/backfill``."""

    start: datetime
    end: datetime
    dry_run: bool = False
    max_runs: Annotated[int, Number(minimum=1, maximum=MAX_BACKFILL)] = 100
    #: ``allow``: every due time starts now; ``skip``: none starts while an execution of
    #: the schedule is unfinished (409 INVALID_STATE).
    overlap_policy: OverlapPolicy = OverlapPolicy.ALLOW


def _request(data: Mapping[str, Any], now: datetime) -> BackfillRequest:
    if not isinstance(data, Mapping):
        raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
    req = structure(data, BackfillRequest, error=InvalidRequest)
    if req.start.year < 1970:
        raise InvalidRequest("'start' must be after 1970", {"field": "start"})
    if req.end <= req.start:
        raise InvalidRequest("'end' must be after 'start'", {"field": "end"})
    if req.end > now:
        raise InvalidRequest(
            "'end' must not be in the future (a backfill runs the past)", {"field": "end"}
        )
    if not 1 <= req.max_runs <= MAX_BACKFILL:
        raise InvalidRequest(f"'max_runs' must be 1 to {MAX_BACKFILL}", {"field": "max_runs"})
    if req.overlap_policy is OverlapPolicy.QUEUE:
        raise InvalidRequest(
            "a backfill's overlap_policy is allow or skip", {"field": "overlap_policy"}
        )
    return req


def due_times(
    record: ScheduleRecord, start: datetime, end: datetime, limit: int
) -> tuple[list[datetime], bool]:
    """The schedule's due times in ``[start, end]`` off its excluded dates, at most ``limit``,
    and whether there are more."""
    timing = timing_of(record)
    tz, excluded = zone(record.timezone), set(record.exclude_dates)
    found: list[datetime] = []
    due = timing.next_after(start - timedelta(microseconds=1))
    for _ in range(limit * 10 + 100):  # (excluded dates are passed over, boundedly)
        if due is None or due > end or len(found) > limit:
            break
        if due.astimezone(tz).date().isoformat() not in excluded:
            found.append(due)
        due = timing.next_after(due)
    return found[:limit], len(found) > limit


async def backfill(
    record: ScheduleRecord,
    data: Mapping[str, Any],
    executions: ExecutionService,
    actor: Principal | None,
) -> ScheduleBackfill:
    """Run (or, ``dry_run``, list) the due times of ``record`` in a past range."""
    req = _request(data, utcnow())
    dues, truncated = due_times(record, req.start, req.end, req.max_runs)
    items = [BackfillItem(due_at=due) for due in dues]
    if not req.dry_run:
        if req.overlap_policy is OverlapPolicy.SKIP and record.last_status in UNFINISHED:
            raise InvalidState(
                f"Execution {record.last_execution_id} of the schedule is still"
                f" {record.last_status}; overlap_policy skip starts no backfill",
                {"schedule_id": record.id, "execution_id": record.last_execution_id},
            )
        for item in items:
            started = await executions.execute(
                record.workflow_id,
                record.parameters,
                wait=False,
                schedule_id=record.id,
                actor=actor,
                idempotency_key=f"backfill:{record.id}:{format_time(item.due_at)}",
                scheduled_for=item.due_at,
            )
            item.execution_id = started.execution_id
    return ScheduleBackfill(
        schedule_id=record.id,
        dry_run=req.dry_run,
        start=req.start,
        end=req.end,
        items=items,
        truncated=truncated,
    )
