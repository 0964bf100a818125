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


def _log(ctx: StepContext, what: str | None = None) -> None:
    with open(os.environ["CRASH_LOG"], "a", encoding="utf-8") as fh:
        fh.write(f"{ctx.execution_id} {what or ctx.step_name}\n")
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


class CrashProgress(WorkflowType):
    """One step working through ``parameters.items`` units: each is done (a sleep),
    logged as ``<execution id> item:<n>``, then kept with ``save_progress``."""

    name = "crash_progress"

    @step
    async def items(self, ctx: StepContext) -> Any:
        done: list[int] = list((ctx.progress or {}).get("done", []))
        for item in range(int(ctx.parameters.get("items", 6))):
            if item in done:
                continue
            await anyio.sleep(STEP_SECONDS / 2)
            _log(ctx, f"item:{item}")
            done.append(item)
            await ctx.save_progress({"done": done})
        return {"done": done}


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(CrashSteps)
    register(CrashProgress)
