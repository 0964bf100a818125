"""abi-engine: an embeddable, durable workflow engine.

The public surface: :class:`Engine` and its settings (:class:`RuntimeSettings`,
:class:`WebhookSettings`, :class:`Limits`), the storage interface
(:class:`Store`, for storage plugins), the plugin markers :data:`hookimpl`
and :data:`hookspec`, the authoring API for workflow types
(:class:`WorkflowType`, :func:`step`, :class:`RetryPolicy`,
:class:`StepContext`), the plugin host (:class:`Host`), integration
providers, events (:class:`Event`, :class:`EventPolicy`), the models and the
errors (``abi_engine.errors``). Everything else is internal and may move.
"""

from abi_engine import errors
from abi_engine.auth import Principal
from abi_engine.engine import Engine
from abi_engine.events import EVENT_TYPES, Event, EventPolicy
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
from abi_engine.runtime.settings import RuntimeSettings, WebhookSettings
from abi_engine.storage.base import Store
from abi_engine.types import RetryPolicy, StepContext, StepSpec, WorkflowType, step

__all__ = [
    "EVENT_TYPES",
    "Engine",
    "Event",
    "EventPolicy",
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
    "RuntimeSettings",
    "Scope",
    "Step",
    "StepContext",
    "StepSpec",
    "StepStatus",
    "Store",
    "WebhookSettings",
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
