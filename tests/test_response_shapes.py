"""Response shapes, query parameters and execution filters (#12, point 5).

Documented fields are always present, ``null`` when they have no value, and the
OpenAPI document requires them and marks them nullable. Unknown query
parameters are 400 ``INVALID_REQUEST`` naming them, as unknown body fields
are. The executions list filters by ``schedule_id``, several ``status``
values and ``created_by``, over REST and through ``abi.workflows``, on each
engine backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from abi_asgi import build_openapi
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_plugins.helpers import DatabaseFactory
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowExecutor
from abi_engine import Engine, Scope
from abi_engine.api import OPERATIONS
from abi_engine.errors import InvalidRequest, WorkflowExecutionError
from abi_engine.models import (
    Execution,
    ExecutionSummary,
    Schedule,
    ScheduleSummary,
    Step,
    Workflow,
)
from abi_engine.models_webhooks import Delivery, DeliveryAttempt
from abi_engine.storage.records import ExecutionQuery

DELAY = {"steps": [{"name": "wait", "action": "delay", "seconds": 600}]}
ECHO = {"steps": [{"name": "echo", "action": "transform", "expressions": {"a": "parameters['a']"}}]}


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


def data_of(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def new_workflow(client: httpx.Client, configuration: dict[str, Any], active: bool = True) -> str:
    workflow = data_of(
        client.post(
            "/api/v1/workflows",
            json={"name": "w", "type": "custom", "configuration": configuration},
        ),
        201,
    )
    if active:
        data_of(client.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    return str(workflow["id"])


# -- documented fields are always present -----------------------------------------------------


def _documented(document: dict[str, Any], name: str) -> set[str]:
    return set(document["components"]["schemas"][name]["properties"])


def test_empty_fields_are_null_not_missing(api: Served) -> None:
    """A workflow never activated, an execution still running, a schedule that never
    fired: every documented field is in the JSON, null when empty."""
    client = api.client()
    document = build_openapi()
    inactive = new_workflow(client, DELAY, active=False)
    workflow = data_of(client.get(f"/api/v1/workflows/{inactive}"))
    assert set(workflow) == _documented(document, "Workflow")
    assert workflow["activated_at"] is None
    assert workflow["deactivated_at"] is None
    assert workflow["notification_templates"] == []

    data_of(client.post(f"/api/v1/workflows/{inactive}/activate"))
    started = data_of(client.post(f"/api/v1/workflows/{inactive}/execute_async", json={}), 202)
    assert set(started) == _documented(document, "Execution")
    running = data_of(client.get(f"/api/v1/workflow_executions/{started['execution_id']}"))
    assert set(running) == _documented(document, "Execution")
    for field in ("completed_at", "duration_ms", "result", "error", "callback_url", "schedule_id"):
        assert running[field] is None, field
    assert running["workflow_name"] == "w"
    assert set(running["steps"][0]) == _documented(document, "Step")
    assert running["steps"][0]["completed_at"] is None
    assert running["steps"][0]["error"] is None
    listed = data_of(client.get("/api/v1/workflow_executions"))["items"][0]
    assert set(listed) == _documented(document, "ExecutionSummary")
    assert listed["completed_at"] is None
    assert listed["duration_ms"] is None
    cancelled = data_of(
        client.post(f"/api/v1/workflow_executions/{started['execution_id']}/cancel")
    )
    assert cancelled["error"]["step"] is None  # the execution's error: no step
    assert set(cancelled["error"]) == {"code", "message", "step", "type"}

    schedule = data_of(
        client.post(
            f"/api/v1/workflows/{inactive}/schedules",
            json={"name": "nightly", "schedule_type": "cron", "cron_expression": "0 0 * * *"},
        ),
        201,
    )
    assert set(schedule) == _documented(document, "Schedule")
    fetched = data_of(client.get(f"/api/v1/workflow_schedules/{schedule['id']}"))
    assert set(fetched) == _documented(document, "Schedule")
    assert fetched["last_execution"] is None
    assert fetched["last_failure"] is None
    assert fetched["interval_value"] is None
    assert fetched["execution_time"] is None
    items = data_of(client.get("/api/v1/workflow_schedules"))["items"]
    assert set(items[0]) == _documented(document, "ScheduleSummary")


@pytest.mark.parametrize("way", WAYS)
def test_python_api_objects_carry_the_null_fields(api: Served, way: str) -> None:
    """The seed's Python API gives the same: attributes that are None, never missing."""
    client = api.client()
    workflow_id = new_workflow(client, DELAY)
    executor = api.facade(WorkflowExecutor, way)
    started = executor.execute_workflow_async(workflow_id)
    current = executor.get_execution_status(started.execution_id)
    assert current.completed_at is None
    assert current.result is None
    raw = api.engine.call(_json_of, api.engine, started.execution_id)
    assert "completed_at" in raw
    assert raw["completed_at"] is None
    executor.cancel_execution(started.execution_id)


async def _json_of(engine: Engine, execution_id: str) -> Any:
    from abi_engine.execution_views import execution_json

    return execution_json(await engine.executions.get(execution_id))


@pytest.mark.parametrize(
    ("model", "nullable"),
    [
        (Workflow, ["activated_at", "deactivated_at", "description", "created_by"]),
        (Execution, ["completed_at", "duration_ms", "error", "steps", "workflow_name"]),
        (ExecutionSummary, ["started_at", "completed_at", "duration_ms"]),
        (Schedule, ["last_execution", "last_failure", "cron_expression", "next_execution"]),
        (ScheduleSummary, ["cron_expression", "interval_unit", "next_execution"]),
        (Step, ["started_at", "completed_at", "attempts", "error"]),
        (Delivery, ["webhook_id", "execution_id", "next_attempt_at"]),
        (DeliveryAttempt, ["status_code", "error", "response_body"]),
    ],
)
def test_openapi_requires_every_field_and_marks_nullables(model: type, nullable: list[str]) -> None:
    """Response schemas list every property as required; empty-able ones accept null."""
    schema = build_openapi()["components"]["schemas"][model.__name__]
    assert set(schema["required"]) == set(schema["properties"])
    for field in nullable:
        prop = schema["properties"][field]
        allows_null = "null" in (prop.get("type") or []) or any(
            option.get("type") == "null" for option in prop.get("anyOf", [])
        )
        assert allows_null, (field, prop)


# -- unknown query parameters --------------------------------------------------------------------

_LISTS = sorted(
    (op.path, {q.name for q in op.query})
    for op in OPERATIONS.values()
    if op.method == "GET" and "{" not in op.path
)


@pytest.fixture(scope="module")
def listing() -> Iterator[tuple[Served, httpx.Client]]:
    """A served engine on SQLite for the query-parameter property (one per module)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory, served(Path(directory) / "q.db") as made:
        yield made, made.client()


_NAME = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-"),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0, max_value=len(_LISTS) - 1), name=_NAME)
def test_unknown_query_parameters_are_refused_by_name(
    listing: tuple[Served, httpx.Client], index: int, name: str
) -> None:
    """Every list operation: a parameter it does not document is 400 INVALID_REQUEST
    naming it (and listing the allowed ones); documented ones are accepted."""
    path, allowed = _LISTS[index]
    _, client = listing
    response = client.get(f"/api/v1{path}", params={name: "1"})
    if name in allowed:
        assert (
            response.status_code != 400 or response.json()["error"]["details"].get("field") == name
        )
        return
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["details"]["field"] == name
    assert name in error["message"]
    assert error["details"]["allowed"] == sorted(allowed)


@pytest.mark.parametrize("way", WAYS)
def test_unknown_query_parameters_through_the_python_api(
    listing: tuple[Served, httpx.Client], way: str
) -> None:
    """The transports of abi.workflows meet the same check (in-process and over HTTP)."""
    served_engine, _ = listing
    executor = served_engine.facade(WorkflowExecutor, way)
    with pytest.raises(InvalidRequest) as refused:
        executor._transport.request("list_executions", query={"colour": "blue"})
    assert refused.value.details["field"] == "colour"


def test_a_scalar_parameter_given_twice_is_refused(listing: tuple[Served, httpx.Client]) -> None:
    """page=1&page=2 is ambiguous: 400 naming page."""
    _, client = listing
    response = client.get("/api/v1/workflows", params=[("page", "1"), ("page", "2")])
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "page"


# -- execution filters ----------------------------------------------------------------------------


def test_execution_filters_over_rest(api: Served) -> None:
    """schedule_id, several statuses (repeated or comma-separated) and created_by filter
    the list, alone and together."""
    engine = api.engine
    bob = engine.tokens.create_token("usr_bob", scopes=[Scope.EXECUTIONS_WRITE])
    alice = api.client()
    echo = new_workflow(alice, ECHO)
    done = data_of(alice.post(f"/api/v1/workflows/{echo}/execute", json={"parameters": {"a": 1}}))
    failed = alice.post(f"/api/v1/workflows/{echo}/execute", json={"parameters": {}})
    assert failed.status_code == 500
    failed_id = failed.json()["error"]["details"]["execution_id"]
    bobs = data_of(
        api.client(bob).post(f"/api/v1/workflows/{echo}/execute", json={"parameters": {"a": 2}})
    )
    schedule = data_of(
        alice.post(
            f"/api/v1/workflows/{echo}/schedules",
            json={
                "name": "every hour",
                "schedule_type": "interval",
                "interval_value": 1,
                "interval_unit": "hours",
                "parameters": {"a": 3},
            },
        ),
        201,
    )
    due = engine.call(_due, engine, schedule["id"])
    engine.call(engine.scheduler.tick, due)
    [entry] = data_of(alice.get(f"/api/v1/workflow_schedules/{schedule['id']}/history"))["items"]
    scheduled = entry["execution_id"]
    data_of(alice.get(f"/api/v1/workflow_executions/{scheduled}/wait"))

    def ids(**params: Any) -> set[str]:
        items = data_of(alice.get("/api/v1/workflow_executions", params=params))["items"]
        return {item["execution_id"] for item in items}

    assert ids(schedule_id=schedule["id"]) == {scheduled}
    assert ids(status="failed") == {failed_id}
    assert ids(status=["failed", "completed"]) == {
        failed_id,
        done["execution_id"],
        bobs["execution_id"],
        scheduled,
    }
    assert ids(status="failed,completed") == ids(status=["completed", "failed"])
    assert ids(created_by="usr_bob") == {bobs["execution_id"]}
    assert ids(created_by="usr_spec", status="completed") == {done["execution_id"], scheduled}
    assert ids(created_by="usr_bob", status="failed") == set()
    assert ids(schedule_id="sched_nope") == set()
    nul = alice.get("/api/v1/workflow_executions", params={"workflow_id": "wf_\x00"})
    assert nul.status_code == 400
    assert nul.json()["error"]["details"]["field"] == "workflow_id"
    for refused in (["completed", "finished"], "", ",", "completed,", "completed ", " failed"):
        bad = alice.get("/api/v1/workflow_executions", params={"status": refused})
        assert bad.status_code == 400, refused
        assert bad.json()["error"]["details"]["field"] == "status"


async def _due(engine: Engine, schedule_id: str) -> Any:
    return (await engine.schedules.get(schedule_id)).next_execution


@pytest.mark.parametrize("way", WAYS)
def test_execution_filters_through_the_python_api(api: Served, way: str) -> None:
    """list_executions(status=[...], created_by=..., schedule_id=...) filters the same way."""
    client = api.client()
    echo = new_workflow(client, ECHO)
    executor = api.facade(WorkflowExecutor, way)
    ok = executor.execute_workflow(echo, {"a": 1})
    with pytest.raises(WorkflowExecutionError) as failing:
        executor.execute_workflow(echo, {})
    failed_id = failing.value.details["execution_id"]
    both = executor.list_executions(status=["completed", "failed"])
    assert {e.execution_id for e in both.items} == {ok.execution_id, failed_id}
    only = executor.list_executions(status="failed", created_by="usr_spec")
    assert [e.execution_id for e in only.items] == [failed_id]
    assert executor.list_executions(created_by="usr_nobody").pagination.total_items == 0
    assert executor.list_executions(schedule_id="sched_none").items == []


@pytest.mark.sqlite_only
def test_new_filters_are_served_by_an_index(tmp_path: Any) -> None:
    """The schedule_id and created_by filters read an index (EXPLAIN QUERY PLAN)."""
    engine = Engine(tmp_path / "plan.db")
    try:
        store: Any = engine.store
        statements: list[str] = []
        with store._read() as conn:
            conn.set_trace_callback(statements.append)
            try:
                store.list_executions(ExecutionQuery(schedule_id="sched_x"))
                store.list_executions(ExecutionQuery(created_by="usr_x"))
            finally:
                conn.set_trace_callback(None)
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 4
        check = sqlite3.connect(store.path)
        try:
            for sql in selects:
                plan = " | ".join(row[3] for row in check.execute(f"EXPLAIN QUERY PLAN {sql}"))
                assert "idx_executions_schedule" in plan or "idx_executions_creator" in plan, plan
                assert "TEMP B-TREE" not in plan, (sql, plan)
        finally:
            check.close()
    finally:
        engine.close()
