"""abi_asgi: the REST API of an abi-engine :class:`~abi_engine.Engine`, as an ASGI app.

::

    from abi_engine import Engine
    from abi_asgi import create_app

    engine = Engine("abi-engine.db")
    app = create_app(engine)  # serve with any ASGI server, e.g. uvicorn

Every operation of :data:`abi_engine.api.OPERATIONS` is routed under
``/api/v1`` (operations added to that table appear without changes here), plus
``GET /api/v1/health`` and ``GET /api/v1/openapi.json``, which need no token.
Answers use the contract's success and error envelopes; bodies over
``max_body_bytes`` get 413, callers over their :class:`RateLimit` get 429 with
``Retry-After``.

Lifespan: served on its own, the app starts the engine (``async with
engine:``) on startup and stops it on shutdown, unless the engine already
runs or ``manage_engine=False``. Starlette does not run the lifespan of a
mounted sub-application, so a host mounting the app under a prefix starts the
engine in its own lifespan::

    @contextlib.asynccontextmanager
    async def lifespan(host):
        async with engine:
            yield

    host = Starlette(routes=[Mount("/abi", app=create_app(engine))], lifespan=lifespan)

Rate limits are kept in memory per process and keyed by the client address
for requests without a valid token (an IPv6 client by its /64). That address
is the ASGI ``client`` the server reports; the adapter reads no forwarding
header itself. Behind a reverse proxy, tell the server to trust that proxy's
``X-Forwarded-For`` and no one else's: uvicorn's ``forwarded_allow_ips``
(whose default trusts 127.0.0.1, so any local process may pick its address)
or ``abi-engine serve --forwarded-allow-ips``, which trusts no one by default.
"""

from abi_asgi._app import API_PREFIX, MAX_JSON_DEPTH, create_app, parse_json_body
from abi_asgi._metrics import MetricsPort, create_metrics_app
from abi_asgi._ratelimit import RateLimit, RateLimiter
from abi_asgi.openapi import build_openapi

__all__ = [
    "API_PREFIX",
    "MAX_JSON_DEPTH",
    "MetricsPort",
    "RateLimit",
    "RateLimiter",
    "build_openapi",
    "create_app",
    "create_metrics_app",
    "parse_json_body",
]
