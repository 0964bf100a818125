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
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import torture_checks
import torture_plugin
from torture_checks import TERMINAL, Ledger, Observed
from torture_cluster import HTTP_TIMEOUT, START_SECONDS, Cluster
from torture_plan import Action, Plan, Scenario, make_plan

from abi_engine import Engine

#: Seconds every execution has to end once the load stopped (before the process is judged).
DRAIN_SECONDS = float(os.environ.get("ABI_TORTURE_DRAIN", "60"))
#: Threads editing schedules at once in scenarios with edits.
EDITORS = 4
SYNC_TIMEOUT = 30


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
        self._threads: list[threading.Thread] = []

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
        broken: list[str] = []
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
                try:
                    phase()
                except Exception as exc:  # reported with the seed, never as a bare error
                    broken.append(f"the run could not go on: its {name} phase failed: {exc}")
                    break
                phases[name] = round(time.monotonic() - begin, 1)
        finally:
            self.stop_all.set()
            self.stop_load.set()
            for thread in self._threads:
                thread.join(timeout=START_SECONDS)
            self._note_deaths()
            with self.cluster.lock:
                self.cluster.stop()
            observer.close()
        lines = self.cluster.ledger.read_text().splitlines() if self.cluster.ledger.exists() else []
        ledger = torture_checks.parse_ledger(lines)
        problems = broken + torture_checks.check(ledger, self.observed)
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
                self._deliver_round(rng)
            except (
                Exception
            ) as exc:  # keep delivering: a lost thread would look like a stuck engine
                self.notes.append(f"delivering signals failed once: {exc!r}")
            self.stop_all.wait(0.1)

    def _deliver_round(self, rng: random.Random) -> None:
        waiting = self.observer.all_executions(self.workflow_ids, status="waiting")
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
            body: dict[str, Any]
            if params.get("wait") == "approval":
                path, body = "approve", {"data": {"nonce": params.get("nonce")}}
            else:
                path = "signal"
                body = {
                    "name": torture_plugin.SIGNAL_NAME,
                    "payload": {"nonce": params.get("nonce")},
                }
            node = rng.randrange(self.plan.nodes)
            response = self.request(node, "POST", f"/workflow_executions/{eid}/{path}", body)
            if response is not None and response.status_code in (200, 409):
                self.delivered.add(eid)

    def _edit_loop(self, editor: int) -> None:
        """Edit the schedules' descriptions in a loop, through every process in turn."""
        rng = random.Random(f"{self.plan.scenario}:{self.plan.seed}:edits:{editor}")
        try:
            schedules = self._schedule_ids()
        except Exception as exc:
            self.notes.append(f"editor {editor} could not list the schedules: {exc!r}")
            return
        n = 0
        while not self.stop_load.is_set() and schedules:
            sid = rng.choice(schedules)
            n += 1
            body = {"description": f"edit {editor}.{n}"}
            self.request(editor + n, "PUT", f"/workflow_schedules/{sid}", body)
            self.stop_load.wait(rng.uniform(0.0, 0.02))

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
            if self.stop_all.wait(event.down):
                return
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
                    if not self.stop_all.is_set():
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
