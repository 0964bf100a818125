"""Events: what happened, as webhooks and the ``abi_event`` hook see it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import attrs

from abi_engine.ids import format_time, new_id, utcnow

__all__ = ["EVENT_TYPES", "Event", "ExecutionEventRef", "OutboxEvent"]

EVENT_TYPES: tuple[str, ...] = (
    "workflow.created",
    "workflow.updated",
    "workflow.activated",
    "workflow.deactivated",
    "workflow.deleted",
    "workflow.executed",
    "execution.step_completed",
    "execution.completed",
    "execution.failed",
    "schedule.created",
    "schedule.updated",
    "schedule.deleted",
    "schedule.triggered",
)


@attrs.frozen(kw_only=True)
class Event:
    """One event.

    ``id`` (``evt_...``), ``type`` (one of :data:`EVENT_TYPES`), ``timestamp``
    and ``data`` (the JSON form of the resource concerned).
    """

    type: str = attrs.field(validator=attrs.validators.in_(EVENT_TYPES))
    data: dict[str, Any]
    id: str = attrs.Factory(lambda: new_id("evt_"))
    timestamp: datetime = attrs.Factory(utcnow)

    def body(self) -> dict[str, Any]:
        """The body a webhook receives: ``{"type", "timestamp", "data"}``."""
        return {"type": self.type, "timestamp": format_time(self.timestamp), "data": self.data}


#: Execution event types the runtime may keep by reference (:class:`ExecutionEventRef`).
REFERENCE_TYPES = frozenset(
    {"workflow.executed", "execution.step_completed", "execution.completed", "execution.failed"}
)


class ExecutionEventRef(NamedTuple):
    """An execution event written to the outbox by reference, its data built when delivered.

    The execution hot path writes these when only the outbox consumes events
    (no ``abi_event`` hook): instead of carrying the execution's JSON, the
    event names the execution (and, for ``execution.step_completed``, the
    step's index), and the events of one commit share one outbox row. What
    they point to never changes once written (a finished step, a finished
    execution; ``workflow.executed`` shows the execution as it started), so
    the body built at delivery time is the one the event had when it
    happened: see :func:`abi_engine.execution_views.event_data`. A named
    tuple, as the hot path makes several per execution; ``id`` is given when
    the event is written (``None`` before).
    """

    type: str
    execution_id: str
    step_index: int | None
    timestamp: datetime
    id: str | None = None

    @classmethod
    def new(
        cls,
        type: str,
        execution_id: str,
        step_index: int | None = None,
        timestamp: datetime | None = None,
    ) -> ExecutionEventRef:
        """A reference event happening at ``timestamp`` (default: now)."""
        return cls(type, execution_id, step_index, timestamp or utcnow())


#: What the outbox holds: events with their data, or execution events by reference.
OutboxEvent = Event | ExecutionEventRef
