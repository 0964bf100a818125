"""A schedule's backfill as stored: the public run and what the job needs to go on."""

from __future__ import annotations

from datetime import datetime

import attrs

from abi_engine.events import OutboxEvent
from abi_engine.models_backfills import BackfillRun

__all__ = ["BackfillProgress", "BackfillRecord"]


@attrs.define(kw_only=True)
class BackfillRecord:
    """A backfill as stored: ``run`` (what the API shows), its ``due_times`` (listed once,
    when it was asked for), the ``position`` reached in them, and the process holding it
    (``owner``, until ``lease_until``). ``events``: written with the insert (a backfill
    without due times ends at once: its ``schedule.backfill_completed``)."""

    run: BackfillRun
    due_times: list[datetime]
    position: int = 0
    owner: str | None = None
    lease_until: datetime | None = None
    events: tuple[OutboxEvent, ...] = ()


@attrs.frozen(kw_only=True)
class BackfillProgress:
    """One step of a running backfill, written only while ``owner`` holds it and it runs:
    the new ``position`` and counters, the lease renewed to ``lease_until``, and, at
    the end, its final ``status`` and ``finished_at``."""

    backfill_id: str
    owner: str
    position: int
    started: int
    skipped: int
    failed: int
    last_error: str | None
    updated_at: datetime
    lease_until: datetime
    status: str = "running"
    finished_at: datetime | None = None
    #: Written with the step when it ends the backfill (``schedule.backfill_completed``).
    events: tuple[OutboxEvent, ...] = ()
