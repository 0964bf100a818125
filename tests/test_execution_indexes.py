"""The lean indexes of executions (#18, migration ``m022_lean_execution_indexes``).

Each status change of an execution writes a new row version with an entry in every index
whose condition it meets; m022 drops the two indexes no query reads
(``idx_executions_active``, ``idx_executions_owner``) and narrows two others to the rows
their queries ask for (``idx_executions_prune``: finished ones; ``idx_executions_queued_owner``:
queued ones with a creator). A database of schema 21 with executions migrates (both
backends), and what the narrowed indexes serve answers as the rule says, for any mix of
executions (hypothesis): the queued-quota count, the retention's candidates, the holders
of concurrency slots.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_testing import create_schema, drop_schema

from abi_engine.storage import postgres_migrations as pgm
from abi_engine.storage.base import Store
from abi_engine.storage.migrations import MIGRATIONS as SQLITE_MIGRATIONS
from abi_engine.storage.postgres import PostgresStore
from abi_engine.storage.sqlite import SQLiteStore

M022 = "m022_lean_execution_indexes"
#: The indexes of executions after m022 (the primary key's name differs by backend).
EXPECTED = {
    "idx_executions_blocked",
    "idx_executions_created",
    "idx_executions_creator",
    "idx_executions_debounce",
    "idx_executions_idempotency",
    "idx_executions_not_before",
    "idx_executions_parent",
    "idx_executions_prune",
    "idx_executions_queued_owner",
    "idx_executions_rate",
    "idx_executions_rerun_of",
    "idx_executions_schedule",
    "idx_executions_slots",
    "idx_executions_status",
    "idx_executions_wake",
    "idx_executions_workflow",
    "executions_waiting_key",
}
GONE = {"idx_executions_active", "idx_executions_owner"}
DAY_MS = 86_400_000
#: Now: leases are judged by the database's clock (PostgreSQL's), so a real one.
NOW = datetime.now(UTC).replace(microsecond=0)
NOW_MS = int(NOW.timestamp() * 1000)
STATUSES = ["queued", "running", "waiting", "completed", "failed", "cancelled"]
#: (id, workflow, status, created_by, owner, completed days ago): rows as schema 21 stored them.
Row = tuple[str, str, str, str | None, str | None, int | None]
OLD_ROWS: list[Row] = [
    ("ex_q1", "wf_keep", "queued", "alice", None, None),
    ("ex_q2", "wf_keep", "queued", None, "node-a", None),
    ("ex_r1", "wf_keep", "running", "alice", "node-a", None),
    ("ex_old", "wf_short", "completed", "alice", None, 40),
    ("ex_new", "wf_short", "failed", None, None, 2),
]
WORKFLOWS = "INSERT INTO workflows (id, name, type, status, configuration, created_at,"
WORKFLOWS += " updated_at, retention_days) VALUES ({m}, {m}, 'custom', 'active', '{{}}', 0, 0, {m})"
EXECUTIONS = (
    "INSERT INTO executions (id, workflow_id, workflow_type, status, parameters,"
    " configuration, plan, created_at, created_by, owner, lease_until, completed_at)"
    " VALUES ({m}, {m}, 'custom', {m}, '{{}}', '{{}}', '[]', 0, {m}, {m}, {m}, {m})"
)


def _row_values(row: Row) -> tuple[Any, ...]:
    ex_id, wf, status, creator, owner, days = row
    lease = NOW_MS + DAY_MS if owner else None  # a live lease: the slot is held
    done = None if days is None else NOW_MS - days * DAY_MS
    return (ex_id, wf, status, creator, owner, lease, done)


def _fill(execute: Any, mark: str, rows: Sequence[Row]) -> None:
    """Two workflows (``wf_short`` keeps finished executions 30 days) and ``rows``."""
    for values in (("wf_keep", "keep", None), ("wf_short", "short", 30)):
        execute(WORKFLOWS.format(m=mark), values)
    for row in rows:
        execute(EXECUTIONS.format(m=mark), _row_values(row))


def _sqlite_indexes(store: SQLiteStore) -> dict[str, str]:
    with store._read() as conn:
        rows = conn.execute(
            "SELECT name, coalesce(sql, '') FROM sqlite_master"
            " WHERE type = 'index' AND tbl_name = 'executions'"
        ).fetchall()
    return {name: sql for name, sql in rows if not name.startswith("sqlite_autoindex")}


def _postgres_indexes(store: PostgresStore) -> dict[str, str]:
    with store._read() as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() AND tablename = 'executions'"
        ).fetchall()
    return {name: sql for name, sql in rows if name != "executions_pkey"}


def _check_migrated(store: Store, indexes: dict[str, str]) -> None:
    """Schema 22 or later: the indexes of m022, and the old rows answered by them."""
    assert store.schema_version() >= 22
    assert set(indexes) == EXPECTED
    assert not GONE & set(indexes)
    assert "created_by IS NOT NULL" in indexes["idx_executions_queued_owner"]
    assert "completed_at IS NOT NULL" in indexes["idx_executions_prune"]
    _check_answers(store, OLD_ROWS)


def _check_answers(store: Store, rows: Sequence[Row]) -> None:
    """What the narrowed indexes serve, against the rule applied to ``rows``."""
    for user in ("alice", "bob"):
        queued = sum(1 for r in rows if r[2] == "queued" and r[3] == user)
        assert store.count_owned("queued_executions", user, 1000) == queued
    expired = sum(
        1 for r in rows if r[1] == "wf_short" and r[2] not in STATUSES[:3] and (r[5] or 0) > 30
    )
    assert store.prunable_executions(NOW) == ({"wf_short": expired} if expired else {})
    holders = sorted(r[0] for r in rows if r[1] == "wf_keep" and r[2] in STATUSES[:2] and r[4])
    assert sorted(s[0] for s in store.concurrency_slots("wf_keep")) == holders


def test_m022_migrates_a_sqlite_database_with_executions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "old.db"
    index = [m.__name__ for m in SQLITE_MIGRATIONS].index(M022)
    monkeypatch.setattr("abi_engine.storage.sqlite.MIGRATIONS", SQLITE_MIGRATIONS[:index])
    old = SQLiteStore(db)
    assert old.schema_version() == 21
    assert set(_sqlite_indexes(old)) >= GONE
    old.write(lambda conn: _fill(conn.execute, "?", OLD_ROWS))
    old.close()
    monkeypatch.undo()
    store = SQLiteStore(db)
    try:
        _check_migrated(store, _sqlite_indexes(store))
    finally:
        store.close()


@pytest.mark.external_service
def test_m022_migrates_a_postgresql_schema_with_executions(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, url = create_schema(postgres_server)
    try:
        index = [n for n, _ in pgm.MIGRATIONS].index(M022)
        monkeypatch.setattr(pgm, "MIGRATIONS", pgm.MIGRATIONS[:index])
        old = PostgresStore(url)
        assert old.schema_version() == 21
        assert set(_postgres_indexes(old)) >= GONE
        old.close()
        with psycopg.connect(url, autocommit=True) as conn:  # as the code of schema 21 wrote
            _fill(conn.execute, "%s", OLD_ROWS)
        monkeypatch.undo()
        store = PostgresStore(url)
        try:
            _check_migrated(store, _postgres_indexes(store))
        finally:
            store.close()
    finally:
        drop_schema(postgres_server, name)


ROWS = st.lists(
    st.tuples(
        st.sampled_from(["wf_keep", "wf_short"]),
        st.sampled_from(STATUSES),
        st.sampled_from([None, "alice", "bob"]),
        st.sampled_from([None, "node-a"]),
        st.integers(min_value=0, max_value=60),
    ),
    max_size=25,
)


def _as_rows(drawn: list[tuple[str, str, str | None, str | None, int]]) -> list[Row]:
    """Consistent rows: only unfinished executions have an owner, only finished ones
    a completion time."""
    rows: list[Row] = []
    for n, (wf, status, creator, owner, days) in enumerate(drawn):
        done = status in STATUSES[3:]
        held = owner if status in STATUSES[:2] else None
        rows.append((f"ex_{n}", wf, status, creator, held, days if done else None))
    return rows


@contextmanager
def _fresh(store: Store) -> Iterator[Store]:
    """``store`` emptied of executions and workflows, for one example."""

    def empty(conn: Any) -> None:
        for table in ("executions", "workflows"):
            conn.execute(f"DELETE FROM {table}")

    store.write(empty)
    yield store


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(drawn=ROWS)
def test_the_narrowed_indexes_answer_by_the_rule(store: Store, drawn: list[Any]) -> None:
    """Any mix of executions (statuses, creators, owners, completion days): the queued
    quota, the retention's candidates and the slot holders, read through m022's indexes,
    are what the rule says (both backends)."""
    rows = _as_rows(drawn)
    mark = "%s" if isinstance(store, PostgresStore) else "?"
    with _fresh(store) as s:
        s.write(lambda conn: _fill(conn.execute, mark, rows))
        _check_answers(s, rows)
