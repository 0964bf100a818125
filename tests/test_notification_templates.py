"""Notification templates as a managed resource (#12, point 3).

The seed's notification example names ``template_123`` and ``template_456``: a
workflow made from it verbatim is created with both templates ``pending``,
executing it answers 409 ``INVALID_STATE`` naming the missing one, and once
the templates are put (``PUT /api/v1/notification_templates/{id}``) it runs
with them. Over REST and through ``abi.workflows`` (in-process and remote), on
each engine backend.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowConfig, WorkflowExecutor, WorkflowManager
from abi_engine import Engine, Scope, hookimpl
from abi_engine.errors import (
    Forbidden,
    InvalidRequest,
    InvalidState,
    NotFound,
    ParameterValidationError,
    TemplateNotFound,
)
from abi_engine.models import TemplateStatus

DatabaseFactory = Callable[..., Any]

#: The seed's "Notification Configuration", verbatim.
SEED_NOTIFICATION = {
    "channels": ["email", "slack"],
    "templates": {"email": "template_123", "slack": "template_456"},
    "recipients": {"email": ["user@example.com"], "slack": ["#channel", "@user"]},
    "priority_rules": [
        {"condition": "severity == 'high'", "priority": "urgent"},
        {"condition": "severity == 'medium'", "priority": "normal"},
    ],
}


class Receiver:
    """An HTTP server on 127.0.0.1 keeping the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    """An engine with the bundled types (private URLs allowed) served on a real port."""
    with served(databases(), allow_private_urls=True) as made:
        yield made


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def data_of(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def test_seed_notification_example_over_rest(api: Served) -> None:
    """The seed's configuration verbatim: 201 with both templates pending, 409 naming
    template_123 on execute, available once put, then it runs past the templates."""
    client = api.client()
    created = data_of(
        client.post(
            "/api/v1/workflows",
            json={"name": "Alerts", "type": "notification", "configuration": SEED_NOTIFICATION},
        ),
        201,
    )
    assert created["configuration"] == SEED_NOTIFICATION
    assert created["notification_templates"] == [
        {"id": "template_123", "status": "pending"},
        {"id": "template_456", "status": "pending"},
    ]
    workflow_id = created["id"]
    got = data_of(client.get(f"/api/v1/workflows/{workflow_id}"))
    assert [t["status"] for t in got["notification_templates"]] == ["pending", "pending"]
    data_of(client.post(f"/api/v1/workflows/{workflow_id}/activate"))  # allowed while pending

    params = {"parameters": {"severity": "high"}}
    refused = error_of(client.post(f"/api/v1/workflows/{workflow_id}/execute", json=params), 409)
    assert refused["code"] == "INVALID_STATE"
    assert refused["details"]["template_id"] == "template_123"
    assert refused["details"]["missing"] == ["template_123", "template_456"]
    assert "PUT /api/v1/notification_templates/template_123" in refused["message"]

    put = data_of(
        client.put(
            "/api/v1/notification_templates/template_123",
            json={"subject": "[$priority] Alert", "body": "Severity: $severity"},
        )
    )
    assert put["id"] == "template_123"
    assert put["subject"] == "[$priority] Alert"
    half = data_of(client.get(f"/api/v1/workflows/{workflow_id}"))["notification_templates"]
    assert half == [
        {"id": "template_123", "status": "available"},
        {"id": "template_456", "status": "pending"},
    ]
    still = error_of(client.post(f"/api/v1/workflows/{workflow_id}/execute", json=params), 409)
    assert still["details"]["template_id"] == "template_456"

    data_of(client.put("/api/v1/notification_templates/template_456", json={"body": "$severity"}))
    assert {
        t["status"]
        for t in data_of(client.get(f"/api/v1/workflows/{workflow_id}"))["notification_templates"]
    } == {"available"}
    # Now it runs: the templates render; the send step fails only for want of an SMTP
    # connection (the seed's example lists no integration), not for a template.
    failed = error_of(client.post(f"/api/v1/workflows/{workflow_id}/execute", json=params), 500)
    assert failed["code"] == "WORKFLOW_EXECUTION_ERROR"
    assert failed["details"]["step"] == "send_email"
    execution = data_of(
        client.get(f"/api/v1/workflow_executions/{failed['details']['execution_id']}")
    )
    steps = {s["name"]: s["status"] for s in execution["steps"]}
    assert steps["render"] == "completed"


@pytest.mark.parametrize("way", WAYS)
def test_managed_template_renders_what_was_put(api: Served, receiver: Receiver, way: str) -> None:
    """Through abi.workflows: a template put by id is what the message carries; replacing
    it changes the next message; deleting it makes the workflow pending again (409)."""
    manager = api.facade(WorkflowManager, way)
    executor = api.facade(WorkflowExecutor, way)
    workflow = manager.create_workflow(
        WorkflowConfig(
            name="Deploys",
            type="notification",
            configuration={
                "channels": ["webhook"],
                "templates": {"webhook": "deploy_notice"},
                "recipients": {"webhook": [receiver.url]},
            },
        )
    )
    assert [(t.id, t.status) for t in workflow.notification_templates] == [
        ("deploy_notice", TemplateStatus.PENDING)
    ]
    manager.activate_workflow(workflow.id)
    with pytest.raises(InvalidState) as missing:
        executor.execute_workflow(workflow.id, {"version": "1"})
    assert missing.value.details["template_id"] == "deploy_notice"

    first = manager.put_notification_template(
        "deploy_notice", "Deployed $version", subject="Deploy", description="for the ops team"
    )
    assert (first.subject, first.body, first.description) == (
        "Deploy",
        "Deployed $version",
        "for the ops team",
    )
    assert manager.get_workflow(workflow.id).notification_templates[0].status == "available"
    run = executor.execute_workflow(workflow.id, {"version": "1.2"})
    assert run.status == "completed", run
    assert receiver.bodies[-1]["body"] == "Deployed 1.2"
    assert receiver.bodies[-1]["subject"] == "Deploy"

    second = manager.put_notification_template("deploy_notice", "Version $version is live")
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    executor.execute_workflow(workflow.id, {"version": "1.3"})
    assert receiver.bodies[-1]["body"] == "Version 1.3 is live"

    # A parameter the managed template needs is checked before anything runs.
    with pytest.raises(ParameterValidationError) as unfilled:
        executor.execute_workflow(workflow.id, {"other": 1})
    assert unfilled.value.details["field"] == "parameters.version"

    listed = manager.list_notification_templates()
    assert [t.id for t in listed.items] == ["deploy_notice"]
    assert listed.pagination.total_items == 1
    assert manager.delete_notification_template("deploy_notice").deleted is True
    assert manager.get_workflow(workflow.id).notification_templates[0].status == "pending"
    with pytest.raises(InvalidState):
        executor.execute_workflow(workflow.id, {"version": "2"})
    with pytest.raises(TemplateNotFound) as gone:  # both ways (still a NotFound)
        manager.get_notification_template("deploy_notice")
    assert gone.value.code == "NOT_FOUND"
    assert isinstance(gone.value, NotFound)
    with pytest.raises(NotFound):
        manager.delete_notification_template("deploy_notice")


@pytest.mark.parametrize("way", WAYS)
def test_bad_templates_are_refused_naming_the_field(api: Served, way: str) -> None:
    """A malformed placeholder, an empty body, unknown fields and bad ids: 400 naming them."""
    manager = api.facade(WorkflowManager, way)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("ok_id", {"body": "Cost: $ 5"}, "body"),
        ("ok_id", {"body": "fine", "subject": "${unclosed"}, "subject"),
        ("ok_id", {"body": ""}, "body"),
    ]
    for template_id, fields, field in cases:
        with pytest.raises(InvalidRequest) as refused:
            manager.put_notification_template(template_id, **fields)
        assert refused.value.details["field"] == field, (fields, refused.value)
    with pytest.raises(InvalidRequest) as bad_id:
        manager.put_notification_template("has space", "x")
    assert bad_id.value.details["field"] == "id"
    client = api.client()
    unknown = error_of(
        client.put("/api/v1/notification_templates/t1", json={"body": "x", "text": "y"}), 400
    )
    assert unknown["code"] == "INVALID_REQUEST"
    assert unknown["details"]["field"] == "text"
    assert manager.list_notification_templates().pagination.total_items == 0


def test_scopes_of_templates(api: Served) -> None:
    """Reading templates takes workflows:read; creating and deleting take workflows:write."""
    reader = api.engine.tokens.create_token("usr_reader", scopes=[Scope.WORKFLOWS_READ])
    writer_client = api.client()
    data_of(writer_client.put("/api/v1/notification_templates/t1", json={"body": "hi"}))
    reader_client = api.client(reader)
    assert data_of(reader_client.get("/api/v1/notification_templates/t1"))["body"] == "hi"
    assert data_of(reader_client.get("/api/v1/notification_templates"))["items"][0]["id"] == "t1"
    denied = error_of(
        reader_client.put("/api/v1/notification_templates/t2", json={"body": "x"}), 403
    )
    assert denied["code"] == "FORBIDDEN"
    error_of(reader_client.delete("/api/v1/notification_templates/t1"), 403)
    with pytest.raises(Forbidden):
        api.facade(WorkflowManager, "remote", reader).put_notification_template("t3", "x")


class PluginTemplates:
    @hookimpl
    def abi_notification_templates(self, register: Callable[[str, Any], None]) -> None:
        register("tpl_plugin", "From a plugin: $name")


def test_plugin_registered_id_cannot_be_replaced(databases: DatabaseFactory) -> None:
    """A template a plugin registered is used as before and cannot be put over the API (409)."""
    engine = Engine(databases(), plugins=[PluginTemplates()])
    try:
        token = engine.tokens.create_token("usr_spec")
        manager = WorkflowManager(access_token=token, engine=engine)
        with pytest.raises(InvalidState) as refused:
            manager.put_notification_template("tpl_plugin", "mine")
        assert "PluginTemplates" in refused.value.details["plugin"]
        workflow = manager.create_workflow(
            {
                "name": "Plugin template",
                "type": "notification",
                "configuration": {
                    "channels": ["webhook"],
                    "templates": {"webhook": "tpl_plugin"},
                    "recipients": {"webhook": ["https://example.com/hook"]},
                },
            }
        )
        assert workflow.notification_templates == []  # not managed: nothing to wait for
    finally:
        engine.close()


@pytest.mark.anyio
async def test_managed_templates_are_stored(databases: DatabaseFactory) -> None:
    """put/get/list/delete on the store of each backend survive a reopen; find reads many."""
    engine = Engine(databases())
    try:
        templates = engine.notification_templates
        for name in ("b_two", "a_one", "c_three"):
            await templates.put(name, {"body": f"Body of {name}", "subject": None})
    finally:
        engine.close()
    again = Engine(databases())
    try:
        templates = again.notification_templates
        page = await templates.list(page=1, page_size=2)
        assert [t.id for t in page.items] == ["a_one", "b_two"]
        assert page.pagination.total_items == 3
        assert page.pagination.total_pages == 2
        found = await templates.find(["c_three", "nope", "a_one"])
        assert sorted(found) == ["a_one", "c_three"]
        assert found["c_three"].body == "Body of c_three"
        assert found["c_three"].subject is None
        await templates.delete("b_two")
        assert await templates.missing(["a_one", "b_two"]) == ["b_two"]
    finally:
        again.close()


def test_seed_configuration_is_kept_verbatim_by_the_python_api(api: Served) -> None:
    """WorkflowConfig with the seed's notification configuration is created, not refused."""
    manager = api.facade(WorkflowManager, "local")
    workflow = manager.create_workflow(
        WorkflowConfig(
            name="Seed notifications",
            type="notification",
            configuration=copy.deepcopy(SEED_NOTIFICATION),
        )
    )
    assert workflow.configuration == SEED_NOTIFICATION
    assert [t.id for t in workflow.notification_templates] == ["template_123", "template_456"]
