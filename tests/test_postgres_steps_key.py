"""No step without its execution, without PostgreSQL's foreign key (#18, ``m023_pg_speed``).

PostgreSQL checked ``execution_steps.execution_id`` against ``executions`` with a query
per inserted step row: 13 % of the server's instructions for a three-step execution.
Migration ``m023_pg_speed`` drops that key on PostgreSQL; SQLite keeps its own. What the
key guarded holds by construction: a step row is only written for an execution its
transaction has read and locked (a checkpoint or a finish applies only to an execution
running under its claim; a rerun's reused steps only once its insert applied), and
executions are only deleted by retention, which deletes their steps first. Checked here:
the migration of a schema with steps (PostgreSQL), the key kept (SQLite), and, for any
mix of inserts, claims, checkpoints, finishes, reruns and retention passes on missing,
queued, running, ended and pruned executions, on both backends, that no step row is
ever left without its execution and every applied step is stored.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_testing import create_schema, drop_schema

from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage import Store
from abi_engine.storage import postgres_migrations as pgm
from abi_engine.storage.postgres import PostgresStore
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    InsertRerun,
    StepRecord,
    WriteOp,
)
from abi_engine.storage.sqlite import SQLiteStore

M023 = "m023_pg_speed"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = T0 + timedelta(days=3650)
ORPHANS = (
    "SELECT count(*) FROM execution_steps s"
    " WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = s.execution_id)"
)
STEPS_KEYS = (
    "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
    " AND conrelid = 'execution_steps'::regclass"
)


def _step(execution_id: str, index: int, n: int = 0) -> StepRecord:
    return StepRecord(
        execution_id=execution_id,
        index=index,
        name=f"s{index}",
        status=StepStatus.COMPLETED,
        completed_at=T0 + timedelta(milliseconds=n),
        result={"n": n},
    )


def _record(execution_id: str, key: str | None = None) -> ExecutionRecord:
    return ExecutionRecord(
        id=execution_id,
        workflow_id="wf_keep",
        workflow_type="t",
        status=ExecutionStatus.QUEUED,
        created_at=T0,
        owner="n",
        claim=10,
        lease_until=LEASE,
        idempotency_key=key,
    )


@pytest.mark.external_service
def test_m023_drops_the_steps_key_on_postgresql_and_keeps_the_steps(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, url = create_schema(postgres_server)
    try:
        index = [n for n, _ in pgm.MIGRATIONS].index(M023)
        monkeypatch.setattr(pgm, "MIGRATIONS", pgm.MIGRATIONS[:index])
        old = PostgresStore(url)
        try:
            assert old.schema_version() == index
            old.write(lambda conn: _workflow(conn, retention_days=None))
            assert old.apply([InsertExecution(record=_record("ex_old"))]) == [True]
            assert old.apply([_claim("ex_old")]) == [True]
            assert old.apply([CheckpointStep(step=_step("ex_old", 0), token=20)]) == [True]
        finally:
            old.close()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(STEPS_KEYS).fetchone() == (1,)
        monkeypatch.undo()
        store = PostgresStore(url)
        try:
            assert store.schema_version() == len(pgm.MIGRATIONS)
            assert [s.index for s in store.get_steps("ex_old")] == [0]
        finally:
            store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(STEPS_KEYS).fetchone() == (0,)
    finally:
        drop_schema(postgres_server, name)


def test_sqlite_keeps_the_steps_key(tmp_path: Any) -> None:
    store = SQLiteStore(tmp_path / "keys.db")
    try:

        def orphan(conn: Any) -> None:
            conn.execute(
                "INSERT INTO execution_steps (execution_id, idx, name, status)"
                " VALUES ('ex_missing', 0, 's0', 'completed')"
            )

        with pytest.raises(sqlite3.IntegrityError):
            store.write(orphan)
    finally:
        store.close()


def _workflow(conn: Any, retention_days: int | None) -> None:
    conn.execute(
        "INSERT INTO workflows (id, name, type, status, configuration, created_at, updated_at,"
        " retention_days) VALUES ('wf_keep', 'w', 't', 'active', '{}', 0, 0, ?)",
        (retention_days,),
    )


def _claim(execution_id: str, right: bool = True) -> ClaimExecution:
    return ClaimExecution(
        execution_id=execution_id,
        grant=10 if right else 99,
        token=20,
        owner="n",
        lease_until=LEASE,
        started_at=T0,
    )


# An op: kind, target execution (0-3: "ex_0".."ex_3"; some never inserted), a step
# index, whether its claim token is the right one.
_OP = st.tuples(
    st.sampled_from(["insert", "claim", "checkpoint", "finish", "rerun", "prune"]),
    st.integers(0, 3),
    st.integers(0, 2),
    st.booleans(),
)


def _op(spec: tuple[str, int, int, bool], n: int) -> WriteOp | None:
    kind, target, index, right = spec
    execution_id = f"ex_{target}"
    token = 20 if right else 98
    if kind == "insert":
        return InsertExecution(record=_record(execution_id))
    if kind == "claim":
        return _claim(execution_id, right)
    if kind == "checkpoint":
        return CheckpointStep(step=_step(execution_id, index, n), token=token)
    if kind == "rerun":  # a rerun reusing steps; refused when its idempotency key is taken
        rerun = _record(f"ex_rerun_{n}", key=f"k{target}")
        steps = tuple(_step(rerun.id, i, n) for i in range(index + 1))
        return InsertRerun(record=rerun, steps=steps)
    if kind == "finish":
        return FinishExecution(
            execution_id=execution_id,
            workflow_id="wf_keep",
            status=ExecutionStatus.COMPLETED,
            completed_at=T0,
            duration_ms=1,
            result={"n": n},
            token=token,
            step=_step(execution_id, index, n),
        )
    return None  # a retention pass


def _count(store: Store, sql: str, args: tuple[Any, ...] = ()) -> int:
    with store._read() as conn:  # type: ignore[attr-defined]
        row = conn.execute(sql, args).fetchone()
    return int(row[0])


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(_OP, min_size=1, max_size=6), min_size=1, max_size=6))
def test_no_step_row_is_ever_left_without_its_execution(
    make_store: Any, batches: list[list[tuple[str, int, int, bool]]]
) -> None:
    store = make_store()
    try:
        _apply_and_check(store, batches)
    finally:
        store.close()  # its connections go now, not with the test's other examples


def _apply_and_check(store: Store, batches: list[list[tuple[str, int, int, bool]]]) -> None:
    store.write(lambda conn: _workflow(conn, retention_days=1))
    n = 0
    for specs in batches:
        ops: list[WriteOp] = []
        for spec in specs:
            n += 1
            op = _op(spec, n)
            if op is None:
                store.prune_executions(T0 + timedelta(days=30), 100)
            else:
                ops.append(op)
        results = store.apply(ops) if ops else []
        assert _count(store, ORPHANS) == 0
        for op, result in zip(ops, results, strict=True):
            stored = [(s.index, s.result) for s in store.get_steps(_execution_of(op))]
            if isinstance(op, CheckpointStep) and result is True:
                assert (op.step.index, op.step.result) in stored
            if isinstance(op, InsertRerun):
                assert len(stored) == (len(op.steps) if result is True else 0)


def _execution_of(op: WriteOp) -> str:
    if isinstance(op, CheckpointStep):
        return op.step.execution_id
    if isinstance(op, InsertExecution | InsertRerun):
        return op.record.id
    return str(op.execution_id)  # type: ignore[attr-defined]
