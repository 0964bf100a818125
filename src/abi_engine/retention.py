"""Retention: pruning finished executions past their workflow's ``retention_days``, and
audit entries past ``audit_retention_days`` (``engine.pruner``).

A pass deletes in bounded batches (``RetentionSettings.batch_size`` rows per
transaction), yielding to other work between batches, so executions running
meanwhile wait for at most one short transaction. After each batch SQLite
gives free pages back to the file system (``PRAGMA incremental_vacuum``, on
databases made in incremental ``auto_vacuum`` mode). Workflow stats are
counters kept on the workflow, so they stay as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from abi_engine.audit import AuditLog
from abi_engine.ids import utcnow
from abi_engine.runtime.settings import RetentionSettings
from abi_engine.services import Service
from abi_engine.storage.base import Store

__all__ = ["PruneReport", "Pruner"]

log = logging.getLogger("abi_engine.retention")

#: The first background pass runs this long after the engine starts (seconds), at most.
FIRST_PASS_DELAY = 60.0


@attrs.frozen(kw_only=True)
class PruneReport:
    """What a pass pruned (or, ``dry_run``, would prune): ``executions`` by workflow id,
    ``audit_entries``, the ``batches`` it took and the free ``pages`` given back."""

    dry_run: bool
    executions: dict[str, int]
    audit_entries: int = 0
    batches: int = 0
    pages: int = 0

    @property
    def total_executions(self) -> int:
        return sum(self.executions.values())

    def as_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "executions": self.total_executions,
            "executions_by_workflow": dict(sorted(self.executions.items())),
            "audit_entries": self.audit_entries,
            "batches": self.batches,
            "reclaimed_pages": self.pages,
        }


class Pruner(Service):
    """Prunes what retention says is old (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        settings: RetentionSettings,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(store)
        self.settings = settings
        self.audit = audit
        self.clock = clock

    async def plan(self, now: datetime | None = None) -> PruneReport:
        """What a pass at ``now`` would delete, deleting nothing."""
        now = now or self.clock()
        counts = await self._store.prunable_executions(now)
        audit = await self._audit_count(now)
        return PruneReport(dry_run=True, executions=counts, audit_entries=audit)

    async def _audit_count(self, now: datetime) -> int:
        days = self.audit.retention_days
        if days is None:
            return 0
        page = await self.audit.list(until=now - timedelta(days=days), page_size=1)
        return page.pagination.total_items

    async def prune(
        self, now: datetime | None = None, *, on_batch: Callable[[int], None] | None = None
    ) -> PruneReport:
        """Delete what is past retention at ``now``, batch by batch; ``on_batch(n)`` after
        each batch of ``n`` executions (a progress bar)."""
        now = now or self.clock()
        pruned: dict[str, int] = {}
        batches = pages = 0
        while True:
            batch = await self._store.prune_executions(now, self.settings.batch_size)
            if not batch:
                break
            batches += 1
            for workflow_id, count in batch.items():
                pruned[workflow_id] = pruned.get(workflow_id, 0) + count
            pages += await self._reclaim()
            if on_batch is not None:
                on_batch(sum(batch.values()))
            await anyio.lowlevel.checkpoint()  # let executions and requests run between batches
        audit = await self.audit.prune(now, self.settings.batch_size)
        if audit:
            pages += await self._reclaim()
        return PruneReport(
            dry_run=False, executions=pruned, audit_entries=audit, batches=batches, pages=pages
        )

    async def _reclaim(self) -> int:
        if not self.settings.vacuum_pages:
            return 0
        free = await self._store.reclaim_space(self.settings.vacuum_pages)
        return min(free, self.settings.vacuum_pages)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Prune every ``interval_seconds`` until cancelled (the first pass soon after start)."""
        task_status.started()
        delay = min(FIRST_PASS_DELAY, self.settings.interval_seconds)
        while True:
            await anyio.sleep(delay)
            delay = self.settings.interval_seconds
            try:
                report = await self.prune()
            except Exception:  # the next pass tries again
                log.exception("pruning failed")
                continue
            if report.total_executions or report.audit_entries:
                log.info(
                    "pruned %d executions and %d audit entries",
                    report.total_executions,
                    report.audit_entries,
                )
