""":class:`~abi.workflows.WorkflowScheduler`: schedules of workflows, their history and preview."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from abi._client import (
    Record,
    _check_id,
    _Client,
    _drop_none,
    _structure,
)
from abi_engine.converter import unstructure
from abi_engine.errors import (
    BackfillNotFound,
    ScheduleNotFound,
    WorkflowNotFound,
)
from abi_engine.ids import format_time
from abi_engine.models import (
    DeleteResult,
    Page,
    Schedule,
    ScheduleBackfill,
    SchedulePreview,
    ScheduleSummary,
)
from abi_engine.models_backfills import BackfillRun, BackfillStatus

#: Schedule fields :meth:`WorkflowScheduler.update_schedule` sends back.
SCHEDULE_FIELDS: Sequence[str] = (
    "name",
    "description",
    "schedule_type",
    "cron_expression",
    "interval_value",
    "interval_unit",
    "execution_time",
    "start_time",
    "parameters",
    "enabled",
    "timezone",
    "misfire_policy",
    "misfire_grace_seconds",
    "catch_up_limit",
    "overlap_policy",
    "max_consecutive_failures",
    "paused_reason",
    "priority",
    "end_time",
    "max_runs",
    "jitter_seconds",
    "exclude_dates",
    "on_gap",
    "on_fold",
    "rrule",
    "exclude_rrule",
)


class WorkflowScheduler(_Client):
    """Run workflows on a schedule: cron expressions, intervals or one fixed time.

    Schedules are :class:`~abi_engine.models.Schedule` objects (lists hold
    :class:`~abi_engine.models.ScheduleSummary` items); change one's fields and
    pass it to :meth:`update_schedule` to save it.

    :param access_token: the bearer token to act with (scopes
        ``schedules:read`` / ``schedules:write``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def create_schedule(
        self,
        workflow_id: str,
        name: str,
        schedule_type: str,
        cron_expression: str | None = None,
        interval_value: int | None = None,
        interval_unit: str | None = None,
        execution_time: str | datetime | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        enabled: bool = True,
        timezone: str = "UTC",
        **extra: Any,
    ) -> Schedule:
        """Create a schedule for the workflow and return it (with ``next_execution``).

        :param schedule_type: ``cron``, ``interval`` or ``fixed_time``.
        :param extra: further fields of the REST request body.
        :raises InvalidSchedule: the schedule's definition is invalid.
        """
        path = {"workflow_id": _check_id(workflow_id, WorkflowNotFound)}
        if isinstance(execution_time, datetime):
            execution_time = unstructure(execution_time)
        body = _drop_none(
            {
                "name": name,
                "description": description,
                "schedule_type": schedule_type,
                "cron_expression": cron_expression,
                "interval_value": interval_value,
                "interval_unit": interval_unit,
                "execution_time": execution_time,
                "parameters": parameters,
                "enabled": enabled,
                "timezone": timezone,
                **extra,
            }
        )
        return _structure(
            self._transport.request("create_schedule", path=path, body=body), Schedule
        )

    def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule with this id.

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        return _structure(self._transport.request("get_schedule", path=path), Schedule)

    def list_schedules(
        self,
        workflow_id: str | None = None,
        enabled: bool | None = None,
        page: int = 1,
        page_size: int = 10,
    ) -> Page[ScheduleSummary]:
        """One page of schedules, filtered by workflow and whether they are enabled."""
        query = {
            "workflow_id": workflow_id,
            "enabled": enabled,
            "page": page,
            "page_size": page_size,
        }
        return _structure(
            self._transport.request("list_schedules", query=query), Page[ScheduleSummary]
        )

    def update_schedule(self, schedule: Schedule | Record) -> Schedule:
        """Save a changed schedule (its fields in :data:`SCHEDULE_FIELDS` that are set).

        Fields that did not change leave the schedule as it is (an unchanged
        cron expression keeps its next due time).

        :raises ScheduleNotFound: the schedule no longer exists.
        :raises InvalidSchedule: the new definition is invalid.
        """
        path = {"schedule_id": _check_id(getattr(schedule, "id", None), ScheduleNotFound)}
        fields = schedule.to_dict() if isinstance(schedule, Record) else unstructure(schedule)
        body = _drop_none({name: fields.get(name) for name in SCHEDULE_FIELDS})
        return _structure(
            self._transport.request("update_schedule", path=path, body=body), Schedule
        )

    def pause_schedule(self, schedule_id: str, reason: str | None = None) -> Schedule:
        """Disable the schedule, recording who paused it, ``reason`` and when.

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        body = _drop_none({"enabled": False, "paused_reason": reason})
        return _structure(
            self._transport.request("update_schedule", path=path, body=body), Schedule
        )

    def resume_schedule(self, schedule_id: str, resume: str = "from_now") -> Schedule:
        """Enable the schedule again; ``resume`` says what happens to the due times passed
        while paused: ``from_now`` (none run), ``run_once`` (one run stands for them) or
        ``catch_up`` (the latest run, up to its ``catch_up_limit``).

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        body = {"enabled": True, "resume": resume}
        return _structure(
            self._transport.request("update_schedule", path=path, body=body), Schedule
        )

    def preview_schedule(self, schedule_id: str, count: int = 10) -> SchedulePreview:
        """The schedule's next ``count`` (1 to 100) due times, in UTC and in its zone.

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        answer = self._transport.request("preview_schedule", path=path, query={"count": count})
        return _structure(answer, SchedulePreview)

    def preview(self, count: int = 10, **fields: Any) -> SchedulePreview:
        """The next ``count`` due times of an unsaved schedule: ``fields`` as for
        :meth:`create_schedule` (``workflow_id`` optional: its parameters are then checked).

        :raises InvalidSchedule: the definition is invalid.
        """
        body = _drop_none({**fields, "count": count})
        answer = self._transport.request("preview_unsaved_schedule", body=body)
        return _structure(answer, SchedulePreview)

    def backfill_schedule(
        self,
        schedule_id: str,
        start: datetime | str,
        end: datetime | str,
        *,
        dry_run: bool = False,
        max_runs: int = 100,
        overlap_policy: str = "allow",
    ) -> ScheduleBackfill | BackfillRun:
        """Run the schedule's due times from ``start`` to ``end`` (a past range), at most
        ``max_runs`` (1 to 1000), each execution knowing its due time (``scheduled_for``):
        a :class:`BackfillRun` running in the background (follow it with
        :meth:`get_backfill`, stop it with :meth:`cancel_backfill`). ``dry_run`` lists the
        due times at once without running anything (a :class:`ScheduleBackfill`).

        :raises ScheduleNotFound: no such schedule.
        :raises InvalidRequest: a bad range or bound.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        body = {
            "start": start if isinstance(start, str) else format_time(start),
            "end": end if isinstance(end, str) else format_time(end),
            "dry_run": dry_run,
            "max_runs": max_runs,
            "overlap_policy": overlap_policy,
        }
        answer = self._transport.request("backfill_schedule", path=path, body=body)
        if isinstance(answer, Mapping) and "status" in answer:
            return _structure(answer, BackfillRun)
        return _structure(answer, ScheduleBackfill)

    def get_backfill(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """A backfill of the schedule with its progress (``total``, ``started``,
        ``skipped``, ``failed``, ``status``).

        :raises ScheduleNotFound: no such schedule.
        :raises BackfillNotFound: no such backfill of it (a ``NotFound``, both ways).
        """
        path = {
            "schedule_id": _check_id(schedule_id, ScheduleNotFound),
            "backfill_id": _check_id(backfill_id, BackfillNotFound),
        }
        answer = self._transport.request("get_schedule_backfill", path=path)
        return _structure(answer, BackfillRun)

    def list_backfills(
        self,
        schedule_id: str,
        page: int = 1,
        page_size: int = 10,
        status: BackfillStatus | str | None = None,
    ) -> Page[BackfillRun]:
        """One page of the schedule's backfills with their progress, newest first;
        ``status`` keeps those in it (``running``, ``completed``, ``cancelled``,
        ``failed``).

        :raises ScheduleNotFound: no such schedule.
        :raises InvalidRequest: a bad ``page``, ``page_size`` or ``status``.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        query = {
            "status": status.value if isinstance(status, BackfillStatus) else status,
            "page": page,
            "page_size": page_size,
        }
        answer = self._transport.request("list_schedule_backfills", path=path, query=query)
        return _structure(answer, Page[BackfillRun])

    def cancel_backfill(self, schedule_id: str, backfill_id: str) -> BackfillRun:
        """Stop a running backfill before its next due time (the executions started stay).

        :raises ScheduleNotFound: no such schedule.
        :raises BackfillNotFound: no such backfill of it (a ``NotFound``, both ways).
        :raises InvalidState: it is over already.
        """
        path = {
            "schedule_id": _check_id(schedule_id, ScheduleNotFound),
            "backfill_id": _check_id(backfill_id, BackfillNotFound),
        }
        answer = self._transport.request("cancel_schedule_backfill", path=path)
        return _structure(answer, BackfillRun)

    def delete_schedule(self, schedule_id: str) -> DeleteResult:
        """Delete the schedule; it fires no more.

        :raises ScheduleNotFound: no such schedule.
        """
        path = {"schedule_id": _check_id(schedule_id, ScheduleNotFound)}
        return _structure(self._transport.request("delete_schedule", path=path), DeleteResult)
