"""Executions counted per status and time bucket (the dashboard's overview), on every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from runtime_plugins.helpers import DatabaseFactory, engines

from abi_engine import Engine
from abi_engine.errors import InvalidRequest
from abi_engine.ids import new_id
from abi_engine.models import ExecutionStatus
from abi_engine.storage import Store
from abi_engine.storage.records import ExecutionRecord, InsertExecution

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def _insert(store: Store, at: datetime, status: ExecutionStatus) -> None:
    record = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id="wf_counts",
        workflow_type="custom",
        status=status,
        created_at=at,
    )
    assert store.apply([InsertExecution(record=record)]) == [True]


def test_counts_per_bucket_and_status(store: Store) -> None:
    """Each execution falls in the bucket of its request time; the end is excluded, the
    start included; empty buckets and statuses are left out."""
    minute = timedelta(minutes=1)
    _insert(store, START, ExecutionStatus.FAILED)  # first bucket, at its very start
    _insert(store, START + minute / 2, ExecutionStatus.FAILED)
    _insert(store, START + minute / 2, ExecutionStatus.COMPLETED)
    _insert(store, START + 2 * minute + timedelta(seconds=59), ExecutionStatus.QUEUED)
    _insert(store, START - timedelta(milliseconds=1), ExecutionStatus.FAILED)  # before
    _insert(store, START + 3 * minute, ExecutionStatus.FAILED)  # at the end: excluded
    rows = sorted(store.execution_counts(START, START + 3 * minute, 60_000))
    assert rows == [(0, "completed", 1), (0, "failed", 2), (2, "queued", 1)]


@pytest.fixture
async def engine(tmp_path: Path, databases: DatabaseFactory) -> AsyncIterator[Engine]:
    """A running engine (test types) on each engine backend."""
    with engines(tmp_path, databases) as make:
        async with make() as running:
            yield running


@pytest.mark.anyio
async def test_service_counts_name_bucket_starts(engine: Engine) -> None:
    """The service gives each bucket's start time and the status as an enum, oldest first."""
    _insert(engine.store, START + timedelta(hours=1, minutes=5), ExecutionStatus.COMPLETED)
    _insert(engine.store, START + timedelta(minutes=1), ExecutionStatus.CANCELLED)
    counts = await engine.executions.counts(START, START + timedelta(hours=2), 3600)
    assert [tuple(c) for c in counts] == [
        (START, ExecutionStatus.CANCELLED, 1),
        (START + timedelta(hours=1), ExecutionStatus.COMPLETED, 1),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bucket", "end_offset"), [(0, 60), (-5, 60), (60, 0), (True, 60), (1.5, 60)]
)
async def test_service_refuses_bad_bounds(engine: Engine, bucket: Any, end_offset: int) -> None:
    with pytest.raises(InvalidRequest):
        await engine.executions.counts(START, START + timedelta(seconds=end_offset), bucket)


def test_counts_read_only_the_status_index(tmp_path: Any) -> None:
    """On SQLite the query is a search of the covering (status, created_at) index."""
    from abi_engine.storage import SQLiteStore

    path = tmp_path / "counts.db"
    store = SQLiteStore(str(path))
    statements: list[str] = []
    try:
        with store._read() as conn:  # type: ignore[attr-defined]
            conn.set_trace_callback(statements.append)
            try:
                store.execution_counts(START, START + timedelta(days=7), 3_600_000)
            finally:
                conn.set_trace_callback(None)
    finally:
        store.close()
    (sql,) = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    check = sqlite3.connect(path)
    try:
        plan = " | ".join(row[3] for row in check.execute(f"EXPLAIN QUERY PLAN {sql}"))
    finally:
        check.close()
    assert "USING COVERING INDEX idx_executions_status" in plan, plan
