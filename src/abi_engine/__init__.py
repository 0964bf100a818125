"""abi-engine: an embeddable, durable workflow engine.

The public surface: :class:`Engine`, the plugin markers :data:`hookimpl` and
:data:`hookspec`, the authoring API for workflow types (:class:`WorkflowType`,
:func:`step`, :class:`RetryPolicy`, :class:`StepContext`), the plugin host
(:class:`Host`), integration providers, the models and the errors
(``abi_engine.errors``).
"""

from abi_engine import errors
from abi_engine.auth import Principal
from abi_engine.engine import Engine
from abi_engine.events import EVENT_TYPES, Event
from abi_engine.hookspecs import hookimpl, hookspec
from abi_engine.host import Host
from abi_engine.integrations import HttpProvider, IntegrationProvider
from abi_engine.limits import Limits
from abi_engine.models import (
    Execution,
    ExecutionStatus,
    Integration,
    Page,
    Pagination,
    Scope,
    Step,
    StepStatus,
    Workflow,
    WorkflowStatus,
)
from abi_engine.types import RetryPolicy, StepContext, StepSpec, WorkflowType, step

__all__ = [
    "EVENT_TYPES",
    "Engine",
    "Event",
    "Execution",
    "ExecutionStatus",
    "Host",
    "HttpProvider",
    "Integration",
    "IntegrationProvider",
    "Limits",
    "Page",
    "Pagination",
    "Principal",
    "RetryPolicy",
    "Scope",
    "Step",
    "StepContext",
    "StepSpec",
    "StepStatus",
    "Workflow",
    "WorkflowStatus",
    "WorkflowType",
    "__version__",
    "errors",
    "hookimpl",
    "hookspec",
    "step",
]

__version__ = "0.1.0"
