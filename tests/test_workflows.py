"""The workflow service: create, get, list, update, activate/deactivate, delete, and events."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from abi_engine import Engine, Principal, WorkflowStatus, hookimpl
from abi_engine.errors import InvalidRequest, InvalidState, InvalidWorkflowConfig, WorkflowNotFound
from abi_engine.events import Event
from abi_engine.ids import parse_time

STEPS = {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]}
HTTP = {"base_url": "https://api.example.com"}


def body(**overrides: Any) -> dict[str, Any]:
    """A valid create body for the bundled custom type."""
    data: dict[str, Any] = {
        "name": "Customer Feedback Analysis",
        "description": "Analyzes customer feedback",
        "type": "custom",
        "configuration": STEPS,
        "integrations": [
            {"id": "int_zendesk", "required": True},
            {"id": "int_salesforce", "required": False},
        ],
        "metadata": {"department": "customer_success", "priority": "medium"},
    }
    data.update(overrides)
    return data


class Recorder:
    """A test plugin recording every event it observes."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def wf_engine(tmp_path: Path, recorder: Recorder) -> Iterator[Engine]:
    """An engine with the event recorder plugin."""
    engine = Engine(tmp_path / "wf.db", plugins=[recorder])
    try:
        yield engine
    finally:
        engine.close()


# -- create ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create(wf_engine: Engine, principal: Principal) -> None:
    """create gives an inactive wf_ workflow with pending integrations and the seed's fields."""
    wf = await wf_engine.workflows.create(body(), actor=principal)
    assert re.fullmatch(r"wf_[0-9a-z]{26}", wf.id)
    assert wf.status is WorkflowStatus.INACTIVE
    assert [(i.id, i.required, i.status.value) for i in wf.integrations] == [
        ("int_zendesk", True, "pending"),
        ("int_salesforce", False, "pending"),
    ]
    assert wf.created_at == wf.updated_at
    assert wf.created_by == principal.user_id
    assert wf.activated_at is None
    assert wf.stats.runs_total == 0
    assert await wf_engine.workflows.get(wf.id) == wf


@pytest.mark.anyio
async def test_create_unknown_type(wf_engine: Engine) -> None:
    """An unregistered type is INVALID_WORKFLOW_CONFIG on field 'type', listing known types."""
    with pytest.raises(InvalidWorkflowConfig) as info:
        await wf_engine.workflows.create(body(type="feedback_analysis_v9"))
    assert info.value.details["field"] == "type"
    assert "custom" in info.value.details["allowed"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("configuration", "field"),
    [
        ({}, "configuration"),
        ({"steps": []}, "configuration.steps"),
        (
            {"steps": [{"name": "w", "action": "delay", "seconds": "x"}]},
            "configuration.steps[0].seconds",
        ),
        ({"steps": [{"name": "w", "action": "teleport"}]}, "configuration.steps[0].action"),
        ({"handler": "nobody_registered_this"}, "configuration.handler"),
        ({**STEPS, "colour": "red"}, "configuration.colour"),
        ("not an object", "configuration"),
    ],
)
async def test_create_config_validated_by_type(
    wf_engine: Engine, configuration: Any, field: str
) -> None:
    """The type's schema checks the configuration: INVALID_WORKFLOW_CONFIG naming the field."""
    with pytest.raises((InvalidWorkflowConfig, InvalidRequest)) as info:
        await wf_engine.workflows.create(body(configuration=configuration))
    assert info.value.details["field"] == field
    if field != "configuration" or isinstance(configuration, dict):
        assert isinstance(info.value, InvalidWorkflowConfig)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": 5}, "name"),
        ({"description": "x" * 5001}, "description"),
        ({"integrations": [{"id": "zendesk"}]}, "integrations[0].id"),
        ({"integrations": [{"id": "int_a"}, {"id": "int_a"}]}, "integrations"),
        ({"integrations": [{"id": "int_a", "bogus": 1}]}, "integrations[0].bogus"),
        ({"metadata": []}, "metadata"),
        ({"status": "active"}, "status"),
    ],
)
async def test_create_bad_request(wf_engine: Engine, overrides: dict[str, Any], field: str) -> None:
    """Malformed create bodies are INVALID_REQUEST naming the offending field."""
    with pytest.raises(InvalidRequest) as info:
        await wf_engine.workflows.create(body(**overrides))
    assert info.value.details["field"] == field


# -- get / list ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_missing(wf_engine: Engine) -> None:
    """Getting an unknown id raises WorkflowNotFound carrying the id."""
    with pytest.raises(WorkflowNotFound) as info:
        await wf_engine.workflows.get("wf_nope")
    assert info.value.details == {"workflow_id": "wf_nope"}


@pytest.mark.anyio
async def test_list_filters_sorts_and_pages(wf_engine: Engine) -> None:
    """list filters by status/type/department, sorts, and paginates with correct totals."""
    created = []
    for i in range(7):
        wf = await wf_engine.workflows.create(
            body(name=f"wf-{i}", metadata={"department": "sales" if i % 2 else "ops"})
        )
        created.append(wf)
        await anyio.sleep(0.002)  # distinct created_at milliseconds
    await wf_engine.workflows.activate(created[0].id)
    await wf_engine.workflows.activate(created[1].id)

    page = await wf_engine.workflows.list()
    assert [w.id for w in page.items] == [w.id for w in reversed(created)]
    assert page.pagination.total_items == 7
    assert page.pagination.total_pages == 1

    active = await wf_engine.workflows.list(status="active")
    assert {w.id for w in active.items} == {created[0].id, created[1].id}
    sales = await wf_engine.workflows.list(department="sales", sort_by="name", sort_order="asc")
    assert [w.name for w in sales.items] == ["wf-1", "wf-3", "wf-5"]
    assert (await wf_engine.workflows.list(type="custom")).pagination.total_items == 7
    assert (await wf_engine.workflows.list(type="other")).items == []

    second = await wf_engine.workflows.list(page="2", page_size="3", sort_order="asc")
    assert [w.name for w in second.items] == ["wf-3", "wf-4", "wf-5"]
    assert (second.pagination.page, second.pagination.total_pages) == (2, 3)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"page": 0}, "page"),
        ({"page": "x"}, "page"),
        ({"page": True}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"sort_by": "id"}, "sort_by"),
        ({"sort_order": "up"}, "sort_order"),
        ({"status": "paused"}, "status"),
    ],
)
async def test_list_bad_query(wf_engine: Engine, kwargs: dict[str, Any], field: str) -> None:
    """Bad list parameters are INVALID_REQUEST naming the parameter."""
    with pytest.raises(InvalidRequest) as info:
        await wf_engine.workflows.list(**kwargs)
    assert info.value.details["field"] == field


# -- update ------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_update_merges_given_fields(wf_engine: Engine) -> None:
    """PUT replaces only the fields given; the rest stay; updated_at moves on."""
    wf = await wf_engine.workflows.create(body())
    await anyio.sleep(0.002)
    updated = await wf_engine.workflows.update(
        wf.id, {"name": "Enhanced", "metadata": {"department": "support", "version": "1.1"}}
    )
    assert updated.name == "Enhanced"
    assert updated.description == wf.description
    assert updated.configuration == wf.configuration
    assert [i.id for i in updated.integrations] == ["int_zendesk", "int_salesforce"]
    assert updated.metadata == {"department": "support", "version": "1.1"}
    assert updated.updated_at > wf.updated_at
    assert updated.created_at == wf.created_at
    assert await wf_engine.workflows.get(wf.id) == updated
    assert (await wf_engine.workflows.list(department="support")).pagination.total_items == 1
    assert (await wf_engine.workflows.list(department="customer_success")).items == []

    same_type = await wf_engine.workflows.update(wf.id, {"type": "custom", "description": None})
    assert same_type.description is None


@pytest.mark.anyio
async def test_update_refusals(wf_engine: Engine) -> None:
    """type cannot change; unknown or read-only fields and bad config are refused by field."""
    wf = await wf_engine.workflows.create(body())
    with pytest.raises(InvalidRequest) as info:
        await wf_engine.workflows.update(wf.id, {"type": "reporting"})
    assert info.value.details["field"] == "type"
    for field in ("status", "id", "created_by", "colour"):
        with pytest.raises(InvalidRequest) as info:
            await wf_engine.workflows.update(wf.id, {field: "x"})
        assert info.value.details["field"] == field
    with pytest.raises(InvalidWorkflowConfig) as cfg:
        await wf_engine.workflows.update(wf.id, {"configuration": {"steps": "nope"}})
    assert cfg.value.details["field"] == "configuration.steps"
    with pytest.raises(InvalidRequest):
        await wf_engine.workflows.update(wf.id, ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotFound):
        await wf_engine.workflows.update("wf_missing", {"name": "x"})
    assert await wf_engine.workflows.get(wf.id) == wf


# -- activate / deactivate ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_activate_and_deactivate(wf_engine: Engine) -> None:
    """activate/deactivate flip status and stamp times (each answer shows both, the other
    being when it last happened); doing either twice is INVALID_STATE."""
    wf = await wf_engine.workflows.create(body())
    activated = await wf_engine.workflows.activate(wf.id)
    assert activated.status is WorkflowStatus.ACTIVE
    assert activated.activated_at is not None
    assert activated.deactivated_at is None
    assert activated.activated_at == activated.updated_at
    with pytest.raises(InvalidState) as info:
        await wf_engine.workflows.activate(wf.id)
    assert info.value.details["status"] == "active"

    deactivated = await wf_engine.workflows.deactivate(wf.id)
    assert deactivated.status is WorkflowStatus.INACTIVE
    assert deactivated.deactivated_at is not None
    assert deactivated.activated_at == activated.activated_at  # when it was last activated
    with pytest.raises(InvalidState):
        await wf_engine.workflows.deactivate(wf.id)

    current = await wf_engine.workflows.get(wf.id)
    assert current.status is WorkflowStatus.INACTIVE
    assert current.activated_at == activated.activated_at
    assert current.deactivated_at == deactivated.deactivated_at


@pytest.mark.anyio
async def test_activation_allowed_while_integrations_pending(wf_engine: Engine) -> None:
    """A workflow with pending required integrations can still be activated (the seed does it)."""
    wf = await wf_engine.workflows.create(body())
    assert wf.integrations[0].status.value == "pending"
    result = await wf_engine.workflows.activate(wf.id)
    assert result.status is WorkflowStatus.ACTIVE


# -- delete ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_delete(wf_engine: Engine) -> None:
    """After delete the workflow is not found anywhere, and deleting again is not found."""
    wf = await wf_engine.workflows.create(body())
    result = await wf_engine.workflows.delete(wf.id)
    assert (result.id, result.deleted) == (wf.id, True)
    for operation in (
        wf_engine.workflows.get,
        wf_engine.workflows.delete,
        wf_engine.workflows.activate,
    ):
        with pytest.raises(WorkflowNotFound):
            await operation(wf.id)
    with pytest.raises(WorkflowNotFound):
        await wf_engine.workflows.update(wf.id, {"name": "zombie"})
    assert (await wf_engine.workflows.list()).items == []


# -- events ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_events_through_hook_and_outbox(wf_engine: Engine, recorder: Recorder) -> None:
    """Each change emits its event to abi_event and writes the same event to the outbox."""
    wf = await wf_engine.workflows.create(body())
    await wf_engine.workflows.update(wf.id, {"name": "renamed"})
    await wf_engine.workflows.activate(wf.id)
    await wf_engine.workflows.deactivate(wf.id)
    await wf_engine.workflows.delete(wf.id)
    expected = [
        "workflow.created",
        "workflow.updated",
        "workflow.activated",
        "workflow.deactivated",
        "workflow.deleted",
    ]
    assert [e.type for e in recorder.events] == expected
    assert all(e.data["id"] == wf.id for e in recorder.events)
    assert recorder.events[1].data["name"] == "renamed"
    assert recorder.events[2].data["status"] == "active"
    parse_time(recorder.events[0].data["created_at"])  # JSON form, RFC 3339

    outbox = wf_engine.store.events_after(0)
    assert [s.event for s in outbox] == recorder.events


@pytest.mark.anyio
async def test_refused_operations_emit_nothing(wf_engine: Engine, recorder: Recorder) -> None:
    """Invalid requests and invalid state changes emit no event and write none."""
    wf = await wf_engine.workflows.create(body())
    with pytest.raises(InvalidWorkflowConfig):
        await wf_engine.workflows.create(body(type="nope"))
    with pytest.raises(InvalidRequest):
        await wf_engine.workflows.update(wf.id, {"type": "other"})
    with pytest.raises(InvalidState):
        await wf_engine.workflows.deactivate(wf.id)
    assert [e.type for e in recorder.events] == ["workflow.created"]
    assert len(wf_engine.store.events_after(0)) == 1


# -- integrations seen from a workflow ------------------------------------------------------------------


@pytest.mark.anyio
async def test_integration_status_follows_connections(wf_engine: Engine) -> None:
    """A workflow's integration shows connected once a connection of that id exists."""
    wf = await wf_engine.workflows.create(body())
    await wf_engine.integrations.put("int_zendesk", "http", HTTP)
    got = await wf_engine.workflows.get(wf.id)
    assert {i.id: i.status.value for i in got.integrations} == {
        "int_zendesk": "connected",
        "int_salesforce": "pending",
    }
    listed = await wf_engine.workflows.create(body(name="second"))
    assert listed.integrations[0].status.value == "connected"
