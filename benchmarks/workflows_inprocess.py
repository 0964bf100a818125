"""Workflow management in-process: create latency and filtered list latency (issue #2).

Workload: a fresh SQLite file (WAL, durability "normal"); N workflows of the
bundled ``custom`` type created one after the other through
``engine.workflows.create`` (validation, event, outbox write and commit each),
spread over 2 statuses, 4 types and 10 departments. Then page 1 (page_size 10,
newest first) of a list filtered by status, by type and by department, each
called repeatedly through ``engine.workflows.list``.

Prints per-create median and p99 (ms), and per filter the median and p99 of a
list call (ms) with the total matching. Target: list medians under 5 ms.

Usage: python benchmarks/workflows_inprocess.py [--count 10000] [--calls 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from abi_engine import Engine, WorkflowType, hookimpl

TYPES = ["custom", "bench_a", "bench_b", "bench_c"]
DEPARTMENTS = [f"dept_{i}" for i in range(10)]
STEPS = {"steps": [{"name": "total", "action": "transform", "expressions": {"x": "1 + 1"}}]}


def _bench_type(type_name: str) -> type[WorkflowType]:
    return type(type_name, (WorkflowType,), {"name": type_name})


class BenchTypes:
    """Three extra types with no configuration schema, so filters by type have choices."""

    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        for name in TYPES[1:]:
            register(_bench_type(name))


def _ms(seconds: float) -> float:
    return seconds * 1000


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _timed(fn: Callable[[], Awaitable[Any]], calls: int) -> tuple[list[float], Any]:
    times = []
    result = None
    for _ in range(calls):
        start = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - start)
    return times, result


async def run(count: int, calls: int, db: Path) -> None:
    engine = Engine(db, plugins=[BenchTypes()])
    try:
        creates = []
        for i in range(count):
            wtype = TYPES[i % len(TYPES)]
            body = {
                "name": f"workflow {i:05d}",
                "type": wtype,
                "configuration": STEPS if wtype == "custom" else {"n": i},
                "integrations": [{"id": "int_crm", "required": i % 3 == 0}],
                "metadata": {"department": DEPARTMENTS[i % len(DEPARTMENTS)], "n": i},
            }
            start = time.perf_counter()
            wf = await engine.workflows.create(body)
            creates.append(time.perf_counter() - start)
            if i % 2:
                await engine.workflows.activate(wf.id)
        print(f"workflows: {count}")
        print(
            f"create: median {_ms(statistics.median(creates)):.3f} ms,"
            f" p99 {_ms(_p99(creates)):.3f} ms,"
            f" total {sum(creates):.1f} s ({count / sum(creates):.0f}/s)"
        )
        filters: dict[str, dict[str, str]] = {
            "status=active": {"status": "active"},
            "type=bench_b": {"type": "bench_b"},
            "department=dept_7": {"department": "dept_7"},
            "(no filter)": {},
        }
        for label, kwargs in filters.items():
            await engine.workflows.list(**kwargs)  # warm the reader connection and caches
            times, page = await _timed(partial(engine.workflows.list, **kwargs), calls)
            median = _ms(statistics.median(times))
            print(
                f"list page 1 {label}: median {median:.3f} ms, p99 {_ms(_p99(times)):.3f} ms"
                f" over {calls} calls ({page.pagination.total_items} matching,"
                f" {len(page.items)} returned){'' if median < 5 else '  <-- above the 5 ms target'}"
            )
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="workflows to create")
    parser.add_argument("--calls", type=int, default=200, help="list calls per filter")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        anyio.run(run, args.count, args.calls, db)
        size = sum(p.stat().st_size for p in db.parent.glob("bench.db*"))
        print(f"database files: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
