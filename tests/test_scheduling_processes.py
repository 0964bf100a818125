"""Exactly once across processes: two ``abi-engine serve`` on one database (SQLite, PostgreSQL).

Thirty schedules firing every second are created over REST (half through
each server); both servers run their scheduler loops on the same database for
a few seconds (each run lasts a second, so the runs in flight show which
process fired them: both do) and are stopped. Every due time between a schedule's first and
its last firing must have fired exactly once: no duplicates (the claim in
storage) and no gaps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from abi_engine import Engine

pytestmark = pytest.mark.slow

SCHEDULES = 30
RUN_SECONDS = 4.5
SERVING = re.compile(r"abi-engine serving (http://\S+/api/v1) \(db: .+\)")


class Serve:
    """One ``python -m abi_engine serve`` subprocess with its stderr in a file."""

    def __init__(self, db: str | Path, log: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abi_engine", "serve", "--db", str(db), "--port", "0", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    def url(self, timeout: float = 30.0) -> str:
        """Wait for the serving line; return the API base URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = SERVING.search(self.log.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"abi-engine serve did not start:\n{self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM, then wait (kill after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no exit after SIGTERM:\n{self.log.read_text()}") from None
        finally:
            self._err.close()


@contextmanager
def _two_servers(
    tmp_path: Path, every_database: Callable[..., str | Path], *args: str
) -> Iterator[tuple[str | Path, list[Serve]]]:
    db = every_database("shared.db")
    started = [Serve(db, tmp_path / f"serve-{i}.log", *args) for i in range(2)]
    try:
        yield db, started
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
            server._err.close()


@pytest.fixture
def servers(
    tmp_path: Path, every_database: Callable[..., str | Path]
) -> Iterator[tuple[str | Path, list[Serve]]]:
    """Two ``abi-engine serve`` on one database."""
    with _two_servers(tmp_path, every_database) as found:
        yield found


@pytest.fixture
def unlimited_servers(
    tmp_path: Path, every_database: Callable[..., str | Path]
) -> Iterator[tuple[str | Path, list[Serve]]]:
    """Two ``abi-engine serve`` on one database, without a rate limit (a tight edit loop)."""
    with _two_servers(tmp_path, every_database, "--rate-limit", "0") as found:
        yield found


def _utc_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _query(db: str | Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (portable SQL, no parameters) on the SQLite file or PostgreSQL URL."""
    if isinstance(db, str) and db.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db) as pg:
            return [tuple(row) for row in pg.execute(sql).fetchall()]
    with sqlite3.connect(db) as conn:
        rows = conn.execute(sql).fetchall()
    conn.close()
    return rows


def _token(db: str | Path) -> str:
    """A token stored in the shared database, as ``abi-engine token create`` makes one."""
    engine = Engine(db)
    try:
        return engine.tokens.create_token("usr_p")
    finally:
        engine.close()


def _ok(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]


def test_two_serve_processes_fire_each_due_time_exactly_once(
    servers: tuple[str | Path, list[Serve]],
) -> None:
    """Two processes on one database: every due time of 30 one-second schedules fires exactly once."""
    db, procs = servers
    urls = [p.url() for p in procs]
    token = _token(db)
    headers = {"Authorization": f"Bearer {token}"}
    clients = [httpx.Client(base_url=u, headers=headers, timeout=30) for u in urls]
    try:
        wf = _ok(
            clients[0].post(
                "/workflows",
                json={
                    "name": "Tick",
                    "type": "custom",
                    "configuration": {
                        "steps": [
                            {"name": "wait", "action": "delay", "seconds": 1},
                            {
                                "name": "echo",
                                "action": "transform",
                                "expressions": {"n": "parameters['n']"},
                            },
                        ]
                    },
                },
            )
        )["id"]
        _ok(clients[1].post(f"/workflows/{wf}/activate"))
        ids = [
            _ok(
                clients[i % 2].post(
                    f"/workflows/{wf}/schedules",
                    json={
                        "name": f"every second {i}",
                        "schedule_type": "interval",
                        "interval_value": 1,
                        "interval_unit": "seconds",
                        "parameters": {"n": i},
                        "overlap_policy": "allow",
                    },
                )
            )["id"]
            for i in range(SCHEDULES)
        ]
        time.sleep(RUN_SECONDS)
        # Runs still in their one-second delay belong to the process that fired them.
        owners = {
            int(owner.split(":")[-2])
            for (owner,) in _query(
                db, "SELECT DISTINCT owner FROM executions WHERE owner IS NOT NULL"
            )
        }
    finally:
        for client in clients:
            client.close()
    assert owners == {p.proc.pid for p in procs}, "both processes fire schedules"
    assert [p.stop() for p in procs] == [0, 0]

    fired = _query(
        db, "SELECT schedule_id, due_at, execution_id FROM schedule_history WHERE outcome = 'fired'"
    )
    other = _query(
        db, "SELECT outcome, count(*) FROM schedule_history WHERE outcome != 'fired' GROUP BY 1"
    )
    executions = dict(
        _query(db, "SELECT id, schedule_id FROM executions WHERE schedule_id IS NOT NULL")
    )
    anchors = dict(_query(db, "SELECT id, anchor_at FROM schedules"))
    statuses = Counter(
        s for (s,) in _query(db, "SELECT status FROM executions WHERE schedule_id IS NOT NULL")
    )

    assert other == [], other
    per_due = Counter((schedule_id, due) for schedule_id, due, _ in fired)
    duplicates = {key: n for key, n in per_due.items() if n > 1}
    assert duplicates == {}
    # Each firing started exactly one execution, recorded with its schedule.
    assert sorted(e for _, _, e in fired) == sorted(executions)
    assert all(executions[e] == s for s, _, e in fired)
    assert set(statuses) <= {"completed", "queued", "running"}, statuses
    assert statuses["completed"] >= len(executions) - 3 * SCHEDULES

    second = timedelta(seconds=1)
    for schedule_id in ids:
        dues = sorted(_utc_ms(due) for s, due, _ in fired if s == schedule_id)
        anchor = _utc_ms(anchors[schedule_id])
        assert dues, f"{schedule_id} never fired"
        # From the first due time on, one firing per second, none missing.
        assert dues == [anchor + second * k for k in range(1, len(dues) + 1)], schedule_id
        assert len(dues) >= int(RUN_SECONDS) - 2, (schedule_id, len(dues))


EDITED_SCHEDULES = 6
EDIT_SECONDS = 12.0
#: A third process: one task per schedule updates its description in a tight loop (through
#: ``engine.schedules.update``, as the REST operation does) and prints the edits made.
#: It runs the group committer (so an update's read and write are apart, as when serving)
#: but no scheduler.
EDITOR = """
import json, sys, time
import anyio
from abi_engine import Engine

async def main(db, ids, seconds):
    engine = Engine(db)
    edits = dict.fromkeys(ids, 0)
    deadline = time.monotonic() + seconds

    async def edit(schedule_id):
        while time.monotonic() < deadline:
            await engine.schedules.update(schedule_id, {"description": str(edits[schedule_id])})
            edits[schedule_id] += 1

    try:
        async with anyio.create_task_group() as tg:
            # Writes go through the group committer, as in a serving process; no scheduler.
            await tg.start(engine.runtime.committer.run)
            async with anyio.create_task_group() as editors:
                for schedule_id in ids:
                    editors.start_soon(edit, schedule_id)
            tg.cancel_scope.cancel()
    finally:
        engine.close()
    print(json.dumps(edits))

anyio.run(main, sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]))
"""


def test_editing_schedules_while_two_processes_fire_them_fires_each_due_time_once(
    unlimited_servers: tuple[str | Path, list[Serve]],
) -> None:
    """A third process edits descriptions in a tight loop while two processes fire one-second
    schedules: every due time still fires exactly once (no edit rewinds a firing)."""
    db, procs = unlimited_servers
    urls = [p.url() for p in procs]
    headers = {"Authorization": f"Bearer {_token(db)}"}
    # All on one grid: each firing meets the edits in flight of every schedule.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    with httpx.Client(base_url=urls[0], headers=headers, timeout=30) as client:
        wf = _ok(
            client.post(
                "/workflows",
                json={
                    "name": "Edited",
                    "type": "custom",
                    "configuration": {
                        "steps": [
                            {"name": "echo", "action": "transform", "expressions": {"n": "1"}}
                        ]
                    },
                },
            )
        )["id"]
        _ok(client.post(f"/workflows/{wf}/activate"))
        ids = [
            _ok(
                client.post(
                    f"/workflows/{wf}/schedules",
                    json={
                        "name": f"edited {i}",
                        "schedule_type": "interval",
                        "interval_value": 1,
                        "interval_unit": "seconds",
                        "start_time": start.isoformat().replace("+00:00", "Z"),
                        "overlap_policy": "allow",
                    },
                )
            )["id"]
            for i in range(EDITED_SCHEDULES)
        ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    editor = subprocess.run(
        [sys.executable, "-c", EDITOR, str(db), ",".join(ids), str(EDIT_SECONDS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=EDIT_SECONDS + 60,
        check=False,
    )
    assert editor.returncode == 0, editor.stderr
    edits = json.loads(editor.stdout)
    assert [p.stop() for p in procs] == [0, 0]
    assert min(edits.values()) >= 50, edits  # the edits really raced the firings

    fired = _query(
        db, "SELECT schedule_id, due_at, execution_id FROM schedule_history WHERE outcome = 'fired'"
    )
    per_due = Counter((schedule_id, due) for schedule_id, due, _ in fired)
    assert {key: n for key, n in per_due.items() if n > 1} == {}
    started = Counter(
        s for (s,) in _query(db, "SELECT schedule_id FROM executions WHERE schedule_id IS NOT NULL")
    )
    # One execution per due time, and every schedule kept firing, without a gap.
    assert started == Counter(schedule_id for schedule_id, _, _ in fired)
    second = timedelta(seconds=1)
    for schedule_id in ids:
        assert started[schedule_id] >= EDIT_SECONDS - 4, (schedule_id, started)
        dues = sorted(_utc_ms(due) for s, due, _ in fired if s == schedule_id)
        assert (dues[0] - start) % second == timedelta(0)
        assert dues == [dues[0] + second * k for k in range(len(dues))], schedule_id
