"""``abi-engine schedules backfill`` (#15, #17) as a real subprocess against a real uvicorn
server, on both backends: a dry run, a backfill followed to its end with progress lines
on stderr (no terminal: one line per change), Ctrl-C cancelling with
``--cancel-on-interrupt``, and bad input refused naming the field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from served_engines import Served, served

from abi_engine.ids import format_time
from abi_engine.runtime.settings import RuntimeSettings


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    env.update(COLUMNS="100", PYTHONUNBUFFERED="1")
    return env


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "abi_engine", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def server(databases: Callable[..., Any]) -> Iterator[Served]:
    # One worker and a queue of two: a backfill of slow runs waits for room, so it is
    # still running when the test interrupts the command.
    with served(databases(), runtime=RuntimeSettings(workers=1, queue_size=2)) as running:
        yield running


def _schedule(server: Served, seconds: float) -> tuple[str, str]:
    client = server.client()
    steps = [{"name": "wait", "action": "delay", "seconds": seconds}]
    body = {"name": "w", "type": "custom", "configuration": {"steps": steps}}
    workflow_id = client.post("/api/v1/workflows", json=body).json()["data"]["id"]
    assert client.post(f"/api/v1/workflows/{workflow_id}/activate").status_code == 200
    schedule = client.post(
        f"/api/v1/workflows/{workflow_id}/schedules",
        json={"name": "hourly", "schedule_type": "cron", "cron_expression": "0 * * * *"},
    ).json()["data"]
    return workflow_id, schedule["id"]


def _range(hours: int) -> tuple[str, str]:
    last = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return format_time(last - timedelta(hours=hours - 1)), format_time(last)


def test_backfill_from_the_command_line(server: Served, tmp_path: Path) -> None:
    _, schedule_id = _schedule(server, 0)
    remote = ("--url", server.base_url, "--token", server.token)
    start, end = _range(4)
    span = ("--start", start, "--end", end)
    dry = cli("schedules", "backfill", schedule_id, *span, "--dry-run", *remote, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == start
    assert "4 due times would run" in dry.stdout
    done = cli(
        "schedules", "backfill", schedule_id, *span, "--poll-seconds", "0.2", *remote, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "completed: 4 started, 0 skipped, 0 failed of 4" in done.stdout
    lines = done.stderr.splitlines()  # not a terminal: one plain line per change, no \r
    assert lines
    assert all("\r" not in line for line in lines)
    assert lines[-1].endswith("4/4")
    again = cli(
        "schedules",
        "backfill",
        schedule_id,
        *span,
        "--json",
        "--poll-seconds",
        "0.2",
        *remote,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    run = json.loads(again.stdout)
    assert (run["status"], run["started"], run["skipped"]) == ("completed", 0, 4)
    assert again.stderr == ""  # --json draws no progress
    bad = cli(
        "schedules", "backfill", schedule_id, *span, "--max-runs", "5000", *remote, cwd=tmp_path
    )
    assert bad.returncode == 1
    assert "INVALID_REQUEST" in bad.stderr
    assert "max_runs" in bad.stderr
    assert "Traceback" not in bad.stderr
    local = cli(
        "schedules", "backfill", schedule_id, *span, "--db", str(tmp_path / "x.db"), cwd=tmp_path
    )
    assert local.returncode != 0
    assert "--url" in local.stderr


#: ``python -m abi_engine`` with Ctrl-C as in a terminal: a test run started in the
#: background (a shell without job control, as CI's may be) has SIGINT ignored, a child
#: inherits that, and Python then installs no KeyboardInterrupt handler.
_CLI_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " sys.argv[0] = 'abi_engine'; runpy.run_module('abi_engine', run_name='__main__')"
)


def _interrupt(server: Served, tmp_path: Path, *extra: str) -> tuple[int, str, str, str]:
    """Start a slow backfill from the command line, Ctrl-C it once it started something;
    (exit status, stdout, stderr, schedule id)."""
    _, schedule_id = _schedule(server, 2)
    start, end = _range(40)
    process = subprocess.Popen(
        [
            *(sys.executable, "-c", _CLI_WITH_CTRL_C, "schedules", "backfill", schedule_id),
            *("--start", start, "--end", end, "--poll-seconds", "0.2", *extra),
            *("--url", server.base_url, "--token", server.token),
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    client = server.client()
    try:
        deadline = time.monotonic() + 60
        while True:  # until the backfill exists and has started something
            listed = client.get(
                "/api/v1/workflow_executions", params={"schedule_id": schedule_id}
            ).json()["data"]
            if listed["pagination"]["total_items"]:
                break
            assert time.monotonic() < deadline, "the backfill did not start"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, out, err, schedule_id


def test_ctrl_c_cancels_the_backfill(server: Served, tmp_path: Path) -> None:
    status, out, err, schedule_id = _interrupt(server, tmp_path, "--cancel-on-interrupt", "--json")
    assert status == 130, err
    run = json.loads(out)
    assert run["status"] == "cancelled", run
    assert run["started"] < 40
    read = (
        server.client()
        .get(f"/api/v1/workflow_schedules/{schedule_id}/backfills/{run['id']}")
        .json()["data"]
    )
    assert read["status"] == "cancelled"


def test_ctrl_c_without_a_terminal_leaves_the_backfill_running(
    server: Served, tmp_path: Path
) -> None:
    """No terminal to ask on: the backfill goes on on the server, and the command says how to
    cancel it."""
    status, _, err, schedule_id = _interrupt(server, tmp_path)
    assert status == 130, err
    assert "goes on on the server" in err
    assert "Traceback" not in err
    backfill_id = err.split("backfill ")[-1].split()[0]
    read = (
        server.client()
        .get(f"/api/v1/workflow_schedules/{schedule_id}/backfills/{backfill_id}")
        .json()["data"]
    )
    assert read["status"] == "running"
    assert (
        server.client()
        .post(f"/api/v1/workflow_schedules/{schedule_id}/backfills/{backfill_id}/cancel")
        .json()["data"]["status"]
        == "cancelled"
    )
