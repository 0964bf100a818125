"""Views of executions: the API model from stored records, and its JSON written out."""

from __future__ import annotations

from typing import Any

import attrs

from abi_engine.ids import format_time
from abi_engine.models import (
    Execution,
    ExecutionError,
    ExecutionStatus,
    Step,
    StepError,
    StepStatus,
)
from abi_engine.storage.records import ExecutionRecord, StepRecord

__all__ = [
    "ExecutionDetails",
    "build_execution",
    "event_data",
    "execution_json",
    "queued_fields",
    "started_view",
    "step_event_data",
    "step_json",
]


def build_execution(record: ExecutionRecord, steps: list[StepRecord]) -> Execution:
    """The API view of an execution: stored fields plus the merged step list.

    Steps that have not been checkpointed are shown from the plan: the first
    one as ``running`` while the execution runs (it started when the previous
    step finished), or as ``failed`` when the execution was interrupted by a
    timeout or a cancellation; the others as ``pending``.
    """
    shown = _shown_steps(record, steps)
    return Execution(
        execution_id=record.id,
        workflow_id=record.workflow_id,
        workflow_name=record.workflow_name,
        status=record.status,
        started_at=record.started_at,
        completed_at=record.completed_at,
        duration_ms=record.duration_ms,
        parameters=record.parameters,
        result=record.result,
        error=ExecutionError(**record.error) if record.error else None,
        steps=shown,
        callback_url=record.callback_url,
        schedule_id=record.schedule_id,
        scheduled_for=record.scheduled_for,
        created_by=record.created_by,
        created_at=record.created_at,
        rerun_of=record.rerun_of,
        parent_execution_id=record.parent_execution_id,
        concurrency_key=record.concurrency_key,
        rate_limit_key=record.rate_key,
        debounce_key=record.debounce_key,
        debounced_by=record.debounced_by,
        **queued_fields(record),
    )


def _shown_steps(record: ExecutionRecord, steps: list[StepRecord]) -> list[Step]:
    """The plan's steps, each as stored or, when not stored yet, as it stands."""
    if not steps and record.started_at is None:  # not started (an accepted execution)
        return [Step(name=name, status=StepStatus.PENDING) for name in record.plan]
    by_index = {s.index: s for s in steps}
    shown: list[Step] = []
    names = list(record.plan)
    for s in steps:
        if s.index >= len(names):
            names.append(s.name)
    previous_end = record.started_at
    first_missing = True
    for index, name in enumerate(names):
        stored = by_index.get(index)
        if stored is not None:
            shown.append(_stored_step(stored))
            previous_end = stored.completed_at or previous_end
            if stored.status is StepStatus.FAILED:
                first_missing = False  # the interrupted step is stored; later ones never ran
            continue
        step = Step(name=name, status=StepStatus.PENDING)
        if first_missing and record.started_at is not None:
            first_missing = False
            _first_unstored(record, step, previous_end)
        first_missing = False if record.started_at is not None else first_missing
        shown.append(step)
    return shown


def _stored_step(stored: StepRecord) -> Step:
    return Step(
        name=stored.name,
        status=stored.status,
        started_at=stored.started_at,
        completed_at=stored.completed_at,
        duration_ms=stored.duration_ms,
        attempts=stored.attempts or None,
        error=StepError(**stored.error) if stored.error else None,
        reused_from=stored.reused_from,
    )


def _first_unstored(record: ExecutionRecord, step: Step, previous_end: Any) -> None:
    """The first step not stored: running while the execution runs (since the previous
    step ended), failed when a timeout or a cancellation interrupted it."""
    if record.status in (ExecutionStatus.RUNNING, ExecutionStatus.WAITING):
        step.status = StepStatus.RUNNING
        step.started_at = previous_end
    elif record.status in (ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT):
        step.status = StepStatus.FAILED
        step.started_at = previous_end
        step.completed_at = record.completed_at
        code = "Cancelled" if record.status is ExecutionStatus.CANCELLED else "Timeout"
        step.error = StepError(type=code, message=f"execution {record.status.value}")


def queued_fields(record: ExecutionRecord) -> dict[str, Any]:
    """``queued_reason`` and ``queued_since`` of the view: why and since when it waits
    queued (``worker_pool`` unless something else holds it), both ``None`` otherwise."""
    if record.status is not ExecutionStatus.QUEUED:
        return {"queued_reason": None, "queued_since": None}
    return {
        "queued_reason": record.queued_reason or "worker_pool",
        "queued_since": record.queued_since or record.created_at,
    }


def _time(value: Any) -> str | None:
    return None if value is None else format_time(value)


def step_json(step: Step) -> dict[str, Any]:
    error = step.error
    return {
        "name": step.name,
        "status": step.status.value,
        "started_at": _time(step.started_at),
        "completed_at": _time(step.completed_at),
        "duration_ms": step.duration_ms,
        "attempts": step.attempts,
        "error": None if error is None else {"type": error.type, "message": error.message},
        "reused_from": step.reused_from,
    }


def execution_json(execution: Execution) -> dict[str, Any]:
    """``unstructure(execution)``, written out: the hot paths (events, answers) use it.

    Equal to the converter's output by construction; a test compares the two.
    Every field is present, ``null`` when it has no value.
    """
    e = execution
    error = e.error
    return {
        "execution_id": e.execution_id,
        "workflow_id": e.workflow_id,
        "workflow_name": e.workflow_name,
        "status": e.status.value,
        "started_at": _time(e.started_at),
        "completed_at": _time(e.completed_at),
        "duration_ms": e.duration_ms,
        "parameters": e.parameters,
        "result": e.result,
        "error": None
        if error is None
        else {
            "code": error.code,
            "message": error.message,
            "step": error.step,
            "type": error.type,
        },
        "steps": None if e.steps is None else [step_json(s) for s in e.steps],
        "callback_url": e.callback_url,
        "schedule_id": e.schedule_id,
        "scheduled_for": _time(e.scheduled_for),
        "created_by": e.created_by,
        "created_at": _time(e.created_at),
        "rerun_of": e.rerun_of,
        "queued_reason": e.queued_reason,
        "queued_since": _time(e.queued_since),
        "parent_execution_id": e.parent_execution_id,
        "concurrency_key": e.concurrency_key,
        "rate_limit_key": e.rate_limit_key,
        "debounce_key": e.debounce_key,
        "debounced_by": e.debounced_by,
    }


def started_view(record: ExecutionRecord) -> Execution:
    """The execution as it was when it started (the data of ``workflow.executed``)."""
    started = attrs.evolve(
        record,
        status=ExecutionStatus.RUNNING,
        completed_at=None,
        duration_ms=None,
        result=None,
        error=None,
    )
    return build_execution(started, [])


def step_event_data(record: ExecutionRecord, step: StepRecord) -> dict[str, Any]:
    """The data of ``execution.step_completed`` for a finished ``step``."""
    return {
        "execution_id": record.id,
        "workflow_id": record.workflow_id,
        "step": step_json(
            Step(
                name=step.name,
                status=step.status,
                started_at=step.started_at,
                completed_at=step.completed_at,
                duration_ms=step.duration_ms,
                attempts=step.attempts,
            )
        ),
    }


def event_data(
    event_type: str, record: ExecutionRecord, steps: list[StepRecord], step_index: int | None
) -> dict[str, Any] | None:
    """The data of an execution event kept by reference, from the stored execution.

    What an event points to does not change once the event exists: a
    finished step, a finished execution; ``workflow.executed`` shows the
    execution as it started. ``None`` when the step is not stored.
    """
    if event_type == "workflow.executed":
        return execution_json(started_view(record))
    if event_type == "execution.step_completed":
        for step in steps:
            if step.index == step_index:
                return step_event_data(record, step)
        return None
    return execution_json(build_execution(record, steps))


@attrs.frozen(kw_only=True)
class ExecutionDetails:
    """What an operator reads of an execution beyond its API view (``executions.details``).

    ``results``: each stored step result by step index; ``signals``: the
    signals delivered, by name; ``progress``: what each step saved with
    ``ctx.save_progress``, by step index; ``waiting_for``: the signal a
    waiting execution waits for; ``approval``: whether that is an approval's
    decision.
    """

    execution: Execution
    parameters: dict[str, Any]
    results: dict[int, Any]
    signals: dict[str, Any]
    progress: dict[int, Any]
    waiting_for: str | None
    approval: bool
