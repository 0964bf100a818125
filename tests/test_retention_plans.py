"""Retention reads expired executions workflow by workflow, through
``idx_executions_prune`` (#18, noticed at the last stop).

It read every finished execution through the status index, checked each against its
workflow's retention, and sorted them all to take one batch: at 100,000 finished
executions a batch of 500 held the write lock 330-490 ms (SQLite), where it now takes
13-18 ms. The schedules' last executions are read once per statement, not once per
execution."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from abi_engine.ids import new_id
from abi_engine.models import ExecutionStatus, Workflow
from abi_engine.storage import Store
from abi_engine.storage.records import ExecutionRecord, InsertExecution
from abi_engine.storage.sql.retention import _EXPIRED

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ROWS = 3000


def _fill(store: Store, workflow_id: str, expired: int) -> None:
    records = [
        ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=workflow_id,
            workflow_type="custom",
            status=ExecutionStatus.COMPLETED,
            parameters={},
            created_at=NOW - timedelta(days=1),
            started_at=NOW - timedelta(days=1),
        )
        for _ in range(ROWS)
    ]
    assert store.apply([InsertExecution(record=r) for r in records]) == [True] * ROWS
    now_ms = int(NOW.timestamp() * 1000)
    old_ms = int((NOW - timedelta(days=40)).timestamp() * 1000)

    def finish(conn: Any) -> None:
        for n, record in enumerate(records):
            at = old_ms if n < expired else now_ms
            conn.execute("UPDATE executions SET completed_at = ? WHERE id = ?", (at, record.id))

    store.write(finish)  # type: ignore[attr-defined]


def _plan(store: Store, sql: str, args: tuple[Any, ...]) -> str:
    sqlite = type(store).__name__.startswith("SQLite")
    explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "

    def run(conn: Any) -> str:
        if not sqlite:
            conn.execute("ANALYZE")
        return "\n".join(str(row) for row in conn.execute(explain + sql, args).fetchall())

    return str(store.write(run))  # type: ignore[attr-defined]


def test_a_batch_reads_the_prune_index_of_each_workflow(
    store: Store, new_workflow: Callable[..., Workflow]
) -> None:
    kept = new_workflow(retention_days=30)
    forever = new_workflow(retention_days=None)
    for workflow in (kept, forever):
        store.insert_workflow(workflow)
    _fill(store, kept.id, expired=20)
    _fill(store, forever.id, expired=ROWS)
    now_ms = int(NOW.timestamp() * 1000)
    for sql, args in [
        (f"SELECT e.id, e.workflow_id {_EXPIRED} LIMIT ?", (now_ms, 500)),
        (f"SELECT w.id, count(*) {_EXPIRED} GROUP BY w.id", (now_ms,)),
    ]:
        plan = _plan(store, sql, args)
        assert "idx_executions_prune" in plan, plan
        assert "SCAN e'" not in plan, plan
        assert "Seq Scan on executions" not in plan, plan
        assert "idx_executions_status" not in plan, plan
    assert store.prunable_executions(NOW) == {kept.id: 20}
    assert store.prune_executions(NOW, 15) == {kept.id: 15}
    assert store.prune_executions(NOW, 15) == {kept.id: 5}
    assert store.prune_executions(NOW, 15) == {}
