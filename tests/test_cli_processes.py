"""``abi-engine serve --processes N``: real server processes on one port and one database
(issue #18). Executions accepted through either process all run, each exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_cli import Server, _env, assert_one_line_error, auth, run_cli

pytestmark = pytest.mark.slow

#: A step recording which process ran it, and for which execution, in a file.
PLUGIN = """
import os
from abi_engine import hookimpl


@hookimpl
def abi_step_handlers(register):
    async def pid(ctx):
        with open(os.environ["PID_LOG"], "a") as log:
            log.write(f"{ctx.execution_id} {os.getpid()}\\n")
        return {"pid": os.getpid()}

    register("pid", pid)
"""
DEADLINE = 120.0


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    (tmp_path / "pidstep.py").write_text(PLUGIN)
    env = _env(
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        ABI_ENGINE_PLUGINS="pidstep",
        PID_LOG=str(tmp_path / "runs.log"),
    )
    servers: list[Server] = []

    def start_server(*args: str) -> Server:
        servers.append(Server(*args, cwd=tmp_path, env=env))
        return servers[-1]

    yield start_server
    for server in servers:
        server.close()


def _token(db: str, cwd: Path) -> str:
    result = run_cli("token", "create", "--db", db, "--user", "usr_ops", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _workflow(api: str, token: str) -> str:
    with httpx.Client(base_url=api, headers=auth(token), timeout=30) as client:
        body = {"name": "pids", "type": "custom", "configuration": {"handler": "pid"}}
        wf = str(client.post("/workflows", json=body).json()["data"]["id"])
        assert client.post(f"/workflows/{wf}/activate").status_code == 200
    return wf


def _accept(api: str, token: str, count: int, wf: str | None = None) -> list[str]:
    """``count`` execute_async requests, each on a new connection, 8 at a time."""
    wf = wf or _workflow(api, token)

    def one(i: int) -> str:
        answer = httpx.post(
            f"{api}/workflows/{wf}/execute_async",
            json={"parameters": {"i": i}},
            headers={**auth(token), "Connection": "close"},
            timeout=30,
        )
        assert answer.status_code == 202, answer.text
        return str(answer.json()["data"]["execution_id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def _runs(log: Path, expected: int) -> list[tuple[str, int]]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= expected:
            break
        time.sleep(0.2)
    return [(line.split()[0], int(line.split()[1])) for line in log.read_text().splitlines()]


def test_two_processes_run_every_accepted_execution_once(
    every_database: Callable[..., str | Path], start: Callable[..., Server], tmp_path: Path
) -> None:
    """Two processes serve one port and one database (SQLite WAL, PostgreSQL): executions
    accepted over fresh connections (120 at a time, until both processes have taken some)
    all complete, each run exactly once; SIGTERM stops all of them and exits 0."""
    db = str(every_database())
    token = _token(db, tmp_path)
    server = start("serve", "--db", db, "--port", "0", "--processes", "2", "--rate-limit", "0")
    api = server.wait_serving()
    wf = _workflow(api, token)
    accepted: list[str] = []
    pids: set[int] = set()
    while len(pids) < 2 and len(accepted) < 600:  # until both processes took some
        accepted += _accept(api, token, 120, wf)
        runs = _runs(tmp_path / "runs.log", len(accepted))
        assert sorted(e for e, _ in runs) == sorted(accepted)  # each once, none lost
        pids = {pid for _, pid in runs}
    assert len(pids) == 2, pids  # both processes ran executions
    assert server.proc.pid not in pids  # the parent serves nothing itself
    with httpx.Client(base_url=api, headers=auth(token), timeout=30) as client:
        deadline = time.monotonic() + DEADLINE
        done: set[str] = set()
        while len(done) < len(accepted) and time.monotonic() < deadline:
            for execution_id in set(accepted) - done:
                data = client.get(f"/workflow_executions/{execution_id}").json()["data"]
                if data["status"] == "completed":
                    assert data["result"]["pid"] in pids
                    done.add(execution_id)
            time.sleep(0.2)
        assert done == set(accepted)
    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"process {pid} still runs"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_process_that_dies_stops_the_others_and_fails(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    """Killing one server process makes the parent stop the other and exit 1, saying so."""
    db = str(tmp_path / "engine.db")
    token = _token(db, tmp_path)
    server = start("serve", "--db", db, "--port", "0", "--processes", "2", "--rate-limit", "0")
    api = server.wait_serving()
    _accept(api, token, 40)
    pids = {pid for _, pid in _runs(tmp_path / "runs.log", 40)}
    os.kill(next(iter(pids)), signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE
    while server.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.stop() == 1
    assert "a server process ended" in server.output()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"process {pid} still runs"


def test_killing_the_parent_stops_the_children(
    start: Callable[..., Server], tmp_path: Path
) -> None:
    """The children watch the parent: SIGKILL of the parent ends them too."""
    db = str(tmp_path / "engine.db")
    token = _token(db, tmp_path)
    server = start("serve", "--db", db, "--port", "0", "--processes", "2", "--rate-limit", "0")
    api = server.wait_serving()
    _accept(api, token, 40)
    pids = {pid for _, pid in _runs(tmp_path / "runs.log", 40)}
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + DEADLINE
    while any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        assert time.monotonic() < deadline, "the children outlived their parent"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--metrics-port", "0"), "--metrics-port"),
        (("--db", ":memory:"), ":memory:"),
        (("--processes", "0"), "must be at least 1"),
    ],
    ids=["metrics", "memory", "zero"],
)
def test_refused_combinations_are_one_line(
    tmp_path: Path, extra: tuple[str, ...], needle: str
) -> None:
    """What --processes cannot do is refused at once, in one line, exit 2."""
    args = ["serve", "--db", str(tmp_path / "engine.db"), "--port", "0", "--processes", "2"]
    result = run_cli(*args, *extra, cwd=tmp_path)
    if needle == "must be at least 1":  # argparse's own refusal: usage, then the line
        assert result.returncode == 2
        assert needle in result.stderr
        return
    assert_one_line_error(result, needle)
