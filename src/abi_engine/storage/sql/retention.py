"""Pruning finished executions past their workflow's retention (mixed into
:class:`~abi_engine.storage.sql.store.SQLStore`).

An execution goes when it is finished (``completed``, ``failed``,
``timed_out``, ``cancelled``, ``skipped``), its workflow has ``retention_days`` set, and
it finished more than that many days ago; with it go its steps, its signals
and saved progress, and its finished callback deliveries (with their
attempts). An execution a schedule still names as its last one, or with a
delivery still pending, stays until the next pass. Each call deletes one
bounded batch in one short transaction, so running executions wait for at
most one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from abi_engine.storage._codec import to_ms
from abi_engine.storage.sql.dialect import Conn, Dialect

__all__ = ["RetentionMixin"]

_DAY_MS = 86_400_000

#: The executions past their workflow's retention at ``?`` (now, epoch ms). Read workflow
#: by workflow (those with a retention), each a range of ``idx_executions_prune``: the
#: finished executions are never all walked, and a batch stops at its limit. The
#: schedules' last executions are read once, not once per execution.
_EXPIRED = (
    "FROM workflows w CROSS JOIN executions e"
    " WHERE w.retention_days IS NOT NULL AND e.workflow_id = w.id"
    f" AND e.completed_at < ? - w.retention_days * CAST({_DAY_MS} AS BIGINT)"
    " AND e.status IN ('completed', 'failed', 'timed_out', 'cancelled', 'skipped')"
    " AND e.id NOT IN (SELECT s.last_execution_id FROM schedules s"
    " WHERE s.last_execution_id IS NOT NULL)"
    " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d"
    " WHERE d.execution_id = e.id AND d.status = 'pending')"
)


class RetentionMixin:
    """Execution pruning, in the shared SQL."""

    dialect: ClassVar[Dialect]
    _read: Callable[[], Any]
    write: Callable[[Callable[[Any], Any]], Any]

    def prunable_executions(self, now: datetime) -> dict[str, int]:
        """How many executions each workflow (by id) has past its retention at ``now``."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT w.id, count(*) {_EXPIRED} GROUP BY w.id",
                (to_ms(now),),
            ).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def prune_executions(self, now: datetime, limit: int) -> dict[str, int]:
        """Delete up to ``limit`` executions past their workflow's retention at ``now``
        (with their steps, signals and finished callback deliveries), in one transaction;
        how many went, by workflow id (empty: nothing left to prune)."""

        def run(conn: Conn) -> dict[str, int]:
            rows = conn.execute(
                f"SELECT e.id, e.workflow_id {_EXPIRED} LIMIT ?{self.dialect.claim(of='e')}",
                (to_ms(now), limit),
            ).fetchall()
            if not rows:
                return {}
            ids = [row[0] for row in rows]
            in_ids, args = self.dialect.any_of("execution_id", ids)
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                f" (SELECT id FROM webhook_deliveries WHERE {in_ids})",
                args,
            )
            for table in ("webhook_deliveries", "execution_steps", "execution_signals"):
                conn.execute(f"DELETE FROM {table} WHERE {in_ids}", args)
            in_exec, args = self.dialect.any_of("id", ids)
            conn.execute(f"DELETE FROM executions WHERE {in_exec}", args)
            pruned: dict[str, int] = {}
            for row in rows:
                pruned[row[1]] = pruned.get(row[1], 0) + 1
            return pruned

        result: dict[str, int] = self.write(run)
        return result

    def reclaim_space(self, pages: int) -> int:
        """Give back up to ``pages`` free pages of the database file to the file system
        where the database does that on request (SQLite in incremental ``auto_vacuum``
        mode); how many pages are free before. Nothing elsewhere (PostgreSQL's
        autovacuum reuses the space)."""
        return 0
