"""Finding work nobody runs: the recovery poller, wake-up timers, freed slots, lost claims.

A poller grants this node executions nobody holds (no owner, or a lease expired in
the database's clock) and wakes waiting executions whose timer is due; a timer
claims at a known time (a durable sleep's end, a rate limit's window); a freed
concurrency slot is claimed at once (#16); claims the heartbeat lost stop their
runs. Mixed into :class:`~abi_engine.runtime.runner.Runtime`; no state of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

import anyio
from anyio.abc import TaskGroup

from abi_engine.ids import utcnow
from abi_engine.runtime.execution import one_line
from abi_engine.runtime.steps import RunsExecutions
from abi_engine.storage.aio import call_store
from abi_engine.storage.records import ExecutionRecord

__all__ = ["Recovers"]

log = logging.getLogger("abi_engine.executor")


class Recovers(RunsExecutions):
    """Recovery, timers and lost claims, for :class:`~abi_engine.runtime.runner.Runtime`."""

    # Provided by Runtime.
    _store_failures: int
    _due_at: datetime | None
    _tg: TaskGroup | None
    _inflight: set[str]

    def room(self) -> int:
        raise NotImplementedError

    def _push(
        self, execution_id: str, token: int, *, sync: bool = False, priority: int | None = None
    ) -> None:
        raise NotImplementedError

    def cancel_local(self, execution_id: str) -> None:
        raise NotImplementedError

    async def _poller(self) -> None:
        while True:
            if not self._stopping:
                try:
                    await self._recover_once()
                except Exception as exc:
                    self._store_failed("recovery poll", exc)
                else:
                    self._store_works()
            await anyio.sleep(self.settings.poll_interval)

    async def _watch_claims(self) -> None:
        """Stop the runs of claims this node lost (a loop of its own: a poll that hangs on
        an unreachable store must not keep a run going past its lease)."""
        while True:
            for execution_id in self.claims.take_lost():
                if execution_id in self._inflight:
                    log.warning(
                        "execution %s: this node lost its claim; its run stops", execution_id
                    )
                self.cancel_local(execution_id)
            await anyio.sleep(min(self.settings.poll_interval, self.settings.lease_seconds / 10))

    def _store_failed(self, what: str, exc: BaseException) -> None:
        self._store_failures += 1
        if self._store_failures == 1:
            log.warning("%s failed (%s); retrying", what, one_line(exc))

    def _store_works(self) -> None:
        if self._store_failures:
            log.warning("the store works again after %d failed polls", self._store_failures)
            self._store_failures = 0

    async def _recover_once(self) -> int:
        room = min(self.room(), 500)
        if room <= 0:
            return 0
        dead_nodes = getattr(self.store, "dead_nodes", None)
        dead = await call_store(self.store, dead_nodes) if dead_nodes is not None else []
        taken_over = getattr(self.store, "lease_takeovers", 0)
        granted = await call_store(
            self.store,
            self.store.claim_recoverable,
            self.node_id,
            utcnow(),
            self.lease(),
            room,
            set(self.workflow_types),
            dead,
        )
        if self.metrics is not None:  # running executions whose owner's lease had ended
            self.metrics.lease_takeovers += getattr(self.store, "lease_takeovers", 0) - taken_over
        due = getattr(self.store, "next_due", None)
        if due is not None:  # held by a rate limit or a debounce: claim right when due
            self._due(utcnow() + due)
        for execution_id, _priority, token in granted:
            self.claims.hold(execution_id, token)
            # In the order the store granted them: their wait is counted there already.
            self._push(execution_id, token, priority=0)
        return len(granted)

    async def slot_freed(self, workflow_id: str) -> None:
        """A concurrency slot of ``workflow_id`` held here is free, and its end's commit
        did not hand it on (a timeout, a wait, a pause; or another transaction held the
        workflow's grant lock): grant this node the executions waiting for one at once
        (one transaction, #16), rather than at the next poll."""
        claim = getattr(self.store, "claim_freed", None)
        if claim is None:  # a store without it: whether any waits, then a whole claim
            wanted = getattr(self.store, "slots_wanted", None)
            if wanted is not None and await call_store(self.store, wanted, workflow_id):
                self._timer(utcnow())
            return
        room = min(self.room(), 500)
        if room <= 0 or self._stopping:
            return
        granted = await call_store(
            self.store,
            claim,
            self.node_id,
            workflow_id,
            self.lease(),
            room,
            set(self.workflow_types),
        )
        self.take_granted(granted, getattr(self.store, "next_due", None))

    def take_granted(
        self,
        granted: Iterable[tuple[str, int, int]],
        due: timedelta | None = None,
        records: Iterable[ExecutionRecord] = (),
    ) -> None:
        """Run the executions the store granted this node for freed concurrency slots
        (``(id, priority, token)``, in grant order; ``records``: as the grant stored
        them, not read again), and claim again after ``due``, when one waits for its
        rate limit's window."""
        if due is not None:
            self._due(utcnow() + due)
        stored = {r.id: r for r in records}
        for execution_id, _priority, token in granted:
            if execution_id in stored:
                self._handed[execution_id] = (token, stored[execution_id])
            self.claims.hold(execution_id, token)
            # In the order the store granted them: their wait is counted there already.
            self._push(execution_id, token, priority=0)

    def _due(self, when: datetime) -> None:
        """A claim at ``when``, unless one is set for no later (and not passed)."""
        if self._due_at is None or not utcnow() < self._due_at <= when:
            self._due_at = when
            self._timer(when)

    def _timer(self, when: datetime) -> None:
        """Wake the waiting executions due at ``when`` then (while the runtime runs)."""
        if self._tg is not None:
            self._tg.start_soon(self._wake_at, when)

    async def _wake_at(self, when: datetime) -> None:
        """Look for due timers right at ``when`` (the poller would notice later); at
        once when it has passed already (a freed concurrency slot: no sleep, #16)."""
        delay = (when - utcnow()).total_seconds()
        if delay >= 0:  # (1 ms beyond it: the stored time is then surely passed)
            await anyio.sleep(delay + 0.001)
        if not self._stopping:
            try:
                await self._recover_once()
            except Exception as exc:  # the poller will find it when the store answers
                self._store_failed("wake-up poll", exc)
