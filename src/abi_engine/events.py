"""Events: what happened, as webhooks and the ``abi_event`` hook see it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from abi_engine.ids import format_time, new_id, utcnow

__all__ = ["EVENT_TYPES", "Event"]

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
