"""Events: what happened, as webhooks and the ``abi_event`` hook see it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from abi_engine.ids import format_time, new_id, utcnow

if TYPE_CHECKING:
    from pluggy import HookImpl

__all__ = [
    "CALLBACK_EVENTS",
    "EVENT_TYPES",
    "DeferredEvent",
    "Event",
    "EventPolicy",
    "ExecutionEventRef",
    "OutboxEvent",
    "resolve",
]

log = logging.getLogger("abi_engine")

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
    "execution.skipped",
    "execution.rerun",
    "schedule.created",
    "schedule.updated",
    "schedule.deleted",
    "schedule.triggered",
    "schedule.failed",
    "schedule.missed",
    "schedule.backfill_completed",
)

#: The execution events also sent to an execution's ``callback_url``.
CALLBACK_EVENTS: frozenset[str] = frozenset(
    {"execution.completed", "execution.failed", "execution.skipped"}
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
    {
        "workflow.executed",
        "execution.step_completed",
        "execution.completed",
        "execution.failed",
        "execution.skipped",
    }
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


class EventPolicy:
    """Which events this process builds, how, and who hears them once committed.

    The one owner of the rules every writer of events follows:

    - *Which*: workflow events are always kept (low volume, so a subscription
      made in another process misses none); execution event types only while
      something consumes them (a webhook subscription, an ``abi_event`` hook,
      or, for :data:`CALLBACK_EVENTS`, the execution's own ``callback_url``).
    - *How*: with an ``abi_event`` hook registered, an event carries its data;
      without one, execution events are kept by reference
      (:class:`ExecutionEventRef`, their data built at delivery) and schedule
      events are deferred to the write transaction (:class:`DeferredEvent`,
      built only if a subscription of any process wants their type).
    - *Who hears*: after a commit, :meth:`emit` wakes the listeners (the
      webhook worker) and calls each ``abi_event`` hook on its own.

    :param hookimpls: returns the registered ``abi_event`` hook implementations
        (pluggy's ``pm.hook.abi_event.get_hookimpls``).
    """

    def __init__(self, hookimpls: Callable[[], Sequence[HookImpl]]) -> None:
        self._hookimpls = hookimpls
        # pluggy's ``get_hookimpls`` copies the hook's list at every call, and the
        # runtime asks several times per step: read the hook's own list instead (kept
        # up to date by pluggy as plugins come and go), when it is there to read.
        live = getattr(getattr(hookimpls, "__self__", None), "_hookimpls", None)
        self._live: list[HookImpl] | None = live if isinstance(live, list) else None
        #: Event types this process writes to the outbox when they happen.
        self.outbox_types: set[str] = {
            t for t in EVENT_TYPES if t.startswith("workflow.") and t != "workflow.executed"
        }
        self._subscribed: set[str] = set()
        self._listeners: list[Callable[[], None]] = []

    # -- which --------------------------------------------------------------------------

    def wants(self, event_type: str) -> bool:
        """Whether anything consumes events of this type (an ``abi_event`` hook or the outbox)."""
        return event_type in self.outbox_types or self.has_hooks()

    def wants_for_execution(self, event_type: str, callback_url: str | None) -> bool:
        """Whether an event about an execution has a consumer (its callback counts)."""
        if event_type in self.outbox_types:
            return True
        if callback_url is not None and event_type in CALLBACK_EVENTS:
            return True
        return self.has_hooks()

    def has_hooks(self) -> bool:
        """Whether an ``abi_event`` hook is registered (events then carry their data)."""
        live = self._live
        return bool(live) if live is not None else bool(self._hookimpls())

    def _impls(self) -> Sequence[HookImpl]:
        """The ``abi_event`` hook implementations now (a copy: a hook may register more)."""
        live = self._live
        if live is None:
            return self._hookimpls()
        return list(live) if live else ()

    def subscribe(self, wanted: Collection[str]) -> None:
        """Keep exactly the types subscriptions want, beside the always-kept ones.

        ``wanted`` is the full set of event types enabled subscriptions ask for
        now (the webhook service calls this after each change and periodically).
        """
        wanted = set(wanted)
        for gone in self._subscribed - wanted:
            self.outbox_types.discard(gone)
        self._subscribed = (self._subscribed & wanted) | (wanted - self.outbox_types)
        self.outbox_types.update(wanted)

    # -- how ----------------------------------------------------------------------------

    def execution_event(
        self,
        event_type: str,
        execution_id: str,
        data: Callable[[], dict[str, Any]],
        *,
        at: datetime,
        step_index: int | None = None,
    ) -> OutboxEvent:
        """An execution event: with its data for hooks, else by reference."""
        if self.has_hooks():
            return Event(type=event_type, data=data())
        return ExecutionEventRef(event_type, execution_id, step_index, at)

    def deferred(self, event_type: str, build: Callable[[], Event]) -> OutboxEvent:
        """An event built now for hooks, else when its write finds a subscription."""
        if self.has_hooks():
            return build()
        return DeferredEvent(event_type, build)

    # -- who hears ----------------------------------------------------------------------

    def on_committed(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit that wrote events."""
        self._listeners.append(listener)

    def emit(self, events: Iterable[OutboxEvent]) -> None:
        """Hand committed events to every ``abi_event`` hook; errors are logged.

        Each implementation is called on its own, so one that raises does not
        keep the event from the others. Execution events kept by reference
        (made only while no hook is registered) are for the outbox alone; a
        deferred event (also made only then) is built for a hook registered
        since, as the outbox has it.
        """
        for listener in self._listeners:
            listener()  # the events are in the outbox: wake the webhook worker
        impls = self._impls()
        if not impls:
            return
        for event in events:
            if isinstance(event, ExecutionEventRef):
                continue
            if isinstance(event, DeferredEvent):
                event = event.event()
            for impl in reversed(impls):
                try:
                    impl.function(event=event)
                except Exception:
                    log.exception(
                        "abi_event hook failed for %s (plugin %s)", event.type, impl.plugin_name
                    )
