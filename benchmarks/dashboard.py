"""Server time of each dashboard page with many executions stored (issue #14: < 200 ms).

    python benchmarks/dashboard.py [--executions 100000] [--repeat 5] [--db PATH]

Fills a SQLite file with executions spread over the last week (every status), a workflow,
a schedule and a webhook, then asks each page in-process (httpx over ASGI: no network, so
the time is the server's) and prints the median and the worst of ``--repeat`` answers.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from abi_asgi import create_app

from abi_engine import Engine
from abi_engine.ids import new_id, utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage.records import ExecutionRecord, InsertExecution

STATUSES = [
    ExecutionStatus.COMPLETED,
    ExecutionStatus.COMPLETED,
    ExecutionStatus.COMPLETED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
    ExecutionStatus.TIMED_OUT,
]


def fill(engine: Engine, workflow_id: str, count: int) -> None:
    now = utcnow()
    rng = random.Random(14)
    batch: list[InsertExecution] = []
    for _ in range(count):
        created = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
        record = ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=workflow_id,
            workflow_type="custom",
            status=rng.choice(STATUSES),
            created_at=created,
            started_at=created,
            completed_at=created + timedelta(milliseconds=rng.randint(5, 5000)),
            duration_ms=rng.randint(5, 5000),
        )
        batch.append(InsertExecution(record=record))
        if len(batch) == 2000:
            engine.store.apply(batch)
            batch = []
    if batch:
        engine.store.apply(batch)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp()) / "dashboard-bench.db"
    engine = Engine(db)
    token = engine.tokens.create_token("usr_bench")
    async with engine:
        principal = engine.tokens.authenticate(token)
        wf = await engine.workflows.create(
            {
                "name": "Bench",
                "type": "custom",
                "configuration": {
                    "steps": [{"name": "t", "action": "transform", "expressions": {"x": "1"}}]
                },
            },
            actor=principal,
        )
        await engine.workflows.activate(wf.id)
        await engine.schedules.create(
            wf.id,
            {
                "name": "Hourly",
                "schedule_type": "interval",
                "interval_value": 1,
                "interval_unit": "hours",
            },
            actor=principal,
        )
        await engine.webhooks.create(
            {"url": "https://hooks.example.com/x", "events": ["workflow.created"]}
        )
        started = time.perf_counter()
        await asyncio.to_thread(fill, engine, wf.id, args.executions)
        print(
            f"stored {args.executions} executions in {time.perf_counter() - started:.1f} s ({db})"
        )
        sample = (await engine.executions.list(page=1, page_size=1)).items[0].execution_id
        app = create_app(engine, rate_limit=None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = await client.get("/ui/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert csrf is not None
            await client.post("/ui/login", data={"token": token, "csrf_token": csrf.group(1)})
            pages = [
                "/ui/?range=hour",
                "/ui/?range=day",
                "/ui/?range=week",
                "/ui/workflows",
                f"/ui/workflows/{wf.id}",
                "/ui/executions",
                "/ui/executions?status=failed",
                f"/ui/executions?workflow_id={wf.id}&page=2000",
                f"/ui/executions/{sample}",
                "/ui/approvals",
                "/ui/schedules",
                "/ui/webhooks",
            ]
            print(f"{'page':<60} {'median ms':>10} {'worst ms':>10}")
            for path in pages:
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                print(f"{path[:60]:<60} {statistics.median(times):>10.1f} {max(times):>10.1f}")


if __name__ == "__main__":
    asyncio.run(main())
