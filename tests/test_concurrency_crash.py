"""kill -9 while an execution holds a concurrency slot: the slot is a lease, so it is
never leaked (#16).

Real ``abi-engine serve`` processes on one database (a SQLite file, or a PostgreSQL
schema), a real SIGKILL, real HTTP (the helpers of ``test_crash_recovery``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_crash_recovery import Server, _token

pytestmark = pytest.mark.slow

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


def _get(client: httpx.Client, path: str) -> Any:
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def _until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_slot_held_by_a_killed_process_frees_when_its_lease_ends(
    tmp_path: Path,
    every_database: Callable[..., str | Path],
    servers: list[Server],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key with limit 1: execution A runs in process 1; B (same key) is asked for and
    waits queued (``concurrency_limit``) behind A's slot; process 1 is killed
    (SIGKILL) mid-step. Once the lease of the dead process ends (or, on SQLite, its
    death is seen), process 2 takes A over, then B; both complete, one after the
    other, and no slot is left held.

    B is asked for before the kill, while A has seconds of steps left (three steps
    of two seconds): asked for after it, B could find A already taken over and
    finished on a loaded machine, and would rightly not wait."""
    monkeypatch.setenv("CRASH_STEP_SECONDS", "2.0")
    db, log = every_database("slots.db"), tmp_path / "steps.log"
    token = _token(db, log)
    headers = {"Authorization": f"Bearer {token}"}
    first = Server(db, log, "--lease-seconds", "3")
    servers.append(first)
    body = {"name": "k", "type": "crash_steps", "concurrency": {"key": "parameters.k", "limit": 1}}
    with httpx.Client(base_url=first.base, headers=headers, timeout=10) as client:
        wf = client.post("/workflows", json=body).json()["data"]
        assert client.post(f"/workflows/{wf['id']}/activate").status_code == 200
        a = client.post(f"/workflows/{wf['id']}/execute_async", json={"parameters": {"k": "x"}})
        a_id = a.json()["data"]["execution_id"]
        _until(lambda: log.exists() and a_id in log.read_text(), "A started")
        b = client.post(f"/workflows/{wf['id']}/execute_async", json={"parameters": {"k": "x"}})
        assert b.status_code == 202, b.text
        b_id = b.json()["data"]["execution_id"]
        waiting = _get(client, f"/workflow_executions/{b_id}")
        assert (waiting["status"], waiting["queued_reason"]) == ("queued", "concurrency_limit")
        assert waiting["concurrency_key"] == "x"
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    killed_at = time.monotonic()

    second = Server(db, log, "--lease-seconds", "3")
    servers.append(second)
    with httpx.Client(base_url=second.base, headers=headers, timeout=10) as client:
        done = {
            i: _until(
                lambda i=i: (
                    (d := _get(client, f"/workflow_executions/{i}"))["status"] in TERMINAL and d
                ),
                f"{i} ended",
            )
            for i in (a_id, b_id)
        }
        slots = _get(client, f"/workflows/{wf['id']}/concurrency")["slots"]
    assert {d["status"] for d in done.values()} == {"completed"}
    assert done[b_id]["started_at"] >= done[a_id]["completed_at"]
    assert slots == []
    assert time.monotonic() - killed_at < 60
    second.stop()
    assert second.proc.returncode == 0
