"""Shared fixtures for the core test suite.

Fixtures here are deliberately general so every test module in ``tests/`` can
use them:

``anyio_backend``
    Async tests run on asyncio via anyio's pytest plugin (``@pytest.mark.anyio``).
``db_path``
    A fresh SQLite file path under ``tmp_path`` (not created yet).
``engine``
    An :class:`~abi_engine.Engine` on ``db_path`` with the installed plugins
    (entry points), closed after the test. Management calls work without
    entering it; ``async with engine:`` starts background work.
``store`` / ``make_store``
    A :class:`~abi_engine.storage.Store`, parametrized over storage backends:
    SQLite (a real file) and PostgreSQL (a fresh schema on the server of
    ``postgres_testing``, marked ``external_service``). ``make_store()`` opens
    further stores of the same backend (a second one on the same database with
    ``make_store(same=True)``).
``databases``
    ``databases(name="abi.db")``: the database of an engine, parametrized over
    ``ENGINE_BACKENDS``: a SQLite file in ``tmp_path``, or a PostgreSQL URL
    (one schema per name, dropped after the test). The engine-level suites
    (executions, runtime, schedules, webhooks, callbacks) build their engines
    on it. PostgreSQL joins them when ``ABI_ENGINE_TEST_ENGINE_BACKENDS``
    names it (``sqlite,postgresql``); CI does (``.ci/run``).
``every_database``
    The same on every backend, always (the multi-process tests).
``postgres_server``
    The URL of a PostgreSQL server (see ``postgres_testing``).
``new_workflow``
    A factory of :class:`~abi_engine.Workflow` records for storage tests.
``token`` / ``principal`` / ``make_principal``
    An all-scopes access token of ``usr_tester`` on ``engine``, its
    :class:`~abi_engine.Principal`, and a factory for principals with chosen
    scopes.

A Hypothesis profile ``ci`` (modest example counts, no deadline, no "too slow"
health check) is loaded by
default; set ``HYPOTHESIS_PROFILE=thorough`` for a longer run.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from postgres_testing import (  # noqa: F401 (fixtures)
    SchemaPool,
    postgres_schemas,
    postgres_server,
)
from runtime_plugins import PROBE
from runtime_plugins.helpers import EngineFactory, engines

from abi_engine import Engine, Principal, Scope, Workflow, WorkflowStatus
from abi_engine.ids import new_id, utcnow
from abi_engine.models import WorkflowIntegration
from abi_engine.storage import SQLiteStore, Store

# No timing checks: the suite shares a 2-core machine with whatever else runs there.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=500, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite file path in the test's temporary directory (not created yet)."""
    return tmp_path / "abi.db"


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file with the installed plugins; closed after the test."""
    eng = Engine(db_path)
    try:
        yield eng
    finally:
        eng.close()


# -- storage backends -------------------------------------------------------------------

StoreFactory = Callable[..., Store]


@contextmanager
def _sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    counter = itertools.count(1)
    current: list[Path] = []

    def make(*, same: bool = False, **options: Any) -> Store:
        if not same or not current:
            current[:] = [tmp_path / f"store-{next(counter)}.db"]
        return SQLiteStore(current[0], **options)

    yield make


@contextmanager
def _postgres_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    from abi_engine.storage.postgres import PostgresStore

    pool: SchemaPool = request.getfixturevalue("postgres_schemas")
    schemas: list[tuple[str, str]] = []

    def make(*, same: bool = False, **options: Any) -> Store:
        if not same or not schemas:
            schemas.append(pool.lease())
        return PostgresStore(schemas[-1][1], **options)

    try:
        yield make
    finally:
        for schema, _url in schemas:
            pool.release(schema)


#: Backend name -> context manager yielding a store factory (cleaned up on exit).
_BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Any]] = {
    "sqlite": _sqlite_backend,
    "postgresql": _postgres_backend,
}
STORE_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.external_service),
]


@pytest.fixture(params=STORE_BACKENDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Open stores of one backend: ``make_store()`` a fresh one, ``make_store(same=True)``
    another on the last store's database. All are closed after the test."""
    opened: list[Store] = []
    with _BACKENDS[request.param](request, tmp_path) as factory:

        def make(**kwargs: Any) -> Store:
            store = factory(**kwargs)
            opened.append(store)
            return store

        try:
            yield make
        finally:
            for store in opened:
                store.close()


# -- engine databases -----------------------------------------------------------------------

DatabaseFactory = Callable[..., "str | Path"]

#: Backends the engine-level suites run on (``ABI_ENGINE_TEST_ENGINE_BACKENDS``).
ENGINE_BACKENDS = [
    pytest.param(name, id=name, marks=[pytest.mark.external_service] if name != "sqlite" else [])
    for name in filter(
        None,
        os.environ.get("ABI_ENGINE_TEST_ENGINE_BACKENDS", "sqlite").replace(" ", "").split(","),
    )
]


@contextmanager
def _databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseFactory]:
    if request.param == "sqlite":
        yield lambda name="abi.db": tmp_path / name
        return
    pool: SchemaPool = request.getfixturevalue("postgres_schemas")
    made: dict[str, tuple[str, str]] = {}

    def database(name: str = "abi.db") -> str:
        if name not in made:
            made[name] = pool.lease()
        return made[name][1]

    try:
        yield database
    finally:
        for schema, _url in made.values():
            pool.release(schema)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``sqlite_only`` check SQLite specifics, ``postgresql_only`` what only
    happens across a network (a partition) or in PostgreSQL's own protocol: they are
    not made for the other backend (deselected, not skipped)."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        backend = next(
            (
                params[name]
                for name in ("databases", "every_database", "make_store")
                if name in params
            ),
            "sqlite",
        )
        if (item.get_closest_marker("sqlite_only") and backend != "sqlite") or (
            item.get_closest_marker("postgresql_only") and backend != "postgresql"
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=ENGINE_BACKENDS)
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseFactory]:
    """``databases(name="abi.db")``: an engine's database on each engine backend
    (the same name gives the same database within a test)."""
    with _databases(request, tmp_path) as factory:
        yield factory


@pytest.fixture
def backend_engine(databases: DatabaseFactory) -> Iterator[Engine]:
    """An engine on each engine backend (``databases``) with the installed plugins;
    closed after the test."""
    built = Engine(databases())
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(params=STORE_BACKENDS)
def every_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatabaseFactory]:
    """Like ``databases``, on every backend whatever ``ABI_ENGINE_TEST_ENGINE_BACKENDS``
    says: for the multi-process tests that prove claims hold across processes."""
    with _databases(request, tmp_path) as factory:
        yield factory


@pytest.fixture
def make(tmp_path: Path, databases: DatabaseFactory) -> Iterator[EngineFactory]:
    """``make(**options)``: engines with the test types (``runtime_plugins``) on the
    test's database, of each engine backend; the ones not closed are closed after."""
    with engines(tmp_path, databases) as factory:
        yield factory


@pytest.fixture
async def eng(make: EngineFactory) -> AsyncIterator[Engine]:
    """A running engine with the test types on the test's database."""
    engine = make()
    async with engine:
        yield engine


@pytest.fixture(autouse=True)
def _fresh_probe() -> None:
    """Every test starts with the test types' probe empty (calls, gates, counters)."""
    PROBE.reset()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    """A fresh, migrated store of each backend."""
    return make_store()


@pytest.fixture
def new_workflow() -> Callable[..., Workflow]:
    """Build a :class:`Workflow` record (not stored); keyword arguments override fields."""

    def build(
        *,
        name: str = "Workflow",
        type: str = "custom",
        status: WorkflowStatus = WorkflowStatus.INACTIVE,
        department: str | None = None,
        created_at: datetime | None = None,
        integrations: Iterable[str] = (),
        **fields: Any,
    ) -> Workflow:
        now = created_at or utcnow()
        metadata = dict(fields.pop("metadata", {}))
        if department is not None:
            metadata["department"] = department
        return Workflow(
            id=fields.pop("id", new_id("wf_")),
            name=name,
            type=type,
            status=status,
            configuration=fields.pop("configuration", {"handler": "noop"}),
            integrations=[WorkflowIntegration(id=i, required=True) for i in integrations],
            metadata=metadata,
            created_at=now,
            updated_at=fields.pop("updated_at", now),
            **fields,
        )

    return build


# -- auth ----------------------------------------------------------------------------------


@pytest.fixture
def token(engine: Engine) -> str:
    """An access token of ``usr_tester`` with every scope."""
    return engine.tokens.create_token("usr_tester")


@pytest.fixture
def principal(engine: Engine, token: str) -> Principal:
    """The principal of :func:`token` (``usr_tester``, every scope)."""
    return engine.tokens.authenticate(token)


@pytest.fixture
def make_principal(engine: Engine) -> Callable[..., Principal]:
    """``make_principal(user="usr_x", scopes=[...])``: a real token's principal with those scopes."""

    def make(user: str = "usr_tester", scopes: Iterable[Scope | str] | None = None) -> Principal:
        return engine.tokens.authenticate(engine.tokens.create_token(user, scopes))

    return make
