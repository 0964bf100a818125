"""The ``approval`` workflow type: a request that waits, durably, for people to decide.

An execution records the request, optionally notifies the approvers, then
parks as ``waiting`` (holding no worker, surviving restarts) until enough
approvers decide through ``POST /api/v1/workflow_executions/{id}/approve`` or
``/reject`` (or ``engine.executions.decide``), or until it expires. Who may
decide is enforced when the decision arrives: a decision from anyone else is
refused with ``FORBIDDEN``. See ``docs/approval.md``.

Registered through the ``abi_engine`` entry point and the public hooks only,
exactly as a third-party workflow type would be.
"""

from __future__ import annotations

from collections.abc import Callable

from abi_engine import WorkflowType, hookimpl
from abi_plugin_approval.workflow import (
    Approval,
    ApprovalConfiguration,
    ApprovalExpired,
    ApprovalParameters,
    ApprovalRejected,
    NotifyConfig,
)

__all__ = [
    "Approval",
    "ApprovalConfiguration",
    "ApprovalExpired",
    "ApprovalParameters",
    "ApprovalRejected",
    "NotifyConfig",
]


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(Approval)
