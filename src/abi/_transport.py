"""How the seed's Python API reaches an engine: in-process or over HTTP.

Both transports take the name of an operation of :data:`abi_engine.api.OPERATIONS`
with its path parameters, query parameters, JSON body and headers, and give back
the JSON ``data`` of the REST answer (or raise the :mod:`abi_engine.errors`
exception of the error envelope). The in-process transport passes everything
through JSON exactly as HTTP would, so the facade sees the same data, and the
same errors, whichever transport it uses.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx

from abi_engine.api import ApiRequest, Raw, call_in_thread, call_with_status, get_operation
from abi_engine.errors import (
    AbiError,
    InternalError,
    InvalidRequest,
    Unauthorized,
    error_for_code,
)
from abi_engine.ids import format_time

if TYPE_CHECKING:
    from abi_engine.auth import Principal
    from abi_engine.engine import Engine

__all__ = [
    "API_PREFIX",
    "EngineConnectionError",
    "LocalTransport",
    "RemoteTransport",
    "Transport",
    "encode_body",
    "encode_query",
    "require_token",
]

#: Where the REST operations live under the root URL.
API_PREFIX = "/api/v1"

#: Seconds to wait for a TCP connection to the REST API.
CONNECT_TIMEOUT = 10.0


class EngineConnectionError(ConnectionError):
    """The remote REST API could not be reached (refused, unreachable, timed out).

    :ivar url: the URL that was requested.
    """

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class Transport(Protocol):
    """Runs one REST operation by name and returns its JSON ``data``."""

    def request(
        self,
        op_name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Run ``op_name``; raise the :mod:`abi_engine.errors` exception on failure."""
        ...

    def request_with_status(
        self,
        op_name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Like :meth:`request`, with the HTTP status of the answer (200, 201, 202...)."""
        ...

    def close(self) -> None:
        """Release what the transport holds (never an engine given by the caller)."""
        ...


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    return str(value)


def encode_query(query: Mapping[str, Any] | None) -> dict[str, str | list[str]]:
    """Query values as HTTP carries them: strings, booleans as ``true``/``false``.

    ``None`` values are left out; times become RFC 3339 ``Z`` strings; a list
    or tuple becomes a list of strings (the parameter repeated).
    """
    out: dict[str, str | list[str]] = {}
    for key, value in (query or {}).items():
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            out[key] = [_query_value(item) for item in value]
        else:
            out[key] = _query_value(value)
    return out


def encode_body(body: Any) -> bytes | None:
    """The JSON bytes of a request body (``None`` for no body).

    A body JSON cannot carry raises :class:`~abi_engine.errors.InvalidRequest`.
    """
    if body is None:
        return None
    try:
        return json.dumps(body, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(
            f"The request body cannot be sent as JSON: {exc}", {"field": "(body)"}
        ) from None


def require_token(token: str | None) -> str:
    """``token``, or ``Unauthorized`` before anything is sent when there is none."""
    if not token:
        raise Unauthorized("Missing access token: pass access_token=")
    return token


def _lower_keys(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {key.lower(): value for key, value in (headers or {}).items()}


class _Requests:
    """:meth:`Transport.request` of both transports: the answer without its status."""

    if TYPE_CHECKING:  # each transport's own

        def request_with_status(
            self,
            op_name: str,
            *,
            path: Mapping[str, str] | None = None,
            query: Mapping[str, Any] | None = None,
            body: Any = None,
            headers: Mapping[str, str] | None = None,
        ) -> tuple[int, Any]: ...

    def request(
        self,
        op_name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        return self.request_with_status(
            op_name, path=path, query=query, body=body, headers=headers
        )[1]


class LocalTransport(_Requests):
    """Calls the operations of an in-process :class:`~abi_engine.Engine`.

    The access token is checked as the REST API checks it; the body and the
    answer go through JSON so the caller sees exactly what HTTP would give.
    The engine is started in a background thread by :meth:`Engine.call`
    when it is not running yet.
    """

    def __init__(self, engine: Engine, access_token: str | None) -> None:
        self.engine = engine
        self._token = access_token

    def request_with_status(
        self,
        op_name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        get_operation(op_name)
        raw = encode_body(body)
        request = ApiRequest(
            path=dict(path or {}),
            query=encode_query(query),
            body=None if raw is None else json.loads(raw),
            headers=_lower_keys(headers),
        )
        principal = self.engine.tokens.authenticate(require_token(self._token))
        status, data = self.engine.call(_call_operation, self.engine, principal, op_name, request)
        if isinstance(data, Raw):  # sent as it is over HTTP: its text
            return status, data.body.decode("utf-8")
        return status, json.loads(json.dumps(data))

    def close(self) -> None:
        """Nothing to release: the engine belongs to the caller or to the embedded registry."""


async def _call_operation(
    engine: Engine, principal: Principal, op_name: str, request: ApiRequest
) -> tuple[int, Any]:
    """Run an operation; an unexpected exception becomes ``InternalError`` as over HTTP."""
    try:
        return await call_with_status(engine, principal, op_name, request)
    except AbiError:
        raise
    except Exception as exc:
        raise InternalError() from exc


def _call_operation_in_thread(
    engine: Engine, principal: Principal, op_name: str, request: ApiRequest
) -> tuple[int, Any] | None:
    """:func:`_call_operation` answered in the caller's thread where the operation can be
    (executing a workflow: the synchronous door, issue #18), else ``None``."""
    try:
        return call_in_thread(engine, principal, op_name, request)
    except AbiError:
        raise
    except Exception as exc:
        raise InternalError() from exc


#: :meth:`Engine.call` answers in the caller's thread what this twin can.
_call_operation.in_thread = _call_operation_in_thread  # type: ignore[attr-defined]


class RemoteTransport(_Requests):
    """Speaks the operations to a REST API over HTTP (``base_url`` + ``/api/v1``)."""

    def __init__(self, base_url: str, access_token: str | None, *, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = access_token
        self._client = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        )
        # A facade nobody closes (the seed never does) still releases its sockets.
        self._finalizer = weakref.finalize(self, self._client.close)

    def request_with_status(
        self,
        op_name: str,
        *,
        path: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        op = get_operation(op_name)
        quoted = {key: quote(str(value), safe="") for key, value in (path or {}).items()}
        url = API_PREFIX + op.path.format_map(quoted)
        raw = encode_body(body)
        sent = {
            "accept": "application/json",
            **_lower_keys(headers),
            "authorization": f"Bearer {require_token(self._token)}",
        }
        if raw is not None:
            sent["content-type"] = "application/json"
        try:
            response = self._client.request(
                op.method, url, params=encode_query(query), content=raw, headers=sent
            )
        except httpx.TransportError as exc:
            full = self.base_url + url
            raise EngineConnectionError(
                f"Could not reach the abi-engine REST API at {full}: {exc or type(exc).__name__}",
                full,
            ) from exc
        if op.raw_media_type and response.status_code < 400:  # not JSON: its text
            return response.status_code, response.text
        return response.status_code, _unwrap(response)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._finalizer()


def _unwrap(response: httpx.Response) -> Any:
    """The ``data`` of a success envelope, or the exception of an error envelope."""
    status = response.status_code
    where = {"http_status": status, "url": str(response.request.url)}
    try:
        payload = response.json()
    except ValueError:
        raise InternalError(
            f"The server answered HTTP {status} with a body that is not JSON", where
        ) from None
    if isinstance(payload, dict):
        if payload.get("status") == "success" and "data" in payload and status < 400:
            return payload["data"]
        error = payload.get("error")
        if payload.get("status") == "error" and isinstance(error, dict):
            raise _rebuild(error, status, where)
    raise InternalError(
        f"The server answered HTTP {status} with JSON that is not an abi-engine envelope", where
    )


def _rebuild(error: dict[str, Any], status: int, where: dict[str, Any]) -> AbiError:
    code = error.get("code")
    if not isinstance(code, str) or not code:
        return InternalError(f"The server answered HTTP {status} with an error without code", where)
    message = error.get("message")
    details = error.get("details")
    return error_for_code(
        code,
        message if isinstance(message, str) else code,
        details if isinstance(details, dict) else {},
        status,
    )
