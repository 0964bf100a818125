"""What the door benchmarks (``benchmarks/door_*.py``, issue #18) share.

The workload of issue #18: a workflow type of three steps, ``a = i + 1``,
``b = a * 2``, ``{"value": b}``, every step checkpointed before the next
starts; helpers printing the load average and percentiles.
"""

from __future__ import annotations

import os
import resource
import statistics
from typing import Any

from abi_engine import WorkflowType, hookimpl, step


class DoorThree(WorkflowType):
    name = "door_three"

    @step
    async def add(self, ctx):  # type: ignore[no-untyped-def]
        return {"a": ctx.parameters["i"] + 1}

    @step
    async def double(self, ctx):  # type: ignore[no-untyped-def]
        return {"b": ctx.results["add"]["a"] * 2}

    @step
    async def answer(self, ctx):  # type: ignore[no-untyped-def]
        return {"value": ctx.results["double"]["b"]}


class DoorPlugin:
    @hookimpl
    def abi_workflow_types(self, register):  # type: ignore[no-untyped-def]
        register(DoorThree)


def expected(i: int) -> int:
    return (i + 1) * 2


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def committer_counts(engine: Any) -> tuple[int, int]:
    """(commits, writes) of the engine's group committer so far, (0, 0) if not found."""
    committer = getattr(getattr(engine, "runtime", None), "committer", None)
    if committer is None:
        return 0, 0
    return committer.batches, committer.ops
