"""The queued-executions quota without a count per request (issue #18).

``max_queued_executions_per_user`` (1,000) is checked on every
``execute_async``. Counting a user's queued rows (up to the limit) on each
request cost ~5% of the request once a backlog built. :class:`QueuedBudget`
counts less often, without ever admitting more than a count per request would
from one process:

- a count of ``held`` queued executions leaves ``limit - held`` places; this
  process may take **half** of them (rounded down) before it counts again,
  reserving one per request as it checks (so concurrent requests never share
  a place). The other half is left to what this process cannot see: other
  processes serving the same database, schedules, reruns.
- a count older than :data:`RECOUNT_SECONDS` is taken again regardless.
- a refusal always comes from a fresh count, and a count at or over the limit
  grants nothing, so places freed by started or cancelled executions are seen
  by the very next request.

Near the limit (fewer than two places left) every request counts, as before;
far from it one request in ``(limit - held) / 2`` does.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from abi_engine.storage.aio import call_store

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["RECOUNT_SECONDS", "QueuedBudget", "made_budget", "queued_budget"]

#: A count of queued executions is trusted at most this long.
RECOUNT_SECONDS = 1.0


class QueuedBudget:
    """Per user: how many more asynchronous executions may be accepted before counting again.

    Used from the engine's event loop (the REST adapter, the in-process API) and, for
    places taken without counting (:meth:`take_now`), from synchronous callers' threads
    (the synchronous door): what they share changes under a lock.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        #: user id -> (places left to take without counting, when the count was taken)
        self._left: dict[str, tuple[int, float]] = {}
        #: user id -> places taken whose execution is not stored yet (a count misses them).
        self._inflight: dict[str, int] = {}
        #: user id -> how many of those were let go (:meth:`done`) since this object exists.
        self._done: dict[str, int] = {}
        #: How many counts were taken (for tests and benchmarks).
        self.counts = 0
        self._lock = threading.Lock()

    def done(self, user_id: str) -> None:
        """A place taken by :meth:`take` is now stored (or was not used): counts see it."""
        with self._lock:
            left = self._inflight.get(user_id, 0) - 1
            if left > 0:
                self._inflight[user_id] = left
            else:
                self._inflight.pop(user_id, None)
            self._done[user_id] = self._done.get(user_id, 0) + 1

    def take_now(self, user_id: str) -> bool:
        """Reserve one place for ``user_id`` if one is left from a recent count, without
        counting (from any thread); ``False``: :meth:`take` must count (on the loop)."""
        with self._lock:
            left, at = self._left.get(user_id, (0, 0.0))
            if left <= 0 or self._clock() - at >= RECOUNT_SECONDS:
                return False
            self._left[user_id] = (left - 1, at)
            self._take(user_id)
            return True

    async def take(self, user_id: str, limit: int) -> int | None:
        """Reserve one place for ``user_id``; ``None`` when one is free (call :meth:`done`
        once its execution is stored or refused), else the count (``>= limit``) that
        refuses it."""
        if self.take_now(user_id):
            return None
        store = self._engine.store
        self.counts += 1
        done_before = self._done.get(user_id, 0)
        held = await call_store(store, store.count_owned, "queued_executions", user_id, limit)
        # Requests admitted meanwhile (other counts, concurrent) and not stored yet, and
        # those stored since the count began (it may not see them): counted too.
        with self._lock:
            held += self._inflight.get(user_id, 0) + self._done.get(user_id, 0) - done_before
            if held >= limit:
                self._left.pop(user_id, None)
                return held
            if len(self._left) > 10_000:
                self._left.clear()
                self._done.clear()
            # This request takes one place; half of the others are this process's to take.
            self._left[user_id] = ((limit - held - 1) // 2, self._clock())
            self._take(user_id)
        return None

    def _take(self, user_id: str) -> None:
        self._inflight[user_id] = self._inflight.get(user_id, 0) + 1


_BUDGETS: weakref.WeakKeyDictionary[Engine, QueuedBudget] = weakref.WeakKeyDictionary()


def queued_budget(engine: Engine) -> QueuedBudget:
    """The engine's :class:`QueuedBudget` (made on first use, on the loop)."""
    budget = _BUDGETS.get(engine)
    if budget is None:
        budget = _BUDGETS[engine] = QueuedBudget(engine)
    return budget


def made_budget(engine: Engine) -> QueuedBudget | None:
    """The engine's :class:`QueuedBudget` if the loop made it already (any thread)."""
    return _BUDGETS.get(engine)
