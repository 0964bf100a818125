"""PostgreSQL against SQLite: async execution throughput, create and get latency.

Workload: the three-step type of ``benchmarks/executions.py`` (every step
checkpointed before the next starts). For each backend:

- async throughput: N executions submitted in-process by concurrent
  submitters, executions per second from the first submit until all ended;
- latency, p50 and p99, of one call at a time: ``executions.execute(...,
  wait=False)`` (create: the execution committed and queued),
  ``executions.get`` (get), ``workflows.create`` and ``workflows.get``.

SQLite runs on a file in a temporary directory (durability "normal"); PostgreSQL
on the server of ``--url`` (default: ``ABI_ENGINE_TEST_POSTGRES_URL``), in a
fresh schema dropped afterwards. Its figures include the round trips to the
server and the worker threads a blocking store is called from.

Usage: python benchmarks/postgres.py [--url postgresql://...] [--count 5000] [--samples 1000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from executions import BenchPlugin, throughput

from abi_engine import Engine


def _schema_url(server: str, schema: str) -> str:
    parts = urlsplit(server)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


class Schema:
    """A fresh schema on the server, dropped on exit."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"bench_{secrets.token_hex(4)}"

    def __enter__(self) -> str:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        return _schema_url(self.server, self.name)

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{self.name}" CASCADE')


async def _timed(fn: Callable[[], Awaitable[Any]], samples: int) -> tuple[float, float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.99) - 1)]


async def latencies(db: str, samples: int) -> dict[str, tuple[float, float]]:
    async with Engine(db, plugins=[BenchPlugin()], load_entry_points=False) as e:
        wf = await e.workflows.create({"name": "bench", "type": "bench_three"})
        await e.workflows.activate(wf.id)
        created: list[str] = []

        async def create_execution() -> None:
            ex = await e.executions.execute(wf.id, {"k": 1}, wait=False)
            created.append(ex.execution_id)

        async def get_execution() -> None:
            await e.executions.get(created[-1])

        async def create_workflow() -> None:
            await e.workflows.create({"name": "other", "type": "bench_three"})

        async def get_workflow() -> None:
            await e.workflows.get(wf.id)

        for fn in (create_execution, get_execution, create_workflow, get_workflow):
            await _timed(fn, 20)  # warm up: connections, prepared statements
        results = {
            "execution create": await _timed(create_execution, samples),
            "execution get": await _timed(get_execution, samples),
            "workflow create": await _timed(create_workflow, samples),
            "workflow get": await _timed(get_workflow, samples),
        }
        await e.executions.wait(created[-1], timeout=60)
    return results


def run(label: str, db: str, count: int, samples: int) -> None:
    print(f"{label}:")
    anyio.run(throughput, db, count, "normal")
    for name, (p50, p99) in anyio.run(latencies, db, samples).items():
        print(f"  {name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms ({samples} calls, one at a time)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("ABI_ENGINE_TEST_POSTGRES_URL"))
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--samples", type=int, default=1_000)
    args = parser.parse_args()
    if not args.url:
        parser.error("give --url postgresql://... (or set ABI_ENGINE_TEST_POSTGRES_URL)")
    print(f"abi-engine PostgreSQL vs SQLite (cpus: {os.cpu_count()})")
    with tempfile.TemporaryDirectory() as tmp:
        run(
            "SQLite (file, durability normal)",
            str(Path(tmp) / "bench.db"),
            args.count,
            args.samples,
        )
    with Schema(args.url) as url:
        from abi_engine.storage.postgres import redact_url

        run(f"PostgreSQL ({redact_url(args.url)})", url, args.count, args.samples)


if __name__ == "__main__":
    main()
