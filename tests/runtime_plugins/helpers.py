"""Small helpers shared by the runtime tests (engines, workflows, polling)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

import runtime_plugins
from abi_engine import Engine, Execution, ExecutionStatus
from abi_engine.runtime.settings import RuntimeSettings

__all__ = [
    "TERMINAL",
    "DatabaseFactory",
    "EngineFactory",
    "engines",
    "fast",
    "new_workflow",
    "resume_and_check_once",
    "started_on",
    "until",
    "until_sync",
    "wait_status",
]

EngineFactory = Callable[..., Engine]
#: The statuses an execution ends in.
TERMINAL = (
    ExecutionStatus.COMPLETED,
    ExecutionStatus.FAILED,
    ExecutionStatus.TIMED_OUT,
    ExecutionStatus.CANCELLED,
)
#: The ``databases`` fixture: ``databases(name)`` is a SQLite path or a PostgreSQL URL.
DatabaseFactory = Callable[..., "str | Path"]


def fast(**overrides: Any) -> RuntimeSettings:
    """Runtime settings for quick tests: short poll interval and shutdown grace."""
    values: dict[str, Any] = {"poll_interval": 0.05, "shutdown_grace": 0.5}
    values.update(overrides)
    return RuntimeSettings(**values)


@contextmanager
def engines(directory: Path, databases: DatabaseFactory | None = None) -> Iterator[EngineFactory]:
    """``make(name="abi.db", plugins=(), settings=None, **options)`` builds engines on
    SQLite files in ``directory`` (or on ``databases(name)``, the ``databases``
    fixture: SQLite or PostgreSQL) with the test types; all are closed afterwards."""
    made: list[Engine] = []

    def make(
        name: str = "abi.db",
        *,
        plugins: tuple[object, ...] = (),
        settings: RuntimeSettings | None = None,
        **options: Any,
    ) -> Engine:
        engine = Engine(
            databases(name) if databases is not None else directory / name,
            plugins=[runtime_plugins, *plugins],
            runtime=settings or fast(),
            **options,
        )
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            engine.close()


async def new_workflow(
    engine: Engine,
    workflow_type: str = "test_three",
    *,
    active: bool = True,
    configuration: Mapping[str, Any] | None = None,
    **fields: Any,
) -> str:
    """Create (and by default activate) a workflow; return its id."""
    body: dict[str, Any] = {
        "name": fields.pop("name", f"{workflow_type} workflow"),
        "type": workflow_type,
        "configuration": dict(configuration or {}),
        **fields,
    }
    workflow = await engine.workflows.create(body)
    if active:
        await engine.workflows.activate(workflow.id)
    return workflow.id


async def until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``predicate`` (sync) every 10 ms until it is true; fail after ``timeout``."""
    with anyio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polls state other tasks change
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what or predicate}")


def until_sync(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``check`` from a plain thread every 50 ms until it returns something true
    (returned); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


async def wait_status(
    engine: Engine, execution_id: str, *statuses: ExecutionStatus, timeout: float = 5.0
) -> Execution:
    """Poll the execution until its status is one of ``statuses``; return it."""
    with anyio.move_on_after(timeout):
        while True:
            execution = await engine.executions.get(execution_id)
            if execution.status in statuses:
                return execution
            await anyio.sleep(0.01)
    execution = await engine.executions.get(execution_id)
    raise AssertionError(
        f"{execution_id} is {execution.status.value}, not one of {[s.value for s in statuses]}"
    )


@contextmanager
def started_on(store: Any, *, workers: int = 4, poll_interval: float = 0.2) -> Iterator[Engine]:
    """A started engine with the test types on ``store`` (a store or a fault harness
    around one), stopped and closed afterwards."""
    engine = Engine(
        store,
        plugins=[runtime_plugins],
        runtime=RuntimeSettings(workers=workers, poll_interval=poll_interval),
    )
    engine.start_blocking()
    try:
        yield engine
    finally:
        engine.stop_blocking()
        engine.close()


def resume_and_check_once(engine: Engine, workflow_id: str, ids: list[str]) -> None:
    """Resume ``workflow_id``; each of ``ids`` then completes, each step run once."""
    engine.call(engine.executions.pause_workflow, workflow_id, False)
    for execution_id in ids:
        final = engine.call(engine.executions.wait, execution_id, 60)
        assert final.status is ExecutionStatus.COMPLETED, (execution_id, final.status)
        assert runtime_plugins.PROBE.runs(execution_id) == {"first": 1, "second": 1, "third": 1}
