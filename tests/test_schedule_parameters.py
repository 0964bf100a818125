"""Schedules check their parameters at once, and failed firings are no longer silent (#12, point 4).

The seed's nightly schedule sends ``generate_report: true``: it is accepted and
fires a report. Parameters the workflow's type refuses are 400
``INVALID_PARAMETERS`` (or 422) when the schedule is created or updated, not
a failure at every due time. A firing that still cannot start an execution
(a required integration gone, say) is counted on the schedule
(``failed_firings``, ``last_failure``), logged in one line and emitted as a
``schedule.failed`` event.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from runtime_plugins.helpers import DatabaseFactory, EngineFactory, new_workflow
from served_engines import WAYS, Served, served

from abi.workflows import WorkflowScheduler
from abi_engine import Engine, ExecutionStatus, hookimpl
from abi_engine.errors import InvalidParameters, ParameterValidationError
from abi_engine.events import Event

#: The seed's feedback_analysis configuration.
SEED_CONFIGURATION = {
    "nlp_service": "default",
    "sentiment_analysis": True,
    "topic_extraction": True,
    "language": "en",
    "response_threshold": 0.7,
}
#: The seed's "Schedule Workflow" body and "Update Schedule" body.
SEED_CREATE = {
    "name": "Daily Feedback Analysis",
    "description": "Runs feedback analysis every night at midnight",
    "schedule_type": "cron",
    "cron_expression": "0 0 * * *",
    "parameters": {"source": "daily_report", "include_recommendations": True},
    "enabled": True,
    "timezone": "UTC",
}
SEED_UPDATE = {
    "name": "Daily Feedback Analysis",
    "description": "Runs feedback analysis every night at 2 AM",
    "cron_expression": "0 2 * * *",
    "parameters": {
        "source": "daily_report",
        "include_recommendations": True,
        "generate_report": True,
    },
    "enabled": True,
}


@pytest.fixture
def api(databases: DatabaseFactory) -> Iterator[Served]:
    with served(databases()) as made:
        yield made


def data_of(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["data"]


def feedback_workflow(api: Served) -> str:
    client = api.client()
    workflow = data_of(
        client.post(
            "/api/v1/workflows",
            json={
                "name": "Feedback",
                "type": "feedback_analysis",
                "configuration": SEED_CONFIGURATION,
            },
        ),
        201,
    )
    data_of(client.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    return str(workflow["id"])


def test_seed_schedule_example_over_rest_fires_a_report(api: Served) -> None:
    """The seed's create then update bodies, verbatim: accepted, and the firing completes a report."""
    client = api.client()
    workflow_id = feedback_workflow(api)
    created = data_of(
        client.post(f"/api/v1/workflows/{workflow_id}/schedules", json=SEED_CREATE), 201
    )
    assert created["failed_firings"] == 0
    assert created["last_failure"] is None
    assert created["workflow_name"] == "Feedback"
    updated = data_of(client.put(f"/api/v1/workflow_schedules/{created['id']}", json=SEED_UPDATE))
    assert updated["parameters"]["generate_report"] is True
    due = api.engine.call(_due, api.engine, created["id"])
    api.engine.call(api.engine.scheduler.tick, due)
    [entry] = data_of(client.get(f"/api/v1/workflow_schedules/{created['id']}/history"))["items"]
    assert entry["outcome"] == "fired", entry
    execution = data_of(
        client.get(
            f"/api/v1/workflow_executions/{entry['execution_id']}/wait",
            params={"timeout_seconds": 60},
        )
    )
    assert execution["status"] == "completed", execution
    assert execution["result"]["source"] == "daily_report"
    assert data_of(client.get(f"/api/v1/workflow_schedules/{created['id']}"))["failed_firings"] == 0


async def _due(engine: Engine, schedule_id: str) -> Any:
    return (await engine.schedules.get(schedule_id)).next_execution


@pytest.mark.parametrize("way", WAYS)
def test_refused_parameters_are_an_error_at_once(api: Served, way: str) -> None:
    """Create and update refuse parameters the type refuses: 400 naming the field (422 for a
    refused value); nothing is created, the schedule keeps its parameters."""
    scheduler = api.facade(WorkflowScheduler, way)
    workflow_id = feedback_workflow(api)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"source": "daily_report", "bogus": 1}, InvalidParameters, "parameters.bogus"),
        ({"generate_report": "yes"}, InvalidParameters, "parameters.generate_report"),
        (
            {"feedback_text": "x", "generate_report": True},
            InvalidParameters,
            "parameters.generate_report",
        ),
        ({"feedback_text": "   "}, ParameterValidationError, "parameters.feedback_text"),
    ]
    for parameters, error, field in cases:
        with pytest.raises(error) as refused:
            scheduler.create_schedule(
                workflow_id,
                name="nightly",
                schedule_type="cron",
                cron_expression="0 0 * * *",
                parameters=parameters,
            )
        assert refused.value.details["field"] == field, (parameters, refused.value)
    assert scheduler.list_schedules(workflow_id=workflow_id).pagination.total_items == 0

    schedule = scheduler.create_schedule(
        workflow_id, name="nightly", schedule_type="cron", cron_expression="0 0 * * *"
    )
    schedule.parameters["bogus"] = True
    with pytest.raises(InvalidParameters) as refused_update:
        scheduler.update_schedule(schedule)
    assert refused_update.value.details["field"] == "parameters.bogus"
    assert scheduler.get_schedule(schedule.id).parameters == {}
    client = api.client()
    answer = client.put(
        f"/api/v1/workflow_schedules/{schedule.id}", json={"parameters": {"period_hours": -1}}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "INVALID_PARAMETERS"


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
async def recorded(make: EngineFactory) -> AsyncIterator[tuple[Engine, Recorder]]:
    recorder = Recorder()
    engine = make(plugins=(recorder,))
    async with engine:
        yield engine, recorder


@pytest.mark.anyio
async def test_failed_firing_is_counted_logged_and_emitted(
    recorded: tuple[Engine, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    """A due time that cannot start an execution (its required integration is not
    connected): failed_firings counts it, last_failure says why, one warning line is
    logged, a schedule.failed event is emitted; once connected, the next one fires."""
    engine, recorder = recorded
    workflow_id = await new_workflow(
        engine,
        "custom",
        configuration={"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
        integrations=[{"id": "int_crm", "required": True}],
    )
    schedule = await engine.schedules.create(
        workflow_id,
        {
            "name": "every minute",
            "schedule_type": "interval",
            "interval_value": 60,
            "interval_unit": "seconds",
        },
    )
    first = schedule.next_execution
    assert first is not None
    caplog.set_level(logging.WARNING, logger="abi_engine.scheduler")
    await engine.scheduler.tick(first)
    failed = await engine.schedules.get(schedule.id)
    assert failed.failed_firings == 1
    assert failed.last_failure is not None
    assert failed.last_failure.code == "INTEGRATION_MISSING"  # as an execute would get
    assert "int_crm" in failed.last_failure.message
    assert failed.last_failure.due_at == first
    lines = [r for r in caplog.records if schedule.id in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "INTEGRATION_MISSING" in lines[0].getMessage()
    [event] = [e for e in recorder.events if e.type == "schedule.failed"]
    assert event.data["schedule_id"] == schedule.id
    assert event.data["due_at"] == _rfc3339(first)
    assert event.data["error"]["code"] == "INTEGRATION_MISSING"
    [entry] = (await engine.schedules.history(schedule.id)).items
    assert entry.outcome == "failed"

    assert failed.next_execution is not None
    await engine.scheduler.tick(failed.next_execution)
    twice = await engine.schedules.get(schedule.id)
    assert twice.failed_firings == 2
    assert len([e for e in recorder.events if e.type == "schedule.failed"]) == 2

    await engine.integrations.put("int_crm", "http", {"base_url": "https://crm.example.com"})
    assert twice.next_execution is not None
    await engine.scheduler.tick(twice.next_execution)
    fired = await engine.schedules.get(schedule.id)
    assert fired.failed_firings == 2  # kept: a count of what went wrong
    assert fired.last_execution is not None
    done = await engine.executions.wait(fired.last_execution.execution_id, 60)
    assert done.status is ExecutionStatus.COMPLETED


def _rfc3339(value: Any) -> str:
    from abi_engine.ids import format_time

    return format_time(value)


def test_failed_firings_show_over_rest(api: Served) -> None:
    """GET and list show failed_firings; GET shows last_failure with its code and due time."""
    client = api.client()
    workflow = data_of(
        client.post(
            "/api/v1/workflows",
            json={
                "name": "needs crm",
                "type": "custom",
                "configuration": {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
                "integrations": [{"id": "int_crm", "required": True}],
            },
        ),
        201,
    )
    data_of(client.post(f"/api/v1/workflows/{workflow['id']}/activate"))
    schedule = data_of(
        client.post(
            f"/api/v1/workflows/{workflow['id']}/schedules",
            json={
                "name": "m",
                "schedule_type": "interval",
                "interval_value": 3600,
                "interval_unit": "seconds",
            },
        ),
        201,
    )
    due = api.engine.call(_due, api.engine, schedule["id"])
    api.engine.call(api.engine.scheduler.tick, due)
    shown = data_of(client.get(f"/api/v1/workflow_schedules/{schedule['id']}"))
    assert shown["failed_firings"] == 1
    assert shown["last_failure"]["code"] == "INTEGRATION_MISSING"
    assert shown["last_failure"]["due_at"] == schedule["next_execution"]
    assert set(shown["last_failure"]) == {"at", "due_at", "code", "message"}
    listed = data_of(client.get("/api/v1/workflow_schedules"))["items"]
    assert listed[0]["failed_firings"] == 1
    scheduler = api.facade(WorkflowScheduler, "remote")
    fetched = scheduler.get_schedule(schedule["id"])
    assert fetched.failed_firings == 1
    assert fetched.last_failure is not None


@pytest.mark.anyio
async def test_parameters_echoed_unchanged_are_not_checked_again(
    recorded: tuple[Engine, Recorder],
) -> None:
    """A workflow edited after its schedule was saved can make the schedule's parameters
    stale: an update echoing them is still accepted (only a change is checked), a change
    is refused at once, and the stale parameters fail their firing visibly."""
    engine, _ = recorded
    workflow = await engine.workflows.create(
        {
            "name": "notices",
            "type": "notification",
            "configuration": {
                "channels": ["webhook"],
                "templates": {"webhook": "Deployed $version"},
                "recipients": {"webhook": ["https://hooks.example.com/a"]},
            },
        }
    )
    await engine.workflows.activate(workflow.id)
    schedule = await engine.schedules.create(
        workflow.id,
        {
            "name": "hourly",
            "schedule_type": "interval",
            "interval_value": 1,
            "interval_unit": "hours",
            "parameters": {"version": "1"},
        },
    )
    with pytest.raises(ParameterValidationError) as refused:
        await engine.schedules.create(
            workflow.id,
            {
                "name": "bad",
                "schedule_type": "interval",
                "interval_value": 1,
                "interval_unit": "hours",
                "parameters": {},
            },
        )
    assert refused.value.details["field"] == "parameters.version"
    await engine.workflows.update(
        workflow.id,
        {
            "configuration": {
                "channels": ["webhook"],
                "templates": {"webhook": "Deployed $version by $who"},
                "recipients": {"webhook": ["https://hooks.example.com/a"]},
            }
        },
    )
    renamed = await engine.schedules.update(
        schedule.id, {"name": "hourly notices", "parameters": {"version": "1"}}
    )
    assert renamed.name == "hourly notices"
    with pytest.raises(ParameterValidationError):
        await engine.schedules.update(schedule.id, {"parameters": {"version": "2"}})
    assert renamed.next_execution is not None
    await engine.scheduler.tick(renamed.next_execution)
    stale = await engine.schedules.get(schedule.id)
    assert stale.failed_firings == 1
    assert stale.last_failure is not None
    assert stale.last_failure.code == "PARAMETER_VALIDATION_ERROR"
