"""``generate_report``: the seed's nightly schedule parameter selects the report mode (#12).

``{"source": "daily_report", "include_recommendations": true, "generate_report":
true}`` (the seed's "Update Schedule" body) is a report; ``generate_report:
false`` is the analysis of ``feedback_text``; without it, the presence of a
per-feedback field decides, as before.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi_engine import Engine, ExecutionStatus
from abi_engine.errors import InvalidParameters
from abi_plugin_feedback.report import ReportParameters
from abi_plugin_feedback.workflow import FeedbackParameters

from .conftest import SEED_CONFIGURATION, SEED_TEXT

#: The seed's "Update Schedule" parameters.
SEED_UPDATED_PARAMETERS = {
    "source": "daily_report",
    "include_recommendations": True,
    "generate_report": True,
}
PER_FEEDBACK = ("feedback_text", "feedback_id", "customer_id")


def test_seed_updated_schedule_parameters_are_a_report(feedback: Any) -> None:
    """The seed's updated schedule parameters parse as a report (they were INVALID_PARAMETERS)."""
    config = feedback.parse_configuration(SEED_CONFIGURATION)
    parsed = feedback.parse_parameters(SEED_UPDATED_PARAMETERS, config)
    assert isinstance(parsed, ReportParameters)
    assert (parsed.source, parsed.include_recommendations, parsed.generate_report) == (
        "daily_report",
        True,
        True,
    )


def test_generate_report_false_analyses_the_text(feedback: Any) -> None:
    """generate_report false is one text's analysis: the text is then required."""
    config = feedback.parse_configuration(SEED_CONFIGURATION)
    parsed = feedback.parse_parameters(
        {"feedback_text": SEED_TEXT, "generate_report": False}, config
    )
    assert isinstance(parsed, FeedbackParameters)
    with pytest.raises(InvalidParameters) as missing:
        feedback.parse_parameters({"source": "daily_report", "generate_report": False}, config)
    assert missing.value.details["field"] == "parameters.feedback_text"


def test_generate_report_true_with_a_text_is_refused(feedback: Any) -> None:
    """A report does not take one text: the conflict is INVALID_PARAMETERS naming generate_report."""
    config = feedback.parse_configuration(SEED_CONFIGURATION)
    with pytest.raises(InvalidParameters) as refused:
        feedback.parse_parameters(
            {"feedback_text": SEED_TEXT, "customer_id": "c_1", "generate_report": True}, config
        )
    assert refused.value.details["field"] == "parameters.generate_report"
    assert refused.value.details["conflicts_with"] == ["customer_id", "feedback_text"]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the type is stateless
@given(
    present=st.sets(st.sampled_from(PER_FEEDBACK)),
    mode=st.sampled_from([None, True, False, "yes", 1]),
)
def test_the_mode_rule(feedback: Any, present: set[str], mode: Any) -> None:
    """Report iff generate_report is true, or absent with no per-feedback field; a report
    with a per-feedback field, or a text analysis without a text, is INVALID_PARAMETERS;
    a non-boolean generate_report is INVALID_PARAMETERS too."""
    config = feedback.parse_configuration(SEED_CONFIGURATION)
    parameters: dict[str, Any] = {key: f"{key} value" for key in present}
    if "feedback_text" in parameters:
        parameters["feedback_text"] = SEED_TEXT
    if mode is not None:
        parameters["generate_report"] = mode
    report = mode is True or (mode is None and not present)
    valid = (mode is None or isinstance(mode, bool)) and (
        (report and not present) or (not report and "feedback_text" in present)
    )
    if not valid:
        with pytest.raises(InvalidParameters):
            feedback.parse_parameters(parameters, config)
        return
    parsed = feedback.parse_parameters(parameters, config)
    assert isinstance(parsed, ReportParameters if report else FeedbackParameters)


def test_parameters_schema_describes_both_shapes(feedback: Any) -> None:
    """The published parameters schema has the text shape and the report shape, both with
    generate_report."""
    schema = feedback.parameters_schema()
    shapes = schema["anyOf"]
    assert len(shapes) == 2
    assert shapes[0]["required"] == ["feedback_text"]
    for shape in shapes:
        assert shape["properties"]["generate_report"]["type"] == ["boolean", "null"]
        assert shape["additionalProperties"] is False


@pytest.mark.anyio
async def test_seed_updated_schedule_fires_a_report() -> None:
    """The seed's schedule, updated with generate_report true, fires a completed report."""
    async with Engine(":memory:") as engine:
        workflow = await engine.workflows.create(
            {"name": "Feedback", "type": "feedback_analysis", "configuration": SEED_CONFIGURATION}
        )
        await engine.workflows.activate(workflow.id)
        schedule = await engine.schedules.create(
            workflow.id,
            {
                "name": "Daily Feedback Analysis",
                "schedule_type": "cron",
                "cron_expression": "0 0 * * *",
                "parameters": {"source": "daily_report", "include_recommendations": True},
            },
        )
        updated = await engine.schedules.update(
            schedule.id, {"cron_expression": "0 2 * * *", "parameters": SEED_UPDATED_PARAMETERS}
        )
        assert updated.next_execution is not None
        await engine.scheduler.tick(updated.next_execution)
        [entry] = (await engine.schedules.history(schedule.id)).items
        assert entry.outcome == "fired", entry
        assert entry.execution_id is not None
        execution = await engine.executions.wait(entry.execution_id, 60)
        assert execution.status is ExecutionStatus.COMPLETED, execution.error
        assert execution.result["source"] == "daily_report"
        assert "feedback_analysed" in execution.result
        assert (await engine.schedules.get(schedule.id)).failed_firings == 0
    engine.close()
