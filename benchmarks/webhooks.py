"""Webhook delivery throughput, and what one subscription costs executions (issue #5).

A receiver (a minimal ASGI app under uvicorn, answering 200) runs in its own
process on 127.0.0.1.

Prints:
- deliveries per second: N events already in the outbox when the engine
  starts, fanned out to one subscription, signed and POSTed until every
  delivery has succeeded (from engine start to the last success);
- execution throughput with the workload of benchmarks/executions.py (three
  trivial, checkpointed steps, submitted asynchronously) with no subscription
  and with one active subscription to every execution event (5 events per
  execution: workflow.executed, 3 x execution.step_completed,
  execution.completed), and the ratio, in wall-clock and in CPU time of the
  engine's process (steadier on a shared machine); plus how long the
  deliveries took to drain after the executions ended. "events only" is the
  subscribed run with the delivery worker held back: what building and
  storing the events costs on its own.

Each figure is the best of ``--repeat`` rounds (the machine is shared: noisy),
and the ratios are also given as the median over rounds of the ratio within
each round (runs made one after the other see the same machine speed).

Usage: python benchmarks/webhooks.py [--events 5000] [--count 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from executions import BenchPlugin

from abi_engine import Engine
from abi_engine.events import Event
from abi_engine.models_webhooks import DeliveryStatus
from abi_engine.runtime.settings import RuntimeSettings
from abi_engine.webhooks import WebhookSettings

EXECUTION_EVENTS = [
    "workflow.executed",
    "execution.step_completed",
    "execution.completed",
    "execution.failed",
]


# -- the receiver ---------------------------------------------------------------------------


async def receiver_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def serve_receiver(port: int) -> None:
    import uvicorn

    uvicorn.run(receiver_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_receiver() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--serve-receiver", str(port)])
    url = f"http://127.0.0.1:{port}/hook"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(url, content=b"{}", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("the receiver did not start")


# -- deliveries per second -------------------------------------------------------------------


async def deliveries_per_second(db: Path, url: str, events: int, concurrency: int) -> float:
    settings = WebhookSettings(concurrency=concurrency)
    idle = Engine(db, plugins=[BenchPlugin()], allow_private_urls=True, webhook_settings=settings)
    hook = await idle.webhooks.create({"url": url, "events": ["workflow.created"]})
    await anyio.sleep(0.01)  # events after the subscription
    batch = [Event(type="workflow.created", data={"id": f"wf_{n}", "n": n}) for n in range(events)]
    for start in range(0, events, 1000):
        idle.store.insert_events(batch[start : start + 1000])
    idle.close()
    engine = Engine(db, plugins=[BenchPlugin()], allow_private_urls=True, webhook_settings=settings)
    started = time.perf_counter()
    async with engine:
        await _until_done(engine, hook.id, events, 0.01)
        elapsed = time.perf_counter() - started
    engine.close()
    rate = events / elapsed
    print(
        f"  concurrency={concurrency}: {events} deliveries in {elapsed:.2f} s"
        f" = {rate:,.0f} deliveries/s"
    )
    return rate


async def _until_done(engine: Engine, webhook_id: str, total: int, every: float) -> None:
    while True:  # polls the database: deliveries may be made by any process
        if _all_done(engine, webhook_id, total):
            return
        await anyio.sleep(every)


def _all_done(engine: Engine, webhook_id: str, total: int) -> bool:
    store: Any = engine.store
    with store._read() as conn:  # a count for the benchmark only
        (succeeded,) = conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = ? AND status = ?",
            (webhook_id, DeliveryStatus.SUCCEEDED.value),
        ).fetchone()
    return bool(succeeded >= total)


# -- execution throughput with and without a subscription -----------------------------------


async def _no_delivery(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    task_status.started()


async def executions_per_second(
    db: Path, count: int, url: str | None, *, deliver: bool = True, drain: bool = True
) -> tuple[float, float, float]:
    """Executions per second (wall and CPU of this process) and the drain time.

    With ``url``, one subscription to every execution event points there;
    ``deliver=False`` keeps the delivery worker from starting, which isolates
    the cost of building and storing the events. ``drain=False`` does not wait
    for the deliveries after the executions (drain time 0).
    """
    settings = RuntimeSettings(workers=256, queue_size=max(count, 1000))
    engine = Engine(db, plugins=[BenchPlugin()], runtime=settings, allow_private_urls=True)
    hook_id = None
    if url is not None:
        hook_id = (await engine.webhooks.create({"url": url, "events": EXECUTION_EVENTS})).id
    if not deliver:
        engine.webhooks.run = _no_delivery  # type: ignore[method-assign]
    async with engine:
        wf = await engine.workflows.create({"name": "bench", "type": "bench_three"})
        await engine.workflows.activate(wf.id)

        async def submit(n: int) -> None:
            for _ in range(n):
                await engine.executions.execute(wf.id, {"k": 1}, wait=False)

        submitters = 64
        start, cpu = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for i in range(submitters):
                tg.start_soon(submit, count // submitters + (1 if i < count % submitters else 0))
        while True:
            stats = (await engine.workflows.get(wf.id)).stats
            if stats.runs_total >= count:
                break
            await anyio.sleep(0.005)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert stats.runs_success == count, stats
        drain = 0.0
        if hook_id is not None and deliver and drain:
            expected = count * 5
            await _until_done(engine, hook_id, expected, 0.05)
            drain = time.perf_counter() - start - elapsed
    engine.close()
    return count / elapsed, count / cpu, drain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return
    proc, url = start_receiver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"abi-engine webhook benchmark (cpus: {os.cpu_count()})")
            print("deliveries to a local receiver (uvicorn, another process):")
            for concurrency in (16, 64):
                best = max(
                    anyio.run(
                        deliveries_per_second,
                        Path(tmp) / f"d{concurrency}-{r}.db",
                        url,
                        args.events,
                        concurrency,
                    )
                    for r in range(args.repeat)
                )
                print(f"  best at concurrency={concurrency}: {best:,.0f} deliveries/s")
            print(f"execution throughput ({args.count} async executions of 3 steps):")
            runs: dict[str, list[tuple[float, float, float]]] = {
                "none": [],
                "events only": [],
                "subscribed": [],
            }
            for r in range(args.repeat):  # interleaved, so load from elsewhere hits all alike
                for name, hook_url, deliver in (
                    ("none", None, True),
                    ("events only", url, False),
                    ("subscribed", url, True),
                ):
                    db = Path(tmp) / f"{name.replace(' ', '-')}-{r}.db"
                    result = anyio.run(
                        partial(
                            executions_per_second,
                            db,
                            args.count,
                            hook_url,
                            deliver=deliver,
                            drain=r == 0,  # the drain time once: it takes a while
                        )
                    )
                    runs[name].append(result)
                    wall, cpu, drain = result
                    extra = f"; deliveries drained {drain:.2f} s later" if drain else ""
                    print(f"  run {r + 1}, {name}: {wall:,.0f}/s wall, {cpu:,.0f}/CPU-s{extra}")
            best = {
                name: (max(w for w, _, _ in v), max(c for _, c, _ in v)) for name, v in runs.items()
            }
            for name in ("events only", "subscribed"):
                print(
                    f"  best {name} vs none: wall {best[name][0]:,.0f} vs {best['none'][0]:,.0f}/s"
                    f" ({100 * (1 - best[name][0] / best['none'][0]):.1f} % fewer),"
                    f" CPU {best[name][1]:,.0f} vs {best['none'][1]:,.0f}/CPU-s"
                    f" ({100 * (1 - best[name][1] / best['none'][1]):.1f} % fewer)"
                )
            # The machine's speed drifts between runs: the runs of one round, made one
            # after the other, compare best with each other.
            for name in ("events only", "subscribed"):
                wall = statistics.median(
                    1 - run[0] / none[0] for run, none in zip(runs[name], runs["none"], strict=True)
                )
                cpu = statistics.median(
                    1 - run[1] / none[1] for run, none in zip(runs[name], runs["none"], strict=True)
                )
                print(
                    f"  median over rounds, {name} vs none: {100 * wall:.1f} % fewer (wall),"
                    f" {100 * cpu:.1f} % fewer (CPU)"
                )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
