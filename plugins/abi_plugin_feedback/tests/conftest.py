"""Fixtures for the feedback_analysis plugin's tests.

``engine``: an in-memory :class:`~abi_engine.Engine` with the installed plugins
(the type comes through its entry point). ``feedback``: the registered
``feedback_analysis`` type. ``run_steps``: runs the type's ``steps(config)``
in order with a :class:`~abi_engine.StepContext` built here, honouring
``skip_if`` -- a plain loop, so the analysis is tested apart from the runtime.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest

from abi_engine import Engine, StepContext

SEED_TEXT = (
    "I really love your product, but the latest update made the user interface more"
    " complicated. It's still a great service overall though!"
)
SEED_CONFIGURATION = {
    "nlp_service": "default",
    "sentiment_analysis": True,
    "topic_extraction": True,
    "language": "en",
    "response_threshold": 0.7,
}
SEED_PARAMETERS = {
    "feedback_id": "f_12345",
    "customer_id": "c_67890",
    "feedback_text": SEED_TEXT,
    "source": "email",
    "include_recommendations": True,
}

RunSteps = Callable[..., Awaitable[tuple[dict[str, Any], list[str]]]]


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An in-memory engine with the installed plugins."""
    eng = Engine(":memory:")
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
def feedback(engine: Engine) -> Any:
    """The registered ``feedback_analysis`` workflow type."""
    return engine.workflow_types["feedback_analysis"]


async def run_type_steps(
    workflow_type: Any, configuration: Mapping[str, Any], parameters: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The last run step's result and the names of the steps that ran."""
    config = workflow_type.parse_configuration(configuration)
    params = workflow_type.parse_parameters(parameters, config)
    results: dict[str, Any] = {}
    ran: list[str] = []
    last: Any = None
    for spec in workflow_type.steps(config):
        if spec.skip_if is not None and spec.skip_if(configuration, parameters):
            continue
        ctx = StepContext(
            execution_id="exec_test",
            workflow_id="wf_test",
            step_name=spec.name,
            parameters=parameters,
            configuration=configuration,
            params=params,
            config=config,
            results=dict(results),
        )
        last = results[spec.name] = await spec.fn(ctx)
        ran.append(spec.name)
    return last, ran


@pytest.fixture
def run_steps(feedback: Any) -> RunSteps:
    """``await run_steps(configuration, parameters)`` -> (result, steps that ran)."""

    async def run(
        configuration: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> tuple[dict[str, Any], list[str]]:
        return await run_type_steps(feedback, configuration, parameters)

    return run
