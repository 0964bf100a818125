"""Request bodies from the seed and assertions on the contract's envelopes."""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx

#: The ``custom`` configuration used wherever the seed uses ``feedback_analysis``.
CUSTOM_CONFIG: dict[str, Any] = {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]}

#: The seed's "Create Workflow" body, with the ``custom`` type.
SEED_CREATE: dict[str, Any] = {
    "name": "Customer Feedback Analysis",
    "description": "Analyzes customer feedback and generates insights",
    "type": "custom",
    "configuration": CUSTOM_CONFIG,
    "integrations": [
        {"id": "int_zendesk", "required": True},
        {"id": "int_salesforce", "required": False},
    ],
    "metadata": {"department": "customer_success", "priority": "medium", "version": "1.0"},
}

#: The seed's "Update Workflow" body, with a ``custom`` configuration.
SEED_UPDATE: dict[str, Any] = {
    "name": "Enhanced Customer Feedback Analysis",
    "description": "Analyzes customer feedback and generates detailed insights with recommendations",
    "configuration": {
        "steps": [
            {"name": "wait", "action": "delay", "seconds": 0},
            {"name": "total", "action": "transform", "expressions": {"sum": "1 + 2"}},
        ]
    },
    "metadata": {"department": "customer_success", "priority": "high", "version": "1.1"},
}

#: RFC 3339 UTC with a ``Z`` suffix.
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
WORKFLOW_ID = re.compile(r"^wf_[0-9a-z]+$")


def create_body(**overrides: Any) -> dict[str, Any]:
    """A deep copy of :data:`SEED_CREATE` with ``overrides`` applied."""
    body = copy.deepcopy(SEED_CREATE)
    body.update(overrides)
    return body


def success(response: httpx.Response, status: int = 200) -> Any:
    """Assert a success envelope with ``status``; return its ``data``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "data"}, body
    assert body["status"] == "success"
    return body["data"]


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an error envelope with ``status`` and ``code``; return its ``details``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert_error_envelope(body)
    assert body["error"]["code"] == code, body
    details: dict[str, Any] = body["error"]["details"]
    return details


def assert_error_envelope(body: Any) -> None:
    """Assert the contract's error envelope shape (no stack trace anywhere)."""
    assert isinstance(body, dict)
    assert set(body) == {"status", "error"}, body
    assert body["status"] == "error"
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str)
    assert re.fullmatch(r"[A-Z_]+", err["code"])
    assert isinstance(err["message"], str)
    assert err["message"]
    assert isinstance(err["details"], dict)
    assert "Traceback" not in str(body)


def assert_timestamps(data: dict[str, Any], *names: str) -> None:
    """Assert each named field is an RFC 3339 ``Z`` timestamp."""
    for name in names:
        assert isinstance(data[name], str), (name, data)
        assert TIMESTAMP.match(data[name]), (name, data[name])
