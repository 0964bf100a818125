"""Reading executions: ``get``, ``list``, ``counts``, ``wait`` (``engine.executions``).

Mixed into :class:`~abi_engine.executions.ExecutionService`; no state of its own.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from abi_engine.errors import ExecutionNotFound, InvalidRequest
from abi_engine.execution_views import build_execution, queued_fields
from abi_engine.ids import parse_time
from abi_engine.models import Execution, ExecutionStatus, ExecutionSummary, Page
from abi_engine.runtime.execution import settled
from abi_engine.services import check_flag, check_page
from abi_engine.storage.records import ExecutionQuery, ExecutionRecord

if TYPE_CHECKING:
    from abi_engine.runtime.runner import Runtime
    from abi_engine.storage.aio import AsyncStore

__all__ = ["ExecutionCount", "ExecutionReading"]

#: An execution view that may show why it is queued.
_View = TypeVar("_View", Execution, ExecutionSummary)


class ExecutionCount(NamedTuple):
    """``executions`` of one status requested in the bucket from ``bucket_start``."""

    bucket_start: datetime
    status: ExecutionStatus
    executions: int


class ExecutionReading:
    """``get``, ``list``, ``counts``, ``wait`` of :class:`~abi_engine.executions.ExecutionService`."""

    # Provided by ExecutionService.
    _store: AsyncStore
    _runtime: Runtime

    async def get(self, execution_id: str) -> Execution:
        """The execution with its steps."""
        if not isinstance(execution_id, str):
            raise ExecutionNotFound(str(execution_id))
        record = await self._store.get_execution(execution_id)
        if record is None:
            raise ExecutionNotFound(execution_id)
        steps = await self._store.get_steps(execution_id)
        return self._why(build_execution(record, steps))

    def _why(self, view: _View) -> _View:
        """``view`` with ``queued_reason`` ``priority`` when this node holds it behind
        work of higher priority (a dictionary look-up)."""
        if view.queued_reason == "worker_pool" and self._runtime.behind_priority(view.execution_id):
            view.queued_reason = "priority"
        return view

    async def list(
        self,
        *,
        workflow_id: str | None = None,
        status: str | Sequence[str] | None = None,
        start_date: Any = None,
        end_date: Any = None,
        page: Any = 1,
        page_size: Any = 10,
        schedule_id: str | None = None,
        created_by: str | None = None,
        awaiting_approval: Any = False,
        rerun_of: str | None = None,
        parent_execution_id: str | None = None,
    ) -> Page[ExecutionSummary]:
        """One page of executions, newest first.

        ``status`` is one status or several (any of them); ``schedule_id`` the
        schedule that started them; ``created_by`` the user who requested them;
        ``start_date`` / ``end_date`` bound when they were requested
        (``created_at``, inclusive); ``awaiting_approval`` keeps only the waiting
        executions whose wait is an approval's decision; ``rerun_of`` the reruns
        of that execution (#16); ``parent_execution_id`` the children of that one.
        """
        page, page_size = check_page(page, page_size)
        statuses = _statuses(status)
        _check_strings(
            workflow_id=workflow_id,
            schedule_id=schedule_id,
            created_by=created_by,
            rerun_of=rerun_of,
            parent_execution_id=parent_execution_id,
        )
        bounds = [_bound("start_date", start_date), _bound("end_date", end_date)]
        query = ExecutionQuery(
            page=page,
            page_size=page_size,
            workflow_id=workflow_id,
            statuses=tuple(statuses),
            start=bounds[0],
            end=bounds[1],
            schedule_id=schedule_id,
            created_by=created_by,
            awaiting_approval=bool(check_flag(awaiting_approval, "awaiting_approval")),
            rerun_of=rerun_of,
            parent_execution_id=parent_execution_id,
        )
        records, total = await self._store.list_executions(query)
        items = [self._why(_summary(r)) for r in records]
        return Page.build(items, page, page_size, total)

    async def counts(
        self, start: datetime, end: datetime, bucket_seconds: int
    ) -> builtins.list[ExecutionCount]:
        """Executions requested in ``[start, end)`` counted per status and per
        ``bucket_seconds`` interval from ``start`` (one indexed query; empty
        buckets and statuses left out), oldest bucket first."""
        if isinstance(bucket_seconds, bool) or not isinstance(bucket_seconds, int):
            raise InvalidRequest("'bucket_seconds' must be an integer", {"field": "bucket_seconds"})
        if bucket_seconds <= 0 or end <= start:
            raise InvalidRequest(
                "Counts need a positive bucket and a start before the end",
                {"field": "bucket_seconds" if bucket_seconds <= 0 else "start"},
            )
        rows = await self._store.execution_counts(start, end, bucket_seconds * 1000)
        step = timedelta(seconds=bucket_seconds)
        return sorted(
            ExecutionCount(start + bucket * step, ExecutionStatus(status), count)
            for bucket, status, count in rows
        )

    async def wait(self, execution_id: str, timeout: float | None = None) -> Execution:
        """Wait until the execution ends or waits (or ``timeout``), then return it."""
        return (await self.wait_settled(execution_id, timeout))[0]

    async def wait_settled(
        self, execution_id: str, timeout: float | None = None
    ) -> tuple[Execution, bool]:
        """Like :meth:`wait`, and whether it settled: ``True`` once the execution has
        ended or waits for a signal (a durable sleep is running time: not settled),
        ``False`` when ``timeout`` passed first."""
        record = (
            await self._store.get_execution(execution_id) if isinstance(execution_id, str) else None
        )
        if record is None:
            raise ExecutionNotFound(str(execution_id))
        if settled(record):  # one read (with its steps) when it ended already
            return build_execution(record, await self._store.get_steps(execution_id)), True
        view = await self._runtime.wait(execution_id, timeout)
        if view is not None:
            return view, True
        return await self.get(execution_id), False


def _check_strings(**texts: Any) -> None:
    """Refuse a filter given as something other than a string (``None``: no filter)."""
    for name, text in texts.items():
        if text is not None and not isinstance(text, str):
            raise InvalidRequest(f"'{name}' must be a string", {"field": name})


def _summary(r: ExecutionRecord) -> ExecutionSummary:
    """The list's line of one execution."""
    return ExecutionSummary(
        execution_id=r.id,
        workflow_id=r.workflow_id,
        workflow_name=r.workflow_name,
        status=r.status,
        started_at=r.started_at,
        completed_at=r.completed_at,
        duration_ms=r.duration_ms,
        **queued_fields(r),
    )


def _statuses(status: str | Sequence[str] | None) -> list[ExecutionStatus]:
    """The statuses a list filters on (one or several); ``InvalidRequest`` naming a bad one."""
    statuses: list[ExecutionStatus] = []
    for value in [status] if isinstance(status, str) else (status or ()):
        try:
            statuses.append(ExecutionStatus(value))
        except ValueError:
            raise InvalidRequest(
                f"'status' must be one of {', '.join(s.value for s in ExecutionStatus)},"
                f" got {str(value)[:40]!r}",
                {"field": "status"},
            ) from None
    return statuses


def _bound(name: str, value: Any) -> datetime | None:
    """A time bound of a list (RFC 3339 text or a datetime); ``InvalidRequest`` otherwise."""
    if value is None:
        return None
    try:
        return parse_time(value) if isinstance(value, str) else value
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an RFC 3339 time", {"field": name}) from None
