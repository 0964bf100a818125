"""A started engine for a test, and one workflow run through it (no pytest needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from abi_engine.engine import Engine
from abi_engine.models import Execution
from abi_engine.runtime.settings import RuntimeSettings

__all__ = ["engine_for", "run_workflow"]


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
