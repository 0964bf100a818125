"""Memory (issue #18): peak RSS with 100,000 asynchronous executions queued.

An engine on a SQLite file (engine defaults: 128 workers, a queue of
100,000) runs a three-step type whose first step waits on a gate: the first
128 executions hold the workers, the other ``--count`` - 128 stay queued. They
are submitted in-process by 64 concurrent submitters
(``executions.execute(..., wait=False)``); the resident set size is printed
before, once all are queued, and the process's peak; then the gate opens and
(with ``--drain``) every execution runs to its end.

    python benchmarks/door_memory.py [--count 100000] [--drain] [--queued-in-memory N]

``--queued-in-memory 1000000`` keeps every queued execution's prepared run in
memory (the engine before ``RuntimeSettings.queued_in_memory``), for comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from abi_engine import Engine, RuntimeSettings, WorkflowType, hookimpl, step

GATE: anyio.Event | None = None


class GatedThree(WorkflowType):
    name = "door_gated"

    @step
    async def add(self, ctx):  # type: ignore[no-untyped-def]
        assert GATE is not None
        await GATE.wait()
        return {"a": ctx.parameters["i"] + 1}

    @step
    async def double(self, ctx):  # type: ignore[no-untyped-def]
        return {"b": ctx.results["add"]["a"] * 2}

    @step
    async def answer(self, ctx):  # type: ignore[no-untyped-def]
        return {"value": ctx.results["double"]["b"]}


class GatedPlugin:
    @hookimpl
    def abi_workflow_types(self, register):  # type: ignore[no-untyped-def]
        register(GatedThree)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(db: Path, count: int, drain: bool, in_memory: int | None) -> None:
    global GATE
    GATE = anyio.Event()
    settings = (
        RuntimeSettings() if in_memory is None else RuntimeSettings(queued_in_memory=in_memory)
    )
    async with Engine(db, plugins=[GatedPlugin()], runtime=settings) as engine:
        wf = await engine.workflows.create({"name": "memory", "type": "door_gated"})
        await engine.workflows.activate(wf.id)
        print(f"  engine started: RSS {rss_mb():.0f} MB", flush=True)
        started = time.perf_counter()

        async def submit(numbers: range) -> None:
            for i in numbers:
                await engine.executions.execute(wf.id, {"i": i}, wait=False)

        async with anyio.create_task_group() as tg:
            for s in range(64):
                tg.start_soon(submit, range(s, count, 64))
        elapsed = time.perf_counter() - started
        print(
            f"  {count:,} submitted in {elapsed:.1f} s ({count / elapsed:,.0f}/s), queued"
            f" {engine.runtime.settings.queue_size - engine.runtime.room():,}: RSS {rss_mb():.0f} MB,"
            f" peak {peak_mb():.0f} MB; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        GATE.set()
        if drain:
            while True:
                if (await engine.workflows.get(wf.id)).stats.runs_total >= count:
                    break
                await anyio.sleep(0.1)
            print(
                f"  all ended after {time.perf_counter() - started:.1f} s: RSS {rss_mb():.0f} MB,"
                f" peak {peak_mb():.0f} MB",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument(
        "--queued-in-memory",
        type=int,
        default=None,
        help="RuntimeSettings.queued_in_memory (default: the engine's, 4,096)",
    )
    args = parser.parse_args()
    print(f"door_memory: RSS at start {rss_mb():.0f} MB; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp) / "memory.db", args.count, args.drain, args.queued_in_memory)
    print(f"peak RSS of the process: {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
