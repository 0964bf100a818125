"""The PostgreSQL door (issue #18): async executions per second on PostgreSQL.

Workload: the issue's three steps (``benchmarks/_doors.py``), ``--count``
executions submitted in-process by 64 concurrent submitters
(``executions.execute(..., wait=False)``), executions per second from the
first submit until every one has ended. Each figure on a fresh schema:

- **1 process**, PostgreSQL reached directly (127.0.0.1);
- **2 processes**, two engines on the same schema, each submitting half, started
  together: executions per second of the pair (first submit to last end);
- the same two through a **TCP proxy adding 0.5 ms each way** (a round trip of
  1 ms, as to a database on another host), written below with asyncio and run
  in a process of its own;
- SQLite (file, durability normal) in the same run, for the ratio.

The load average prints with each figure, and the CPU time spent per execution
by the engine processes and by the PostgreSQL server processes serving their
connections (read from ``/proc``: 0 unless the server runs on this host), and the
WAL the server wrote per execution meanwhile (its insert position's move: other
sessions' writes count too). On a shared machine CPU time holds better than the
wall clock.

    python benchmarks/door_postgres.py [--url postgresql://...] [--count 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from _doors import DoorPlugin, committer_counts, expected

from abi_engine import Engine, RuntimeSettings

# -- the delaying proxy --------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(65536):
            # Same delay for every chunk, scheduled in arrival order: order is kept.
            loop.call_later(delay, writer.write, data)
    finally:
        loop.call_later(delay * 2, writer.close)


async def _proxy(listen_port: int, target: tuple[str, int], delay: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        for s in (writer.get_extra_info("socket"), up_writer.get_extra_info("socket")):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            _pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay), return_exceptions=True
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


# -- one engine ------------------------------------------------------------------------------


async def run_engine(
    db: str, count: int, start_at: float, offset: int, total: int = 0
) -> dict[str, float]:
    """Run ``count`` executions from ``start_at`` (a time.time()); done once the
    workflow has ``total`` runs (every engine's, the warm-ups' included)."""
    settings = RuntimeSettings(workers=256, queue_size=max(count, 1000))
    if db.startswith("postgresql://"):  # names this process's connections to the server
        db += ("&" if "?" in db else "?") + f"application_name=door-{os.getpid()}"
    async with Engine(db, plugins=[DoorPlugin()], load_entry_points=False, runtime=settings) as e:
        workflows = await e.workflows.list(page_size=1)
        if workflows.items:
            wf_id = workflows.items[0].id
        else:
            wf = await e.workflows.create({"name": "door", "type": "door_three"})
            await e.workflows.activate(wf.id)
            wf_id = wf.id
        for i in range(20):
            await e.executions.execute(wf_id, {"i": i})
        commits0, _ops0 = committer_counts(e)
        ids: list[tuple[int, str]] = []

        async def submit(numbers: range) -> None:
            for i in numbers:
                ex = await e.executions.execute(wf_id, {"i": i}, wait=False)
                ids.append((i, ex.execution_id))

        await anyio.sleep(max(0.0, start_at - time.time()))
        cpu0, server0, wal0 = _own_cpu(), _server_cpu(db), _wal_position(db)
        started = time.time()
        async with anyio.create_task_group() as tg:
            for s in range(64):
                tg.start_soon(submit, range(offset + s, offset + count, 64))
        # Ended: every execution of the workflow, both processes' (one query a poll).
        while True:
            if (await e.workflows.get(wf_id)).stats.runs_total >= total:
                break
            await anyio.sleep(0.01)
        ended = time.time()
        cpu, server, wal = _own_cpu() - cpu0, _server_cpu(db), _wal_position(db)
        for i, execution_id in ids[:: max(1, len(ids) // 50)]:  # checked after the clock
            ex = await e.executions.wait(execution_id, 300)
            assert ex.result == {"value": expected(i)}, ex
        commits, _ops = committer_counts(e)
    return {
        "started": started,
        "ended": ended,
        "commits_per_exec": (commits - commits0) / count,
        "cpu": cpu,
        "server_cpu": sum(seconds - server0.get(pid, 0.0) for pid, seconds in server.items()),
        "wal": [wal0, wal],
    }


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(db: str) -> dict[int, float]:
    """CPU seconds used so far by each server process serving this process's connections
    (``application_name``), read from ``/proc``: empty unless the server runs here."""
    if not db.startswith("postgresql://"):
        return {}
    import psycopg

    with psycopg.connect(db.replace("application_name=door-", "application_name=probe-")) as c:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"door-{os.getpid()}",),
        ).fetchall()
    found: dict[int, float] = {}
    for (pid,) in rows:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def _wal_position(db: str) -> int:
    """The server's WAL insert position in bytes (0 for SQLite): WAL written between two
    readings is the server's, other sessions' included."""
    if not db.startswith("postgresql://"):
        return 0
    import psycopg

    with psycopg.connect(db.replace("application_name=door-", "application_name=probe-")) as c:
        row = c.execute("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint").fetchone()
    return int(row[0]) if row else 0


def _child(db: str, count: int, start_at: float, offset: int, total: int) -> subprocess.Popen[str]:
    code = (
        "import sys, json, anyio; sys.path.insert(0, sys.argv[1]); import door_postgres as d;"
        " print(json.dumps(anyio.run(d.run_engine, sys.argv[2], int(sys.argv[3]),"
        " float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))))"
    )
    argv = [sys.executable, "-c", code, str(Path(__file__).parent), db, str(count)]
    return subprocess.Popen(
        [*argv, str(start_at), str(offset), str(total)], stdout=subprocess.PIPE, text=True
    )


def measure(db: str, count: int, processes: int) -> tuple[float, float, float, float, float]:
    """(executions/s, commits per execution, engine and server CPU microseconds per
    execution, WAL bytes per execution) of ``processes`` engines sharing ``db``."""
    # The first engine creates the schema and the workflow before the others start.
    anyio.run(run_engine, db, 20, 0.0, 10**6)
    start_at = time.time() + 3.0  # every child imported and started by then
    each = count // processes
    total = 40 + (20 + each) * processes  # the runs of the workflow once all have ended
    children = [_child(db, each, start_at, p * count, total) for p in range(processes)]
    results = []
    for child in children:
        out, _ = child.communicate(timeout=900)
        assert child.returncode == 0, "an engine process failed"
        results.append(json.loads(out.strip().splitlines()[-1]))
    first = min(r["started"] for r in results)
    last = max(r["ended"] for r in results)
    commits = sum(r["commits_per_exec"] for r in results) / processes
    done = each * processes
    engine_us = sum(r["cpu"] for r in results) / done * 1e6
    server_us = sum(r["server_cpu"] for r in results) / done * 1e6
    wal = max(r["wal"][1] for r in results) - min(r["wal"][0] for r in results)
    return done / (last - first), commits, engine_us, server_us, wal / done


# -- PostgreSQL schemas -------------------------------------------------------------------------


class Schema:
    """A fresh schema on the server, dropped on exit; ``url(port)`` reaches it."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"door_{secrets.token_hex(4)}"

    def __enter__(self) -> Schema:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.name}"')
        return self

    def url(self, port: int | None = None) -> str:
        from postgres import _schema_url

        url = _schema_url(self.server, self.name)
        if port is None:
            return url
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    def __exit__(self, *exc: object) -> None:
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{self.name}" CASCADE')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("ABI_ENGINE_TEST_POSTGRES_URL"))
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--delay-ms", type=float, default=0.5, help="proxy delay each way")
    parser.add_argument("--proxy", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        port, host, target = args.proxy
        asyncio.run(_proxy(int(port), (host, int(target)), args.delay_ms / 1000))
        return
    if not args.url:
        parser.error("give --url postgresql://... (or set ABI_ENGINE_TEST_POSTGRES_URL)")
    print(f"door_postgres: {args.count} executions per figure; cpus {os.cpu_count()}")

    def show(
        label: str, rate: float, commits: float, engine_us: float, server_us: float, wal: float
    ) -> float:
        print(
            f"  {label}: {rate:,.0f} exec/s ({commits:.2f} commits per execution;"
            f" CPU per execution: engine {engine_us:.0f} us, server {server_us:.0f} us;"
            f" WAL {wal:,.0f} bytes, server-wide);"
            f" load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        return rate

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = show("SQLite, 1 process", *measure(str(Path(tmp) / "s.db"), args.count, 1))
    with Schema(args.url) as schema:
        pg1 = show("PostgreSQL, 1 process", *measure(schema.url(), args.count, 1))
    with Schema(args.url) as schema:
        pg2 = show("PostgreSQL, 2 processes", *measure(schema.url(), args.count, 2))
    target = urlsplit(args.url)
    proxy_port = _free_port()
    proxy = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--proxy",
            str(proxy_port),
            target.hostname or "127.0.0.1",
            str(target.port or 5432),
            "--delay-ms",
            str(args.delay_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout is not None
        assert proxy.stdout.readline().strip() == "listening"
        with Schema(args.url) as schema:
            far1 = show(
                f"PostgreSQL through a {args.delay_ms:g} ms-each-way proxy, 1 process",
                *measure(schema.url(proxy_port), args.count, 1),
            )
        with Schema(args.url) as schema:
            far2 = show(
                f"PostgreSQL through a {args.delay_ms:g} ms-each-way proxy, 2 processes",
                *measure(schema.url(proxy_port), args.count, 2),
            )
    finally:
        proxy.terminate()
        proxy.wait(10)
    print(
        f"ratios: PostgreSQL/SQLite {pg1 / sqlite:.2f}; 2 processes/1 {pg2 / pg1:.2f};"
        f" through the proxy/direct {far1 / pg1:.2f} (1 process), {far2 / pg2:.2f} (2)"
    )


if __name__ == "__main__":
    main()
