"""Helpers for testing workflow types and plugins against a real, in-memory engine.

Use it from pytest with ``pytest_plugins = ["abi_engine.testing"]`` in your
``conftest.py`` (the anyio pytest plugin runs the async tests)::

    import pytest
    from abi_engine.testing import run_workflow

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def abi_plugins():
        return [MyPlugin()]          # the plugins under test

    async def test_greets(abi_engine):
        execution = await run_workflow(abi_engine, "greeting", parameters={"who": "Ada"})
        assert execution.result == {"text": "Hello, Ada!"}

Or without pytest: ``async with engine_for(MyPlugin()) as engine: ...``. This
module imports pytest only when its fixtures are first looked up (by pytest
itself, or ``from abi_engine.testing import abi_engine``), so ``engine_for`` and
``run_workflow`` need no pytest installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from abi_engine.engine import Engine
from abi_engine.executor import RuntimeSettings
from abi_engine.models import Execution

if TYPE_CHECKING:  # at run time, __getattr__ below imports them on first use
    from abi_engine._testing_fixtures import abi_engine, abi_engine_options, abi_plugins

__all__ = ["abi_engine", "abi_engine_options", "abi_plugins", "engine_for", "run_workflow"]

#: The pytest fixtures, defined in :mod:`abi_engine._testing_fixtures` (which imports pytest).
_FIXTURES = ("abi_engine", "abi_engine_options", "abi_plugins")


@asynccontextmanager
async def engine_for(
    *plugins: object,
    db: str = ":memory:",
    load_entry_points: bool = True,
    **engine_options: Any,
) -> AsyncIterator[Engine]:
    """A started engine with ``plugins`` registered (in memory by default), closed after."""
    engine_options.setdefault("runtime", RuntimeSettings(poll_interval=0.05, shutdown_grace=1.0))
    engine = Engine(db, plugins=plugins, load_entry_points=load_entry_points, **engine_options)
    try:
        async with engine:
            yield engine
    finally:
        engine.close()


async def run_workflow(
    engine: Engine,
    workflow_type: str,
    *,
    configuration: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    integrations: Iterable[Mapping[str, Any]] = (),
    timeout_seconds: float = 30.0,
) -> Execution:
    """Create and activate a workflow of ``workflow_type``, execute it synchronously.

    Raises what a caller of the API would get (``WorkflowExecutionError`` when
    a step fails, ``ExecutionTimeout``...).
    """
    workflow = await engine.workflows.create(
        {
            "name": f"test {workflow_type}",
            "type": workflow_type,
            "configuration": dict(configuration or {}),
            "integrations": [dict(i) for i in integrations],
        }
    )
    await engine.workflows.activate(workflow.id)
    return await engine.executions.execute(
        workflow.id, dict(parameters or {}), timeout_seconds=timeout_seconds
    )


def __getattr__(name: str) -> Any:
    """The pytest fixtures, imported on first use (pytest looks them up when it loads us)."""
    if name in _FIXTURES:
        try:
            from abi_engine import _testing_fixtures
        except ImportError as exc:
            raise ImportError(
                f"abi_engine.testing.{name} is a pytest fixture and pytest cannot be imported"
                f" ({exc}); engine_for and run_workflow work without it",
                name=__name__,
            ) from exc
        return getattr(_testing_fixtures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FIXTURES})
