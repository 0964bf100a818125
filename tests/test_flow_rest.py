"""Reruns, pause and resume over REST (real uvicorn) and through ``abi.workflows``, in
process and remote, on each engine backend (#16)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from runtime_plugins.helpers import DatabaseFactory
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowExecutor
from abi_engine.errors import InvalidRequest, InvalidState

#: ``second`` fails unless the parameters carry ``a``.
TWO_STEPS = {
    "steps": [
        {"name": "first", "action": "transform", "expressions": {"x": "1"}},
        {"name": "second", "action": "transform", "expressions": {"a": "parameters['a']"}},
    ]
}
DELAY = {"steps": [{"name": "wait", "action": "delay", "seconds": 600}]}


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


def data_of(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def new_workflow(client: httpx.Client, configuration: dict[str, Any]) -> str:
    workflow = data_of(
        client.post(
            "/api/v1/workflows",
            json={"name": "w", "type": "custom", "configuration": configuration},
        ),
        201,
    )
    data_of(client.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    return str(workflow["id"])


def settled(client: httpx.Client, execution_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        data = data_of(client.get(f"/api/v1/workflow_executions/{execution_id}"))
        if data["status"] in statuses or time.monotonic() > deadline:
            assert data["status"] in statuses, data
            return data  # type: ignore[no-any-return]
        time.sleep(0.05)


def test_rerun_over_rest(api: Served) -> None:
    """A failed execution rerun with new parameters: 202 with ``rerun_of``, the first
    step reused (``reused_from``), the reruns listed by ``rerun_of=``; bad requests
    answer the contract's envelopes."""
    client = api.client()
    wf = new_workflow(client, TWO_STEPS)
    failed = data_of(client.post(f"/api/v1/workflows/{wf}/execute_async", json={}), 202)
    settled(client, failed["execution_id"], "failed")
    url = f"/api/v1/workflow_executions/{failed['execution_id']}/rerun"
    rerun = data_of(client.post(url, json={"parameters": {"a": 5}}), 202)
    assert rerun["rerun_of"] == failed["execution_id"]
    assert rerun["status"] == "queued"
    assert rerun["queued_reason"] == "worker_pool"
    done = settled(client, rerun["execution_id"], "completed")
    assert [s["reused_from"] for s in done["steps"]] == [failed["execution_id"], None]
    assert done["result"] == {"a": 5}
    listed = data_of(
        client.get("/api/v1/workflow_executions", params={"rerun_of": failed["execution_id"]})
    )
    assert [i["execution_id"] for i in listed["items"]] == [rerun["execution_id"]]
    bad = error_of(client.post(url, json={"from_step": "nope"}), 400)
    assert bad["code"] == "INVALID_REQUEST"
    assert bad["details"]["field"] == "from_step"
    assert error_of(client.post(url, json={"from_step": True}), 400)["code"] == "INVALID_REQUEST"
    missing = error_of(client.post("/api/v1/workflow_executions/exec_nope/rerun"), 404)
    assert missing["code"] == "EXECUTION_NOT_FOUND"
    waiting = data_of(
        client.post(f"/api/v1/workflows/{new_workflow(client, DELAY)}/execute_async", json={}),
        202,
    )
    busy = client.post(f"/api/v1/workflow_executions/{waiting['execution_id']}/rerun")
    assert error_of(busy, 409)["code"] == "INVALID_STATE"
    client.post(f"/api/v1/workflow_executions/{waiting['execution_id']}/cancel")


def test_bulk_rerun_over_rest(api: Served) -> None:
    """A dry run lists; the real run starts; a limit above 1,000 and an unfinished
    status are refused naming the field."""
    client = api.client()
    wf = new_workflow(client, TWO_STEPS)
    ids = []
    for _ in range(2):
        ex = data_of(client.post(f"/api/v1/workflows/{wf}/execute_async", json={}), 202)
        settled(client, ex["execution_id"], "failed")
        ids.append(ex["execution_id"])
    body = {"filter": {"workflow_id": wf, "status": ["failed"]}, "dry_run": True}
    dry = data_of(client.post("/api/v1/workflow_executions/rerun", json=body))
    assert dry["matched"] == 2
    assert {i["execution_id"] for i in dry["items"]} == set(ids)
    assert all(i["rerun_execution_id"] is None for i in dry["items"])
    real = data_of(
        client.post("/api/v1/workflow_executions/rerun", json={**body, "dry_run": False})
    )
    started = [i["rerun_execution_id"] for i in real["items"]]
    assert all(started)
    for execution_id in started:
        settled(client, execution_id, "failed")  # the same parameters fail the same way
    too_many = client.post("/api/v1/workflow_executions/rerun", json={"limit": 1001})
    assert error_of(too_many, 400)["details"]["field"] == "limit"
    running = {"filter": {"status": ["running"]}}
    refused = client.post("/api/v1/workflow_executions/rerun", json=running)
    assert error_of(refused, 400)["code"] == "INVALID_REQUEST"


def test_pausing_a_workflow_and_an_execution_over_rest(api: Served) -> None:
    """A paused workflow's execution is accepted and held (``queued_reason`` paused);
    paused itself, then resumed while the workflow is still paused, it stays held;
    resuming the workflow runs it. Pausing an ended execution is 409."""
    client = api.client()
    wf = new_workflow(client, TWO_STEPS)
    paused = data_of(client.post(f"/api/v1/workflows/{wf}/pause"))
    assert paused["paused"] is True
    assert paused["paused_at"].endswith("Z")
    ex = data_of(
        client.post(f"/api/v1/workflows/{wf}/execute_async", json={"parameters": {"a": 1}}), 202
    )
    url = f"/api/v1/workflow_executions/{ex['execution_id']}"
    held = data_of(client.get(url))
    assert (held["status"], held["queued_reason"]) == ("queued", "paused")
    assert held["queued_since"].endswith("Z")
    assert data_of(client.post(f"{url}/pause"))["status"] == "paused"
    again = data_of(client.post(f"{url}/resume"))
    assert (again["status"], again["queued_reason"]) == ("queued", "paused")
    resumed = data_of(client.post(f"/api/v1/workflows/{wf}/resume"))
    assert resumed["paused"] is False
    assert resumed["changed_executions"] == 1
    done = settled(client, ex["execution_id"], "completed")
    assert error_of(client.post(f"{url}/pause"), 409)["code"] == "INVALID_STATE"
    assert error_of(client.post(f"{url}/resume"), 409)["code"] == "INVALID_STATE"
    assert done["queued_reason"] is None
    gone = client.post("/api/v1/workflows/wf_nope/pause")
    assert error_of(gone, 404)["code"] == "WORKFLOW_NOT_FOUND"


@pytest.mark.parametrize("way", WAYS)
def test_the_python_api_reruns_and_pauses(api: Served, way: str) -> None:
    """``abi.workflows`` in process and remote: rerun_execution, rerun_executions,
    pause/resume of a workflow and of an execution, the same errors as REST."""
    client = api.client()
    wf = new_workflow(client, TWO_STEPS)
    executor = api.facade(WorkflowExecutor, way)
    failed = executor.execute_workflow_async(wf, {})
    executor.wait_for_execution(failed.execution_id, timeout=60)
    rerun = executor.rerun_execution(failed.execution_id, from_step=1, parameters={"a": 2})
    assert rerun.rerun_of == failed.execution_id
    done = executor.wait_for_execution(rerun.execution_id, timeout=60)
    assert done.status.value == "completed"
    assert done.steps is not None
    assert done.steps[0].reused_from == failed.execution_id
    listed = executor.list_executions(rerun_of=failed.execution_id)
    assert [i.execution_id for i in listed.items] == [rerun.execution_id]
    with pytest.raises(InvalidRequest):
        executor.rerun_execution(failed.execution_id, from_step="nope")
    dry = executor.rerun_executions(workflow_id=wf, dry_run=True)
    assert [i["execution_id"] for i in dry.items] == [failed.execution_id]
    assert executor.pause_workflow(wf).paused is True
    held = executor.execute_workflow_async(wf, {"a": 3})
    assert executor.pause_execution(held.execution_id).status.value == "paused"
    assert executor.resume_execution(held.execution_id).queued_reason == "paused"
    assert executor.resume_workflow(wf).paused is False
    assert executor.wait_for_execution(held.execution_id, timeout=60).status.value == "completed"
    with pytest.raises(InvalidState):
        executor.resume_execution(held.execution_id)


def test_flow_control_needs_executions_write_and_bulk_filters_by_time(api: Served) -> None:
    """A token with executions:read only is refused (403 FORBIDDEN) by every flow-control
    operation; the bulk rerun's created_after/created_before bound what it takes."""
    client = api.client()
    wf = new_workflow(client, TWO_STEPS)
    ex = data_of(client.post(f"/api/v1/workflows/{wf}/execute_async", json={}), 202)
    settled(client, ex["execution_id"], "failed")
    reader = api.client(api.engine.tokens.create_token("usr_reader", ["executions:read"]))
    for path in (
        f"/api/v1/workflow_executions/{ex['execution_id']}/rerun",
        f"/api/v1/workflow_executions/{ex['execution_id']}/pause",
        f"/api/v1/workflow_executions/{ex['execution_id']}/resume",
        "/api/v1/workflow_executions/rerun",
        f"/api/v1/workflows/{wf}/pause",
        f"/api/v1/workflows/{wf}/resume",
    ):
        assert error_of(reader.post(path, json={}), 403)["code"] == "FORBIDDEN", path
    created = ex["created_at"]
    for bounds, count in (
        ({"created_after": created, "created_before": created}, 1),
        ({"created_after": "2999-01-01T00:00:00Z"}, 0),
        ({"created_before": "2000-01-01T00:00:00Z"}, 0),
    ):
        body = {"filter": {"workflow_id": wf, **bounds}, "dry_run": True}
        dry = data_of(client.post("/api/v1/workflow_executions/rerun", json=body))
        assert dry["matched"] == count, bounds
    bad = {"filter": {"created_after": "yesterday"}}
    refused = client.post("/api/v1/workflow_executions/rerun", json=bad)
    assert error_of(refused, 400)["code"] == "INVALID_REQUEST"
