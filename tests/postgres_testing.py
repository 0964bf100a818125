"""A PostgreSQL server for the tests, and one fresh schema per test.

The server is ``ABI_ENGINE_TEST_POSTGRES_URL`` when set (CI sets it: see
``.ci/run``). Otherwise the session starts a throwaway one: ``initdb`` in a
temporary directory, ``postgres`` on a free port of 127.0.0.1 with its unix
socket in that directory, stopped (and deleted) at the end of the session.
Run as root, the server runs as the ``postgres`` user (PostgreSQL refuses to
run as root). When neither works, PostgreSQL tests fail under ``CI`` and are
skipped, with the reason, elsewhere.

Each test gets its own schema (``create_schema``), named on the URL with
``options=-csearch_path=...``, so tests never see each other's rows; the
schema is dropped afterwards.

Migrating a fresh schema costs PostgreSQL about as much catalog work as dropping
it (0.2-0.5 s each, for some 1,300 PostgreSQL tests). ``SchemaPool`` (the
``postgres_schemas`` fixture) hands out schemas already migrated and, when a test
is done with one, empties it for the next: every table's rows deleted, the
migrations' own seed rows written back, sequences restarted. A schema whose
structure a test changed (a column, an index, a trigger, a table more or less:
compared by a fingerprint of the catalog) is dropped instead, never reused; so is
every schema released while another client is connected to the database (a
connection a test left open could write into the next test's rows: the tests
run one at a time, so another connection means a leak, or another test session
sharing the server, and reuse is then given up for safety). Connections to a test
schema are named after it (``application_name``), so that the pytest-xdist workers
sharing one server only count their own (and unnamed ones) as such clients.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

ENV_URL = "ABI_ENGINE_TEST_POSTGRES_URL"

__all__ = [
    "ENV_URL",
    "SchemaPool",
    "create_schema",
    "drop_schema",
    "postgres_schemas",
    "postgres_server",
    "with_schema",
]


def _binaries() -> Path | None:
    """The directory holding initdb and pg_ctl (PATH first, then Debian's layout)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists()), None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres_user() -> list[str]:
    """The command prefix that runs a server command as a non-root user."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and runuser is missing: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


@contextlib.contextmanager
def _throwaway_server() -> Iterator[str]:
    """Start a private PostgreSQL server; yield its URL; stop and delete it afterwards."""
    bindir = _binaries()
    if bindir is None:
        raise RuntimeError("initdb / pg_ctl not found (install PostgreSQL)")
    prefix = _as_postgres_user()
    base = Path(tempfile.mkdtemp(prefix="abi-pg-"))
    data = base / "data"
    port = _free_port()
    if prefix:
        shutil.chown(base, user="postgres")
    try:
        subprocess.run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        settings = (
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        subprocess.run(
            [
                *prefix,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                settings,
                "-l",
                str(base / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server the tests may create schemas on."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    try:
        server = _throwaway_server()
        url = server.__enter__()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = (
            exc.stderr.decode(errors="replace")
            if isinstance(exc, subprocess.CalledProcessError)
            else ""
        )
        message = f"no PostgreSQL server: set {ENV_URL} ({exc} {detail})".strip()
        if os.environ.get("CI") or os.environ.get("ABI_ENGINE_TEST_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


#: Every connection a test makes to its schema is named after the schema, so that
#: one test session can tell its own clients from other sessions' (pytest-xdist
#: workers share the server: see ``SchemaPool``).
APPLICATION_PREFIX = "abi-test-"
#: The name of the connections that create, empty and drop schemas.
_ADMIN = f"{APPLICATION_PREFIX}admin"


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``).

    Its connections are named ``abi-test-<schema>`` (``application_name``).
    """
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("options", "application_name")]
    query.append(("application_name", f"{APPLICATION_PREFIX}{schema}"))
    query.append(("options", f"-csearch_path={schema}"))  # last: tests append to it
    return urlunsplit(parts._replace(query=urlencode(query)))


def create_schema(server_url: str, prefix: str = "t") -> tuple[str, str]:
    """Create a fresh schema; return its name and the URL that uses it."""
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True, application_name=_ADMIN) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, with_schema(server_url, schema)


def drop_schema(server_url: str, schema: str) -> None:
    """Drop a test's schema with everything in it (after its connections closed)."""
    import psycopg

    deadline = time.monotonic() + 10
    with psycopg.connect(server_url, autocommit=True, application_name=_ADMIN) as conn:
        while True:
            try:
                conn.execute("SET lock_timeout = '2s'")
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except psycopg.errors.LockNotAvailable:
                if time.monotonic() > deadline:
                    raise


#: The catalog a schema's structure is compared by (what a test could have changed).
_FINGERPRINT = """
SELECT md5(string_agg(item, ',' ORDER BY item)) FROM (
  SELECT 'c:' || table_name || '.' || column_name || ':' || data_type || ':'
         || is_nullable || ':' || coalesce(column_default, '') AS item
    FROM information_schema.columns WHERE table_schema = %(s)s
  UNION ALL SELECT 'i:' || indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = %(s)s
  UNION ALL SELECT 't:' || t.tgname || ':' || c.relname FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(s)s AND NOT t.tgisinternal
  UNION ALL SELECT 'f:' || p.proname FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(s)s
  UNION ALL SELECT 'q:' || sequence_name FROM information_schema.sequences
    WHERE sequence_schema = %(s)s
) AS catalog
"""


#: Other clients of the database that could still be writing to schema ``%(s)s``:
#: those named after it, and those not named after a test schema at all (a leaked
#: connection of unknown purpose); connections other test sessions (pytest-xdist
#: workers) make to their own schemas, named ``abi-test-<their schema>``, are not.
_OTHER_CLIENTS = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND backend_type = 'client backend'
   AND (application_name = %(name)s OR application_name NOT LIKE %(prefix)s)
"""


class SchemaPool:
    """Migrated schemas for the tests, emptied and reused (see the module's docstring)."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self._free: list[str] = []
        self._all: set[str] = set()
        self._fingerprint: str | None = None
        self._seeds: dict[str, list[tuple[object, ...]]] = {}
        self._tables: list[str] = []
        self._sequences: list[str] = []

    def lease(self) -> tuple[str, str]:
        """A migrated, empty schema and the URL that uses it."""
        schema = self._free.pop() if self._free else self._migrated()
        return schema, with_schema(self.server_url, schema)

    def release(self, schema: str) -> None:
        """Give ``schema`` back: emptied for the next test, or dropped if it cannot be."""
        if schema in self._all and self._reset(schema):
            self._free.append(schema)
            return
        self._all.discard(schema)
        drop_schema(self.server_url, schema)

    def close(self) -> None:
        """Drop every schema the pool made."""
        for schema in sorted(self._all):
            drop_schema(self.server_url, schema)
        self._all.clear()
        self._free.clear()

    def _migrated(self) -> str:
        from abi_engine.storage.postgres import PostgresStore

        schema, url = create_schema(self.server_url, prefix="p")
        PostgresStore(url).close()
        if self._fingerprint is None:
            self._learn(schema)
        self._all.add(schema)
        return schema

    def _learn(self, schema: str) -> None:
        """Record what a freshly migrated schema looks like: structure, rows, sequences."""
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, application_name=_ADMIN) as conn:
            self._fingerprint = conn.execute(_FINGERPRINT, {"s": schema}).fetchone()[0]
            self._tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s"
                    " AND tablename <> 'schema_migrations' ORDER BY tablename",
                    (schema,),
                )
            ]
            self._sequences = [
                row[0]
                for row in conn.execute(
                    "SELECT sequence_name FROM information_schema.sequences"
                    " WHERE sequence_schema = %s",
                    (schema,),
                )
            ]
            for table in self._tables:
                rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
                if rows:
                    self._seeds[table] = rows

    @staticmethod
    def _alone(conn: Any, schema: str) -> bool:
        """Whether no client could still use ``schema``, given a second for one to close."""
        deadline = time.monotonic() + 1
        names = {"name": f"{APPLICATION_PREFIX}{schema}", "prefix": f"{APPLICATION_PREFIX}%"}
        while conn.execute(_OTHER_CLIENTS, names).fetchone()[0]:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _reset(self, schema: str) -> bool:
        """Empty ``schema`` as a fresh migration leaves it; False when it must be dropped."""
        import psycopg

        try:
            with psycopg.connect(self.server_url, autocommit=True, application_name=_ADMIN) as conn:
                conn.execute("SET lock_timeout = '2s'")
                if not self._alone(conn, schema):
                    return False
                with conn.transaction():
                    found = conn.execute(_FINGERPRINT, {"s": schema}).fetchone()[0]
                    if found != self._fingerprint:
                        return False
                    for table in self._tables:
                        conn.execute(f'DELETE FROM "{schema}"."{table}"')
                    for table, rows in self._seeds.items():
                        marks = ", ".join(["%s"] * len(rows[0]))
                        with conn.cursor() as cur:
                            cur.executemany(
                                f'INSERT INTO "{schema}"."{table}" VALUES ({marks})', rows
                            )
                    for sequence in self._sequences:
                        conn.execute(f'ALTER SEQUENCE "{schema}"."{sequence}" RESTART')
            return True
        except psycopg.Error:
            return False


@pytest.fixture(scope="session")
def postgres_schemas(postgres_server: str) -> Iterator[SchemaPool]:
    """Migrated schemas on ``postgres_server``, reused across tests (``SchemaPool``)."""
    pool = SchemaPool(postgres_server)
    try:
        yield pool
    finally:
        pool.close()
