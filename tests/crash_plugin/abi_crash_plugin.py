"""A workflow type for the crash tests: three slow steps that log when they start.

Loaded into ``abi-engine serve`` subprocesses through ``ABI_ENGINE_PLUGINS``;
each step appends ``<execution id> <step name>`` to the file named by the
``CRASH_LOG`` environment variable, then sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import anyio

from abi_engine import StepContext, WorkflowType, hookimpl, step

STEP_SECONDS = float(os.environ.get("CRASH_STEP_SECONDS", "0.4"))


def _log(ctx: StepContext) -> None:
    with open(os.environ["CRASH_LOG"], "a", encoding="utf-8") as fh:
        fh.write(f"{ctx.execution_id} {ctx.step_name}\n")
        fh.flush()
        os.fsync(fh.fileno())


class CrashSteps(WorkflowType):
    name = "crash_steps"

    @step
    async def one(self, ctx: StepContext) -> Any:
        _log(ctx)
        await anyio.sleep(STEP_SECONDS)
        return {"one": True}

    @step
    async def two(self, ctx: StepContext) -> Any:
        _log(ctx)
        await anyio.sleep(STEP_SECONDS)
        return {"two": ctx.results["one"]["one"]}

    @step
    async def three(self, ctx: StepContext) -> Any:
        _log(ctx)
        await anyio.sleep(STEP_SECONDS)
        return {"done": True, "parameters": dict(ctx.parameters)}


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(CrashSteps)
