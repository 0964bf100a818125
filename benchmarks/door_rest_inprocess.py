"""The REST door's request path in process, for steady counts (issue #18).

``door_rest.py`` measures requests per second through real uvicorn servers,
a figure that swings 2x on a shared machine. This script calls the ASGI
application of ``abi-engine serve`` (``abi_asgi.create_app(engine,
rate_limit=None)``, the engine running in the same loop) directly, without a
server: ``--clients`` concurrent tasks send ``--requests`` requests in all,
each a full ASGI call (scope, body, bearer token, the answer's start and
body), then wait until every accepted execution has ended. Its figures are
what the adapter and the engine cost per request, without uvicorn's HTTP
parsing (the same for the bare app):

- ``--mode execute_async`` (default): ``POST .../execute_async`` of the
  door's three-step workflow, the executions run meanwhile;
- ``--mode get``: ``GET /api/v1/workflows/{id}``.

``--paused`` pauses the workflow first, so every accepted execution stays
queued (the queued-executions quota lifted): the figure is then the request
path alone (adapter, operation, the insert's commit), without running steps.

Run it under callgrind for instructions per request (the firm figure on a
loaded machine), or with ``--profile`` for cProfile's top functions::

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python benchmarks/door_rest_inprocess.py --requests 400
    callgrind_annotate /tmp/cg.out | head    # total Ir; divide by --requests

Setup (engine start, workflow, token) is included in the total: compare runs
of the same ``--requests``, or take the difference of two counts (e.g. 400
and 800 requests) over the 400 extra.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from door_rest import BODY, WORKFLOW

from abi_engine import Engine


async def _call(app: Any, method: str, path: str, token: str, body: bytes) -> int:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", b"Bearer " + token.encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await anyio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def run(
    mode: str, requests: int, clients: int, db: Path, paused: bool = False
) -> dict[str, Any]:
    from abi_asgi import create_app

    from abi_engine.limits import Limits

    engine = Engine(db, limits=Limits(max_queued_executions_per_user=None) if paused else None)
    app = create_app(engine, rate_limit=None, manage_engine=False, dashboard=False)
    token = engine.tokens.create_token("usr_bench")
    async with engine:
        wf = await engine.workflows.create(WORKFLOW)
        await engine.workflows.activate(wf.id)
        if paused:
            await engine.executions.pause_workflow(wf.id)
        if mode == "get":
            method, path, body = "GET", f"/api/v1/workflows/{wf.id}", b""
        else:
            method, path = "POST", f"/api/v1/workflows/{wf.id}/execute_async"
            body = json.dumps(BODY).encode()
        statuses: dict[int, int] = {}
        left = requests

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                status = await _call(app, method, path, token, body)
                statuses[status] = statuses.get(status, 0) + 1

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
        accepted = time.perf_counter() - start
        if mode != "get" and not paused:
            await _drain(engine, wf.id, requests)
        return {
            "statuses": statuses,
            "accepted_per_s": round(requests / accepted),
            "all_done_per_s": round(requests / (time.perf_counter() - start)),
        }


async def _drain(engine: Engine, workflow_id: str, requests: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        page = await engine.executions.list(workflow_id=workflow_id, status="completed")
        if page.pagination.total_items >= requests:
            return
        await anyio.sleep(0.05)
    raise RuntimeError("the executions did not all complete")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["execute_async", "get"], default="execute_async")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument(
        "--paused", action="store_true", help="executions stay queued: the request path alone"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "door.db"
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            profile.enable()
        result = anyio.run(run, args.mode, args.requests, args.clients, db, args.paused)
        if profile is not None:
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
