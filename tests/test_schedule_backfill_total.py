"""A backfill's count of due times stored (#17): ``schedule_backfills.total``, written with
the insert and filled for the backfills of before by migration ``m021_backfill_total``,
so a listed backfill is counted without decoding its due times. Both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres_testing import create_schema, drop_schema
from runtime_plugins.helpers import new_workflow

from abi_engine import Engine
from abi_engine.models_backfills import BackfillRun
from abi_engine.storage import postgres_migrations as pgm
from abi_engine.storage.base import Store
from abi_engine.storage.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from abi_engine.storage.postgres import PostgresStore
from abi_engine.storage.sqlite import SQLiteStore

HOURLY = {"name": "hourly", "schedule_type": "cron", "cron_expression": "0 * * * *"}
#: Backfills as the code of schema 20 stored them: (id, due times as JSON).
OLD_ROWS = [("bf_none", "[]"), ("bf_one", "[1000]"), ("bf_three", "[1000,4601000,9201000]")]
INSERT_OLD = (
    "INSERT INTO schedule_backfills (id, schedule_id, status, start_at, end_at, max_runs,"
    " overlap_policy, due_times, created_at, updated_at)"
    " VALUES ({m}, 'sched_x', 'completed', 0, 1, 10, 'allow', {m}, {m}, {m})"
)


def _check_totals(store: Store) -> None:
    """The totals the migration filled, listed (due times not read) and got (read)."""
    records, count = store.list_backfills("sched_x", None, 1, 10)
    assert count == 3
    assert {r.run.id: r.run.total for r in records} == {"bf_none": 0, "bf_one": 1, "bf_three": 3}
    assert all(r.due_times == [] for r in records)  # (not decoded to count them)
    three = store.get_backfill("bf_three")
    assert three is not None
    assert three.run.total == len(three.due_times) == 3


def test_m021_fills_the_totals_of_existing_backfills_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    index = [m.__name__ for m in SQLITE_MIGRATIONS].index("m021_backfill_total")
    monkeypatch.setattr("abi_engine.storage.sqlite.MIGRATIONS", SQLITE_MIGRATIONS[:index])
    old = SQLiteStore(db)
    assert old.schema_version() == 20
    sql = INSERT_OLD.format(m="?")
    old.write(
        lambda conn: conn.executemany(sql, [(i, due, n, n) for n, (i, due) in enumerate(OLD_ROWS)])
    )
    old.close()
    monkeypatch.undo()
    store = SQLiteStore(db)
    try:
        assert store.schema_version() >= 21
        _check_totals(store)
    finally:
        store.close()


@pytest.mark.external_service
def test_m021_fills_the_totals_of_existing_backfills_on_postgresql(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, url = create_schema(postgres_server)
    try:
        index = [n for n, _ in pgm.MIGRATIONS].index("m021_backfill_total")
        monkeypatch.setattr(pgm, "MIGRATIONS", pgm.MIGRATIONS[:index])
        PostgresStore(url).close()
        with psycopg.connect(url) as conn:  # as the code of schema 20 wrote them
            for n, (backfill_id, due) in enumerate(OLD_ROWS):
                conn.execute(INSERT_OLD.format(m="%s"), (backfill_id, due, n, n))
        monkeypatch.undo()
        store = PostgresStore(url)
        try:
            assert store.schema_version() >= 21
            _check_totals(store)
        finally:
            store.close()
    finally:
        drop_schema(postgres_server, name)


@pytest.mark.anyio
async def test_a_new_backfill_stores_its_total(eng: Engine) -> None:
    """A dry run and a real one of a day of an hourly cron: 24 due times (or the runs'
    bound), listed and got with that total, the listed ones without their due times."""
    steps = [{"name": "wait", "action": "delay", "seconds": 0}]
    workflow_id = await new_workflow(eng, "custom", configuration={"steps": steps})
    schedule = await eng.schedules.create(workflow_id, HOURLY)
    day = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(days=3)
    body: dict[str, Any] = {"start": day.isoformat(), "end": (day + timedelta(days=1)).isoformat()}
    started = await eng.schedules.backfill(schedule.id, {**body, "max_runs": 5})
    assert isinstance(started, BackfillRun)
    records, count = eng.store.list_backfills(schedule.id, None, 1, 10)
    assert count == 1
    assert records[0].run.total == 5
    assert records[0].due_times == []
    page = await eng.schedules.list_backfills(schedule.id)
    assert [(r.id, r.total) for r in page.items] == [(started.id, 5)]
    got = eng.store.get_backfill(started.id)
    assert got is not None
    assert got.run.total == len(got.due_times) == 5
