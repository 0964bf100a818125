"""A test plugin registering step handlers for the ``custom`` type (function and class)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abi_engine import StepContext, WorkflowType, hookimpl, step

CALLS: list[tuple[str, str]] = []


async def greet(ctx: StepContext) -> dict[str, Any]:
    """A one-step handler."""
    CALLS.append((ctx.execution_id, "greet"))
    return {"text": f"Hello, {ctx.parameters.get('who', 'world')}!"}


class Pipeline(WorkflowType):
    """A handler made of two steps; the second uses the first one's result."""

    name = "pipeline_handler"

    @step
    async def fetch(self, ctx: StepContext) -> Any:
        CALLS.append((ctx.execution_id, "fetch"))
        return {"items": [1, 2, 3]}

    @step
    async def total(self, ctx: StepContext) -> Any:
        CALLS.append((ctx.execution_id, "total"))
        return {"total": sum(ctx.results["fetch"]["items"]) * ctx.parameters.get("factor", 1)}


@hookimpl
def abi_step_handlers(register: Callable[[str, Any], None]) -> None:
    register("greet", greet)
    register("pipeline", Pipeline)
