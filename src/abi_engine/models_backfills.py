"""A schedule's backfill run as a durable job (``POST /workflow_schedules/{id}/backfill``).

The API shows :class:`BackfillRun`: the range, the bound, and the progress
(``total``, ``started``, ``skipped``, ``failed``) with a ``status``
(``running``, ``completed``, ``cancelled``, ``failed``).
"""

from __future__ import annotations

import enum
from datetime import datetime

import attrs

__all__ = ["BackfillRun", "BackfillStatus"]


class BackfillStatus(enum.StrEnum):
    """Where a backfill is: ``running`` until its last due time, then ``completed``;
    ``cancelled`` when asked to stop; ``failed`` when it cannot go on (its schedule or
    workflow deleted)."""

    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


@attrs.define(kw_only=True)
class BackfillRun:
    """A backfill of a schedule's due times from ``start`` to ``end`` (at most ``max_runs``).

    ``total`` due times to run (the oldest of the range; ``truncated``: the range
    has more); ``started``: executions started; ``skipped``: due times that
    already had an execution (an earlier backfill ran them), not started twice;
    ``failed``: due times whose execution could not start (``last_error`` says
    why). ``status`` is ``running`` until all are done (``completed``), or
    ``cancelled``, or ``failed`` (its schedule or workflow was deleted).
    """

    id: str
    schedule_id: str
    status: BackfillStatus
    start: datetime
    end: datetime
    max_runs: int
    overlap_policy: str
    total: int
    started: int = 0
    skipped: int = 0
    failed: int = 0
    truncated: bool = False
    last_error: str | None = None
    created_by: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None

    @property
    def done(self) -> int:
        """Due times handled so far (started, skipped or failed)."""
        return self.started + self.skipped + self.failed
