"""Fixtures for the ASGI adapter's tests.

``engine`` is a running :class:`~abi_engine.Engine` on a SQLite file in
``tmp_path``; ``token`` an all-scopes token of ``usr_test``; ``app`` the
adapter (rate limiting off unless a test asks for it); ``client`` an
:class:`httpx.AsyncClient` speaking to ``app`` in-process with that token.
``make_client(app, token=...)`` builds more clients.

``backend_engine`` is, like ``idle_engine``, an engine not started, on each
engine backend of ``ABI_ENGINE_TEST_ENGINE_BACKENDS`` (a SQLite file, or a
fresh schema of the PostgreSQL server: the project's ``tests/postgres_testing``);
a test module overrides ``idle_engine`` with it to run on every backend.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from abi_asgi import create_app
from starlette.applications import Starlette

from abi_engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from postgres_testing import SchemaPool, postgres_schemas, postgres_server  # noqa: F401

BASE_URL = "http://testserver"
#: Engine backends of ``backend_engine`` (``ABI_ENGINE_TEST_ENGINE_BACKENDS``).
ENGINE_BACKENDS = [
    pytest.param(name, id=name, marks=[pytest.mark.external_service] if name != "sqlite" else [])
    for name in filter(
        None,
        os.environ.get("ABI_ENGINE_TEST_ENGINE_BACKENDS", "sqlite").replace(" ", "").split(","),
    )
]


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


@pytest.fixture
def idle_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file, not started; closed after the test."""
    engine = Engine(tmp_path / "abi.db")
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(params=ENGINE_BACKENDS)
def backend_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine, not started, on each engine backend; closed (its schema dropped) after."""
    if request.param == "sqlite":
        engine = Engine(tmp_path / "abi.db")
        try:
            yield engine
        finally:
            engine.close()
        return
    pool: SchemaPool = request.getfixturevalue("postgres_schemas")
    schema, url = pool.lease()
    engine = Engine(url)
    try:
        yield engine
    finally:
        engine.close()
        pool.release(schema)


@pytest.fixture
async def engine(idle_engine: Engine) -> AsyncIterator[Engine]:
    """The engine, running (``async with engine:``) for the test."""
    async with idle_engine:
        yield idle_engine


@pytest.fixture
def token(idle_engine: Engine) -> str:
    """An access token of ``usr_test`` with every scope."""
    return idle_engine.tokens.create_token("usr_test")


@pytest.fixture
def app(engine: Engine) -> Starlette:
    """The adapter over ``engine``, without rate limiting."""
    return create_app(engine, rate_limit=None)


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``make_client(app, token=None, client=("127.0.0.1", 5000))``: an in-process client."""
    async with AsyncExitStack() as stack:

        def make(
            app: Any, token: str | None = None, client: tuple[str, int] = ("127.0.0.1", 5000)
        ) -> httpx.AsyncClient:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            transport = httpx.ASGITransport(app=app, client=client)
            made = httpx.AsyncClient(transport=transport, base_url=BASE_URL, headers=headers)
            stack.push_async_callback(made.aclose)
            return made

        yield make


@pytest.fixture
def client(
    app: Starlette, token: str, make_client: Callable[..., httpx.AsyncClient]
) -> httpx.AsyncClient:
    """A client of ``app`` sending ``token``."""
    return make_client(app, token)
