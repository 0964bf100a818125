"""Runs one torture scenario for one seed: engine processes, load, faults, then the checks.

A run, all of it derived from ``random.Random(f"{scenario}:{seed}")``:

1. a fresh database (SQLite file or PostgreSQL schema) and an *observer*: an
   :class:`abi_engine.Engine` in this process that is never started, used only
   to read (and to mint the access token), so reading the outcome depends on
   no engine process and meets no injected fault;
2. ``nodes`` engine processes (``node.py``) on that database, each with the
   torture plugin, the scenario's ``RuntimeSettings`` and, in fault scenarios,
   its planned faults (``TORTURE_FAULTS``); optionally each one PID 1 of its
   own PID namespace;
3. the load, over REST, spread over the processes: synchronous and
   asynchronous executions, executions that wait for a signal or an approval
   (delivered by a thread while the pollers run), cancels, idempotent replays,
   schedules firing every 1-2 s and, in parallel, description edits; ``kill -9``
   and restarts, and ``pg_terminate_backend`` of the engines' connections;
4. the drain: schedules are disabled, and every execution must end within
   ``DRAIN_SECONDS`` (signals keep being delivered);
5. the final state is read and :func:`torture_checks.check` lists what broke.

Every wait has a deadline; every process started is killed when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio.from_thread
import httpx
import torture_checks
import torture_plugin
from torture_checks import TERMINAL, Ledger, Observed

from abi_engine import Engine

HERE = Path(__file__).resolve().parent
#: The last line of a traceback: ``module.ExceptionName: message``.
_ERROR_LINE = re.compile(r"^(?:[a-z_]\w*\.)*[A-Z]\w*: \S")
NODE_SCRIPT = HERE / "node.py"
#: Seconds every execution has to end once the load stopped (before the process is judged).
DRAIN_SECONDS = float(os.environ.get("ABI_TORTURE_DRAIN", "60"))
START_SECONDS = 60.0
#: Threads editing schedules at once in scenarios with edits.
EDITORS = 3
HTTP_TIMEOUT = 15.0
SYNC_TIMEOUT = 30


# -- plans ---------------------------------------------------------------------------------


@dataclass
class Action:
    """One request of the load, sent ``at`` seconds after the load starts, to node ``node``."""

    at: float
    kind: str  # sync | async | signal | approval | cancel | replay | block
    node: int
    params: dict[str, Any]
    cancel_after: float = 0.0
    cancel_node: int = 0


@dataclass
class Chaos:
    at: float
    kind: str  # kill | terminate
    node: int = 0
    down: float = 0.0


@dataclass
class Plan:
    scenario: str
    seed: int
    nodes: int
    runtime: dict[str, Any]
    load_seconds: float
    actions: list[Action]
    schedules: list[dict[str, Any]]
    edits: bool
    faults: list[list[dict[str, Any]]]
    chaos: list[Chaos]
    pidns: bool

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for action in self.actions:
            kinds[action.kind] = kinds.get(action.kind, 0) + 1
        faults = [
            f"n{i}:"
            + ",".join(f"{f['method']}[{f.get('op') or '*'}]#{f['nth']}/{f['mode']}" for f in fs)
            for i, fs in enumerate(self.faults)
            if fs
        ]
        chaos = [f"{c.kind}(n{c.node})@{c.at:.1f}s" for c in self.chaos]
        return (
            f"{self.nodes} processes, runtime {self.runtime}, load {self.load_seconds}s:"
            f" {kinds}; {len(self.schedules)} schedules{' + edits' if self.edits else ''};"
            f" faults {faults or 'none'}; chaos {chaos or 'none'}"
            f"{'; each process PID 1 of its own PID namespace' if self.pidns else ''}"
        )


@dataclass(frozen=True)
class Scenario:
    """What a scenario runs; :func:`make_plan` draws the details from the seed."""

    name: str
    nodes: int
    runtime: dict[str, Any]
    load_seconds: float
    mix: dict[str, int]  # action kind -> how many
    sleeps: tuple[float, float] = (0.02, 0.2)
    schedules: int = 0
    edits: bool = False
    faults: int = 0  # per process
    kills: int = 0
    terminations: int = 0  # PostgreSQL only
    pidns: bool = False
    block_seconds: float = 0.0


#: Where faults are injected: (store method, write-op class carried by ``apply``, nth range).
FAULT_TARGETS: list[tuple[str, str | None, tuple[int, int]]] = [
    ("apply", "InsertExecution", (1, 8)),
    ("apply", "ClaimExecution", (1, 10)),
    ("apply", "CheckpointStep", (1, 12)),
    ("apply", "FinishExecution", (1, 8)),
    ("apply", "SuspendExecution", (1, 4)),
    ("apply", "DeliverSignal", (1, 4)),
    ("apply", "CancelExecution", (1, 2)),
    ("apply", "FireSchedule", (1, 4)),
    ("apply", None, (5, 60)),
    ("claim_recoverable", None, (2, 12)),
    ("renew_leases", None, (1, 3)),
    ("get_execution", None, (1, 20)),
    ("get_steps", None, (1, 20)),
    ("due_schedules", None, (1, 5)),
    ("next_delivery_due", None, (1, 5)),
]
ERRORS = {"sqlite": ("locked", "ioerr"), "postgresql": ("pg_admin", "pg_closed")}


def make_plan(scenario: Scenario, seed: int, backend: str) -> Plan:
    """The run's every random choice, from ``seed`` alone."""
    rng = random.Random(f"{scenario.name}:{seed}")
    nodes = scenario.nodes
    actions: list[Action] = []
    lo, hi = scenario.sleeps
    for kind, count in sorted(scenario.mix.items()):
        for _ in range(count):
            sleeps = [round(rng.uniform(lo, hi), 3) for _ in range(torture_plugin.STEPS)]
            params: dict[str, Any] = {"kind": kind, "sleeps": sleeps}
            action = Action(
                at=round(rng.uniform(0, scenario.load_seconds * 0.8), 3),
                kind=kind,
                node=rng.randrange(nodes),
                params=params,
            )
            if kind in ("signal", "approval"):
                params["wait"] = kind
            elif kind == "cancel":
                params["sleeps"] = [round(rng.uniform(0.3, 1.0), 3) for _ in sleeps]
                action.cancel_after = round(rng.uniform(0.0, 2.0), 3)
                action.cancel_node = rng.randrange(nodes)
            elif kind == "replay":
                params["sleeps"] = [0.05, 2.5, 0.05]
                params["key"] = f"replay-{seed}-{len(actions)}"
            elif kind == "block":
                params["block"] = scenario.block_seconds
                params["sleeps"] = [0.05, 0.05, 0.05]
                action.at = round(rng.uniform(0, 1.0), 3)
            actions.append(action)
    rng.shuffle(actions)
    actions.sort(key=lambda a: a.at)
    schedules = [
        {
            "name": f"torture {i}",
            "schedule_type": "interval",
            "interval_value": rng.choice((1, 1, 2)),
            "interval_unit": "seconds",
            "overlap_policy": "allow",
            "parameters": {"kind": "sched", "sleeps": [0.02, 0.02, 0.02]},
        }
        for i in range(scenario.schedules)
    ]
    faults: list[list[dict[str, Any]]] = []
    for _ in range(nodes):
        chosen = []
        for _ in range(scenario.faults):
            method, op, (first, last) = rng.choice(FAULT_TARGETS)
            chosen.append(
                {
                    "method": method,
                    "op": op,
                    "nth": rng.randint(first, last),
                    "mode": rng.choice(("before", "after")),
                    "error": rng.choice(ERRORS[backend]),
                }
            )
        faults.append(chosen)
    chaos: list[Chaos] = []
    for _ in range(scenario.kills):
        chaos.append(
            Chaos(
                at=round(rng.uniform(0.8, scenario.load_seconds - 0.5), 3),
                kind="kill",
                node=rng.randrange(nodes),
                down=round(rng.uniform(0.2, 1.5), 3),
            )
        )
    if backend == "postgresql":
        for _ in range(scenario.terminations):
            chaos.append(
                Chaos(at=round(rng.uniform(0.5, scenario.load_seconds - 0.5), 3), kind="terminate")
            )
    chaos.sort(key=lambda c: c.at)
    return Plan(
        scenario=scenario.name,
        seed=seed,
        nodes=nodes,
        runtime=dict(scenario.runtime),
        load_seconds=scenario.load_seconds,
        actions=actions,
        schedules=schedules,
        edits=scenario.edits,
        faults=faults,
        chaos=chaos,
        pidns=scenario.pidns,
    )


# -- processes -----------------------------------------------------------------------------


def pidns_unavailable() -> str | None:
    """Why two engines cannot each be PID 1 of a PID namespace here (``None``: they can)."""
    if os.geteuid() != 0:
        return "needs root (unshare --pid)"
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --pid failed: {exc}"
    if done.returncode != 0:
        return f"unshare --pid refused: {done.stderr.decode(errors='replace').strip()}"
    return None


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in params]
    query.extend(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


class Node:
    """One engine process (``node.py``), restarted under a new label ``n<i>.<generation>``."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.generation = -1
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.killed = False
        self.label = ""
        self.stderr_path = Path()
        self._port_file: Path | None = None
        self._client: httpx.Client | None = None
        self.clients: list[httpx.Client] = []

    def start(self) -> None:
        self.generation += 1
        self.label = f"n{self.index}.{self.generation}"
        c = self.cluster
        port_file = c.workdir / f"{self.label}.port"
        self.stderr_path = c.workdir / f"{self.label}.err"
        db = str(c.db)
        if c.backend == "postgresql":
            db = _with_query(db, application_name=f"{c.app_prefix}-{self.label}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ABI_ENGINE_", "TORTURE_"))}
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            ABI_ENGINE_PLUGINS="torture_plugin",
            TORTURE_LEDGER=str(c.ledger),
            TORTURE_NODE=self.label,
            PYTHONUNBUFFERED="1",
        )
        faults = c.plan.faults[self.index] if self.generation == 0 else []
        if faults:
            env["TORTURE_FAULTS"] = json.dumps(faults)
        command = [
            sys.executable,
            str(NODE_SCRIPT),
            *("--db", db, "--port-file", str(port_file)),
            *("--runtime", json.dumps(c.plan.runtime)),
        ]
        if c.plan.pidns:
            command = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command]
        self.killed = False
        self.port = None
        self._client = None
        self._port_file = port_file
        env["TORTURE_LIFELINE"] = str(c.lifeline)
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(c.lifeline,),
            )

    def read_port(self) -> int | None:
        """The port the process listens on, once it has written it."""
        if self.port is None and self._port_file is not None and self._port_file.exists():
            self.port = int(self._port_file.read_text())
        return self.port

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.read_port() is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                        return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"engine process {self.label} did not start:\n{self.stderr_tail()}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.base,
                headers={"Authorization": f"Bearer {self.cluster.token}"},
                timeout=HTTP_TIMEOUT,
            )
            self.clients.append(self._client)
        return self._client

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> int:
        """SIGKILL (the whole PID namespace goes with its PID 1); the time it was sent."""
        sent = time.monotonic_ns()
        self.killed = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        return sent

    def stderr_tail(self, lines: int = 8) -> str:
        """The last error its stderr names, then its last lines."""
        try:
            text = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no stderr)"
        errors = [line.strip(" |") for line in text if _ERROR_LINE.match(line.strip(" |"))]
        leaves = [e for e in errors if "ExceptionGroup" not in e] or errors
        last = f"    last error: {leaves[-1]}\n" if leaves else ""
        return last + "\n".join("    " + line for line in text[-lines:])


class Cluster:
    def __init__(
        self, plan: Plan, db: str | Path, backend: str, workdir: Path, server: str | None
    ) -> None:
        self.plan = plan
        self.db = db
        self.backend = backend
        self.server = server
        self.workdir = workdir
        self.ledger = workdir / "ledger.log"
        self.app_prefix = f"trt{secrets.token_hex(4)}"
        self.token = ""
        self.nodes = [Node(self, i) for i in range(plan.nodes)]
        self.lock = threading.Lock()
        # The processes read the lifeline; only this process holds its write end, so
        # they see end-of-file and exit if the harness dies without killing them.
        self.lifeline, self._lifeline_writer = os.pipe()

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + START_SECONDS
        for node in self.nodes:
            node.wait_ready(deadline)

    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive() and n.port is not None]

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kill()
            for client in node.clients:
                client.close()
        for fd in (self.lifeline, self._lifeline_writer):
            with contextlib.suppress(OSError):
                os.close(fd)

    def terminate_connections(self) -> int:
        """``pg_terminate_backend`` of every connection of this run's engine processes."""
        import psycopg

        assert self.server is not None
        with psycopg.connect(self.server, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE %s",
                (f"{self.app_prefix}-%",),
            ).fetchall()
        return len(rows)


# -- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    plan: Plan
    problems: list[str]
    summary: dict[str, Any]
    workdir: Path
    seconds: float
    notes: list[str] = field(default_factory=list)


class _Observer:
    """A never-started Engine on the run's database, driven through a blocking portal."""

    def __init__(self, db: str | Path) -> None:
        self.engine = Engine(db, load_entry_points=False, plugins=[torture_plugin])
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self.lock = threading.Lock()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.portal.call(partial(fn, *args, **kwargs))

    def all_executions(self, workflow_ids: list[str], status: str | None = None) -> list[str]:
        ids: list[str] = []
        for wf in workflow_ids:
            page = 1
            while True:
                got = self.call(
                    self.engine.executions.list,
                    workflow_id=wf,
                    status=status,
                    page=page,
                    page_size=100,
                )
                ids.extend(item.execution_id for item in got.items)
                if page >= got.pagination.total_pages:
                    break
                page += 1
        return ids

    def execution(self, execution_id: str) -> dict[str, Any]:
        """The fields the checks read, from the public :class:`~abi_engine.Execution`."""
        found = self.call(self.engine.executions.get, execution_id)
        return {
            "status": found.status.value,
            "parameters": dict(found.parameters),
            "schedule_id": found.schedule_id,
            "error": None if found.error is None else str(found.error),
            "steps": [s.status.value for s in found.steps or []],
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._portal_cm.__exit__(None, None, None)
        self.engine.close()


class TortureRun:
    """One seed of one scenario (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        db: str | Path,
        backend: str,
        workdir: Path,
        server: str | None = None,
    ) -> None:
        self.plan = plan
        self.backend = backend
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(plan, db, backend, workdir, server)
        self.db = db
        self.rng = random.Random(f"{plan.scenario}:{plan.seed}:load")
        self.observed = Observed(t0=time.monotonic_ns())
        self.workflow_ids: list[str] = []
        self.schedule_ids: list[str] = []
        self.nonce_of: dict[str, dict[str, Any]] = {}  # execution id -> parameters
        self.delivered: set[str] = set()
        self.blocked_signal: set[str] = set()
        self.stop_load = threading.Event()
        self.stop_all = threading.Event()
        self.notes: list[str] = []
        self.lock = threading.Lock()

    # -- REST -------------------------------------------------------------------------------

    def request(
        self, node: int, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT
    ) -> httpx.Response | None:
        """A request to node ``node`` (the next live one when it is down); ``None``: no answer."""
        nodes = self.cluster.nodes
        for k in range(len(nodes)):
            target = nodes[(node + k) % len(nodes)]
            if not target.alive() or target.read_port() is None:
                continue
            try:
                return target.client().request(method, path, json=body, timeout=timeout)
            except httpx.HTTPError:
                return None
        return None

    def _ok(self, node: int, method: str, path: str, body: Any = None) -> Any:
        """A setup request, retried (another node, later) until it succeeds."""
        deadline = time.monotonic() + 30
        last = ""
        attempt = 0
        while time.monotonic() < deadline:
            response = self.request(node + attempt, method, path, body)
            attempt += 1
            if response is not None and response.status_code in (200, 201, 202):
                return response.json()["data"]
            last = "no answer" if response is None else f"{response.status_code} {response.text}"
            time.sleep(0.2)
        raise AssertionError(f"setup request {method} {path} kept failing: {last}")

    # -- phases -----------------------------------------------------------------------------

    def run(self) -> Result:
        started = time.monotonic()
        observer = _Observer(self.db)
        phases: dict[str, float] = {}
        try:
            self.observer = observer
            self.cluster.token = observer.engine.tokens.create_token("usr_torture")
            for name, phase in (
                ("start", self.cluster.start),
                ("setup", self._setup),
                ("load", self._load),
                ("drain", self._drain),
                ("collect", self._collect),
            ):
                begin = time.monotonic()
                phase()
                phases[name] = round(time.monotonic() - begin, 1)
        finally:
            self.stop_all.set()
            self.stop_load.set()
            self.cluster.stop()
            observer.close()
        self._note_deaths()
        lines = self.cluster.ledger.read_text().splitlines() if self.cluster.ledger.exists() else []
        ledger = torture_checks.parse_ledger(lines)
        problems = torture_checks.check(ledger, self.observed)
        summary = torture_checks.summary(ledger, self.observed)
        summary["phases"] = phases
        self._check_faults_fired(ledger)
        return Result(
            plan=self.plan,
            problems=problems,
            summary=summary,
            workdir=self.workdir,
            seconds=time.monotonic() - started,
            notes=self.notes,
        )

    def _setup(self) -> None:
        wf = self._ok(
            0, "POST", "/workflows", {"name": "torture", "type": torture_plugin.TYPE_NAME}
        )
        self.workflow_ids.append(wf["id"])
        self._ok(1 % self.plan.nodes, "POST", f"/workflows/{wf['id']}/activate")
        for i, spec in enumerate(self.plan.schedules):
            self._ok(i, "POST", f"/workflows/{wf['id']}/schedules", spec)

    def _load(self) -> None:
        threads = [
            threading.Thread(target=self._deliver_signals, name="signals", daemon=True),
            threading.Thread(target=self._watch, name="watch", daemon=True),
        ]
        if self.plan.edits:
            threads.extend(
                threading.Thread(target=self._edit_loop, args=(k,), name="edits", daemon=True)
                for k in range(EDITORS)
            )
        if self.plan.chaos:
            threads.append(threading.Thread(target=self._chaos, name="chaos", daemon=True))
        for thread in threads:
            thread.start()
        self._threads = threads
        begin = time.monotonic()
        with ThreadPoolExecutor(max_workers=12, thread_name_prefix="load") as pool:
            futures = []
            for action in self.plan.actions:
                delay = begin + action.at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(self._act, action))
            rest = begin + self.plan.load_seconds - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            self.stop_load.set()
            deadline = time.monotonic() + SYNC_TIMEOUT + 15
            for future in futures:
                try:
                    future.result(timeout=max(0.1, deadline - time.monotonic()))
                except Exception as exc:  # a load thread's bug must not hide the run's outcome
                    self.notes.append(f"load action failed in the harness: {exc!r}")
        for thread in threads:
            if thread.name in ("edits", "chaos"):
                thread.join(timeout=30)

    def _act(self, action: Action) -> None:
        params = dict(action.params)
        params["nonce"] = secrets.token_hex(6)
        wf = self.workflow_ids[0]
        if action.kind == "sync":
            body = {
                "parameters": params,
                "execution_options": {"wait_for_completion": True, "timeout_seconds": SYNC_TIMEOUT},
            }
            response = self.request(
                action.node, "POST", f"/workflows/{wf}/execute", body, timeout=SYNC_TIMEOUT + 10
            )
        else:
            body = {"parameters": params}
            if action.kind == "replay":
                body["idempotency_key"] = params["key"]
            response = self.request(action.node, "POST", f"/workflows/{wf}/execute_async", body)
        if response is None:
            return
        if response.status_code == 503 and "QUEUE_FULL" in response.text:
            with self.lock:
                self.observed.refused_nonces.add(params["nonce"])
            return
        if response.status_code not in (200, 202):
            return
        eid = response.json()["data"]["execution_id"]
        with self.lock:
            self.nonce_of[eid] = params
        if action.kind == "cancel":
            time.sleep(action.cancel_after)
            with self.lock:
                self.observed.cancel_requested.add(eid)
            self.request(action.cancel_node, "POST", f"/workflow_executions/{eid}/cancel")
        elif action.kind == "replay":
            self._replay(action, eid, params)

    def _replay(self, action: Action, eid: str, params: dict[str, Any]) -> None:
        """Once the original runs its long step, replay its key with a 1 s wait: only the
        replay may give up (504); the original has no timeout and must complete."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not self.stop_all.is_set():
            status = self.observer.call(self.observer.engine.executions.get, eid).status.value
            if status != "queued":
                break
            time.sleep(0.05)
        body = {
            "parameters": params,
            "idempotency_key": params["key"],
            "execution_options": {"wait_for_completion": True, "timeout_seconds": 1},
        }
        self.request(action.node + 1, "POST", f"/workflows/{self.workflow_ids[0]}/execute", body)

    def _deliver_signals(self) -> None:
        """Deliver each waiting execution's signal or approval, once it waits, while the pollers run."""
        rng = random.Random(f"{self.plan.scenario}:{self.plan.seed}:signals")
        while not self.stop_all.is_set():
            try:
                waiting = self.observer.all_executions(self.workflow_ids, status="waiting")
            except Exception as exc:
                self.notes.append(f"listing waiting executions failed: {exc!r}")
                time.sleep(0.5)
                continue
            rng.shuffle(waiting)
            for eid in waiting:
                if eid in self.delivered:
                    continue
                with self.lock:
                    params = self.nonce_of.get(eid)
                if params is None:  # its request got no answer: read what it waits for
                    params = self.observer.execution(eid).get("parameters") or {}
                    with self.lock:
                        self.nonce_of[eid] = params
                node = rng.randrange(self.plan.nodes)
                body: dict[str, Any]
                if params.get("wait") == "approval":
                    path, body = "approve", {"data": {"nonce": params.get("nonce")}}
                else:
                    path = "signal"
                    body = {
                        "name": torture_plugin.SIGNAL_NAME,
                        "payload": {"nonce": params.get("nonce")},
                    }
                response = self.request(node, "POST", f"/workflow_executions/{eid}/{path}", body)
                if response is not None and response.status_code in (200, 409):
                    self.delivered.add(eid)
            self.stop_all.wait(0.1)

    def _edit_loop(self, editor: int) -> None:
        """Edit the schedules' descriptions in a loop, through every process in turn."""
        rng = random.Random(f"{self.plan.scenario}:{self.plan.seed}:edits:{editor}")
        schedules = self._schedule_ids()
        n = 0
        while not self.stop_load.is_set() and schedules:
            sid = rng.choice(schedules)
            n += 1
            body = {"description": f"edit {editor}.{n}"}
            self.request(editor + n, "PUT", f"/workflow_schedules/{sid}", body)
            self.stop_load.wait(rng.uniform(0.0, 0.05))

    def _chaos(self) -> None:
        begin = time.monotonic()
        for event in self.plan.chaos:
            delay = begin + event.at - time.monotonic()
            if delay > 0 and self.stop_load.wait(delay):
                return
            if event.kind == "terminate":
                t = time.monotonic_ns()
                try:
                    self.cluster.terminate_connections()
                except Exception as exc:
                    self.notes.append(f"pg_terminate_backend failed: {exc!r}")
                    continue
                self.observed.terminations.append(t)
                continue
            node = self.cluster.nodes[event.node]
            with self.cluster.lock:
                if not node.alive():
                    continue
                self.observed.killed[node.label] = node.kill()
            time.sleep(event.down)
            with self.cluster.lock:
                node.start()
            try:
                node.wait_ready(time.monotonic() + START_SECONDS)
            except AssertionError as exc:
                self.notes.append(str(exc))

    def _watch(self) -> None:
        """A process that exits without being killed is noted (with its stderr) and restarted."""
        while not self.stop_all.is_set():
            with self.cluster.lock:
                for node in self.cluster.nodes:
                    if node.proc is None or node.killed or node.proc.poll() is None:
                        continue
                    self.observed.died[node.label] = (
                        time.monotonic_ns(),
                        node.proc.returncode,
                        node.stderr_tail(),
                    )
                    node.start()
            self.stop_all.wait(0.2)

    def _note_deaths(self) -> None:
        for node in self.cluster.nodes:
            if node.proc is not None and not node.killed and node.proc.poll() is not None:
                self.observed.died.setdefault(
                    node.label, (time.monotonic_ns(), node.proc.returncode, node.stderr_tail())
                )

    def _schedule_ids(self) -> list[str]:
        ids: list[str] = []
        for wf in self.workflow_ids:
            got = self.observer.call(
                self.observer.engine.schedules.list, workflow_id=wf, page_size=100
            )
            ids.extend(s.id for s in got.items)
        return ids

    def _drain(self) -> None:
        """Disable the schedules, then give every execution ``DRAIN_SECONDS`` to end."""
        self.schedule_ids = self._schedule_ids()
        for i, sid in enumerate(self.schedule_ids):
            self._ok(i, "PUT", f"/workflow_schedules/{sid}", {"enabled": False})
        begin = time.monotonic()
        pending: list[str] = []
        while time.monotonic() - begin < DRAIN_SECONDS:
            pending = [
                eid
                for status in ("queued", "running", "waiting")
                for eid in self.observer.all_executions(self.workflow_ids, status=status)
            ]
            if not pending:
                break
            time.sleep(0.5)
        self.observed.drain_seconds = DRAIN_SECONDS
        for eid in pending:
            status = self.observer.execution(eid)["status"]
            if status not in TERMINAL:
                self.observed.stuck[eid] = status

    def _collect(self) -> None:
        for eid in self.observer.all_executions(self.workflow_ids):
            self.observed.executions[eid] = self.observer.execution(eid)
        for sid in self.schedule_ids:
            entries: list[dict[str, Any]] = []
            page = 1
            while True:
                got = self.observer.call(
                    self.observer.engine.schedules.history, sid, page=page, page_size=100
                )
                entries.extend(
                    {
                        "due_at": e.due_at.isoformat() if e.due_at else None,
                        "outcome": e.outcome,
                        "execution_id": e.execution_id,
                    }
                    for e in got.items
                )
                if page >= got.pagination.total_pages:
                    break
                page += 1
            self.observed.history[sid] = entries

    def _check_faults_fired(self, ledger: Ledger) -> None:
        planned = sum(len(f) for f in self.plan.faults)
        if planned and len(ledger.faults) < planned:
            fired = {(f.node.split(".")[0], f.index) for f in ledger.faults}
            missing = [
                f"n{i}:{f['method']}[{f.get('op') or '*'}]#{f['nth']}"
                for i, fs in enumerate(self.plan.faults)
                for k, f in enumerate(fs)
                if (f"n{i}", k) not in fired
            ]
            self.notes.append(f"planned faults that never fired (too few calls): {missing}")


def run_seed(
    scenario: Scenario,
    seed: int,
    backend: str,
    db: str | Path,
    workdir: Path,
    server: str | None = None,
) -> Result:
    """Plan and run one seed; the result lists every broken invariant."""
    plan = make_plan(scenario, seed, backend)
    return TortureRun(plan, db, backend, workdir, server).run()
