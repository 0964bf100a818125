"""The engine processes of a torture run: start, kill -9, restart, drop their connections.

Each process is ``node.py`` (an :class:`abi_engine.Engine` and its REST API on
a free port of 127.0.0.1) with the torture plugin loaded through
``ABI_ENGINE_PLUGINS``, labelled ``n<index>.<generation>`` (the generation
counts restarts) so that the ledger tells processes apart even when each is
PID 1 of its own PID namespace. Every process reads a pipe whose write end only
the harness holds: when the harness dies, they exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from torture_plan import Plan

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "node.py"
#: The last line of a traceback: ``module.ExceptionName: message``.
_ERROR_LINE = re.compile(r"^(?:[a-z_]\w*\.)*[A-Z]\w*: \S")
#: Seconds a process has to start and answer ``/health``.
START_SECONDS = 60.0
HTTP_TIMEOUT = 15.0


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
