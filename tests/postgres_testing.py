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
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

ENV_URL = "ABI_ENGINE_TEST_POSTGRES_URL"

__all__ = ["ENV_URL", "create_schema", "drop_schema", "postgres_server", "with_schema"]


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


def with_schema(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (libpq ``options=-csearch_path=...``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def create_schema(server_url: str, prefix: str = "t") -> tuple[str, str]:
    """Create a fresh schema; return its name and the URL that uses it."""
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, with_schema(server_url, schema)


def drop_schema(server_url: str, schema: str) -> None:
    """Drop a test's schema with everything in it (after its connections closed)."""
    import psycopg

    deadline = time.monotonic() + 10
    with psycopg.connect(server_url, autocommit=True) as conn:
        while True:
            try:
                conn.execute("SET lock_timeout = '2s'")
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                return
            except psycopg.errors.LockNotAvailable:
                if time.monotonic() > deadline:
                    raise
