"""A concurrency key with limit 1 and many executions queued on it (#16).

Starts ``--count`` executions (default 1,000) of a one-step workflow, all with
the same key, limit 1: they run one after the other. Prints, from the stored
times, the gap between one execution's end and the next one's start (the
target: within 10 ms), p50 / p99 / max, and the whole run's rate.

Usage: python benchmarks/concurrency.py [--count 1000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from abi_engine import Engine, WorkflowType, hookimpl, step
from abi_engine.runtime.settings import RuntimeSettings


class OneStep(WorkflowType):
    name = "bench_one"

    @step
    async def only(self, ctx):  # type: ignore[no-untyped-def]
        return {"n": 1}


class BenchPlugin:
    @hookimpl
    def abi_workflow_types(self, register):  # type: ignore[no-untyped-def]
        register(OneStep)


async def run(database: str | Path, count: int) -> None:
    settings = RuntimeSettings(workers=64, queue_size=max(count, 1000))
    async with Engine(database, plugins=[BenchPlugin()], runtime=settings, metrics=False) as e:
        body = {
            "name": "b",
            "type": "bench_one",
            "concurrency": {"key": "parameters.k", "limit": 1},
        }
        wf = await e.workflows.create(body)
        await e.workflows.activate(wf.id)
        ids = [
            (await e.executions.execute(wf.id, {"k": "one"}, wait=False)).execution_id
            for _ in range(count)
        ]
        start = time.perf_counter()
        while (await e.workflows.get(wf.id)).stats.runs_total < count:  # noqa: ASYNC110
            await anyio.sleep(0.01)
        elapsed = time.perf_counter() - start
        done = [await e.executions.get(i) for i in ids]
    spans = sorted((d.started_at, d.completed_at) for d in done if d.started_at and d.completed_at)
    gaps = [
        (started - ended).total_seconds() * 1000
        for (_, ended), (started, _) in itertools.pairwise(spans)
    ]
    overlaps = sum(1 for g in gaps if g < 0)
    gaps.sort()
    print(f"abi-engine concurrency benchmark: {count} executions on one key, limit 1")
    print(f"  all ran in {elapsed:.2f} s = {count / elapsed:,.0f} executions/s, one at a time")
    print(
        f"  end of one -> start of the next: p50 {statistics.median(gaps):.1f} ms,"
        f" p99 {gaps[int(len(gaps) * 0.99) - 1]:.1f} ms, max {gaps[-1]:.1f} ms"
        f" (overlapping: {overlaps})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: a SQLite file)")
    args = parser.parse_args()
    if args.postgres:
        anyio.run(run, args.postgres, args.count)
        return
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(run, Path(tmp) / "concurrency.db", args.count)


if __name__ == "__main__":
    main()
