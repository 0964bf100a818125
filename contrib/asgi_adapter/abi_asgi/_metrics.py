"""A separate ASGI app serving ``GET /metrics`` without a token (``serve --metrics-port``).

For a port only the monitoring system reaches (by default ``abi-engine serve``
listens for it on 127.0.0.1): the same text as ``GET /api/v1/metrics``,
which needs a token with the ``metrics:read`` scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from abi_engine import Engine

__all__ = ["MetricsPort", "create_metrics_app"]


def create_metrics_app(engine: Engine) -> Starlette:
    """An app answering ``GET /metrics`` with ``engine``'s metrics (Prometheus text
    format), unauthenticated. It does not start or stop the engine."""

    async def metrics(request: Request) -> Response:
        if engine.metrics is None:
            return PlainTextResponse("metrics are off in this engine\n", status_code=404)
        body, media_type = await engine.render_metrics()
        return Response(body, media_type=media_type)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET", "HEAD"])])


class MetricsPort:
    """One ASGI app for a server listening on two sockets: requests that arrive on
    port ``port`` (the ASGI ``server`` of the request) go to ``metrics``, the
    others (and the lifespan) to ``app``. So one uvicorn server, with its one
    signal handling, serves both the API and the metrics port."""

    def __init__(self, app: ASGIApp, metrics: ASGIApp, port: int) -> None:
        self.app = app
        self.metrics = metrics
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] != "lifespan" and server and server[1] == self.port:
            await self.metrics(scope, receive, send)
        else:
            await self.app(scope, receive, send)
