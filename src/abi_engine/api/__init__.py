"""The REST API's operations, independent of HTTP: the table and one module per resource.

:mod:`abi_engine.api.operations` holds the table (:data:`OPERATIONS`), the
:class:`Operation` description and :func:`call`; each resource module
(:mod:`~abi_engine.api.workflows`, :mod:`~abi_engine.api.integrations`,
:mod:`~abi_engine.api.executions`, :mod:`~abi_engine.api.schedules`,
:mod:`~abi_engine.api.webhooks`, :mod:`~abi_engine.api.templates`,
:mod:`~abi_engine.api.tokens`, :mod:`~abi_engine.api.metrics`) declares its operations into it when imported,
which importing this package does. The ASGI adapter, the Python API (in
process and remote), the OpenAPI document and the docs all read this table.
"""

from __future__ import annotations

# The resource modules fill OPERATIONS when imported, in this order (the order of the
# OpenAPI document and the docs).
# isort: off
from abi_engine.api import workflows  # noqa: F401
from abi_engine.api import integrations  # noqa: F401
from abi_engine.api import executions  # noqa: F401
from abi_engine.api import thread_door  # noqa: F401
from abi_engine.api import flow  # noqa: F401
from abi_engine.api import schedules  # noqa: F401
from abi_engine.api import templates  # noqa: F401
from abi_engine.api import tokens  # noqa: F401
from abi_engine.api import webhooks  # noqa: F401
from abi_engine.api import audit  # noqa: F401
from abi_engine.api import metrics  # noqa: F401
from abi_engine.api import triggers  # noqa: F401

# isort: on
from abi_engine.api.operations import (
    OPERATIONS,
    Accepted,
    ApiRequest,
    Encoded,
    Operation,
    QueryParam,
    Raw,
    bounded_page,
    call,
    call_in_thread,
    call_with_status,
    check_quota,
    get_operation,
    json_bytes,
    operation,
)

__all__ = [
    "OPERATIONS",
    "Accepted",
    "ApiRequest",
    "Encoded",
    "Operation",
    "QueryParam",
    "Raw",
    "bounded_page",
    "call",
    "call_in_thread",
    "call_with_status",
    "check_quota",
    "get_operation",
    "json_bytes",
    "operation",
]
