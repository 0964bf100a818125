"""Schema changes written once (``storage/sql/schema.py``) feed both stores' migration runners.

The shipped ``m011`` was written twice, once per database. Written once in the
portable DDL and run through each store's runner in its place, it must give
the very schema the shipped one gives: on a real SQLite file, on a real
PostgreSQL schema.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from abi_engine.storage import SQLiteStore
from abi_engine.storage import migrations as sqlite_migrations
from abi_engine.storage import postgres_migrations as pgm
from abi_engine.storage.sql import POSTGRES, SQLITE
from abi_engine.storage.sql import schema as shared

#: ``m011`` as it would be written today, once.
M011 = shared.Migration(
    "m011_templates_and_failures",
    [
        """CREATE TABLE notification_templates (
            id {sorted_text} PRIMARY KEY,
            subject TEXT,
            body TEXT NOT NULL,
            description TEXT,
            created_at {bigint} NOT NULL,
            updated_at {bigint} NOT NULL
        )""",
        "ALTER TABLE schedules ADD COLUMN failed_firings {int} NOT NULL DEFAULT 0",
        "ALTER TABLE schedules ADD COLUMN last_failure TEXT",
        "CREATE INDEX idx_executions_schedule ON executions (schedule_id, created_at, id)"
        " WHERE schedule_id IS NOT NULL",
        "CREATE INDEX idx_executions_creator ON executions (created_by, created_at, id)"
        " WHERE created_by IS NOT NULL",
    ],
)


def _words(sql: str) -> str:
    """SQL text with its layout folded (SQLite keeps a table's text as written)."""
    return re.sub(r"\s*([(),])\s*", r"\1", " ".join(sql.split()))


def test_the_runners_take_the_shared_migrations_after_m011() -> None:
    """Both lists end with the shared migrations, rendered for their database."""
    shipped = 11
    assert len(sqlite_migrations.MIGRATIONS) == shipped + len(shared.MIGRATIONS)
    assert len(pgm.MIGRATIONS) == shipped + len(shared.MIGRATIONS)
    for m, fn, (name, statements) in zip(
        shared.MIGRATIONS,
        sqlite_migrations.MIGRATIONS[shipped:],
        pgm.MIGRATIONS[shipped:],
        strict=True,
    ):
        assert fn.__name__ == name == m.name
        assert statements == m.render(POSTGRES)


def test_rendering_names_each_database_type() -> None:
    """Every name of the portable DDL is known to both dialects; braces can be written."""
    assert set(SQLITE.types) == set(POSTGRES.types)
    table = shared.Migration("m_x", ["CREATE TABLE t (seq {serial}, at {bigint}){without_rowid}"])
    assert table.render(SQLITE) == [
        "CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER) WITHOUT ROWID"
    ]
    assert table.render(POSTGRES) == [
        "CREATE TABLE t (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at BIGINT)"
    ]
    assert shared.Migration("m_y", ["SELECT '{{}}'"]).render(SQLITE) == ["SELECT '{}'"]


def _sqlite_schema(path: Path) -> list[tuple[str, ...]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL"
            " ORDER BY name"
        ).fetchall()
        versions = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    finally:
        conn.close()
    return [(t, n, tbl, _words(sql)) for t, n, tbl, sql in rows] + [
        (str(v), name) for v, name in versions
    ]


def test_sqlite_runner_gives_the_shipped_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portable m011, applied by SQLiteStore's runner, equals the shipped m011."""
    # (both up to m011: the shared migrations after it are not what this compares)
    monkeypatch.setattr("abi_engine.storage.sqlite.MIGRATIONS", sqlite_migrations.MIGRATIONS[:11])
    SQLiteStore(tmp_path / "shipped.db").close()
    monkeypatch.setattr(
        "abi_engine.storage.sqlite.MIGRATIONS",
        [*sqlite_migrations.MIGRATIONS[:10], M011.applier(SQLITE)],
    )
    SQLiteStore(tmp_path / "shared.db").close()
    shipped = _sqlite_schema(tmp_path / "shipped.db")
    assert any("notification_templates" in row for row in shipped)
    assert _sqlite_schema(tmp_path / "shared.db") == shipped


def _postgres_schema(url: str, schema: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default,"
            " collation_name, ordinal_position FROM information_schema.columns"
            " WHERE table_schema = %s ORDER BY table_name, ordinal_position",
            (schema,),
        ).fetchall()
        indexes = conn.execute(
            "SELECT indexname, replace(indexdef, %s, '') FROM pg_indexes"
            " WHERE schemaname = %s ORDER BY indexname",
            (f"{schema}.", schema),
        ).fetchall()
        versions = conn.execute(
            f'SELECT version, name FROM "{schema}".schema_migrations ORDER BY version'
        ).fetchall()
    return [*columns, *indexes, *versions]


@pytest.mark.external_service
def test_postgres_runner_gives_the_shipped_schema(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portable m011, applied by PostgresStore's runner, equals the shipped M011."""
    from postgres_testing import create_schema, drop_schema

    from abi_engine.storage.postgres import PostgresStore

    made: list[str] = []

    def migrated(migrations: list[tuple[str, list[str]]]) -> list[tuple[Any, ...]]:
        name, url = create_schema(postgres_server)
        made.append(name)
        monkeypatch.setattr(pgm, "MIGRATIONS", migrations)
        PostgresStore(url).close()
        monkeypatch.undo()
        return _postgres_schema(postgres_server, name)

    try:
        shipped = migrated(pgm.MIGRATIONS[:11])  # (up to m011, as the shared one below)
        shared_m011 = migrated([*pgm.MIGRATIONS[:10], (M011.name, M011.render(POSTGRES))])
    finally:
        for name in made:
            drop_schema(postgres_server, name)
    assert ("notification_templates", "id", "text", "NO", None, "C", 1) in shipped
    assert shared_m011 == shipped


def test_m011_is_what_was_shipped() -> None:
    """The portable text renders, layout aside, to PostgreSQL's shipped statements."""
    assert [_words(s) for s in M011.render(POSTGRES)] == [
        _words(s) for s in pgm.M011_TEMPLATES_AND_FAILURES
    ]
