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

Or without pytest: ``async with engine_for(MyPlugin()) as engine: ...``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from abi_engine.engine import Engine
from abi_engine.executor import RuntimeSettings
from abi_engine.models import Execution

__all__ = ["abi_engine", "abi_engine_options", "abi_plugins", "engine_for", "run_workflow"]


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


@pytest.fixture
def abi_plugins() -> list[object]:
    """Override to list the plugins the ``abi_engine`` fixture registers."""
    return []


@pytest.fixture
def abi_engine_options() -> dict[str, Any]:
    """Override to pass options to the ``abi_engine`` fixture's :class:`Engine`
    (e.g. ``{"allow_private_urls": True}`` for services on 127.0.0.1)."""
    return {}


@pytest.fixture
async def abi_engine(
    abi_plugins: list[object], abi_engine_options: dict[str, Any]
) -> AsyncIterator[Engine]:
    """A started in-memory engine with the entry-point plugins and ``abi_plugins``."""
    async with engine_for(*abi_plugins, **abi_engine_options) as engine:
        yield engine
