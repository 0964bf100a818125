"""The hand-written execution JSON (events, answers) equals the converter's output."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from abi_engine.converter import unstructure
from abi_engine.execution_views import execution_json
from abi_engine.models import (
    Execution,
    ExecutionError,
    ExecutionStatus,
    Step,
    StepError,
    StepStatus,
)

times = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
texts = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
steps = st.builds(
    Step,
    name=texts,
    status=st.sampled_from(StepStatus),
    started_at=times,
    completed_at=times,
    duration_ms=st.none() | st.integers(0, 10**6),
    attempts=st.none() | st.integers(1, 9),
    error=st.none() | st.builds(StepError, type=texts, message=texts),
)
executions = st.builds(
    Execution,
    execution_id=texts,
    workflow_id=texts,
    workflow_name=st.none() | texts,
    status=st.sampled_from(ExecutionStatus),
    started_at=times,
    completed_at=times,
    duration_ms=st.none() | st.integers(0, 10**6),
    parameters=st.dictionaries(texts, json_values, max_size=3),
    result=json_values,
    error=st.none()
    | st.builds(
        ExecutionError, code=texts, message=texts, step=st.none() | texts, type=st.none() | texts
    ),
    steps=st.none() | st.lists(steps, max_size=4),
    callback_url=st.none() | texts,
    schedule_id=st.none() | texts,
    created_by=st.none() | texts,
    created_at=times,
)


@given(executions)
def test_execution_json_is_the_converters_json(execution: Execution) -> None:
    """For any execution, execution_json gives exactly what unstructure gives."""
    assert execution_json(execution) == unstructure(execution)
