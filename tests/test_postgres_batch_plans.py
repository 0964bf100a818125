"""A batch of the group commit on PostgreSQL reads and writes executions by key (#18).

On a table without statistics yet (a new schema, or one grown fast since autovacuum
last analyzed it: it does so a minute later at best) the planner takes ``executions``
for a page or two and scans it whole for each statement of a batch, which costs the
server more the more executions there are. A batch (``PostgresStore._write_batch``)
plans with sequential scans off: its claims, checkpoints and finishes over thousands of
never-analyzed executions scan none of them whole (``seq_scan`` of the table's
statistics, flushed when the store's connections end), and store what they should.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from postgres_testing import create_schema, drop_schema

from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage.postgres import PostgresStore
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    FinishExecution,
    StepRecord,
)

pytestmark = pytest.mark.external_service

ROWS = 5000
NOW = datetime.now(UTC)
SEQ_SCANS = "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables WHERE schemaname = %s"
SEQ_SCANS += " AND relname IN ('executions', 'execution_steps')"


def _step(execution_id: str, index: int) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        index=index,
        name=f"s{index}",
        status=StepStatus.COMPLETED,
        started_at=NOW,
        completed_at=NOW,
        duration_ms=1,
        attempts=1,
        result={"i": index},
    )


def _batches(store: PostgresStore, ids: list[str]) -> None:
    """A claim, a checkpoint and a finish of each of ``ids``, a batch each; all apply."""
    lease = NOW + timedelta(minutes=5)
    claims = [
        ClaimExecution(
            execution_id=i, grant=1, token=2, owner="node-a", lease_until=lease, started_at=NOW
        )
        for i in ids
    ]
    checkpoints = [CheckpointStep(step=_step(i, 0), token=2) for i in ids]
    finishes = [
        FinishExecution(
            execution_id=i,
            workflow_id="wf_1",
            status=ExecutionStatus.COMPLETED,
            completed_at=NOW,
            duration_ms=2,
            result={"done": True},
            token=2,
            step=_step(i, 1),
        )
        for i in ids
    ]
    for batch in (claims, checkpoints, finishes):
        assert store.apply(batch) == [True] * len(ids)


def test_a_batch_scans_no_unanalyzed_table_whole(postgres_server: str) -> None:
    schema, url = create_schema(postgres_server)
    try:
        PostgresStore(url).close()
        with psycopg.connect(url, autocommit=True) as conn:  # rows the planner knows not of
            conn.execute(
                "INSERT INTO workflows (id, name, type, status, configuration, created_at,"
                " updated_at) VALUES ('wf_1', 'w', 'custom', 'active', '{}', 0, 0)"
            )
            conn.execute(
                "INSERT INTO executions (id, workflow_id, workflow_type, status, parameters,"
                " configuration, plan, created_at, owner, claim)"
                " SELECT 'ex_' || lpad(n::text, 6, '0'), 'wf_1', 'custom', 'queued', '{}',"
                " '{}', '[]', n, 'node-a', 1 FROM generate_series(1, %s) AS n",
                (ROWS,),
            )
            before = conn.execute(SEQ_SCANS, (schema,)).fetchone()
        ids = [f"ex_{n:06d}" for n in range(100, 150)]
        store = PostgresStore(url)
        try:
            _batches(store, ids)
        finally:
            store.close()  # its backends end: their statistics are flushed
        with psycopg.connect(url, autocommit=True) as conn:
            after = conn.execute(SEQ_SCANS, (schema,)).fetchone()
        assert before is not None
        assert after == before
        store = PostgresStore(url)  # what the batches stored
        try:
            got = store.get_execution(ids[0])
            assert got is not None
            assert got.status is ExecutionStatus.COMPLETED
            assert [s.index for s in store.get_steps(ids[-1])] == [0, 1]
        finally:
            store.close()
    finally:
        drop_schema(postgres_server, schema)
