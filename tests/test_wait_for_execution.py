"""``WorkflowExecutor.wait_for_execution(id, timeout)``: no polling for synchronous callers (#12,
point 11).

In-process it waits on the engine; remote it long-polls
``GET /workflow_executions/{id}/wait?timeout_seconds=N`` (each request held
at most ``N`` <= 60 s). It returns the execution once it has ended (a failed
one is returned, not raised) or waits for a signal; ``timeout`` passing
first raises ``ExecutionTimeout`` and the execution goes on. On each engine
backend, over real HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import runtime_plugins
from runtime_plugins.helpers import DatabaseFactory
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowExecutor, WorkflowManager
from abi_engine.errors import ExecutionNotFound, ExecutionTimeout
from abi_engine.models import ExecutionStatus

LONG = {"steps": [{"name": "wait", "action": "delay", "seconds": 600}]}
SHORT = {"steps": [{"name": "wait", "action": "delay", "seconds": 0.5}]}
FAILING = {
    "steps": [{"name": "boom", "action": "transform", "expressions": {"x": "parameters['a']"}}]
}


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases(), plugins=[runtime_plugins]) as made:
        yield made


def workflow(api: Served, way: str, configuration: dict[str, Any], kind: str = "custom") -> str:
    manager = api.facade(WorkflowManager, way)
    created = manager.create_workflow({"name": "w", "type": kind, "configuration": configuration})
    manager.activate_workflow(created.id)
    return created.id


@pytest.mark.parametrize("way", WAYS)
def test_waits_until_the_execution_ends(api: Served, way: str) -> None:
    """An async execution waited for comes back completed, with its result; a failed one
    comes back failed with its error (not raised)."""
    executor = api.facade(WorkflowExecutor, way)
    started = executor.execute_workflow_async(workflow(api, way, SHORT))
    assert started.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    done = executor.wait_for_execution(started.execution_id, timeout=120)
    assert done.status is ExecutionStatus.COMPLETED
    assert done.completed_at is not None
    assert done.steps is not None
    assert [s.status for s in done.steps] == ["completed"]

    failing = executor.execute_workflow_async(workflow(api, way, FAILING))
    failed = executor.wait_for_execution(failing.execution_id)  # no timeout: as long as it takes
    assert failed.status is ExecutionStatus.FAILED
    assert failed.error is not None
    assert failed.error.step == "boom"


@pytest.mark.parametrize("way", WAYS)
def test_timeout_raises_and_the_execution_goes_on(api: Served, way: str) -> None:
    """A timeout shorter than the execution: ExecutionTimeout naming its status; it still runs."""
    executor = api.facade(WorkflowExecutor, way)
    started = executor.execute_workflow_async(workflow(api, way, LONG))
    with pytest.raises(ExecutionTimeout) as waited:
        executor.wait_for_execution(started.execution_id, timeout=1)
    assert isinstance(waited.value, TimeoutError)
    assert waited.value.details["execution_id"] == started.execution_id
    # (a delay of 600 s is a durable sleep: waiting, but running time, not an answer)
    assert waited.value.details["status"] in ("queued", "running", "waiting")
    assert not executor.get_execution_status(started.execution_id).status.finished
    cancelled = executor.cancel_execution(started.execution_id)
    assert executor.wait_for_execution(cancelled.execution_id, timeout=0).status == "cancelled"


@pytest.mark.parametrize("way", WAYS)
def test_a_waiting_execution_is_returned_as_it_stands(api: Served, way: str) -> None:
    """An execution that waits for a signal is returned (waiting), then ends once signalled."""
    executor = api.facade(WorkflowExecutor, way)
    workflow_id = workflow(api, way, {}, kind="test_three")
    started = executor.execute_workflow_async(workflow_id, {"do": {"second": {"signal": "go"}}})
    parked = executor.wait_for_execution(started.execution_id, timeout=120)
    assert parked.status is ExecutionStatus.WAITING
    executor.signal_execution(started.execution_id, "go", {"ok": True})
    assert executor.wait_for_execution(started.execution_id, timeout=120).status == "completed"


@pytest.mark.parametrize("way", WAYS)
def test_unknown_execution_and_bad_timeout(api: Served, way: str) -> None:
    """An unknown id is ExecutionNotFound; a negative timeout is refused before any call."""
    executor = api.facade(WorkflowExecutor, way)
    with pytest.raises(ExecutionNotFound):
        executor.wait_for_execution("exec_nope", timeout=5)
    for bad in (-1, math.nan, math.inf, True):
        with pytest.raises(ValueError, match="timeout"):
            executor.wait_for_execution("exec_nope", timeout=bad)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("timeout", [0.0004, 0.0005, 0.001, 0.0099])
def test_a_tiny_timeout_is_a_timeout(api: Served, way: str, timeout: float) -> None:
    """A timeout under a millisecond (or the last fraction of any wait) asks the server for
    at least a millisecond: ExecutionTimeout, never a refused request."""
    executor = api.facade(WorkflowExecutor, way)
    started = executor.execute_workflow_async(workflow(api, way, LONG))
    with pytest.raises(ExecutionTimeout):
        executor.wait_for_execution(started.execution_id, timeout=timeout)
    executor.cancel_execution(started.execution_id)


def test_long_poll_endpoint(api: Served) -> None:
    """The REST endpoint: 200 with the execution once ended; 202 with it as it stands
    after timeout_seconds; timeout_seconds outside (0, 60] or an unknown parameter is 400."""
    client: httpx.Client = api.client()
    executor = api.facade(WorkflowExecutor, "remote")
    quick = executor.execute_workflow_async(workflow(api, "remote", SHORT))
    answer = client.get(
        f"/api/v1/workflow_executions/{quick.execution_id}/wait", params={"timeout_seconds": 60}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["status"] == "completed"
    slow = executor.execute_workflow_async(workflow(api, "remote", LONG))
    held = client.get(
        f"/api/v1/workflow_executions/{slow.execution_id}/wait", params={"timeout_seconds": 1}
    )
    assert held.status_code == 202, held.text  # not settled: ask again
    assert held.json()["data"]["status"] in ("queued", "running", "waiting")
    for bad in ("0", "61", "soon", "nan"):
        refused = client.get(
            f"/api/v1/workflow_executions/{slow.execution_id}/wait",
            params={"timeout_seconds": bad},
        )
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["details"]["field"] == "timeout_seconds"
    unknown = client.get(f"/api/v1/workflow_executions/{slow.execution_id}/wait", params={"t": 1})
    assert unknown.status_code == 400
    missing = client.get("/api/v1/workflow_executions/exec_nope/wait")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "EXECUTION_NOT_FOUND"
    executor.cancel_execution(slow.execution_id)
