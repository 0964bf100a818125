"""Requests per second of ``GET /api/v1/workflows/{id}`` against a bare Starlette endpoint.

Two servers, one after the other, each uvicorn in its own process (1 worker,
``--loop asyncio``, no access log, ``httptools`` when installed, else h11):

(a) ``abi``:  ``abi_asgi.create_app(engine, rate_limit=None)`` over a SQLite
    file holding one workflow; the request carries a bearer token, so every
    request authenticates, reads the workflow and its integration statuses
    from SQLite, and renders the envelope;
(b) ``bare``: a Starlette app with one route on the same path answering
    ``JSONResponse`` of a constant dict: the same JSON the abi server answers.

Method: the load comes from another process. With ``wrk`` on PATH (Debian's
``wrk`` package; C, one thread, keep-alive connections) the client costs far
less CPU than the server, so the server is the bottleneck. Without it, the
fallback is several Python processes looping on keep-alive ``httpx.Client``s,
which can saturate the client before the server on a small machine: the
figures then understate both servers (the script says which method ran). On a
machine with 2+ CPUs the server is pinned to CPU 0 and the load generator to
the others (``taskset``), so they do not steal each other's core. Each app is
warmed up, then measured ``--rounds`` times for ``--duration`` seconds,
alternating apps (each round measures both, back to back, so a round's
ratio is little affected by other load on the machine); the medians and the
ratios abi / bare are reported. Every
response is checked to be a 200 (wrk reports non-2xx counts).

    python benchmarks/http_get.py [--duration 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

PATH = "/api/v1/workflows/{workflow_id}"


# -- the servers (run in child processes) ------------------------------------------------


def _http_impl() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def _serve(kind: str, port: int, db: str, body_file: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    app: Any
    if kind == "abi":
        from abi_asgi import create_app

        from abi_engine import Engine

        app = create_app(Engine(db), rate_limit=None)
    else:
        constant = json.loads(Path(body_file).read_text())

        async def endpoint(request: Request) -> JSONResponse:
            return JSONResponse(constant)

        app = Starlette(routes=[Route(PATH, endpoint)])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="asyncio",
        http=_http_impl(),  # type: ignore[arg-type]
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


# -- setup ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _prepare(db: Path) -> tuple[str, str]:
    """Create the database with one workflow; return (token, workflow id)."""
    import anyio

    from abi_engine import Engine

    engine = Engine(db)
    try:
        token = engine.tokens.create_token("usr_bench")
        body = {
            "name": "Customer Feedback Analysis",
            "description": "Analyzes customer feedback and generates insights",
            "type": "custom",
            "configuration": {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
            "integrations": [
                {"id": "int_zendesk", "required": True},
                {"id": "int_salesforce", "required": False},
            ],
            "metadata": {"department": "customer_success", "priority": "medium", "version": "1.0"},
        }
        workflow = anyio.run(engine.workflows.create, body)
        return token, workflow.id
    finally:
        engine.close()


class Server:
    """One uvicorn child process, pinned to CPU 0 when there are CPUs to spare."""

    def __init__(self, kind: str, db: Path, body_file: Path, pin: bool) -> None:
        self.port = _free_port()
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import http_get; "
            "http_get._serve(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])"
        )
        argv = [
            sys.executable,
            "-c",
            code,
            str(Path(__file__).parent),
            kind,
            str(self.port),
            str(db),
            str(body_file),
        ]
        if pin:
            argv = ["taskset", "-c", "0", *argv]
        self.process = subprocess.Popen(argv)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- load generators --------------------------------------------------------------------------


def _wrk(url: str, token: str, duration: float, connections: int, pin: bool) -> float:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]
    if pin:
        argv = ["taskset", "-c", f"1-{(os.cpu_count() or 2) - 1}", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{bad.group(1)} responses were not 200:\n{out}")
    if "Socket errors" in out:
        raise RuntimeError(f"wrk saw socket errors:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(found.group(1))


def _httpx_worker(url: str, token: str, until: float, counts: Any, index: int) -> None:
    done = 0
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client:
        while time.monotonic() < until:
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}: {response.text[:200]}")
            done += 1
    counts[index] = done


def _httpx(url: str, token: str, duration: float, processes: int, pin: bool) -> float:
    ctx = multiprocessing.get_context("spawn")
    counts = ctx.Array("q", processes)
    start = time.monotonic() + 1.0  # let every process import first
    until = start + duration
    workers = [
        ctx.Process(target=_httpx_worker, args=(url, token, until, counts, i))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
        if pin and hasattr(os, "sched_setaffinity") and worker.pid is not None:
            os.sched_setaffinity(worker.pid, set(range(1, os.cpu_count() or 2)))
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError("a load process failed")
    return sum(counts) / duration


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per app")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--processes", type=int, default=4, help="httpx load processes")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    args = parser.parse_args(argv)

    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    method = (
        f"wrk, 1 thread, {args.connections} keep-alive connections"
        if use_wrk
        else f"{args.processes} Python processes of keep-alive httpx.Client (may be client-bound)"
    )

    def load(url: str, token: str, duration: float) -> float:
        if use_wrk:
            return _wrk(url, token, duration, args.connections, pin)
        return _httpx(url, token, duration, args.processes, pin)

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        token, workflow_id = _prepare(db)
        path = PATH.format(workflow_id=workflow_id)
        body_file = Path(tmp) / "body.json"
        servers = {kind: Server(kind, db, body_file, pin) for kind in ("abi",)}
        try:
            answer = httpx.get(
                servers["abi"].url + path, headers={"Authorization": f"Bearer {token}"}
            )
            answer.raise_for_status()
            body_file.write_text(answer.text)
            servers["bare"] = Server("bare", db, body_file, pin)
            bare_answer = httpx.get(servers["bare"].url + path)
            assert bare_answer.json() == answer.json(), "the two servers must answer the same JSON"

            print(
                f"GET {PATH}: {len(answer.content)}-byte JSON answer; uvicorn 1 worker, "
                f"loop asyncio, http {_http_impl()}, no access log"
            )
            print(
                f"load: {method}; server pinned to CPU 0: {pin}; {args.rounds} x {args.duration:g}s"
            )
            results: dict[str, list[float]] = {"abi": [], "bare": []}
            for server in servers.values():
                load(server.url + path, token, 2.0)  # warm-up
            for round_ in range(1, args.rounds + 1):
                for kind, server in servers.items():
                    results[kind].append(load(server.url + path, token, args.duration))
                abi, bare = results["abi"][-1], results["bare"][-1]
                print(
                    f"  round {round_}: abi {abi:7.0f} req/s, bare {bare:7.0f} req/s, "
                    f"ratio {abi / bare:.2f}"
                )
        finally:
            for server in servers.values():
                server.stop()

    abi = statistics.median(results["abi"])
    bare = statistics.median(results["bare"])
    ratios = [a / b for a, b in zip(results["abi"], results["bare"], strict=True)]
    print(
        f"median: abi {abi:.0f} req/s, bare Starlette {bare:.0f} req/s, "
        f"ratio of medians {abi / bare:.2f}, median of per-round ratios "
        f"{statistics.median(ratios):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
