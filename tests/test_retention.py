"""Retention: finished executions past their workflow's retention_days are pruned in
bounded batches with what belongs to them; stats stay; SQLite gives space back (both
backends, with the time under the test's control)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi_engine import Engine
from abi_engine.errors import InvalidRequest
from abi_engine.ids import new_id, utcnow
from abi_engine.models import ExecutionStatus, Workflow
from abi_engine.runtime.settings import RetentionSettings
from abi_engine.storage import SQLiteStore, Store
from abi_engine.storage.records import ExecutionRecord, InsertExecution

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
CUSTOM = {
    "name": "Kept for a while",
    "type": "custom",
    "configuration": {"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
}


def _workflow(store: Store, new_workflow: Callable[..., Workflow], days: int | None) -> str:
    workflow = new_workflow(retention_days=days)
    store.insert_workflow(workflow)
    return workflow.id


def _execution(
    store: Store,
    workflow_id: str,
    finished: datetime | None,
    status: ExecutionStatus = ExecutionStatus.COMPLETED,
    payload: str = "",
) -> str:
    record = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=workflow_id,
        workflow_type="custom",
        status=status,
        parameters={"payload": payload},
        created_at=(finished or NOW) - timedelta(seconds=1),
        started_at=(finished or NOW) - timedelta(seconds=1),
        completed_at=finished,
    )
    assert store.apply([InsertExecution(record=record)]) == [True]
    if finished is not None:  # an insert stores no end: set it as a finished run would
        ms = int(finished.timestamp() * 1000)
        store.write(  # type: ignore[attr-defined]
            lambda conn: conn.execute(
                "UPDATE executions SET completed_at = ? WHERE id = ?", (ms, record.id)
            )
        )
    return record.id


def _rows(store: Any, table: str, execution_id: str) -> int:
    def run(conn: Any) -> int:
        sql = f"SELECT count(*) FROM {table} WHERE execution_id = ?"
        return int(conn.execute(sql, (execution_id,)).fetchone()[0])

    return int(store.write(run))


def _add_step_and_signal(store: Any, execution_id: str) -> None:
    def run(conn: Any) -> None:
        conn.execute(
            "INSERT INTO execution_steps (execution_id, idx, name, status) VALUES (?, 0, 's', 'completed')",
            (execution_id,),
        )
        conn.execute(
            "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
            " VALUES (?, 'progress', '{}', 0)",
            (execution_id,),
        )

    store.write(run)


def test_only_finished_executions_past_their_retention_go(
    store: Store, new_workflow: Callable[..., Workflow]
) -> None:
    """Executions finished longer ago than their workflow's retention_days go, in batches,
    with their steps and signals; recent, unfinished and keep-all ones stay."""
    ten = _workflow(store, new_workflow, 10)
    keep = _workflow(store, new_workflow, None)
    old = [_execution(store, ten, NOW - 11 * DAY) for _ in range(3)]
    _add_step_and_signal(store, old[0])
    recent = _execution(store, ten, NOW - 9 * DAY)
    running = _execution(store, ten, None, ExecutionStatus.RUNNING)
    kept = _execution(store, keep, NOW - 400 * DAY)
    failed = _execution(store, ten, NOW - 20 * DAY, ExecutionStatus.FAILED)
    assert store.prunable_executions(NOW) == {ten: 4}
    assert store.prune_executions(NOW, 3) == {ten: 3}
    assert store.prune_executions(NOW, 3) == {ten: 1}
    assert store.prune_executions(NOW, 3) == {}
    for gone in [*old, failed]:
        assert store.get_execution(gone) is None
    for stays in (recent, running, kept):
        assert store.get_execution(stays) is not None
    assert _rows(store, "execution_steps", old[0]) == 0
    assert _rows(store, "execution_signals", old[0]) == 0
    assert store.prunable_executions(NOW + 2 * DAY) == {ten: 1}  # the recent one, later


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ages=st.lists(st.integers(0, 40), max_size=12),
    days=st.one_of(st.none(), st.integers(1, 30)),
    batch=st.integers(1, 5),
)
def test_pruning_rule(
    tmp_path: Path,
    new_workflow: Callable[..., Workflow],
    ages: list[int],
    days: int | None,
    batch: int,
) -> None:
    """Whatever the ages, the retention and the batch size: exactly the executions finished
    more than retention_days ago go, and batches never exceed the batch size."""
    store = SQLiteStore(tmp_path / f"{new_id('db_')}.db")
    try:
        wf = _workflow(store, new_workflow, days)
        ids = {_execution(store, wf, NOW - age * DAY - timedelta(minutes=1)): age for age in ages}
        while pruned := store.prune_executions(NOW, batch):
            assert 0 < sum(pruned.values()) <= batch
        for execution_id, age in ids.items():
            gone = days is not None and age >= days
            assert (store.get_execution(execution_id) is None) == gone
    finally:
        store.close()


@pytest.fixture
def engine_on(databases: Callable[..., Any]) -> Any:
    made: list[Engine] = []

    def make(**options: Any) -> Engine:
        engine = Engine(databases(), **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.mark.anyio
async def test_retention_days_on_the_workflow(engine_on: Callable[..., Engine]) -> None:
    """Left out: the engine's default; null keeps all; updatable; out of range refused."""
    engine = engine_on(retention=RetentionSettings(execution_retention_days=7))
    assert (await engine.workflows.create(CUSTOM)).retention_days == 7
    kept = await engine.workflows.create({**CUSTOM, "retention_days": None})
    assert kept.retention_days is None
    updated = await engine.workflows.update(kept.id, {"retention_days": 90})
    assert updated.retention_days == 90
    assert (await engine.workflows.get(kept.id)).retention_days == 90
    for bad in (0, -1, 36_501, "soon", 1.5):
        with pytest.raises(InvalidRequest) as error:
            await engine.workflows.create({**CUSTOM, "retention_days": bad})
        assert "retention_days" in str(error.value.details), bad


@pytest.mark.anyio
async def test_stats_stay_after_pruning(engine_on: Callable[..., Engine]) -> None:
    """Real executions pruned a month later: the workflow's stats are as before, the
    executions are gone, a dry run deletes nothing and the report counts them."""
    engine = engine_on()
    async with engine:
        workflow = await engine.workflows.create({**CUSTOM, "retention_days": 30})
        await engine.workflows.activate(workflow.id)
        for _ in range(3):
            done = await engine.executions.execute(workflow.id, {}, wait=True)
            assert done.status is ExecutionStatus.COMPLETED
        before = (await engine.workflows.get(workflow.id)).stats
        later = utcnow() + 31 * DAY
        plan = await engine.pruner.plan(later)
        assert plan.executions == {workflow.id: 3}
        assert (await engine.executions.list(workflow_id=workflow.id)).pagination.total_items == 3
        batches: list[int] = []
        report = await engine.pruner.prune(later, on_batch=batches.append)
        assert report.executions == {workflow.id: 3}
        assert sum(batches) == 3
        assert (await engine.executions.list(workflow_id=workflow.id)).pagination.total_items == 0
        after = (await engine.workflows.get(workflow.id)).stats
        assert after == before
        assert after.runs_total == 3


@pytest.mark.sqlite_only
def test_sqlite_gives_space_back(tmp_path: Path, new_workflow: Callable[..., Workflow]) -> None:
    """A new database is in incremental auto_vacuum mode; pruning then shrinks the file."""
    path = tmp_path / "big.db"
    store = SQLiteStore(path)
    try:
        assert store.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        wf = _workflow(store, new_workflow, 1)
        store.checkpointer.checkpoint()
        pages_empty = store.db.execute("PRAGMA page_count").fetchone()[0]  # the schema
        for _ in range(200):
            _execution(store, wf, NOW - 5 * DAY, payload="x" * 4000)
        store.checkpointer.checkpoint()
        pages_before = store.db.execute("PRAGMA page_count").fetchone()[0]
        while store.prune_executions(NOW, 50):
            store.reclaim_space(10_000)
        pages_after = store.db.execute("PRAGMA page_count").fetchone()[0]
        # What the executions took is given back (all but a few pages of index roots).
        assert pages_after - pages_empty < (pages_before - pages_empty) / 20
        assert store.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    finally:
        store.close()


@pytest.mark.sqlite_only
def test_an_older_database_keeps_its_mode(tmp_path: Path) -> None:
    """A file made before (not in incremental mode) opens as it is; reclaiming does nothing
    and fails nothing."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE before_us (x)")
    store = SQLiteStore(path)
    try:
        assert store.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
        assert store.reclaim_space(100) >= 0
    finally:
        store.close()


@pytest.mark.anyio
async def test_a_started_engine_prunes_in_the_background(
    engine_on: Callable[..., Engine], new_workflow: Callable[..., Workflow]
) -> None:
    """With interval_seconds=1 a running engine prunes on its own, soon after it starts."""
    from runtime_plugins.helpers import until

    engine = engine_on(retention=RetentionSettings(interval_seconds=1))
    workflow = _workflow(engine.store, new_workflow, 1)
    old = _execution(engine.store, workflow, utcnow() - 3 * DAY)
    fresh = _execution(engine.store, workflow, utcnow())
    async with engine:
        await until(lambda: engine.store.get_execution(old) is None, 60, "the pruner")
    assert engine.store.get_execution(fresh) is not None
