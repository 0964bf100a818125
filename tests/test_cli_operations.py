"""The operators' commands (executions, workflows, schedules, deliveries, prune, audit
verify) run as real subprocesses, on a SQLite file and against a running server."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from served_engines import Served, served

from abi_engine import Engine
from abi_engine.ids import format_time, new_id, utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.runtime.settings import WebhookSettings
from abi_engine.storage.records import ExecutionRecord, InsertExecution

CUSTOM = {
    "name": "Operated",
    "type": "custom",
    "configuration": {"steps": [{"name": "s", "action": "delay", "seconds": 0}]},
}


def cli(*args: str, cwd: Path, columns: int = 80, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    env.update(COLUMNS=str(columns), PYTHONUNBUFFERED="1", **extra)
    return subprocess.run(
        [sys.executable, "-m", "abi_engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def ok_json(*args: str, cwd: Path) -> Any:
    result = cli(*args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _insert(engine: Engine, workflow_id: str, status: ExecutionStatus, days_ago: float = 0) -> str:
    at = utcnow() - timedelta(days=days_ago)
    record = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=workflow_id,
        workflow_type="custom",
        status=status,
        created_at=at,
        started_at=at,
    )
    assert engine.store.apply([InsertExecution(record=record)]) == [True]
    if status is not ExecutionStatus.QUEUED:
        with sqlite3.connect(engine.db_url) as conn:
            ms = int(at.timestamp() * 1000)
            conn.execute("UPDATE executions SET completed_at = ? WHERE id = ?", (ms, record.id))
    return record.id


@pytest.fixture
def database(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A SQLite file with a workflow (retention 30 days), one queued execution, one
    finished 40 days ago and one finished today; yields (path, workflow id)."""
    path = tmp_path / "ops.db"
    engine = Engine(path)
    try:
        workflow = engine.call(engine.workflows.create, {**CUSTOM, "retention_days": 30})
        engine.stop_blocking()
        _insert(engine, workflow.id, ExecutionStatus.QUEUED)
        _insert(engine, workflow.id, ExecutionStatus.COMPLETED, days_ago=40)
        _insert(engine, workflow.id, ExecutionStatus.FAILED, days_ago=1)
    finally:
        engine.close()
    return path, workflow.id


def test_lists_and_show_on_a_database(database: tuple[Path, str], tmp_path: Path) -> None:
    """workflows list, executions list and show answer JSON with --json, and tables no
    wider than the terminal without it."""
    path, workflow_id = database
    workflows = ok_json("workflows", "list", "--db", str(path), cwd=tmp_path)
    assert [w["id"] for w in workflows["items"]] == [workflow_id]
    listed = ok_json("executions", "list", "--db", str(path), cwd=tmp_path)
    assert listed["pagination"]["total_items"] == 3
    one = listed["items"][0]["execution_id"]
    shown = ok_json("executions", "show", one, "--db", str(path), cwd=tmp_path)
    assert shown["execution_id"] == one
    for columns in (40, 72, 200):
        table = cli("executions", "list", "--db", str(path), cwd=tmp_path, columns=columns)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:3] == ["ID", "WORKFLOW", "STATUS"]
        assert len(lines) == 5  # header, three rows, the page line
        # Columns shrink down to their header's width (48 characters in all here).
        assert all(len(line) <= max(columns, 48) for line in lines[:-1]), lines
    wide = cli("executions", "list", "--db", str(path), cwd=tmp_path, columns=200).stdout
    assert one in wide  # nothing clipped when there is room


def test_the_database_may_come_from_the_environment(
    database: tuple[Path, str], tmp_path: Path
) -> None:
    """Without --db, ABI_ENGINE_DB names the database."""
    path, workflow_id = database
    result = cli("workflows", "list", "--json", cwd=tmp_path, ABI_ENGINE_DB=str(path))
    assert result.returncode == 0, result.stderr
    assert [w["id"] for w in json.loads(result.stdout)["items"]] == [workflow_id]
    missing = cli("workflows", "list", "--url", "http://127.0.0.1:9", cwd=tmp_path)
    assert missing.returncode == 2
    assert "--url needs --token" in missing.stderr


def test_cancel_is_audited_as_cli_and_verify_finds_tampering(
    database: tuple[Path, str], tmp_path: Path
) -> None:
    """executions cancel on a database cancels and is recorded as 'cli'; audit verify
    passes, then fails naming the entry changed behind its back."""
    path, _workflow_id = database
    queued = ok_json("executions", "list", "--status", "queued", "--db", str(path), cwd=tmp_path)[
        "items"
    ][0]["execution_id"]
    cancelled = ok_json("executions", "cancel", queued, "--db", str(path), cwd=tmp_path)
    assert cancelled["status"] == "cancelled"
    again = cli("executions", "cancel", queued, "--db", str(path), cwd=tmp_path)
    assert again.returncode == 1
    assert "INVALID_STATE" in again.stderr
    token = cli("token", "create", "--db", str(path), "--user", "usr_ops", cwd=tmp_path)
    assert token.returncode == 0
    verified = ok_json("audit", "verify", "--db", str(path), cwd=tmp_path)
    assert verified["ok"] is True
    assert verified["checked"] == 2  # the cancel and the token (the workflow was made in-process)
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT id, actor, action FROM audit_log ORDER BY id").fetchall()
        assert [(r[1], r[2]) for r in rows][-2:] == [
            ("cli", "execution.cancel"),
            ("cli", "token.create"),
        ]
        conn.execute("UPDATE audit_log SET actor = 'usr_mallory' WHERE action = 'execution.cancel'")
    broken = cli("audit", "verify", "--db", str(path), cwd=tmp_path)
    assert broken.returncode == 1
    cancel_id = next(r[0] for r in rows if r[2] == "execution.cancel")
    assert f"entry {cancel_id}" in broken.stdout


def test_prune_dry_run_then_prune(database: tuple[Path, str], tmp_path: Path) -> None:
    """prune --dry-run reports the execution past retention and deletes nothing; prune
    deletes it, with a progress bar on stderr."""
    path, workflow_id = database
    plan = ok_json("prune", "--dry-run", "--db", str(path), cwd=tmp_path)
    assert plan["dry_run"] is True
    assert plan["executions_by_workflow"] == {workflow_id: 1}
    assert (
        ok_json("executions", "list", "--db", str(path), cwd=tmp_path)["pagination"]["total_items"]
        == 3
    )
    done = cli("prune", "--json", "--db", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["executions"] == 1
    assert "pruning executions [" in done.stderr
    assert "1/1" in done.stderr
    text = cli("prune", "--db", str(path), cwd=tmp_path)
    assert text.stdout.startswith("deleted 0 executions")
    assert (
        ok_json("executions", "list", "--db", str(path), cwd=tmp_path)["pagination"]["total_items"]
        == 2
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(databases: Callable[..., Any]) -> Iterator[Served]:
    with served(
        databases(),
        allow_private_urls=True,
        webhook_settings=WebhookSettings(retry_schedule=(), timeout_seconds=5),
    ) as running:
        yield running


def test_commands_against_a_running_server(server: Served, tmp_path: Path) -> None:
    """With --url and --token every listing goes over REST: workflows, executions (show,
    a refused cancel), schedules and their history, deliveries and a redelivery."""
    client = server.client()
    remote = ("--url", server.base_url, "--token", server.token)
    hook = client.post(
        "/api/v1/webhooks",
        json={"url": f"http://127.0.0.1:{_closed_port()}/hook", "events": ["execution.completed"]},
    ).json()["data"]
    wf = client.post("/api/v1/workflows", json=CUSTOM).json()["data"]["id"]
    client.post(f"/api/v1/workflows/{wf}/activate")
    done = client.post(
        f"/api/v1/workflows/{wf}/execute",
        json={"parameters": {}, "execution_options": {"wait_for_completion": True}},
    ).json()["data"]
    schedule = client.post(
        f"/api/v1/workflows/{wf}/schedules",
        json={
            "name": "hourly",
            "schedule_type": "interval",
            "interval_value": 1,
            "interval_unit": "hours",
        },
    ).json()["data"]

    assert [w["id"] for w in ok_json("workflows", "list", *remote, cwd=tmp_path)["items"]] == [wf]
    listed = ok_json("executions", "list", "--workflow", wf, *remote, cwd=tmp_path)
    assert [e["execution_id"] for e in listed["items"]] == [done["execution_id"]]
    shown = ok_json("executions", "show", done["execution_id"], *remote, cwd=tmp_path)
    assert shown["status"] == "completed"
    refused = cli("executions", "cancel", done["execution_id"], *remote, cwd=tmp_path)
    assert refused.returncode == 1
    assert "INVALID_STATE" in refused.stderr
    assert "Traceback" not in refused.stderr
    schedules = ok_json("schedules", "list", *remote, cwd=tmp_path)
    assert [s["id"] for s in schedules["items"]] == [schedule["id"]]
    history = ok_json("schedules", "history", schedule["id"], *remote, cwd=tmp_path)
    assert history["items"] == []
    past = {"start": format_time(utcnow() - timedelta(hours=3)), "end": format_time(utcnow())}
    started = client.post(f"/api/v1/workflow_schedules/{schedule['id']}/backfill", json=past)
    assert started.status_code == 202, started.text
    backfills = ok_json("schedules", "backfills", schedule["id"], *remote, cwd=tmp_path)
    assert [b["id"] for b in backfills["items"]] == [started.json()["data"]["id"]]
    none = ok_json(
        "schedules", "backfills", schedule["id"], "--status", "cancelled", *remote, cwd=tmp_path
    )
    assert none["pagination"]["total_items"] == 0
    shown = cli("schedules", "backfills", schedule["id"], *remote, cwd=tmp_path, columns=200)
    assert started.json()["data"]["id"] in shown.stdout
    assert "1 in all" in shown.stdout

    def failed() -> Any:
        items = ok_json("deliveries", "list", "--webhook", hook["id"], *remote, cwd=tmp_path)[
            "items"
        ]
        return items and items[0]["status"] == "failed" and items[0]

    delivery = _until(failed, "the delivery to fail")
    table = cli("deliveries", "list", "--webhook", hook["id"], *remote, cwd=tmp_path, columns=200)
    assert delivery["id"] in table.stdout
    again = ok_json(
        "deliveries", "redeliver", "--webhook", hook["id"], delivery["id"], *remote, cwd=tmp_path
    )
    assert again["status"] == "pending"
    audit = client.get("/api/v1/audit", params={"action": "delivery.redeliver"}).json()["data"]
    assert [e["target_id"] for e in audit["items"]] == [delivery["id"]]
    assert audit["items"][0]["actor"] == "usr_spec"
    bad_token = cli(
        "workflows", "list", "--url", server.base_url, "--token", "abi_nope", cwd=tmp_path
    )
    assert bad_token.returncode == 1
    assert "UNAUTHORIZED" in bad_token.stderr


def test_against_a_real_abi_engine_serve(database: tuple[Path, str], tmp_path: Path) -> None:
    """The commands reach a real `abi-engine serve` process over REST with a token made by
    `token create`; a refused cancel is one error line; the audit chain still holds."""
    from test_cli import Server

    path, workflow_id = database
    made = cli("token", "create", "--db", str(path), "--user", "usr_ops", cwd=tmp_path)
    token = made.stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABI_ENGINE_")}
    server = Server("serve", "--db", str(path), "--port", "0", cwd=tmp_path, env=env)
    try:
        root = server.wait_serving().removesuffix("/api/v1")
        remote = ("--url", root, "--token", token)
        workflows = ok_json("workflows", "list", *remote, cwd=tmp_path)
        assert [w["id"] for w in workflows["items"]] == [workflow_id]
        # What is listed over REST is what the database holds (whatever the server has
        # done meanwhile with the queued execution).
        listed = ok_json("executions", "list", "--page-size", "100", *remote, cwd=tmp_path)
        assert listed["pagination"]["total_items"] == 3
        finished = next(e for e in listed["items"] if e["status"] == "completed")
        refused = cli("executions", "cancel", finished["execution_id"], *remote, cwd=tmp_path)
        assert refused.returncode == 1
        assert "INVALID_STATE" in refused.stderr
    finally:
        assert server.stop() == 0
    verified = ok_json("audit", "verify", "--db", str(path), cwd=tmp_path)
    assert verified["ok"] is True
