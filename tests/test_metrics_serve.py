"""Metrics and JSON logs of a real ``abi-engine serve`` (#15, points 1 and 3): scraped with a
token (``GET /api/v1/metrics``, scope ``metrics:read``) and without one on
``--metrics-port``; ``--log-format json`` writes one object per line, one for each
failed execution with its ids and error. On every engine backend."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from runtime_plugins.helpers import DatabaseFactory
from served_engines import WAYS, served
from test_cli import Server, auth, run_cli, start_server  # noqa: F401 - a fixture

from abi.workflows import WorkflowExecutor, WorkflowManager
from abi_engine.errors import Forbidden

METRICS_LINE = re.compile(r"^metrics: (http://\S+/metrics)$")
CUSTOM = {"steps": [{"name": "add", "action": "transform", "expressions": {"s": "1 + 1"}}]}
FAILING = {
    "steps": [{"name": "bad", "action": "transform", "expressions": {"a": "parameters['x']"}}]
}


def token(db: str, cwd: Path, *scopes: str) -> str:
    extra = [arg for scope in scopes for arg in ("--scope", scope)]
    result = run_cli("token", "create", "--db", db, "--user", "usr_ops", *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def metrics_url(server: Server) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in server.stderr:
            match = METRICS_LINE.match(line)
            if match:
                return match.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no metrics line: {server.output()}")


def counter(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def run_workflow(client: httpx.Client, headers: dict[str, str], config: dict[str, Any]) -> str:
    body = {"name": "m", "type": "custom", "configuration": config}
    created = client.post("/workflows", headers=headers, json=body)
    assert created.status_code == 201, created.text
    wf = created.json()["data"]["id"]
    assert client.post(f"/workflows/{wf}/activate", headers=headers).status_code == 200
    return str(wf)


@pytest.mark.slow
def test_serve_metrics_both_ways_and_json_logs(
    tmp_path: Path,
    databases: DatabaseFactory,
    start_server: Callable[..., Server],  # noqa: F811 - the fixture imported above
) -> None:
    """Executions (completed and failed) move the counters seen through both doors; no
    token is 401, a token without metrics:read is 403; every log line is a JSON object
    and the failed execution has its own line with its ids and error."""
    db = str(databases())
    admin = token(db, tmp_path)  # every scope, metrics:read among them
    reader = token(db, tmp_path, "workflows:read")
    server = start_server(
        "serve", "--db", db, "--port", "0", "--metrics-port", "0", "--log-format", "json"
    )
    api = server.wait_serving()
    scrape_url = metrics_url(server)
    with httpx.Client(base_url=api, timeout=30) as client:
        missing = client.get("/metrics")
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "UNAUTHORIZED"
        forbidden = client.get("/metrics", headers=auth(reader))
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["details"]["required_scope"] == "metrics:read"
        before = client.get("/metrics", headers=auth(admin))
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        assert counter(before.text, "abi_executions_started_total") == 0
        good = run_workflow(client, auth(admin), CUSTOM)
        for _ in range(3):
            ran = client.post(f"/workflows/{good}/execute", headers=auth(admin), json={})
            assert ran.status_code == 200, ran.text
        bad = run_workflow(client, auth(admin), FAILING)
        failed = client.post(f"/workflows/{bad}/execute", headers=auth(admin), json={})
        failed_id = failed.json()["error"]["details"]["execution_id"]
        after = client.get("/metrics", headers=auth(admin)).text
    assert counter(after, "abi_executions_started_total", type="custom") == 4
    assert counter(after, "abi_executions_finished_total", status="completed") == 3
    assert counter(after, "abi_executions_finished_total", status="failed") == 1
    assert counter(after, "abi_step_duration_seconds_count", type="custom", step="add") == 3
    open_port = httpx.get(scrape_url, timeout=30)  # no token on the metrics port
    assert open_port.status_code == 200
    assert counter(open_port.text, "abi_executions_finished_total", status="failed") == 1
    assert httpx.get(scrape_url.removesuffix("/metrics") + "/api/v1/health").status_code == 404
    assert server.stop() == 0, server.output()
    records = [json.loads(line) for line in server.stderr if line.startswith("{")]
    assert records, server.output()
    for line in server.stderr:  # nothing but JSON, besides the start-up announcement
        assert line.startswith("{") or line.startswith(
            ("abi-engine serving", "dashboard:", "metrics:")
        ), line
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    [failure] = [r for r in records if r.get("execution_id") == failed_id]
    assert failure["level"] == "warning"
    assert failure["logger"] == "abi_engine.executor"
    assert failure["workflow_id"] == bad
    assert failure["status"] == "failed"
    assert failure["error"]["code"] == "WORKFLOW_EXECUTION_ERROR"
    assert failure["error"]["step"] == "bad"


@pytest.mark.parametrize("way", WAYS)
def test_python_api_reads_metrics(databases: DatabaseFactory, way: str) -> None:
    """Every facade class reads the metrics text, in-process and over HTTP; a token
    without metrics:read is refused the same way both."""
    with served(databases()) as api:
        executor = api.facade(WorkflowExecutor, way)
        manager = api.facade(WorkflowManager, way)
        wf = manager.create_workflow({"name": "m", "type": "custom", "configuration": CUSTOM})
        manager.activate_workflow(wf.id)
        executor.execute_workflow(wf.id, {})
        text = executor.get_metrics()
        assert counter(text, "abi_executions_started_total", type="custom") == 1
        assert manager.get_metrics().startswith("# HELP")
        reader = api.engine.tokens.create_token("usr_r", ["workflows:read"])
        with pytest.raises(Forbidden):
            api.facade(WorkflowExecutor, way, token=reader).get_metrics()
