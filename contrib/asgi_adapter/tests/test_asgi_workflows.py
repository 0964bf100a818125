"""Every workflow endpoint of the seed, with the seed's bodies, over the adapter."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgi_helpers import (
    CUSTOM_CONFIG,
    SEED_CREATE,
    SEED_UPDATE,
    WORKFLOW_ID,
    assert_timestamps,
    create_body,
    error,
    success,
)

pytestmark = pytest.mark.anyio

SEED_WORKFLOW_KEYS = {
    "id",
    "name",
    "description",
    "type",
    "configuration",
    "integrations",
    "metadata",
    "status",
    "created_at",
    "updated_at",
    "created_by",
}
SEED_LIST_ITEM_KEYS = {
    "id",
    "name",
    "description",
    "type",
    "status",
    "metadata",
    "created_at",
    "updated_at",
}
STATS_KEYS = {"runs_total", "runs_success", "runs_failed", "average_duration_ms"}


async def create(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = success(
        await client.post("/api/v1/workflows", json=create_body(**overrides)), 201
    )
    return data


async def test_create_workflow_answers_201_with_the_seed_shape(client: httpx.AsyncClient) -> None:
    """POST /workflows with the seed's body answers 201 and the seed's response fields."""
    data = await create(client)
    assert set(data) >= SEED_WORKFLOW_KEYS
    # Beyond the seed's example: stats, the notification templates the configuration
    # names, activated_at / deactivated_at (null until then), retention_days (#15),
    # the concurrency limits, the rate limit and the debounce (#16).
    assert set(data) <= SEED_WORKFLOW_KEYS | {
        "stats",
        "notification_templates",
        "activated_at",
        "deactivated_at",
        "retention_days",
        "max_concurrency",
        "concurrency",
        "rate_limit",
        "debounce",
    }
    assert (data["activated_at"], data["deactivated_at"]) == (None, None)
    assert (data["rate_limit"], data["debounce"]) == (None, None)
    assert data["notification_templates"] == []
    assert WORKFLOW_ID.match(data["id"])
    for key in ("name", "description", "type", "configuration", "metadata"):
        assert data[key] == SEED_CREATE[key]
    assert data["integrations"] == [
        {"id": "int_zendesk", "required": True, "status": "pending"},
        {"id": "int_salesforce", "required": False, "status": "pending"},
    ]
    assert data["status"] == "inactive"
    assert data["created_by"] == "usr_test"
    assert_timestamps(data, "created_at", "updated_at")
    assert data["created_at"] == data["updated_at"]


async def test_get_workflow_shows_stats_and_integration_status(client: httpx.AsyncClient) -> None:
    """GET /workflows/{id} answers the stored workflow with its stats block."""
    created = await create(client)
    data = success(await client.get(f"/api/v1/workflows/{created['id']}"))
    assert SEED_WORKFLOW_KEYS | {"stats"} <= set(data)
    assert set(data["stats"]) == STATS_KEYS
    assert data["stats"]["runs_total"] == 0
    assert {k: data[k] for k in SEED_WORKFLOW_KEYS} == {k: created[k] for k in SEED_WORKFLOW_KEYS}


async def test_list_workflows_has_summary_items_and_pagination(client: httpx.AsyncClient) -> None:
    """GET /workflows answers summary items and the seed's pagination block."""
    first = await create(client)
    second = await create(client, name="Customer Onboarding", metadata={"department": "sales"})
    data = success(await client.get("/api/v1/workflows"))
    assert set(data) == {"items", "pagination"}
    assert data["pagination"] == {"page": 1, "page_size": 10, "total_items": 2, "total_pages": 1}
    assert [item["id"] for item in data["items"]] == [second["id"], first["id"]]  # newest first
    for item in data["items"]:
        assert set(item) == SEED_LIST_ITEM_KEYS
        assert_timestamps(item, "created_at", "updated_at")
    assert data["items"][1]["metadata"] == SEED_CREATE["metadata"]


async def test_list_workflows_filters_sorts_and_pages(client: httpx.AsyncClient) -> None:
    """The seed's query parameters filter, sort and page the list."""
    alpha = await create(client, name="Alpha")
    beta = await create(client, name="Beta", metadata={"department": "sales"})
    gamma = await create(client, name="Gamma")
    success(await client.post(f"/api/v1/workflows/{gamma['id']}/activate"))

    active = success(await client.get("/api/v1/workflows", params={"status": "active"}))
    assert [i["id"] for i in active["items"]] == [gamma["id"]]
    sales = success(await client.get("/api/v1/workflows", params={"department": "sales"}))
    assert [i["id"] for i in sales["items"]] == [beta["id"]]
    by_type = success(await client.get("/api/v1/workflows", params={"type": "nope"}))
    assert by_type["items"] == []
    assert by_type["pagination"]["total_items"] == 0

    params = {"sort_by": "name", "sort_order": "asc", "page": "2", "page_size": "1"}
    page = success(await client.get("/api/v1/workflows", params=params))
    assert [i["id"] for i in page["items"]] == [beta["id"]]
    assert page["pagination"] == {"page": 2, "page_size": 1, "total_items": 3, "total_pages": 3}
    assert alpha["id"] != beta["id"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "x"}, "page"),
        ({"page": "\u00b2"}, "page"),
        ({"page": "+-5"}, "page"),
        ({"page": "9" * 5000}, "page"),
        ({"page_size": "101"}, "page_size"),
        ({"sort_by": "colour"}, "sort_by"),
        ({"sort_order": "sideways"}, "sort_order"),
        ({"status": "paused"}, "status"),
    ],
)
async def test_bad_list_query_is_invalid_request(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    """A bad query parameter answers 400 INVALID_REQUEST naming it."""
    details = error(await client.get("/api/v1/workflows", params=params), 400, "INVALID_REQUEST")
    assert details["field"] == field


async def test_update_workflow_with_the_seed_body(client: httpx.AsyncClient) -> None:
    """PUT /workflows/{id} with the seed's body replaces those fields and keeps the rest."""
    created = await create(client)
    data = success(await client.put(f"/api/v1/workflows/{created['id']}", json=SEED_UPDATE))
    for key in ("name", "description", "configuration", "metadata"):
        assert data[key] == SEED_UPDATE[key]
    assert data["type"] == "custom"
    assert data["integrations"] == created["integrations"]
    assert data["created_at"] == created["created_at"]
    assert data["updated_at"] >= created["updated_at"]
    assert_timestamps(data, "created_at", "updated_at")
    again = success(await client.get(f"/api/v1/workflows/{created['id']}"))
    assert again["name"] == SEED_UPDATE["name"]


async def test_activate_and_deactivate_answer_the_seed_shapes(client: httpx.AsyncClient) -> None:
    """activate/deactivate answer the seed's fields, and the other time (null until it
    happens), and flip the status."""
    wf = await create(client)
    activated = success(await client.post(f"/api/v1/workflows/{wf['id']}/activate"))
    assert set(activated) == {"id", "status", "activated_at", "deactivated_at", "updated_at"}
    assert activated["deactivated_at"] is None
    assert activated["id"] == wf["id"]
    assert activated["status"] == "active"
    assert_timestamps(activated, "activated_at", "updated_at")
    got = success(await client.get(f"/api/v1/workflows/{wf['id']}"))
    assert got["status"] == "active"
    assert got["activated_at"] == activated["activated_at"]

    deactivated = success(await client.post(f"/api/v1/workflows/{wf['id']}/deactivate"))
    assert set(deactivated) == {"id", "status", "activated_at", "deactivated_at", "updated_at"}
    assert deactivated["activated_at"] == activated["activated_at"]
    assert deactivated["status"] == "inactive"
    assert_timestamps(deactivated, "deactivated_at", "updated_at")


async def test_double_activate_is_invalid_state(client: httpx.AsyncClient) -> None:
    """Activating an active workflow (or deactivating an inactive one) answers 409."""
    wf = await create(client)
    details = error(
        await client.post(f"/api/v1/workflows/{wf['id']}/deactivate"), 409, "INVALID_STATE"
    )
    assert details["status"] == "inactive"
    success(await client.post(f"/api/v1/workflows/{wf['id']}/activate"))
    details = error(
        await client.post(f"/api/v1/workflows/{wf['id']}/activate"), 409, "INVALID_STATE"
    )
    assert details == {"workflow_id": wf["id"], "status": "active"}


async def test_delete_workflow_then_it_is_not_found(client: httpx.AsyncClient) -> None:
    """DELETE answers {id, deleted: true}; afterwards every call on it is 404."""
    wf = await create(client)
    data = success(await client.delete(f"/api/v1/workflows/{wf['id']}"))
    assert data == {"id": wf["id"], "deleted": True}
    for method, suffix in [("GET", ""), ("DELETE", ""), ("POST", "/activate")]:
        response = await client.request(method, f"/api/v1/workflows/{wf['id']}{suffix}")
        assert error(response, 404, "WORKFLOW_NOT_FOUND") == {"workflow_id": wf["id"]}
    listed = success(await client.get("/api/v1/workflows"))
    assert listed["items"] == []


async def test_unknown_workflow_is_workflow_not_found(client: httpx.AsyncClient) -> None:
    """Every workflow route answers 404 WORKFLOW_NOT_FOUND for an unknown id."""
    missing = "wf_doesnotexist"
    calls = [
        ("GET", "", None),
        ("PUT", "", {"name": "x"}),
        ("DELETE", "", None),
        ("POST", "/activate", None),
        ("POST", "/deactivate", None),
    ]
    for method, suffix, body in calls:
        response = await client.request(method, f"/api/v1/workflows/{missing}{suffix}", json=body)
        assert error(response, 404, "WORKFLOW_NOT_FOUND")["workflow_id"] == missing


async def test_unknown_type_is_invalid_workflow_config(client: httpx.AsyncClient) -> None:
    """An unknown workflow type answers 400 INVALID_WORKFLOW_CONFIG naming 'type'."""
    response = await client.post("/api/v1/workflows", json=create_body(type="feedback_analysis_x"))
    details = error(response, 400, "INVALID_WORKFLOW_CONFIG")
    assert details["field"] == "type"
    assert "custom" in details["allowed"]


async def test_bad_custom_configuration_is_invalid_workflow_config(
    client: httpx.AsyncClient,
) -> None:
    """A custom configuration with an unknown action answers 400 INVALID_WORKFLOW_CONFIG."""
    config = {"steps": [{"name": "x", "action": "teleport"}]}
    response = await client.post("/api/v1/workflows", json=create_body(configuration=config))
    details = error(response, 400, "INVALID_WORKFLOW_CONFIG")
    assert details["field"].startswith("configuration.steps[0]")


async def test_type_cannot_change_on_update(client: httpx.AsyncClient) -> None:
    """PUT with a different type answers 400 INVALID_REQUEST naming 'type'."""
    wf = await create(client, configuration=CUSTOM_CONFIG)
    response = await client.put(f"/api/v1/workflows/{wf['id']}", json={"type": "other"})
    assert error(response, 400, "INVALID_REQUEST")["field"] == "type"
