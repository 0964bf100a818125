"""The synchronous door (issue #18): a host thread calling the engine, against peers.

Workload (issue #18): three steps, ``a = i + 1``, ``b = a * 2``,
``{"value": b}``, each checkpointed before the next starts
(``benchmarks/_doors.py``). Every measurement runs in a child process of its
own, on a fresh SQLite file in a temporary directory, after a warm-up; rounds
alternate the contenders, so a round's ratios see the same machine load; the
medians (and the range) are printed with the load average.

abi-engine (engine defaults, ``durability`` normal and full):

- **one thread**: ``engine.start_blocking()``, then
  ``engine.call(partial(engine.executions.execute, wait=False), wf, {"i": i})``
  ``--count`` times, then ``engine.call(engine.executions.wait, id)`` for
  each: executions per second from the first submit to the last answer;
  with the group committer's commits per execution (both calls are answered in
  the calling thread, without the event loop: fix 12 of docs/performance.md);
- **8 threads**: the same, ``--count`` split over 8 threads submitting at once;
- **batch**: one thread, all ``--count`` executions in one
  ``engine.call(engine.executions.execute_many, wf, [{"i": i}, ...])``, then the waits;
- **sequential**: ``engine.call(engine.executions.execute, wf, {"i": i})``
  (``wait=True``) one at a time, p50 and p99 of ``--samples`` calls.

Peers (all on SQLite in WAL mode with ``synchronous=FULL``), when importable:

- **SQLite loop**: the ~60 lines of :func:`sqlite_loop` below, one transaction
  to insert the execution, one per step (the last one also ends it);
- **Huey** (``huey``, ``SqliteHuey(fsync=True, journal_mode="wal")``): one task
  computing the three steps (no checkpoint between them), ``immediate=False``,
  run by a consumer of one worker thread in the same process (polling every
  millisecond, so its idle polling does not dominate), results awaited with
  ``result.get(blocking=True)`` polling every millisecond;
- **DBOS** (``dbos``, system database on SQLite, WAL, ``synchronous=FULL``):
  a ``@DBOS.workflow`` of three ``@DBOS.step``s; ``DBOS.start_workflow`` then
  ``handle.get_result()`` for the throughput, a direct call for the latency.

The ratios printed compare abi-engine at ``durability="full"`` with each peer
(like with like: every peer runs ``synchronous=FULL``), and at "normal" too.

How to run (the peers are optional; without them only abi-engine's figures print)::

    python3 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install -e '.[server,postgres]' huey dbos
    /tmp/benchvenv/bin/python benchmarks/door_sync.py [--count 1000] [--rounds 3]

(huey and dbos are no extra of the project: ``[all]`` must bring every extra,
and DBOS brings SQLAlchemy and OpenTelemetry.)

or with the dev environment (``PYTHONPATH=src:contrib/asgi_adapter:plugins``);
``--only abi`` skips the peers; ``--modes normal:1,full:1,normal:seq`` runs only
those abi-engine modes (``DURABILITY:THREADS``, ``DURABILITY:batch``,
``DURABILITY:seq``).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _doors import (
    DoorPlugin,
    committer_counts,
    expected,
    load,
    median,
    peak_rss_mb,
    percentiles,
)

# -- abi-engine ------------------------------------------------------------------------


def _abi_engine(db: Path, durability: str) -> tuple[Any, str]:
    from abi_engine import Engine

    engine = Engine(db, plugins=[DoorPlugin()], durability=durability)  # type: ignore[arg-type]
    engine.start_blocking()
    wf = engine.call(engine.workflows.create, {"name": "door", "type": "door_three"})
    engine.call(engine.workflows.activate, wf.id)
    for i in range(50):  # warm up: caches, connections, the portal
        engine.call(engine.executions.execute, wf.id, {"i": i})
    return engine, wf.id


def abi_throughput(db: Path, durability: str, count: int, threads: int) -> dict[str, Any]:
    engine, wf_id = _abi_engine(db, durability)
    submit = partial(engine.executions.execute, wait=False)
    commits0, ops0 = committer_counts(engine)
    ids: list[list[str]] = [[] for _ in range(threads)]

    def run(t: int) -> None:
        for i in range(t, count, threads):
            ids[t].append(engine.call(submit, wf_id, {"i": i}).execution_id)

    started = time.perf_counter()
    if threads == 1:
        run(0)
    else:
        pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    submitted = time.perf_counter()
    for t in range(threads):
        for n, execution_id in enumerate(ids[t]):
            ex = engine.call(engine.executions.wait, execution_id, 120)
            assert ex.result == {"value": expected(t + n * threads)}, ex
    elapsed = time.perf_counter() - started
    commits, ops = committer_counts(engine)
    engine.close()
    return {
        "rate": count / elapsed,
        "submit_rate": count / (submitted - started),
        "commits_per_exec": (commits - commits0) / count,
        "writes_per_exec": (ops - ops0) / count,
    }


def abi_batch(db: Path, durability: str, count: int) -> dict[str, Any]:
    """One synchronous thread submitting all ``count`` executions in one
    ``engine.executions.execute_many`` call, then waiting for each."""
    engine, wf_id = _abi_engine(db, durability)
    commits0, ops0 = committer_counts(engine)
    started = time.perf_counter()
    accepted = engine.call(engine.executions.execute_many, wf_id, [{"i": i} for i in range(count)])
    submitted = time.perf_counter()
    for i, execution in enumerate(accepted):
        ex = engine.call(engine.executions.wait, execution.execution_id, 120)
        assert ex.result == {"value": expected(i)}, ex
    elapsed = time.perf_counter() - started
    commits, ops = committer_counts(engine)
    engine.close()
    return {
        "rate": count / elapsed,
        "submit_rate": count / (submitted - started),
        "commits_per_exec": (commits - commits0) / count,
        "writes_per_exec": (ops - ops0) / count,
    }


def abi_latency(db: Path, durability: str, samples: int) -> dict[str, Any]:
    engine, wf_id = _abi_engine(db, durability)
    times = []
    for i in range(samples):
        t = time.perf_counter()
        ex = engine.call(engine.executions.execute, wf_id, {"i": i})
        times.append((time.perf_counter() - t) * 1000)
        assert ex.result == {"value": expected(i)}
    engine.close()
    p50, p99 = percentiles(times)
    return {"p50": p50, "p99": p99}


# -- the SQLite loop: a transaction per step -------------------------------------------------


class SQLiteLoop:
    """A naive durable runner: one row per execution, one per step, a commit per step."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.executescript(
            "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, params TEXT,"
            " status TEXT, result TEXT, created REAL, ended REAL);"
            "CREATE TABLE IF NOT EXISTS steps (run INTEGER, name TEXT, result TEXT,"
            " PRIMARY KEY (run, name));"
        )
        self.steps = (
            ("add", lambda p, r: {"a": p["i"] + 1}),
            ("double", lambda p, r: {"b": r["add"]["a"] * 2}),
            ("answer", lambda p, r: {"value": r["double"]["b"]}),
        )

    def _tx(self, sql: str, *args: Any) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            cur = self.conn.execute(sql, args)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return cur

    def submit(self, params: dict[str, Any]) -> int:
        cur = self._tx(
            "INSERT INTO runs (params, status, created) VALUES (?, 'queued', ?)",
            json.dumps(params),
            time.time(),
        )
        return int(cur.lastrowid)

    def run(self, run_id: int) -> Any:
        (params,) = self.conn.execute("SELECT params FROM runs WHERE id = ?", (run_id,)).fetchone()
        params = json.loads(params)
        results: dict[str, Any] = {}
        for n, (name, fn) in enumerate(self.steps):
            results[name] = fn(params, results)
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                "INSERT INTO steps (run, name, result) VALUES (?, ?, ?)",
                (run_id, name, json.dumps(results[name])),
            )
            if n == len(self.steps) - 1:
                self.conn.execute(
                    "UPDATE runs SET status = 'completed', result = ?, ended = ? WHERE id = ?",
                    (json.dumps(results[name]), time.time(), run_id),
                )
            self.conn.execute("COMMIT")
        return results["answer"]


def loop_throughput(db: Path, count: int) -> dict[str, Any]:
    loop = SQLiteLoop(db)
    for i in range(50):
        loop.run(loop.submit({"i": i}))
    started = time.perf_counter()
    ids = [loop.submit({"i": i}) for i in range(count)]
    for i, run_id in enumerate(ids):
        assert loop.run(run_id) == {"value": expected(i)}
    return {"rate": count / (time.perf_counter() - started)}


def loop_latency(db: Path, samples: int) -> dict[str, Any]:
    loop = SQLiteLoop(db)
    times = []
    for i in range(50 + samples):
        t = time.perf_counter()
        loop.run(loop.submit({"i": i}))
        times.append((time.perf_counter() - t) * 1000)
    p50, p99 = percentiles(times[50:])
    return {"p50": p50, "p99": p99}


# -- Huey --------------------------------------------------------------------------------------


def _huey(db: Path) -> tuple[Any, Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey("door", filename=str(db), fsync=True, journal_mode="wal")

    @huey.task()
    def three(i: int) -> dict[str, int]:
        a = i + 1
        b = a * 2
        return {"value": b}

    consumer = huey.create_consumer(
        workers=1, worker_type="thread", periodic=False, initial_delay=0.001, max_delay=0.001
    )
    consumer.start()
    for i in range(50):
        three(i).get(blocking=True, max_delay=0.001)
    return huey, three, consumer


def huey_throughput(db: Path, count: int) -> dict[str, Any]:
    _, three, consumer = _huey(db)
    started = time.perf_counter()
    results = [three(i) for i in range(count)]
    for i, r in enumerate(results):
        assert r.get(blocking=True, max_delay=0.001) == {"value": expected(i)}
    rate = count / (time.perf_counter() - started)
    consumer.stop(graceful=True)
    return {"rate": rate}


def huey_latency(db: Path, samples: int) -> dict[str, Any]:
    _, three, consumer = _huey(db)
    times = []
    for i in range(samples):
        t = time.perf_counter()
        assert three(i).get(blocking=True, max_delay=0.001) == {"value": expected(i)}
        times.append((time.perf_counter() - t) * 1000)
    consumer.stop(graceful=True)
    p50, p99 = percentiles(times)
    return {"p50": p50, "p99": p99}


# -- DBOS --------------------------------------------------------------------------------------


def _dbos(db: Path) -> tuple[Any, Any]:
    import sqlalchemy as sa
    from dbos import DBOS

    with sqlite3.connect(db) as conn:  # WAL is kept in the file
        conn.execute("PRAGMA journal_mode = WAL")

    @sa.event.listens_for(sa.engine.Engine, "connect")
    def full(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous = FULL")

    DBOS(config={"name": "door", "system_database_url": f"sqlite:///{db}", "log_level": "ERROR"})

    @DBOS.step()
    def add(i: int) -> int:
        return i + 1

    @DBOS.step()
    def double(a: int) -> int:
        return a * 2

    @DBOS.step()
    def answer(b: int) -> dict[str, int]:
        return {"value": b}

    @DBOS.workflow()
    def three(i: int) -> dict[str, int]:
        return answer(double(add(i)))

    DBOS.launch()
    for i in range(20):
        three(i)
    return DBOS, three


def dbos_throughput(db: Path, count: int) -> dict[str, Any]:
    dbos, three = _dbos(db)
    started = time.perf_counter()
    handles = [dbos.start_workflow(three, i) for i in range(count)]
    for i, h in enumerate(handles):
        assert h.get_result() == {"value": expected(i)}
    rate = count / (time.perf_counter() - started)
    dbos.destroy()
    return {"rate": rate}


def dbos_latency(db: Path, samples: int) -> dict[str, Any]:
    dbos, three = _dbos(db)
    times = []
    for i in range(samples):
        t = time.perf_counter()
        assert three(i) == {"value": expected(i)}
        times.append((time.perf_counter() - t) * 1000)
    dbos.destroy()
    p50, p99 = percentiles(times)
    return {"p50": p50, "p99": p99}


# -- the orchestration -------------------------------------------------------------------------


def child(kind: str, arg: str, count: int, samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "door.db"
        if kind == "abi":
            durability, mode = arg.split(":")
            if mode == "seq":
                return abi_latency(db, durability, samples)
            if mode == "batch":
                return abi_batch(db, durability, count)
            return abi_throughput(db, durability, count, int(mode))
        runs = {
            "loop": (loop_throughput, loop_latency),
            "huey": (huey_throughput, huey_latency),
            "dbos": (dbos_throughput, dbos_latency),
        }[kind]
        return runs[1](db, samples) if arg == "seq" else runs[0](db, count)


def spawn(kind: str, arg: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", kind, arg]
    cmd += ["--count", str(args.count), "--samples", str(args.samples)]
    before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        print(f"  ! {kind} {arg} failed:\n{proc.stderr[-2000:]}", flush=True)
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = (before + os.getloadavg()[0]) / 2
    return result


def available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["abi", "all"], default="all")
    parser.add_argument(
        "--modes",
        help="comma-separated abi modes to run (e.g. normal:1,full:1,normal:seq); default all",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.count, args.samples)))
        return
    peers = [] if args.only == "abi" else ["loop"]
    for name in ("huey", "dbos"):
        if args.only == "all" and available(name):
            peers.append(name)
        elif args.only == "all":
            print(f"(peer {name} not installed: skipped)")
    throughput = [("abi", "normal:1"), ("abi", "full:1"), ("abi", "normal:8"), ("abi", "full:8")]
    throughput += [("abi", "normal:batch"), ("abi", "full:batch")]
    throughput += [(p, "run") for p in peers]
    latency = [("abi", "normal:seq"), ("abi", "full:seq")] + [(p, "seq") for p in peers]
    if args.modes:
        wanted = set(args.modes.split(","))
        throughput = [t for t in throughput if t[0] != "abi" or t[1] in wanted]
        latency = [t for t in latency if t[0] != "abi" or t[1] in wanted]
    print(
        f"door_sync: {args.count} executions x {args.rounds} rounds, {args.samples} sequential"
        f" samples; cpus {os.cpu_count()}; load average at start {load()}",
        flush=True,
    )
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for kind, arg in throughput + latency:
            res = spawn(kind, arg, args)
            if res is not None:
                results.setdefault((kind, arg), []).append(res)
                shown = {k: round(v, 3) for k, v in res.items()}
                print(f"  round {r + 1} {kind} {arg}: {shown}", flush=True)
    report(results, throughput, latency)
    print(f"load average at the end {load()}; peak RSS of the parent {peak_rss_mb():.0f} MB")


def report(
    results: dict[tuple[str, str], list[dict[str, Any]]],
    throughput: list[tuple[str, str]],
    latency: list[tuple[str, str]],
) -> None:
    def med(key: tuple[str, str], field: str) -> float | None:
        runs = results.get(key)
        return median([r[field] for r in runs]) if runs else None

    print("\nmedians (range) over the rounds:")
    for key in throughput:
        runs = results.get(key)
        if not runs:
            continue
        rates = [r["rate"] for r in runs]
        extra = ""
        if "commits_per_exec" in runs[0]:
            extra = (
                f"; {median([r['commits_per_exec'] for r in runs]):.2f} commits and"
                f" {median([r['writes_per_exec'] for r in runs]):.2f} writes per execution,"
                f" submit {median([r['submit_rate'] for r in runs]):,.0f}/s"
            )
        print(
            f"  {key[0]} {key[1]}: {median(rates):,.0f} exec/s ({min(rates):,.0f}-{max(rates):,.0f})"
            f"{extra}; load {median([r['load'] for r in runs]):.2f}"
        )
    for key in latency:
        if results.get(key):
            print(
                f"  {key[0]} {key[1]}: p50 {med(key, 'p50'):.3f} ms, p99 {med(key, 'p99'):.3f} ms;"
                f" load {med(key, 'load'):.2f}"
            )
    print("ratios abi-engine / peer (throughput; latency p99 peer / abi):")
    for peer in ("loop", "huey", "dbos"):
        peer_rate = med((peer, "run"), "rate")
        peer_p99 = med((peer, "seq"), "p99")
        if peer_rate is None:
            continue
        parts = []
        for durability in ("full", "normal"):
            rate = med(("abi", f"{durability}:1"), "rate")
            if rate is not None:
                parts.append(f"{durability} {rate / peer_rate:.2f}x")
        p99 = med(("abi", "full:seq"), "p99")
        if p99 is not None and peer_p99 is not None:
            parts.append(f"p99 full {peer_p99 / p99:.2f}x")
        print(f"  vs {peer}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
