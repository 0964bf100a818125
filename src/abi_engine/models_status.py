"""The status enums of workflows, integrations, executions and steps.

Re-exported by :mod:`abi_engine.models` (import them from there); a module of
their own so that :mod:`abi_engine.models_schedules` can use them too.
"""

from __future__ import annotations

import enum

__all__ = [
    "ExecutionStatus",
    "IntegrationStatus",
    "StepStatus",
    "WorkflowStatus",
]


class WorkflowStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class IntegrationStatus(enum.StrEnum):
    PENDING = "pending"
    CONNECTED = "connected"


class ExecutionStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    #: Held at a step boundary by ``pause`` until ``resume`` (#16); holds no worker.
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    #: Ended without running: a later execution with its debounce key replaced it (#16).
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {
        ExecutionStatus.COMPLETED,
        ExecutionStatus.FAILED,
        ExecutionStatus.TIMED_OUT,
        ExecutionStatus.CANCELLED,
        ExecutionStatus.SKIPPED,
    }
)


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
