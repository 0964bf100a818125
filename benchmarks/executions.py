"""Execution throughput and latency of the durable runtime (issue #3).

Workload: a workflow type of three trivial steps; every step is checkpointed
in SQLite before the next starts.

Prints:
- async throughput: N executions submitted in-process (by concurrent
  submitters), executions per second from the first submit until all ended,
  for durability "normal" (WAL, synchronous=NORMAL) and "full";
- sequential in-process sync execution latency, p50 and p99;
- sync execution over REST (uvicorn + httpx), p50 and p99 (``--rest``);
- peak RSS of the process.

With ``--concurrency-keys``: async throughput without limits, then with a
concurrency key of limit 1 and a distinct key per execution (#16), and their
ratio (the target: within 15 %).

Usage: python benchmarks/executions.py [--count 10000] [--rest] [--no-metrics]
       [--concurrency-keys]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

from abi_engine import Engine, WorkflowType, hookimpl, step
from abi_engine.runtime.settings import RuntimeSettings


class ThreeSteps(WorkflowType):
    name = "bench_three"

    @step
    async def first(self, ctx):  # type: ignore[no-untyped-def]
        return {"n": 1}

    @step
    async def second(self, ctx):  # type: ignore[no-untyped-def]
        return {"n": ctx.results["first"]["n"] + 1}

    @step
    async def third(self, ctx):  # type: ignore[no-untyped-def]
        return {"n": ctx.results["second"]["n"] + 1}


class BenchPlugin:
    @hookimpl
    def abi_workflow_types(self, register):  # type: ignore[no-untyped-def]
        register(ThreeSteps)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: ``--no-metrics``: engines built with ``metrics=False`` (the cost of metrics, #15).
METRICS = True


async def throughput(
    db: Path, count: int, durability: str, submitters: int = 64, keyed: bool = False
) -> float:
    settings = RuntimeSettings(workers=256, queue_size=max(count, 1000))
    async with Engine(
        db,
        plugins=[BenchPlugin()],
        durability=durability,  # type: ignore[arg-type]
        runtime=settings,
        metrics=METRICS,
    ) as e:
        body: dict[str, object] = {"name": "bench", "type": "bench_three"}
        if keyed:  # one key per execution: the limit never binds, its cost shows
            body["concurrency"] = {"key": "parameters.k", "limit": 1}
        wf = await e.workflows.create(body)
        await e.workflows.activate(wf.id)
        ids: list[str] = []
        keys = itertools.count()

        async def submit(n: int) -> None:
            for _ in range(n):
                ex = await e.executions.execute(wf.id, {"k": next(keys)}, wait=False)
                ids.append(ex.execution_id)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(submitters):
                tg.start_soon(submit, count // submitters + (1 if i < count % submitters else 0))
        submitted = time.perf_counter()
        while True:
            stats = (await e.workflows.get(wf.id)).stats
            if stats.runs_total >= count:
                break
            await anyio.sleep(0.005)
        elapsed = time.perf_counter() - start
        assert stats.runs_success == count, stats
        print(
            f"  durability={durability}{' keyed' if keyed else ''}: {count} executions in"
            f" {elapsed:.2f} s ="
            f" {count / elapsed:,.0f} executions/s (submit {count / (submitted - start):,.0f}/s;"
            f" {e.runtime.committer.batches} commits for {e.runtime.committer.ops} writes)"
        )
        return count / elapsed


async def sync_latency(db: Path, count: int) -> tuple[float, float]:
    async with Engine(db, plugins=[BenchPlugin()], metrics=METRICS) as e:
        wf = await e.workflows.create({"name": "bench", "type": "bench_three"})
        await e.workflows.activate(wf.id)
        for _ in range(50):
            await e.executions.execute(wf.id, {"k": 1})
        samples = []
        for _ in range(count):
            t = time.perf_counter()
            ex = await e.executions.execute(wf.id, {"k": 1})
            samples.append((time.perf_counter() - t) * 1000)
            assert ex.status.value == "completed"
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(f"  in-process sync execute: p50 {p50:.3f} ms, p99 {p99:.3f} ms ({count} runs)")
    return p50, p99


def rest_latency(db: Path, count: int) -> None:
    import socket
    import subprocess

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ABI_BENCH_DB=str(db), ABI_BENCH_PORT=str(port))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve-rest"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        token, wf_id = server.stdout.readline().split()  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 30
        while True:  # wait until uvicorn listens
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with httpx.Client(base_url=base, headers=headers) as client:
            for _ in range(50):
                client.post(f"/workflows/{wf_id}/execute", json={"parameters": {}})
            samples = []
            for _ in range(count):
                t = time.perf_counter()
                r = client.post(f"/workflows/{wf_id}/execute", json={"parameters": {"k": 1}})
                samples.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
        samples.sort()
        print(
            f"  REST sync execute (uvicorn + httpx): p50 {statistics.median(samples):.3f} ms,"
            f" p99 {samples[int(len(samples) * 0.99) - 1]:.3f} ms ({count} runs)"
        )
    finally:
        server.terminate()
        server.wait(10)


def serve_rest() -> None:
    import uvicorn
    from abi_asgi import create_app

    engine = Engine(os.environ["ABI_BENCH_DB"], plugins=[BenchPlugin()])
    token = engine.tokens.create_token("usr_bench")

    async def prepare() -> str:
        wf = await engine.workflows.create({"name": "bench", "type": "bench_three"})
        await engine.workflows.activate(wf.id)
        return wf.id

    wf_id = anyio.run(prepare)
    print(token, wf_id, flush=True)
    app = create_app(engine, rate_limit=None)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["ABI_BENCH_PORT"]),
        log_level="warning",
        access_log=False,
    )


def keys_cost(count: int) -> None:
    """Throughput without limits and with a distinct concurrency key per execution."""
    with tempfile.TemporaryDirectory() as tmp:
        print(f"abi-engine concurrency-key cost (cpus: {os.cpu_count()})")
        plain = anyio.run(throughput, Path(tmp) / "plain.db", count, "normal")
        keyed = anyio.run(throughput, Path(tmp) / "keyed.db", count, "normal", 64, True)
        print(f"  keyed / plain: {keyed / plain:.1%} of the throughput without limits")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--sync-count", type=int, default=2_000)
    parser.add_argument("--rest", action="store_true")
    parser.add_argument("--serve-rest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-metrics", action="store_true", help="engines without metrics")
    parser.add_argument(
        "--concurrency-keys",
        action="store_true",
        help="throughput without limits, then with a distinct concurrency key per execution",
    )
    args = parser.parse_args()
    global METRICS
    METRICS = not args.no_metrics
    if args.serve_rest:
        serve_rest()
        return
    if args.concurrency_keys:
        keys_cost(args.count)
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(f"abi-engine execution benchmark (cpus: {os.cpu_count()})")
        anyio.run(throughput, Path(tmp) / "normal.db", args.count, "normal")
        print(f"  peak RSS after the normal run: {peak_rss_mb():.0f} MB")
        anyio.run(throughput, Path(tmp) / "full.db", args.count, "full")
        anyio.run(sync_latency, Path(tmp) / "sync.db", args.sync_count)
        if args.rest:
            rest_latency(Path(tmp) / "rest.db", 1000)
        print(f"  peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
