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

After each abi round of ``execute_async`` the script waits until no
execution is queued or running (printing how long the backlog took), so that
abi's executions never run during the next server's round on the same core.
Each round also prints the server's CPU time per request (user + system of
the server's processes, from ``/proc``): on a loaded machine requests per
second swing with what else runs, CPU per request much less, and bare's CPU
per request over abi's is the ratio the two would reach both CPU-bound.

``--loop`` and ``--http`` set both servers' event loop and HTTP parser
(default ``auto``: uvloop and httptools when installed, as uvicorn and
``abi-engine serve`` pick them; ``--loop asyncio --http h11`` compares without
them). Options beyond the figures' own: ``--compare CHECKOUT`` serves abi from
another checkout too (``--compare /work/main``: before/after in one run);
``--processes 1,2`` serves one abi server per count, each ``abi-engine serve
--processes N`` (with ``--no-pin`` so that N processes can use more than CPU
0; the client stays on CPU 1); ``--postgres URL`` runs abi on PostgreSQL, a
fresh schema per abi server, instead of SQLite files.

Without ``wrk`` on PATH (Debian: ``apt-get install wrk``) the load comes from
``benchmarks/_rawload.py`` (keep-alive requests on raw asyncio sockets, built
once as bytes), pinned to CPU 1 the same way: some 10,000 requests per second
on one core, more than either server answers (httpx processes were not).

    python benchmarks/door_rest.py [--duration 10] [--rounds 3] [--connections 16]
        [--only execute_async|GET] [--compare CHECKOUT] [--processes 1,2 --no-pin]
        [--postgres URL] [--durability normal|full] [--loop L] [--http H]
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


def _prepare(db: Path | str, durability: str) -> tuple[str, str]:
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


def serve_bare(port: int, answers_file: str, loop: str = "auto", http: str = "auto") -> None:
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
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        loop=loop,  # type: ignore[arg-type]
        http=http,  # type: ignore[arg-type]
    )


class Server:
    def __init__(
        self,
        argv: list[str],
        port: int,
        pin: bool,
        env: dict[str, str] | None = None,
        paths: dict[str, str] | None = None,
        token: str = "",
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        #: endpoint name -> path on this server, and the token its requests carry
        self.paths = paths or {}
        self.token = token
        self.process = subprocess.Popen(_pinned(argv, "0", pin), env=env)
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


def _abi_server(
    tmp: Path,
    name: str,
    args: argparse.Namespace,
    pin: bool,
    source: str | None,
    processes: int = 1,
) -> Server:
    """``abi-engine serve`` on its own database; ``source``: another checkout's code."""
    env = dict(os.environ)
    if source is not None:
        root = Path(source)
        parts = [root / "src", root / "contrib" / "asgi_adapter", root / "plugins"]
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in parts)
    db: Path | str = tmp / f"{name}.db"
    if args.postgres:
        db = _schema(args.postgres, f"door_rest_{name}_{os.getpid()}")
    prepare = [sys.executable, __file__, "--prepare", str(db), args.durability]
    token, wf_id = subprocess.run(
        prepare, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    port = _free_port()
    argv = [sys.executable, "-m", "abi_engine", "serve", "--db", str(db), "--port", str(port)]
    argv += ["--rate-limit", "0", "--log-level", "warning", "--durability", args.durability]
    if processes > 1:
        argv += ["--processes", str(processes)]
    if _knows_loop(source):  # (an older checkout's serve may not know these)
        argv += ["--loop", args.loop, "--http", args.http]
    paths = {
        "execute_async": f"/api/v1/workflows/{wf_id}/execute_async",
        "GET": f"/api/v1/workflows/{wf_id}",
    }
    return Server(argv, port, pin, env=env, paths=paths, token=token)


def _knows_loop(source: str | None) -> bool:
    """Whether the checkout's ``serve`` takes ``--loop``/``--http``: a ``--compare`` server
    must run the same loop and parser as this one (it ran uvicorn's ``auto`` before)."""
    if source is None:
        return True
    serve = Path(source) / "src" / "abi_engine" / "cli" / "serve.py"
    return serve.exists() and '"--loop"' in serve.read_text()


def _schema(server: str, name: str) -> str:
    """A fresh PostgreSQL schema ``name`` (emptied first); the URL whose connections use it."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    import psycopg

    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{name}"')
    SCHEMAS.append((server, name))
    parts = urlsplit(server)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={name}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


#: (server URL, schema) of every schema made, dropped at the end.
SCHEMAS: list[tuple[str, str]] = []


def _drop_schemas() -> None:
    import psycopg

    for server, name in SCHEMAS:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--durability", choices=["normal", "full"], default="normal")
    parser.add_argument("--only", choices=["execute_async", "GET"], help="one endpoint only")
    parser.add_argument(
        "--compare",
        metavar="CHECKOUT",
        help="also serve abi from another checkout (e.g. /work/main), alternated with the rest",
    )
    parser.add_argument(
        "--processes",
        default="1",
        metavar="N[,M...]",
        help="abi-engine serve --processes N; several (1,2): one abi server each, alternated",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="abi on PostgreSQL (a fresh schema per abi server) instead of SQLite files",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="let servers use every CPU (for --processes)"
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="both servers' event loop (abi-engine serve --loop; not given to --compare)",
    )
    parser.add_argument(
        "--http",
        choices=["auto", "h11", "httptools"],
        default="auto",
        help="both servers' HTTP parser (abi-engine serve --http; not given to --compare)",
    )
    parser.add_argument("--serve-bare", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=2, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = _parser().parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), *args.serve_bare[1:])
        return 0
    if args.prepare:
        where = args.prepare[0]
        print(*_prepare(where if "://" in where else Path(where), args.prepare[1]))
        return 0
    if not shutil.which("wrk"):
        print("wrk is not on PATH (apt-get install wrk): using benchmarks/_rawload.py instead")
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
    if not pin:
        print("WARNING: no second CPU (or no taskset): client and servers share the CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        counts = [int(n) for n in args.processes.split(",")]
        servers: dict[str, Server] = {}
        try:
            for n in counts:
                name = "abi" if counts == [1] else f"abi x{n}"
                servers[name] = _abi_server(
                    Path(tmp), name.replace(" ", ""), args, pin and not args.no_pin, None, n
                )
            if args.compare:
                servers["abi@compare"] = _abi_server(
                    Path(tmp), "compare", args, pin and not args.no_pin, args.compare
                )
            first = next(iter(servers.values()))
            servers["bare"] = _bare_server(
                Path(tmp), first, pin and not args.no_pin, args.loop, args.http
            )
            _measure(servers, args, pin)
        finally:
            for server in servers.values():
                server.stop()
            _drop_schemas()
    return 0


def _bare_server(tmp: Path, abi: Server, pin: bool, loop: str, http: str) -> Server:
    """The bare Starlette app, answering the JSON abi answers."""
    headers = {"Authorization": f"Bearer {abi.token}"}
    accepted = httpx.post(abi.url + abi.paths["execute_async"], json=BODY, headers=headers)
    assert accepted.status_code == 202, accepted.text
    shown = httpx.get(abi.url + abi.paths["GET"], headers=headers)
    assert shown.status_code == 200, shown.text
    answers = tmp / "answers.json"
    answers.write_text(json.dumps({"execute_async": accepted.json(), "get": shown.json()}))
    port = _free_port()
    argv = [sys.executable, __file__, "--serve-bare", str(port), str(answers), loop, http]
    paths = {
        "execute_async": abi.paths["execute_async"],
        "GET": abi.paths["GET"],
    }
    return Server(argv, port, pin, paths=paths, token=abi.token)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            found += _tree(int(child))
    return found


def _cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server's processes so far."""
    total = 0
    for pid in _tree(server.process.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _drain(server: Server) -> float:
    """Wait until no execution is queued or running on ``server``; the seconds it took."""
    start = time.monotonic()
    url = server.url + "/api/v1/workflow_executions"
    query = {"status": "queued,running", "page_size": "1"}
    headers = {"Authorization": f"Bearer {server.token}"}
    while time.monotonic() - start < 300:
        answer = httpx.get(url, params=query, headers=headers, timeout=30).json()
        if answer["data"]["pagination"]["total_items"] == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - start


def _measure(servers: dict[str, Server], args: argparse.Namespace, pin: bool) -> None:
    client = "wrk" if shutil.which("wrk") else "_rawload.py"
    print(
        f"door_rest: uvicorn loop {args.loop}, http {args.http}, log warning; {args.connections}"
        f" keep-alive connections, {client} pinned to CPU 1: {pin}, servers to CPU 0:"
        f" {pin and not args.no_pin}; {args.rounds} x {args.duration:g} s; durability"
        f" {args.durability}; {'PostgreSQL' if args.postgres else 'SQLite'}; load average"
        f" {os.getloadavg()[0]:.2f}"
    )
    results: dict[tuple[str, str], list[float]] = {}
    loads: list[float] = []
    cpu_per: dict[tuple[str, str], list[float]] = {}
    for name in [e for e in ("execute_async", "GET") if args.only in (None, e)]:
        body = json.dumps(BODY) if name == "execute_async" else None
        for server in servers.values():  # warm up
            wrk(server.url + server.paths[name], server.token, 2, args.connections, pin, body)
        for r in range(args.rounds):
            for kind, server in servers.items():
                url = server.url + server.paths[name]
                cpu = _cpu_seconds(server)
                rate, bad = wrk(url, server.token, args.duration, args.connections, pin, body)
                loads.append(os.getloadavg()[0])
                results.setdefault((name, kind), []).append(rate)
                extra = f" ({bad} non-2xx)" if bad else ""
                if name == "execute_async" and kind != "bare":
                    # Its backlog would run during the next server's round, on the same core.
                    extra += f", backlog ran in {_drain(server):.1f} s"
                cpu = _cpu_seconds(server) - cpu
                requests = rate * max(1, round(args.duration))
                extra += f", server CPU {cpu * 1000 / requests:.2f} ms a request"
                cpu_per.setdefault((name, kind), []).append(cpu * 1000 / requests)
                print(
                    f"  {name} round {r + 1} {kind}: {rate:,.0f} req/s{extra};"
                    f" load {loads[-1]:.2f}",
                    flush=True,
                )
    report(results, list(servers))
    for (name, kind), values in cpu_per.items():
        cpu = statistics.median(values)
        bare = statistics.median(cpu_per[(name, "bare")])
        ratio = "" if kind == "bare" else f" (bare / this: {bare / cpu:.2f})"
        print(f"{name}: {kind} server CPU median {cpu:.2f} ms a request{ratio}")
    print(f"load average during the run: median {statistics.median(loads):.2f}")


def report(results: dict[tuple[str, str], list[float]], kinds: list[str]) -> None:
    for name in ("execute_async", "GET"):
        if (name, "bare") not in results:
            continue
        bare = results[(name, "bare")]
        for kind in [k for k in kinds if k != "bare"]:
            abi = results[(name, kind)]
            ratios = [a / b for a, b in zip(abi, bare, strict=True)]
            print(
                f"{name}: {kind} {statistics.median(abi):,.0f} req/s, bare"
                f" {statistics.median(bare):,.0f} req/s, ratio of medians"
                f" {statistics.median(abi) / statistics.median(bare):.2f} (per round"
                f" {', '.join(f'{r:.2f}' for r in ratios)})"
            )


if __name__ == "__main__":
    sys.exit(main())
