"""A tiny outside plugin: the ``hello`` workflow type.

It uses only abi-engine's public API, as any third-party plugin must.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from abi_engine import StepContext, WorkflowType, hookimpl, step


class HelloWorkflow(WorkflowType):
    """Greets someone."""

    name = "hello"
    description = "Says hello"

    @attrs.define(kw_only=True)
    class Configuration:
        greeting: str = "Hello"
        punctuation: str = "!"

    @attrs.define(kw_only=True)
    class Parameters:
        who: str

    @step
    async def greet(self, ctx: StepContext) -> dict[str, Any]:
        return {"text": f"{ctx.config.greeting}, {ctx.params.who}{ctx.config.punctuation}"}


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(HelloWorkflow)
