"""Events: what happened, as webhooks and the ``abi_event`` hook see it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from typing import Any, NamedTuple

import attrs

from abi_engine.ids import format_time, new_id, utcnow

__all__ = [
    "CALLBACK_EVENTS",
    "EVENT_TYPES",
    "DeferredEvent",
    "Event",
    "ExecutionEventRef",
    "OutboxEvent",
    "resolve",
]

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
    "schedule.failed",
)

#: The execution events also sent to an execution's ``callback_url``.
CALLBACK_EVENTS: frozenset[str] = frozenset({"execution.completed", "execution.failed"})


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


class DeferredEvent:
    """An event built only if, when its change commits, a subscription wants its type.

    Schedule changes hand these to the store while no ``abi_event`` hook
    listens. The store reads the enabled subscriptions inside the write
    transaction of the change, so a subscription committed before it, by
    any process, gets the event; with none, the event is never built (its
    JSON is most of the cost of creating a schedule). ``build`` makes the
    event as it was when the change happened (its timestamp included).
    """

    __slots__ = ("_build", "_event", "type")

    def __init__(self, type: str, build: Callable[[], Event]) -> None:
        self.type = type
        self._build = build
        self._event: Event | None = None

    def event(self) -> Event:
        """The event (built once)."""
        if self._event is None:
            self._event = self._build()
        return self._event

    def __repr__(self) -> str:
        return f"DeferredEvent({self.type!r})"


#: What a change hands to the outbox: events with their data, execution events by
#: reference, or events built only when a subscription wants them.
OutboxEvent = Event | ExecutionEventRef | DeferredEvent


def resolve(
    events: Iterable[OutboxEvent], subscribed: Callable[[], Collection[str]]
) -> list[Event | ExecutionEventRef]:
    """What to write of ``events``: deferred ones built when their type is ``subscribed()``.

    ``subscribed`` is called once, only when some event is deferred.
    """
    wanted: Collection[str] | None = None
    kept: list[Event | ExecutionEventRef] = []
    for e in events:
        if isinstance(e, DeferredEvent):
            if wanted is None:
                wanted = subscribed()
            if e.type in wanted:
                kept.append(e.event())
        else:
            kept.append(e)
    return kept
