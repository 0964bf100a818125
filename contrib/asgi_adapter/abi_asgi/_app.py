"""The Starlette application: routes from the operations table, envelopes, limits."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import Receive, Scope, Send

from abi_asgi._logsafe import loggable
from abi_asgi._ratelimit import RateLimit, RateLimiter
from abi_asgi._routing import OperationsFirst, OperationTable
from abi_asgi.openapi import build_openapi
from abi_engine import api
from abi_engine.api import ApiRequest, Operation
from abi_engine.auth import Principal, hash_token
from abi_engine.errors import (
    AbiError,
    Forbidden,
    InternalError,
    InvalidRequest,
    InvalidState,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimitExceeded,
    Unauthorized,
)
from abi_engine.execution_requests import not_running

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__ = ["API_PREFIX", "MAX_JSON_DEPTH", "client_key", "create_app", "parse_json_body"]

log = logging.getLogger("abi_asgi")

#: Where the operations' paths live.
API_PREFIX = "/api/v1"
#: Where the dashboard lives (``create_app(dashboard=True)``).
DASHBOARD_PREFIX = "/ui"
#: How deeply a request body's arrays and objects may nest.
MAX_JSON_DEPTH = 64

_Headers = Sequence[tuple[bytes, bytes]]
_JSON = b"application/json"
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Who calls an operation that needs no token (``Operation.public``): no scope at all.
_ANONYMOUS = Principal(user_id="anonymous", scopes=frozenset())
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
_encode_lenient = json.JSONEncoder(separators=(",", ":"), default=str).encode
_INTERNAL = InternalError("Internal error; the server logged the details")
_BY_STATUS: dict[int, type[AbiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: InvalidState,
    413: PayloadTooLarge,
    429: RateLimitExceeded,
}


class _Disconnected(Exception):
    """The client went away before its body arrived."""


# -- JSON in and out ---------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def _body_error(message: str, **details: Any) -> InvalidRequest:
    return InvalidRequest(message, {"field": "(body)", **details})


def _check_value(value: Any, check_strings: bool) -> None:
    """Refuse bodies nested deeper than :data:`MAX_JSON_DEPTH` or holding lone surrogates."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _body_error(f"The request body nests deeper than {MAX_JSON_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
            if check_strings and isinstance(item, dict):
                stack.extend((key, depth) for key in item)
        elif check_strings and isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _body_error("The request body holds an invalid \\u escape") from None


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of a request body; ``None`` when it is empty.

    :raises InvalidRequest: not UTF-8, not JSON, ``NaN``/``Infinity``, numbers
        out of range, lone surrogate escapes, or nesting too deep.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _body_error("The request body is not valid UTF-8", position=exc.start) from None
    if not text.strip():
        return None
    try:
        value = _decode(text)
    except RecursionError:
        raise _body_error(f"The request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise _body_error(
            f"The request body is not valid JSON: {exc.msg}", line=exc.lineno, column=exc.colno
        ) from None
    except ValueError as exc:
        raise _body_error(f"The request body is not valid JSON: {exc}") from None
    escapes = "\\u" in text
    # Nesting deeper than MAX_JSON_DEPTH takes more opening brackets than that (those
    # in strings count too, erring on the safe side): most bodies need no walk.
    if escapes or text.count("{") + text.count("[") > MAX_JSON_DEPTH:
        _check_value(value, check_strings=escapes)
    return value


def _success(data: Any) -> bytes:
    encoded = data.json if isinstance(data, api.Encoded) else api.json_bytes(data)
    return b'{"status":"success","data":' + encoded + b"}"


def _error(exc: AbiError) -> bytes:
    error = {"code": exc.code, "message": exc.message, "details": exc.details}
    return _encode_lenient({"status": "error", "error": error}).encode("ascii")


def _error_headers(exc: AbiError) -> list[tuple[bytes, bytes]]:
    if isinstance(exc, RateLimitExceeded):
        return [(b"retry-after", str(exc.details.get("retry_after", 1)).encode())]
    if isinstance(exc, Unauthorized):
        return [(b"www-authenticate", b"Bearer")]
    return []


async def _send(
    send: Send,
    status: int,
    body: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    head: bool,
    content_type: bytes = _JSON,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


def _json_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers, media_type="application/json")


# -- the operations ------------------------------------------------------------------------


class _Api:
    """What every operation route shares: the engine, the limits, the rate limiter."""

    def __init__(self, engine: Engine, max_body_bytes: int, rate_limit: RateLimit | None) -> None:
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter(rate_limit) if rate_limit is not None else None

    async def serve(self, op: Operation, scope: Scope, receive: Receive, send: Send) -> None:
        head = scope["method"] == "HEAD"
        headers: list[tuple[bytes, bytes]] = []
        content_type = _JSON
        body: bytes | api.Raw
        try:
            status, body = await self._run(op, scope, receive)
        except _Disconnected:
            return
        except AbiError as exc:
            status, body, headers = exc.http_status, _error(exc), _error_headers(exc)
        except Exception:
            log.exception(
                "Unexpected error in %s %s", loggable(scope["method"]), loggable(scope.get("path"))
            )
            status, body = 500, _error(_INTERNAL)
        if isinstance(body, api.Raw):  # sent as it is (the metrics' text)
            content_type = body.media_type.encode("latin-1")
            body = body.body
        await _send(send, status, body, headers, head, content_type)

    async def _run(
        self, op: Operation, scope: Scope, receive: Receive
    ) -> tuple[int, bytes | api.Raw]:
        # ASGI servers give header names in lower case
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = raw = None
        if op.public:  # no token: the operation checks the caller (a signature) itself
            self.charge(scope, None, None)
            principal = _ANONYMOUS
            raw = await self._read_raw(receive, headers)
        else:
            principal = await self._authenticate(scope, headers)
            if scope["method"] not in _BODYLESS:
                body = await self._read_body(receive, headers)
        query = scope.get("query_string", b"").decode("latin-1")
        request = ApiRequest(
            path=scope.get("path_params", {}),
            query=_query(query) if query else {},
            body=body,
            headers=headers,
            raw=raw,
        )
        status, data = await api.call_with_status(
            self.engine, principal, op.name, request, encoded=True
        )
        return status, data if isinstance(data, api.Raw) else _success(data)

    async def _authenticate(self, scope: Scope, headers: Mapping[str, str]) -> Principal:
        """The caller's principal, after charging its rate-limit bucket."""
        token = _bearer_token(headers.get("authorization"))
        principal: Principal | None = None
        failure: Unauthorized | None = None
        if token is None:
            failure = Unauthorized(
                "Missing access token: send 'Authorization: Bearer <token>'"
                if "authorization" not in headers
                else "The Authorization header must be 'Bearer <token>'"
            )
        else:
            try:
                principal = await self._principal(token)
            except Unauthorized as exc:
                failure = exc
        self.charge(scope, token, principal)
        if principal is None:
            raise failure or Unauthorized()
        return principal

    def charge(self, scope: Scope, token: str | None, principal: Principal | None) -> None:
        """Take one request from the caller's bucket: the token's when it is valid
        (``principal``), else the client address's. The dashboard charges the same buckets.

        :raises RateLimitExceeded: the bucket is empty.
        """
        if self.limiter is None:
            return
        if principal is not None:
            key = "t:" + (principal.token_id or hash_token(token or ""))
        else:
            key = client_key(scope)
        wait = self.limiter.acquire(key)
        if wait:
            raise RateLimitExceeded(
                f"Rate limit exceeded; retry after {wait} second(s)", {"retry_after": wait}
            )

    async def _principal(self, token: str) -> Principal:
        tokens = self.engine.tokens
        if getattr(self.engine.store, "blocking", False):
            # A token checked lately is answered on the loop; only a store read takes a thread.
            principal = tokens.cached(token)
            if principal is not None:
                return principal
            return await anyio.to_thread.run_sync(tokens.authenticate, token)
        return tokens.authenticate(token)

    async def _read_body(self, receive: Receive, headers: Mapping[str, str]) -> Any:
        """The parsed JSON body, counting bytes as they arrive (``None`` when empty)."""
        raw = await self._read_raw(receive, headers)
        if not raw:
            return None
        _check_content_type(headers.get("content-type"))
        return parse_json_body(raw)

    async def _read_raw(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        """The body's bytes, counted as they arrive (at most ``max_body_bytes``)."""
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.strip().isdigit()):
                raise InvalidRequest("Invalid Content-Length header", {"field": "content-length"})
            if int(declared) > limit:
                raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def client_key(scope: Scope) -> str:
    """The rate-limit key of a request without a valid token: its client address.

    The address is the ASGI ``client``, which the server sets: the peer's
    own, or the one a trusted proxy forwarded when the server is told to
    trust it (``abi-engine serve --forwarded-allow-ips``, uvicorn's
    ``forwarded_allow_ips``). An IPv6 client counts as its /64 network (one
    host usually holds a whole /64, and could otherwise take a new address,
    and a new bucket, per request); an IPv4-mapped one as its IPv4 address.
    """
    client = scope.get("client")
    if not client:
        return "ip:unknown"
    host = str(client[0])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a Unix socket path, a name: as it is
        return "ip:" + host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((int(ip) >> 64 << 64, 64))}"
    return f"ip:{ip}"


def _query(text: str) -> dict[str, Any]:
    """The query parameters: a string each, a list for one given several times."""
    query: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key not in query:
            query[key] = value
        elif isinstance(query[key], list):
            query[key].append(value)
        else:
            query[key] = [query[key], value]
    return query


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body is larger than {limit} bytes", {"max_body_bytes": limit}
    )


def _check_content_type(value: str | None) -> None:
    if not value:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise InvalidRequest(
            f"Content-Type must be application/json, not {media!r}",
            {"field": "content-type", "content_type": media},
        )


def _bearer_token(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


# -- health, OpenAPI, errors --------------------------------------------------------------


def _meta_routes(engine: Engine) -> list[BaseRoute]:
    documents: dict[str, bytes] = {}

    async def health(request: Request) -> Response:
        store = engine.store
        try:
            if getattr(store, "blocking", False):
                await anyio.to_thread.run_sync(store.schema_version)
            else:
                store.schema_version()
        except Exception:
            log.exception("Health check: the database does not answer")
            error = {
                "code": "SERVICE_UNAVAILABLE",
                "message": "The database does not answer",
                "details": {"status": "degraded", "database": "error"},
            }
            return _json_response(503, _encode({"status": "error", "error": error}).encode("ascii"))
        # Nothing about versions or data: the caller has no token.
        if not engine.running:
            # Mounted without running the engine (the host's lifespan forgot it): the
            # API would take work it cannot run. Say so, and how to fix it.
            refused = not_running()
            error = {
                "code": refused.code,
                "message": refused.message,
                "details": {
                    "status": "degraded",
                    "database": "ok",
                    "engine": "not_running",
                },
            }
            return _json_response(503, _encode({"status": "error", "error": error}).encode("ascii"))
        data = {
            "status": "ok",
            "database": "ok",
            "engine": "running",
        }
        return _json_response(200, _success(data))

    async def openapi(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        document = documents.get(root)
        if document is None:
            built = build_openapi(prefix=API_PREFIX, server_url=root or None)
            document = documents[root] = _encode(built).encode("ascii")
        return _json_response(200, document)

    return [
        Route(f"{API_PREFIX}/health", health, methods=["GET"], name="health"),
        Route(f"{API_PREFIX}/openapi.json", openapi, methods=["GET"], name="openapi"),
    ]


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    cls = _BY_STATUS.get(status)
    path = request.scope.get("path", "")
    if status == 404:
        error: AbiError = NotFound(path, f"No route for {request.method} {path}")
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {path}",
            {"method": request.method, "allowed": sorted(m.strip() for m in allowed.split(","))},
        )
    elif cls is not None:
        error = cls(exc.detail)
    else:
        error = InvalidRequest(exc.detail) if status < 500 else InternalError()
    return _json_response(status, _error(error), headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return _json_response(500, _error(_INTERNAL))


# -- the application ----------------------------------------------------------------------


def _dashboard_routes(engine: Engine, shared: _Api) -> list[BaseRoute]:
    from abi_asgi.dashboard import create_dashboard

    async def to_dashboard(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}{DASHBOARD_PREFIX}/", status_code=308)

    return [
        Route(DASHBOARD_PREFIX, to_dashboard, methods=["GET", "HEAD"]),
        Mount(
            DASHBOARD_PREFIX,
            app=create_dashboard(engine, shared._principal, charge=shared.charge),
        ),
    ]


def create_app(
    engine: Engine,
    *,
    max_body_bytes: int = 1_048_576,
    rate_limit: RateLimit | None = RateLimit(),  # noqa: B008 - immutable (frozen) default
    manage_engine: bool = True,
    dashboard: bool = True,
) -> Starlette:
    """The REST API of ``engine`` as a Starlette application.

    :param engine: the engine to serve.
    :param max_body_bytes: larger request bodies are refused with 413
        ``PAYLOAD_TOO_LARGE`` (checked on ``Content-Length`` and on the bytes
        that arrive).
    :param rate_limit: requests per caller (token, or client address without
        a valid token: see :func:`client_key`); ``None`` disables rate limiting.
        The client address is the one the ASGI server reports: behind a
        reverse proxy, tell the server which proxies to trust (uvicorn's
        ``forwarded_allow_ips``, ``abi-engine serve --forwarded-allow-ips``)
        and no others, or every client shares the proxy's bucket, or picks
        its own with a forged ``X-Forwarded-For``.
    :param manage_engine: when the app's lifespan runs and the engine is not
        running yet, start it on startup and stop it on shutdown.
    :param dashboard: serve the web dashboard under ``/ui`` (see
        :mod:`abi_asgi.dashboard` and docs/dashboard.md).

    Every operation of :data:`abi_engine.api.OPERATIONS` is routed under
    ``/api/v1``, together with ``GET /api/v1/health`` and
    ``GET /api/v1/openapi.json``.
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise TypeError("max_body_bytes must be an int")
    if max_body_bytes < 0:
        raise ValueError("max_body_bytes must be >= 0")
    shared = _Api(engine, max_body_bytes, rate_limit)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_engine and not engine.running:
            async with engine:
                yield
        else:
            yield

    table = OperationTable(API_PREFIX, api.OPERATIONS.values(), shared.serve)
    routes: list[BaseRoute] = [table, *_meta_routes(engine)]
    if dashboard:
        routes.extend(_dashboard_routes(engine, shared))
    app = OperationsFirst(
        routes=routes,
        exception_handlers={HTTPException: _http_exception, Exception: _server_error},
        lifespan=lifespan,
    )
    app.operations = table
    app.router.redirect_slashes = False  # a 404 envelope, not a redirect to elsewhere
    app.state.engine = engine
    return app
