"""reporting end to end: records from a server on 127.0.0.1, reports delivered to another."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from abi_plugin_data_processing.tests.systems import System, connect_systems, create_workflow, run

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import (
    InvalidWorkflowConfig,
    ParameterValidationError,
    WorkflowExecutionError,
)

pytestmark = pytest.mark.anyio

ORDERS = [
    {"id": 1, "region": "EU", "amount": 120.0, "status": "paid", "customer": "a"},
    {"id": 2, "region": "EU", "amount": 80, "status": "paid", "customer": "b"},
    {"id": 3, "region": "US", "amount": 200, "status": "paid", "customer": "a"},
    {"id": 4, "region": "US", "amount": 50, "status": "refunded", "customer": "c"},
    {"id": 5, "region": "APAC", "amount": 10, "status": "paid", "customer": "d"},
]
SALES: dict[str, Any] = {
    "report_type": "sales_by_region",
    "group_by": ["region"],
    "filters": ["record['status'] == 'paid'"],
    "metrics": [
        {"name": "orders", "aggregation": "count"},
        {"name": "revenue", "aggregation": "sum", "field": "amount"},
        {"name": "average", "aggregation": "avg", "field": "amount"},
        {"name": "customers", "aggregation": "count_distinct", "field": "customer"},
    ],
    "sort_by": "revenue",
    "sort_order": "desc",
}
SOURCE = {"source_integration": "int_warehouse", "source_path": "/records"}
INTEGRATIONS = [
    {"id": "int_warehouse", "required": True},
    {"id": "int_inbox", "required": True},
]


async def report(
    engine: Engine,
    configuration: dict[str, Any],
    parameters: dict[str, Any] | None = None,
    integrations: list[dict[str, Any]] | None = None,
) -> Any:
    """Run a new reporting workflow once (with no integrations unless given)."""
    return await run(engine, configuration, parameters, integrations or [], "reporting")


@pytest.mark.slow
async def test_paged_source_to_a_delivered_markdown_report(
    engine: Engine, warehouse: System, inbox: System
) -> None:
    """Orders read over pages are aggregated, rendered as Markdown and POSTed to the inbox."""
    warehouse.records = {str(o["id"]): o for o in ORDERS}
    warehouse.page_size = 2
    await connect_systems(engine, int_warehouse=warehouse, int_inbox=inbox)
    configuration = {
        **SALES,
        **SOURCE,
        "pagination": {"type": "cursor"},
        "format": "markdown",
        "destination_integration": "int_inbox",
    }
    execution = await report(engine, configuration, integrations=INTEGRATIONS)
    assert [(s.name, s.status) for s in execution.steps or []] == [
        ("collect", StepStatus.COMPLETED),
        ("aggregate", StepStatus.COMPLETED),
        ("render", StepStatus.COMPLETED),
        ("deliver", StepStatus.COMPLETED),
    ]
    result = execution.result
    assert result["rows"] == [
        {"region": "EU", "orders": 2, "revenue": 200.0, "average": 100.0, "customers": 2},
        {"region": "US", "orders": 1, "revenue": 200, "average": 200.0, "customers": 1},
        {"region": "APAC", "orders": 1, "revenue": 10, "average": 10.0, "customers": 1},
    ]
    assert result["totals"] == {"orders": 4, "revenue": 410.0, "average": 102.5, "customers": 3}
    assert result["summary"]["pages"] == 3
    assert (result["summary"]["matched"], result["summary"]["filtered_out"]) == (4, 1)
    [delivered] = inbox.reports
    assert delivered.headers["content-type"] == "text/markdown; charset=utf-8"
    assert delivered.headers["idempotency-key"] == f"{execution.execution_id}:report"
    assert delivered.body == result["content"]
    assert result["delivery"] == {
        "integration": "int_inbox",
        "path": "/reports",
        "status_code": 201,
    }
    lines = result["content"].splitlines()
    assert lines[0] == "# Sales By Region"
    assert "| EU | 2 | 200 | 100 | 2 |" in lines
    assert lines[-1] == "| Total | 4 | 410 | 102.5 | 3 |"


@pytest.mark.parametrize("fmt", ["json", "csv", "html"])
async def test_formats_from_parameter_records(fmt: str, engine: Engine) -> None:
    """Records given as parameters; no destination, so deliver is skipped and render's result is final."""
    configuration = {**SALES, "format": fmt, "title": "Sales"}
    execution = await report(engine, configuration, {"records": ORDERS})
    assert [s.status for s in execution.steps or []][-1] is StepStatus.SKIPPED
    result = execution.result
    assert result["format"] == fmt
    assert "delivery" not in result
    content = result["content"]
    if fmt == "json":
        parsed = json.loads(content)
        assert parsed["rows"] == result["rows"]
        assert parsed["totals"]["revenue"] == 410.0
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(content, newline="")))
        assert rows[0] == ["region", "orders", "revenue", "average", "customers"]
        assert rows[1] == ["EU", "2", "200.0", "100.0", "2"]
        assert len(rows) == 4
    else:
        assert content.startswith("<!DOCTYPE html>")
        assert "<title>Sales</title>" in content
        assert "<tr><td>Total</td><td>4</td><td>410</td><td>102.5</td><td>3</td></tr>" in content


async def test_parameter_filters_narrow_the_report(engine: Engine) -> None:
    """Filters given as parameters apply on top of the configured ones; a bad one is 422."""
    configuration = {**SALES, "group_by": [], "sort_by": None}
    execution = await report(
        engine, configuration, {"records": ORDERS, "filters": ["record['amount'] >= 100"]}
    )
    assert execution.result["rows"] == [
        {"orders": 2, "revenue": 320.0, "average": 160.0, "customers": 1}
    ]
    workflow_id = await create_workflow(engine, configuration, [], "reporting")
    with pytest.raises(ParameterValidationError) as raised:
        await engine.executions.execute(workflow_id, {"records": [], "filters": ["ok", "1 +"]})
    assert raised.value.details["field"] == "parameters.filters[1]"


@pytest.mark.slow
async def test_a_failing_destination_fails_deliver(
    engine: Engine, warehouse: System, inbox: System
) -> None:
    """The inbox answering 500 fails deliver after its tries; the report itself was rendered."""
    inbox.plan("POST", "/reports", [500, 500])
    await connect_systems(engine, int_warehouse=warehouse, int_inbox=inbox)
    configuration = {
        **SALES,
        "destination_integration": "int_inbox",
        "retry": {"attempts": 2, "backoff_seconds": 0},
    }
    with pytest.raises(WorkflowExecutionError) as raised:
        await report(engine, configuration, {"records": ORDERS}, INTEGRATIONS)
    execution = await engine.executions.get(raised.value.details["execution_id"])
    assert execution.status is ExecutionStatus.FAILED
    deliver = execution.steps[-1]
    assert (deliver.name, deliver.status, deliver.attempts) == ("deliver", StepStatus.FAILED, 2)
    assert "POST int_inbox/reports answered 500" in execution.error.message
    assert len(inbox.received("POST", "/reports")) == 2


CONFIG_MISTAKES = [
    ({"metrics": []}, "configuration.metrics"),
    ({"metrics": [{"name": "s", "aggregation": "sum"}]}, "configuration.metrics[0].field"),
    (
        {"metrics": [{"name": "s", "aggregation": "median", "field": "x"}]},
        "configuration.metrics[0].aggregation",
    ),
    ({"metrics": [{"name": "region", "aggregation": "count"}]}, "configuration.metrics[0].name"),
    ({"group_by": ["ok", ""]}, "configuration.group_by[1]"),
    ({"filters": ["record[", "x"]}, "configuration.filters[0]"),
    ({"sort_by": "nothing"}, "configuration.sort_by"),
    ({"limit": 0}, "configuration.limit"),
    ({"format": "pdf"}, "configuration.format"),
    ({"destination_integration": "inbox"}, "configuration.destination_integration"),
    ({"destination_path": "https://elsewhere.example/"}, "configuration.destination_path"),
    ({"report_type": ""}, "configuration.report_type"),
    ({"groupby": ["x"]}, "configuration.groupby"),
]


@pytest.mark.parametrize(("change", "field"), CONFIG_MISTAKES)
async def test_configuration_mistakes_name_the_field(
    change: dict[str, Any], field: str, engine: Engine
) -> None:
    """Each mistake is INVALID_WORKFLOW_CONFIG naming the offending field."""
    with pytest.raises(InvalidWorkflowConfig) as raised:
        await engine.workflows.create(
            {"name": "r", "type": "reporting", "configuration": {**SALES, **change}}
        )
    assert raised.value.details["field"] == field
