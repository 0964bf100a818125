"""Rate limits and debounce over REST (real uvicorn) and through ``abi.workflows``, in
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

RATE = {"key": "parameters.customer", "limit": 1, "period_seconds": 2}


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


def test_bad_bodies_are_400_naming_the_field(api: Served) -> None:
    """Bad ``rate_limit`` and ``debounce`` bodies, at create and update: 400
    INVALID_REQUEST naming the field."""
    client = api.client()
    for bad, field in (
        ({"rate_limit": {"limit": 0, "period_seconds": 1}}, "rate_limit.limit"),
        ({"rate_limit": {"limit": 1, "period_seconds": "soon"}}, "rate_limit.period_seconds"),
        ({"rate_limit": {"limit": 1}}, "rate_limit.period_seconds"),
        ({"rate_limit": {"key": "x.y", "limit": 1, "period_seconds": 1}}, "rate_limit.key"),
        ({"rate_limit": 5}, "rate_limit"),
        ({"debounce": {"seconds": 0}}, "debounce.seconds"),
        ({"debounce": {"key": "__import__('os')", "seconds": 1}}, "debounce.key"),
    ):
        body = {"name": "w", "type": "test_three", **bad}
        answer = client.post("/api/v1/workflows", json=body)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("INVALID_REQUEST", field), bad
    wf = data_of(client.post("/api/v1/workflows", json={"name": "w", "type": "test_three"}), 201)
    answer = client.put(f"/api/v1/workflows/{wf['id']}", json={"debounce": {"seconds": -1}})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["details"]["field"] == "debounce.seconds"


def test_rate_limit_and_debounce_over_rest(api: Served) -> None:
    """A rate limit of one per 2 s: the second execution of a key waits queued
    (``rate_limit``, its key; the list shows why too), then completes. A debounce:
    the first of two ends ``skipped`` with ``debounced_by``; ``status=skipped``
    lists it."""
    client = api.client()
    body = {"name": "r", "type": "test_three", "rate_limit": RATE}
    wf = data_of(client.post("/api/v1/workflows", json=body), 201)
    assert wf["rate_limit"] == RATE
    assert wf["debounce"] is None
    data_of(client.post(f"/api/v1/workflows/{wf['id']}/activate"))
    start = f"/api/v1/workflows/{wf['id']}/execute_async"
    data_of(client.post(start, json={"parameters": {"customer": "c"}}), 202)
    second = data_of(client.post(start, json={"parameters": {"customer": "c"}}), 202)
    url = f"/api/v1/workflow_executions/{second['execution_id']}"
    waiting = data_of(client.get(url))
    assert (waiting["status"], waiting["queued_reason"], waiting["rate_limit_key"]) == (
        "queued",
        "rate_limit",
        "c",
    )
    assert waiting["queued_since"] is not None
    listed = data_of(client.get("/api/v1/workflow_executions", params={"status": "queued"}))
    items = {i["execution_id"]: i for i in listed["items"]}
    assert items[second["execution_id"]]["queued_reason"] == "rate_limit"
    until(lambda: data_of(client.get(url))["status"] == "completed", "second done")

    body = {"name": "d", "type": "test_three", "debounce": {"key": "parameters.k", "seconds": 1}}
    wf = data_of(client.post("/api/v1/workflows", json=body), 201)
    data_of(client.post(f"/api/v1/workflows/{wf['id']}/activate"))
    start = f"/api/v1/workflows/{wf['id']}/execute_async"
    first = data_of(client.post(start, json={"parameters": {"k": 1}}), 202)
    last = data_of(client.post(start, json={"parameters": {"k": 1}}), 202)
    skipped = data_of(client.get(f"/api/v1/workflow_executions/{first['execution_id']}"))
    assert (skipped["status"], skipped["debounced_by"]) == ("skipped", last["execution_id"])
    query = {"status": "skipped", "workflow_id": wf["id"]}
    listed = data_of(client.get("/api/v1/workflow_executions", params=query))
    assert [i["execution_id"] for i in listed["items"]] == [first["execution_id"]]
    last_url = f"/api/v1/workflow_executions/{last['execution_id']}"
    until(lambda: data_of(client.get(last_url))["status"] == "completed", "last done")


@pytest.mark.parametrize("way", WAYS)
def test_the_python_api_sets_rate_limits_and_debounce(api: Served, way: str) -> None:
    """``WorkflowConfig(rate_limit=..., debounce=...)``, ``update_workflow`` with a changed
    rule; a bad one is ``InvalidRequest`` naming the field; a debounced execution ends
    ``skipped`` as the seed client sees it."""
    manager = api.facade(WorkflowManager, way)
    executor = api.facade(WorkflowExecutor, way)
    with pytest.raises(InvalidRequest) as caught:
        manager.create_workflow(
            WorkflowConfig(name="w", type="test_three", rate_limit={"limit": 1})
        )
    assert caught.value.details["field"] == "rate_limit.period_seconds"
    config = WorkflowConfig(name="w", type="test_three", rate_limit=RATE, debounce={"seconds": 1})
    wf = manager.create_workflow(config)
    assert wf.rate_limit is not None
    assert (wf.rate_limit.key, wf.rate_limit.limit) == ("parameters.customer", 1)
    assert wf.debounce is not None
    wf.rate_limit = None
    updated = manager.update_workflow(wf)
    assert updated.rate_limit is None
    assert updated.debounce is not None
    assert updated.debounce.seconds == 1
    manager.activate_workflow(wf.id)
    first = executor.execute_workflow_async(wf.id, {})
    last = executor.execute_workflow_async(wf.id, {})
    skipped = executor.wait_for_execution(first.execution_id, timeout=60)
    assert (skipped.status.value, skipped.debounced_by) == ("skipped", last.execution_id)
    done = executor.wait_for_execution(last.execution_id, timeout=60)
    assert done.status.value == "completed"
