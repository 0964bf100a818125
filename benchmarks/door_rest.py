"""The REST door (issue #18): ``abi-engine serve`` against bare Starlette, same uvicorn.

Two servers, each a uvicorn process pinned to CPU 0 (``taskset``), the load
generator (``wrk``, one thread, ``--connections`` keep-alive connections,
default 16) pinned to CPU 1, so the client never takes the servers' core:

- ``abi``: ``abi-engine serve --rate-limit 0 --log-level warning`` on a SQLite
  file (durability ``--durability``), the real command a user runs;
- ``bare``: a Starlette app under ``uvicorn.run`` with the same settings
  (uvicorn's defaults, ``log_level="warning"``), whose routes answer what abi
  answers: ``POST .../execute_async`` parses the JSON body and answers 202 with
  a constant execution JSON; ``GET /api/v1/workflows/{id}`` a constant
  workflow JSON.

Workload: the issue's three steps as declarative ``custom`` steps
(``transform``: ``a = i + 1``, ``b = a * 2``, ``{"value": b}``), every request
carrying ``{"parameters": {"i": 1}}`` and a bearer token. abi's executions run
in the same server process, so its figure includes running them. Rounds
alternate abi and bare, per endpoint; medians, per-round ratios and the load
average print at the end. Non-2xx answers (e.g. 409 once one user has 1,000
executions queued) are counted and printed, never hidden.

Without ``wrk`` on PATH (Debian: ``apt-get install wrk``) the load comes from
``benchmarks/_rawload.py`` (keep-alive requests on raw asyncio sockets, built
once as bytes), pinned to CPU 1 the same way: some 10,000 requests per second
on one core, more than either server answers (httpx processes were not).

    python benchmarks/door_rest.py [--duration 10] [--rounds 3] [--connections 16]
"""

from __future__ import annotations

import argparse
import json
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

import httpx

WORKFLOW = {
    "name": "door",
    "type": "custom",
    "configuration": {
        "steps": [
            {"name": "add", "action": "transform", "expressions": {"a": "parameters['i'] + 1"}},
            {
                "name": "double",
                "action": "transform",
                "expressions": {"b": "results['add']['a'] * 2"},
            },
            {
                "name": "answer",
                "action": "transform",
                "expressions": {"value": "results['double']['b']"},
            },
        ]
    },
}
BODY = {"parameters": {"i": 1}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pinned(argv: list[str], cpu: str, pin: bool) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if pin else argv


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.05)


def _prepare(db: Path, durability: str) -> tuple[str, str]:
    import anyio

    from abi_engine import Engine

    engine = Engine(db, durability=durability)  # type: ignore[arg-type]
    try:
        token = engine.tokens.create_token("usr_bench")

        async def create() -> str:
            wf = await engine.workflows.create(WORKFLOW)
            await engine.workflows.activate(wf.id)
            return wf.id

        return token, anyio.run(create)
    finally:
        engine.close()


def serve_bare(port: int, answers_file: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    answers = json.loads(Path(answers_file).read_text())

    async def execute_async(request: Request) -> JSONResponse:
        body = await request.json()
        if not isinstance(body, dict):
            return JSONResponse({"error": "body"}, status_code=400)
        return JSONResponse(answers["execute_async"], status_code=202)

    async def get_workflow(request: Request) -> JSONResponse:
        return JSONResponse(answers["get"])

    app = Starlette(
        routes=[
            Route("/api/v1/workflows/{wf}/execute_async", execute_async, methods=["POST"]),
            Route("/api/v1/workflows/{wf}", get_workflow),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


class Server:
    def __init__(self, argv: list[str], port: int, pin: bool) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(_pinned(argv, "0", pin))
        _wait_listening(port, self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def rawload(
    url: str, token: str, seconds: float, connections: int, pin: bool, post: str | None
) -> tuple[float, int]:
    """Like :func:`wrk`, with ``benchmarks/_rawload.py`` (asyncio raw sockets) pinned to CPU 1."""
    argv = [sys.executable, str(Path(__file__).parent / "_rawload.py"), url, str(seconds)]
    argv += [str(connections), "--token", token]
    if post is not None:
        argv += ["--body", post]
    out = subprocess.run(_pinned(argv, "1", pin), capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["rate"]), int(result["bad"])


def wrk(
    url: str, token: str, seconds: float, connections: int, pin: bool, post: str | None
) -> tuple[float, int]:
    """Requests per second and the count of non-2xx answers."""
    if not shutil.which("wrk"):
        return rawload(url, token, seconds, connections, pin, post)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
        if post is not None:
            script.write('wrk.method = "POST"\n')
            script.write('wrk.headers["Content-Type"] = "application/json"\n')
            script.write(f"wrk.body = {json.dumps(post)}\n")
    try:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        argv += ["-s", script.name, url]
        out = subprocess.run(_pinned(argv, "1", pin), capture_output=True, text=True).stdout
    finally:
        os.unlink(script.name)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    if "Socket errors" in out:
        print(f"    wrk socket errors: {out.strip().splitlines()[-3]}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(found.group(1)), int(bad.group(1)) if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--durability", choices=["normal", "full"], default="normal")
    parser.add_argument("--only", choices=["execute_async", "GET"], help="one endpoint only")
    parser.add_argument("--serve-bare", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return 0
    if not shutil.which("wrk"):
        print("wrk is not on PATH (apt-get install wrk): using benchmarks/_rawload.py instead")
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if not pin:
        print("WARNING: no second CPU (or no taskset): client and servers share the CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "rest.db"
        token, wf_id = _prepare(db, args.durability)
        execute = f"/api/v1/workflows/{wf_id}/execute_async"
        get = f"/api/v1/workflows/{wf_id}"
        port = _free_port()
        abi_argv = [sys.executable, "-m", "abi_engine", "serve", "--db", str(db)]
        abi_argv += ["--port", str(port), "--rate-limit", "0", "--log-level", "warning"]
        abi_argv += ["--durability", args.durability]
        servers = {"abi": Server(abi_argv, port, pin)}
        headers = {"Authorization": f"Bearer {token}"}
        accepted = httpx.post(servers["abi"].url + execute, json=BODY, headers=headers)
        assert accepted.status_code == 202, accepted.text
        shown = httpx.get(servers["abi"].url + get, headers=headers)
        assert shown.status_code == 200, shown.text
        answers = Path(tmp) / "answers.json"
        answers.write_text(json.dumps({"execute_async": accepted.json(), "get": shown.json()}))
        port = _free_port()
        bare_argv = [sys.executable, __file__, "--serve-bare", str(port), str(answers)]
        servers["bare"] = Server(bare_argv, port, pin)
        client = "wrk" if shutil.which("wrk") else "_rawload.py"
        try:
            print(
                f"door_rest: uvicorn defaults (loop/http auto, log warning), {args.connections}"
                f" keep-alive connections, {client} pinned to CPU 1, servers to CPU 0: {pin};"
                f" {args.rounds} x {args.duration:g} s; durability {args.durability};"
                f" load average {os.getloadavg()[0]:.2f}"
            )
            results: dict[tuple[str, str], list[float]] = {}
            loads: list[float] = []
            endpoints = [("execute_async", execute, BODY), ("GET", get, None)]
            for name, path, post in [e for e in endpoints if args.only in (None, e[0])]:
                body = None if post is None else json.dumps(post)
                for server in servers.values():  # warm up
                    wrk(server.url + path, token, 2, args.connections, pin, body)
                for r in range(args.rounds):
                    for kind, server in servers.items():
                        rate, bad = wrk(
                            server.url + path, token, args.duration, args.connections, pin, body
                        )
                        loads.append(os.getloadavg()[0])
                        results.setdefault((name, kind), []).append(rate)
                        extra = f" ({bad} non-2xx)" if bad else ""
                        print(
                            f"  {name} round {r + 1} {kind}: {rate:,.0f} req/s{extra};"
                            f" load {loads[-1]:.2f}",
                            flush=True,
                        )
            report(results, args.rounds)
            print(f"load average during the run: median {statistics.median(loads):.2f}")
        finally:
            for server in servers.values():
                server.stop()
    return 0


def report(results: dict[tuple[str, str], list[float]], rounds: int) -> None:
    for name in ("execute_async", "GET"):
        if (name, "abi") not in results:
            continue
        abi, bare = results[(name, "abi")], results[(name, "bare")]
        ratios = [a / b for a, b in zip(abi, bare, strict=True)]
        print(
            f"{name}: abi {statistics.median(abi):,.0f} req/s, bare"
            f" {statistics.median(bare):,.0f} req/s, ratio of medians"
            f" {statistics.median(abi) / statistics.median(bare):.2f} (per round"
            f" {', '.join(f'{r:.2f}' for r in ratios)})"
        )


if __name__ == "__main__":
    sys.exit(main())
