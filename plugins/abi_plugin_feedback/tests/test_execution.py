"""The seed's feedback workflow executed by the engine's runtime, on a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import InvalidParameters, ParameterValidationError

from .conftest import SEED_CONFIGURATION, SEED_PARAMETERS

pytestmark = pytest.mark.anyio

STEPS = ["extract_sentiment", "identify_topics", "generate_recommendations"]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Engine]:
    """A running engine on a fresh SQLite file."""
    eng = Engine(tmp_path / "abi.db")
    try:
        async with eng:
            yield eng
    finally:
        eng.close()


async def active_workflow(engine: Engine, **configuration: Any) -> str:
    workflow = await engine.workflows.create(
        {
            "name": "Customer Feedback Analysis",
            "type": "feedback_analysis",
            "configuration": {**SEED_CONFIGURATION, **configuration},
        }
    )
    await engine.workflows.activate(workflow.id)
    return workflow.id


async def test_seed_execution_completes_with_the_seed_result(running: Engine) -> None:
    """Executing the seed's parameters completes with three timed steps and the seed's answer."""
    workflow_id = await active_workflow(running)
    execution = await running.executions.execute(workflow_id, SEED_PARAMETERS, timeout_seconds=30)
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        (name, StepStatus.COMPLETED) for name in STEPS
    ]
    assert all(s.duration_ms is not None and s.duration_ms >= 0 for s in execution.steps)
    result = execution.result
    assert result["sentiment"] == "mixed"
    assert {c["topic"]: c["sentiment"] for c in result["feedback_components"]} == {
        "product_overall": "positive",
        "user_interface": "negative",
    }
    assert result["recommendations"] == [
        "Consider simplifying the user interface in the next update",
        "Highlight the positive overall experience in your response",
    ]
    assert (await running.executions.get(execution.execution_id)).result == result


async def test_recommendations_step_recorded_as_skipped(running: Engine) -> None:
    """include_recommendations false: the step shows skipped and the result has no recommendations."""
    workflow_id = await active_workflow(running)
    parameters = {**SEED_PARAMETERS, "include_recommendations": False}
    execution = await running.executions.execute(workflow_id, parameters, timeout_seconds=30)
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.steps is not None
    assert [s.status for s in execution.steps] == [
        StepStatus.COMPLETED,
        StepStatus.COMPLETED,
        StepStatus.SKIPPED,
    ]
    assert execution.result["recommendations"] == []
    assert execution.result["sentiment"] == "mixed"


async def test_bad_parameters_are_refused_before_running(running: Engine) -> None:
    """Missing text: INVALID_PARAMETERS; blank text: PARAMETER_VALIDATION_ERROR."""
    workflow_id = await active_workflow(running)
    with pytest.raises(InvalidParameters):
        await running.executions.execute(workflow_id, {"feedback_id": "f_1"})
    with pytest.raises(ParameterValidationError):
        await running.executions.execute(workflow_id, {"feedback_text": "  "})
