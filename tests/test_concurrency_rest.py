"""Concurrency limits over REST (real uvicorn) and through ``abi.workflows``, in
process and remote, on each engine backend (#16)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import runtime_plugins
from runtime_plugins.helpers import DatabaseFactory
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowConfig, WorkflowExecutor, WorkflowManager
from abi_engine.errors import InvalidRequest

KEYED = {"key": "parameters.customer", "limit": 1}
#: The first step takes a while: its execution holds its slot meanwhile.
SLOW = {"do": {"first": {"sleep": 1.5}}}


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases(), plugins=[runtime_plugins]) as made:
        yield made


def data_of(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def until(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_limits_and_slots_over_rest(api: Served) -> None:
    """Bad limits: 400 INVALID_REQUEST naming the field. With a key of limit 1, the
    second execution of a key waits (``concurrency_limit``, its key shown) while the
    first holds the slot, which ``GET .../concurrency`` lists; then it runs."""
    client = api.client()
    for bad, field in (
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"concurrency": {"key": "__import__('os')", "limit": 1}}, "concurrency.key"),
        ({"concurrency": {"key": "parameters.a", "limit": "one"}}, "concurrency.limit"),
    ):
        body = {"name": "w", "type": "test_three", **bad}
        answer = client.post("/api/v1/workflows", json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("INVALID_REQUEST", field)
    body = {"name": "w", "type": "test_three", "concurrency": KEYED, "max_concurrency": 5}
    wf = data_of(client.post("/api/v1/workflows", json=body), 201)
    assert (wf["concurrency"], wf["max_concurrency"]) == (KEYED, 5)
    data_of(client.post(f"/api/v1/workflows/{wf['id']}/activate"))
    start = f"/api/v1/workflows/{wf['id']}/execute_async"
    first = data_of(client.post(start, json={"parameters": {"customer": "c", **SLOW}}), 202)
    url = f"/api/v1/workflow_executions/{first['execution_id']}"
    until(lambda: data_of(client.get(url))["status"] == "running", "first runs")
    second = data_of(client.post(start, json={"parameters": {"customer": "c"}}), 202)
    view = data_of(client.get(f"/api/v1/workflows/{wf['id']}/concurrency"))
    assert view["concurrency"] == KEYED
    assert [(s["execution_id"], s["key"]) for s in view["slots"]] == [(first["execution_id"], "c")]
    waiting = data_of(client.get(f"/api/v1/workflow_executions/{second['execution_id']}"))
    assert (waiting["status"], waiting["queued_reason"], waiting["concurrency_key"]) == (
        "queued",
        "concurrency_limit",
        "c",
    )
    second_url = f"/api/v1/workflow_executions/{second['execution_id']}"
    until(lambda: data_of(client.get(second_url))["status"] == "completed", "second done")
    missing = client.get("/api/v1/workflows/wf_missing/concurrency")
    assert missing.json()["error"]["code"] == "WORKFLOW_NOT_FOUND"


@pytest.mark.parametrize("way", WAYS)
def test_the_python_api_sets_and_shows_limits(api: Served, way: str) -> None:
    """``WorkflowConfig(concurrency=...)``, ``update_workflow`` with a changed limit,
    ``get_workflow_concurrency``; a bad key is ``InvalidRequest`` naming the field."""
    manager = api.facade(WorkflowManager, way)
    executor = api.facade(WorkflowExecutor, way)
    with pytest.raises(InvalidRequest) as caught:
        manager.create_workflow(
            WorkflowConfig(name="w", type="test_three", concurrency={"key": "1 +", "limit": 1})
        )
    assert caught.value.details["field"] == "concurrency.key"
    wf = manager.create_workflow(WorkflowConfig(name="w", type="test_three", concurrency=KEYED))
    assert wf.concurrency is not None
    assert wf.concurrency.key == KEYED["key"]
    wf.max_concurrency = 2
    updated = manager.update_workflow(wf)
    assert updated.max_concurrency == 2
    manager.activate_workflow(wf.id)
    held = executor.execute_workflow_async(wf.id, {"customer": "k", **SLOW})
    view = until(lambda: (v := manager.get_workflow_concurrency(wf.id)).slots and v, "a slot held")
    assert view.max_concurrency == 2
    assert [(s.execution_id, s.key) for s in view.slots] == [(held.execution_id, "k")]
    done = executor.wait_for_execution(held.execution_id, timeout=60)
    assert done.status.value == "completed"
    assert manager.get_workflow_concurrency(wf.id).slots == []


def test_priority_over_rest(api: Served) -> None:
    """``priority`` at the top level or in ``execution_options``: accepted from 0 to 9;
    out of range, 400 INVALID_REQUEST naming the field; a schedule shows its own."""
    client = api.client()
    wf = data_of(client.post("/api/v1/workflows", json={"name": "p", "type": "test_three"}), 201)
    data_of(client.post(f"/api/v1/workflows/{wf['id']}/activate"))
    start = f"/api/v1/workflows/{wf['id']}/execute_async"
    for body in ({"priority": 9}, {"execution_options": {"priority": 0}}):
        data_of(client.post(start, json=body), 202)
    for body, field in (
        ({"priority": 10}, "priority"),
        ({"execution_options": {"priority": "high"}}, "execution_options.priority"),
    ):
        answer = client.post(start, json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("INVALID_REQUEST", field)
    schedule = {
        "name": "s",
        "schedule_type": "interval",
        "interval_value": 1,
        "interval_unit": "hours",
        "priority": 7,
    }
    made = data_of(client.post(f"/api/v1/workflows/{wf['id']}/schedules", json=schedule), 201)
    assert made["priority"] == 7
