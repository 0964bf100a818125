"""What this node holds, and the thread that keeps holding it.

A runtime holds an execution under a *claim token* (see
:mod:`abi_engine.storage._fencing`) and a lease in the database. This module
is the runtime's one record of what it holds, and the only place that decides
when it must let go:

- :meth:`Claims.hold` when a claim is granted to this node (an execution it
  inserts, recovers, or resumes after a signal), :meth:`Claims.let_go` when it
  ends, is handed back, or is lost;
- a heartbeat *thread* (not a task of the event loop, so a step that blocks
  the loop does not stop it) renews the leases of exactly the claims held,
  every ``lease_seconds / 3``; what the store reports as no longer held
  (taken over, cancelled elsewhere, ended) is *lost*;
- a claim whose lease was not confirmed for ``EXPIRY_SHARE`` of the lease
  (the store unreachable for that long) is *expired*: another node may take it
  over soon, so this one stops working on it first.

The runtime asks :meth:`Claims.take_lost` each poll and stops the runs of
what it returns. Anything the node owns in the database but does not hold
here is not renewed: its lease expires and any node's recovery (this one's
included) takes it over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from abi_engine.ids import utcnow

__all__ = ["EXPIRY_SHARE", "Claims"]

log = logging.getLogger("abi_engine.executor")

#: A claim whose lease was last confirmed this share of ``lease_seconds`` ago is let go.
EXPIRY_SHARE = 0.8


class Claims:
    """The claims (execution id -> token) this node holds, and their heartbeat.

    :param renew: ``store.renew_leases``.
    :param lease_seconds: the lease each renewal grants.
    """

    def __init__(self, renew: Callable[..., list[str]], lease_seconds: float) -> None:
        self._renew = renew
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        #: When each claim's lease was last known good (``time.monotonic``).
        self._confirmed: dict[str, float] = {}
        self._lost: dict[str, int] = {}
        #: Run tokens of claims sent to the store, not yet answered (see :meth:`expect`).
        self._next: dict[str, int] = {}
        #: Every held claim was confirmed at or after this time (the start of the last
        #: renewal that succeeded): while it is recent, none can have expired.
        self._floor = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self.renewals = 0

    # -- what is held -------------------------------------------------------------------

    def hold(self, execution_id: str, token: int) -> None:
        """This node now holds ``execution_id`` under ``token`` (its lease was just set)."""
        with self._lock:
            self._held[execution_id] = token
            self._confirmed[execution_id] = time.monotonic()
            self._lost.pop(execution_id, None)

    def token(self, execution_id: str) -> int | None:
        """The token under which this node holds ``execution_id``, if it does."""
        return self._held.get(execution_id)

    def holds(self, execution_id: str, token: int) -> bool:
        return self._held.get(execution_id) == token

    def expect(self, execution_id: str, token: int) -> None:
        """A claim turning this node's grant into the run ``token`` is on its way to the
        store: if the node stops before it hears back, it hands back both."""
        with self._lock:
            self._next[execution_id] = token

    def swap(self, execution_id: str, old: int, new: int) -> bool:
        """Replace the grant ``old`` by the run ``new`` (the claim used it); ``False`` when
        ``old`` is no longer held (lost meanwhile)."""
        with self._lock:
            self._next.pop(execution_id, None)
            if self._held.get(execution_id) != old:
                return False
            self._held[execution_id] = new
            return True

    def let_go(self, execution_id: str, token: int) -> None:
        """Stop holding ``execution_id`` (if still under ``token``)."""
        with self._lock:
            if self._next.get(execution_id) == token:
                del self._next[execution_id]
            if self._held.get(execution_id) == token:
                del self._held[execution_id]
                self._confirmed.pop(execution_id, None)

    def snapshot(self) -> dict[str, int]:
        """A copy of what is held."""
        with self._lock:
            return dict(self._held)

    def to_hand_back(self) -> list[tuple[str, int]]:
        """Every ``(execution id, token)`` this node may hold in the store: what it holds,
        and the run tokens of claims it has not heard back from."""
        with self._lock:
            return [*self._held.items(), *self._next.items()]

    def __len__(self) -> int:
        return len(self._held)

    def take_lost(self) -> dict[str, int]:
        """Claims lost since the last call (the store refused to renew them, or their
        lease went unconfirmed too long); they are no longer held.

        A loss of an execution whose claim is on its way to the store (:meth:`expect`)
        waits for that claim's answer: a renewal between the claim's commit and its
        :meth:`swap` reports the grant gone because the row already runs under the new
        token. Swapped, the report no longer matches what is held and is dropped; let
        go, the grant's loss is acted on at the next call."""
        now = time.monotonic()
        limit = self.lease_seconds * EXPIRY_SHARE
        with self._lock:
            if now - self._floor > limit:  # renewals have failed for a while: look closer
                for execution_id, confirmed in self._confirmed.items():
                    if now - confirmed > limit:
                        self._lost[execution_id] = self._held[execution_id]
            if not self._lost:
                return {}
            lost: dict[str, int] = {}
            pending: dict[str, int] = {}
            for execution_id, token in self._lost.items():
                if execution_id in self._next:
                    pending[execution_id] = token
                # Only what is still held under the token that was lost: a claim the node
                # swapped (its grant became a run) or took again meanwhile is not lost.
                elif self._held.get(execution_id) == token:
                    del self._held[execution_id]
                    self._confirmed.pop(execution_id, None)
                    lost[execution_id] = token
            self._lost = pending
        return lost

    # -- the heartbeat ------------------------------------------------------------------

    def renew_once(self) -> int:
        """Renew every held lease now; returns how many were lost."""
        started = time.monotonic()
        snapshot = self.snapshot()
        if not snapshot:
            self._floor = started
            return 0
        lost = self._renew(snapshot, utcnow() + timedelta(seconds=self.lease_seconds))
        gone = set(lost)
        with self._lock:
            for execution_id, token in snapshot.items():
                if self._held.get(execution_id) != token:
                    continue
                if execution_id in gone:
                    self._lost[execution_id] = token
                else:
                    self._confirmed[execution_id] = started
            self._floor = started
        self.renewals += 1
        return len(gone)

    def start(self, name: str) -> None:
        """Start the heartbeat thread (renewing every ``lease_seconds / 3``)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._floor = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread (waits for a renewal in progress)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=max(5.0, self.lease_seconds))

    def _beat(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not self._stop.wait(interval):
            try:
                self.renew_once()
            except Exception as exc:
                self._failures += 1
                if self._failures == 1:
                    log.warning("lease renewal failed (%s); retrying", _one_line(exc))
                continue
            if self._failures:
                log.warning("lease renewal works again after %d failures", self._failures)
                self._failures = 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
