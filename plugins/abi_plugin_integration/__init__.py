"""The ``integration`` workflow type: synchronizes records between two systems.

Reads a source integration's records (or ``parameters.records``), maps them
with the rules of ``data_processing``, compares them by key with the target
integration's records, and creates, updates and (in ``mirror`` mode)
deletes target records to match; see ``docs/integration-sync.md``.
Registered through the ``abi_engine`` entry point and the public hooks only,
exactly as a third-party workflow type would be.
"""

from __future__ import annotations

from collections.abc import Callable

from abi_engine import WorkflowType, hookimpl
from abi_plugin_integration.plan import Plan, TooManyDeletes, json_equal, key_of, plan_sync
from abi_plugin_integration.workflow import IntegrationSync, SyncConfig, SyncParams

__all__ = [
    "IntegrationSync",
    "Plan",
    "SyncConfig",
    "SyncParams",
    "TooManyDeletes",
    "json_equal",
    "key_of",
    "plan_sync",
]


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    register(IntegrationSync)
