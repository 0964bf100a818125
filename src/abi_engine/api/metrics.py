"""The REST operation of the engine's metrics (``GET /api/v1/metrics``, Prometheus).

Declared into :data:`abi_engine.api.OPERATIONS` like every other operation
(imported at the end of :mod:`abi_engine.api`). ``abi-engine serve
--metrics-port`` serves the same text without a token on a port of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import ApiRequest, Raw, operation
from abi_engine.auth import Principal
from abi_engine.errors import InvalidState
from abi_engine.models import Scope

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

#: The media type of the Prometheus text format (version 0.0.4).
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@operation(
    method="GET",
    path="/metrics",
    scope=Scope.METRICS_READ,
    summary=(
        "This process's metrics in the Prometheus text format (executions, steps, queue,"
        " schedules, webhook deliveries, leases, store commits; docs/operations.md)"
    ),
    tag="operations",
    errors=("INVALID_STATE",),
    raw_media_type=PROMETHEUS_TEXT,
)
async def get_metrics(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    if engine.metrics is None:
        raise InvalidState("Metrics are off in this engine (built with metrics=False)")
    body, media_type = await engine.render_metrics()
    return Raw(body, media_type)
