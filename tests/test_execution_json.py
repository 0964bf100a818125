"""The hand-written execution and schedule JSON (events, answers) equals the converter's."""

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
    IntervalUnit,
    LastExecution,
    MisfirePolicy,
    OverlapPolicy,
    Schedule,
    ScheduleType,
    Step,
    StepError,
    StepStatus,
)
from abi_engine.schedule_views import schedule_json

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000))
times = st.none() | instants
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


schedules = st.builds(
    Schedule,
    id=texts,
    workflow_id=texts,
    workflow_name=st.none() | texts,
    name=texts,
    description=st.none() | texts,
    schedule_type=st.sampled_from(ScheduleType),
    cron_expression=st.none() | texts,
    interval_value=st.none() | st.integers(1, 10**6),
    interval_unit=st.none() | st.sampled_from(IntervalUnit),
    execution_time=times,
    start_time=times,
    parameters=st.dictionaries(texts, json_values, max_size=3),
    enabled=st.booleans(),
    timezone=texts,
    status=st.sampled_from(["active", "disabled", "completed"]),
    next_execution=times,
    last_execution=st.none()
    | st.builds(
        LastExecution,
        execution_id=texts,
        status=st.sampled_from(ExecutionStatus),
        started_at=times,
        completed_at=times,
    ),
    misfire_policy=st.sampled_from(MisfirePolicy),
    misfire_grace_seconds=st.floats(0, 1000),
    catch_up_limit=st.integers(1, 1000),
    overlap_policy=st.sampled_from(OverlapPolicy),
    created_at=instants,
    updated_at=instants,
    created_by=st.none() | texts,
)


@given(schedules)
def test_schedule_json_is_the_converters_json(schedule: Schedule) -> None:
    """For any schedule, schedule_json gives exactly what unstructure gives."""
    assert schedule_json(schedule) == unstructure(schedule)
