"""The operations table of the REST API, independent of HTTP.

Each :class:`Operation` names its method, path (under ``/api/v1``), scope,
request and response shapes, and a handler taking JSON in and giving JSON out.
The ASGI adapter binds them to routes, the in-process Python API calls
:func:`call` directly, and the remote Python API speaks the same method and
path over HTTP, so all three behave the same. The resource modules of
:mod:`abi_engine.api` declare their operations here with :func:`operation`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from abi_engine.api._audit import AUDITED, AuditRule
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.errors import AbiError, InvalidRequest, InvalidState, NotFound
from abi_engine.models import (
    Pagination,
    Scope,
)
from abi_engine.services import MAX_PAGE, MAX_PAGE_SIZE
from abi_engine.storage.aio import call_store
from abi_engine.storage.base import OwnedKind

if TYPE_CHECKING:
    from abi_engine.engine import Engine

_orjson_dumps: Callable[[Any], bytes] | None
try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - the server extra installs it
    _orjson_dumps = None

__all__ = [
    "IN_THREAD",
    "OPERATIONS",
    "PAGE_QUERY",
    "WORKFLOW_ERRORS",
    "Accepted",
    "ApiRequest",
    "Encoded",
    "Operation",
    "QueryParam",
    "Raw",
    "body_object",
    "bounded_page",
    "call",
    "call_in_thread",
    "call_with_status",
    "check_quota",
    "get_operation",
    "json_bytes",
    "operation",
    "page_json",
    "quota_exceeded",
]


@attrs.frozen(kw_only=True)
class ApiRequest:
    """One call: path parameters, query parameters (strings), JSON body, headers."""

    path: Mapping[str, str] = attrs.Factory(dict)
    query: Mapping[str, Any] = attrs.Factory(dict)
    body: Any = None
    headers: Mapping[str, str] = attrs.Factory(dict)
    #: The body's bytes as received, for operations that read them (``Operation.public``).
    raw: bytes | None = None


Handler = Callable[["Engine", Principal, ApiRequest], Awaitable[Any]]


class Accepted:
    """A handler's answer that is not final: sent with status 202 instead of the usual one."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


class Raw:
    """A handler's answer sent as it is, not as JSON in the success envelope
    (``GET /metrics``: the Prometheus text format). ``media_type`` is its ``Content-Type``."""

    __slots__ = ("body", "media_type")

    def __init__(self, body: bytes, media_type: str) -> None:
        self.body = body
        self.media_type = media_type


class Encoded:
    """An answer given as its JSON already (:func:`json_bytes`), by an operation's
    ``encoded_handler`` (a cache of encoded answers): the adapter sends ``json`` as the
    success envelope's ``data`` without encoding the answer again."""

    __slots__ = ("json",)

    def __init__(self, json: bytes) -> None:
        self.json = json


#: Compact ASCII JSON, refusing NaN and infinities.
_strict = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def json_bytes(data: Any) -> bytes:
    """``data`` as the adapter sends it: compact UTF-8 JSON, by orjson when installed (the
    ``server`` extra; several times faster), else by the json module (ASCII, NaN refused).

    What orjson cannot hold (integers past 64 bits, lone surrogates, keys that are not
    strings) takes the json module's way; a NaN or an infinity, which no answer holds
    (stored JSON and request bodies refuse them), is ``null`` with orjson.
    """
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(data)
        except TypeError:
            pass
    return _strict(data).encode("ascii")


@attrs.frozen(kw_only=True)
class QueryParam:
    """A documented query parameter (for OpenAPI)."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""


@attrs.frozen(kw_only=True)
class Operation:
    """One REST operation.

    ``request_model`` and ``response_model`` are the attrs classes (or
    ``list[...]``/``Page`` wrappers) the OpenAPI document describes;
    ``paginated`` marks list answers (``{"items", "pagination"}``);
    ``request_body_required=False`` documents a ``request_model`` body that may
    be left out (the handler then gets ``body=None``).
    """

    name: str
    method: str
    path: str
    scope: Scope | None
    summary: str
    handler: Handler
    status_code: int = 200
    request_model: Any = None
    request_body_required: bool = True
    response_model: Any = None
    paginated: bool = False
    query: tuple[QueryParam, ...] = ()
    tag: str = "workflows"
    errors: tuple[str, ...] = ()
    #: Request headers the operation reads (documented as header parameters).
    headers: tuple[QueryParam, ...] = ()
    #: JSON Schemas of path parameters that are more than any string, by name.
    path_schemas: Mapping[str, Mapping[str, Any]] = attrs.Factory(dict)
    #: When set, the operation may also answer 202 (its handler returns ``Accepted``).
    accepted_description: str | None = None
    #: The 202 answer's model, when it is not ``response_model``.
    accepted_model: Any = None
    #: When set, the answer is this media type, sent as it is (its handler returns ``Raw``).
    raw_media_type: str | None = None
    #: Needs no token (the caller proves itself otherwise, e.g. by a signature): the
    #: adapter charges the client address's rate limit and passes the raw body, unparsed.
    public: bool = False
    #: The same answer as ``handler``'s, as :class:`Encoded` JSON (from a cache, say), for
    #: callers that send JSON (``call_with_status(..., encoded=True)``); ``None``: none.
    encoded_handler: Handler | None = None


OPERATIONS: dict[str, Operation] = {}

_log = logging.getLogger("abi_engine.audit")


def operation(**kwargs: Any) -> Callable[[Handler], Handler]:
    """Declare ``handler`` as an operation (see :class:`Operation`)."""

    def register(handler: Handler) -> Handler:
        name = handler.__name__
        OPERATIONS[name] = Operation(name=name, handler=handler, **kwargs)
        return handler

    return register


def get_operation(name: str) -> Operation:
    try:
        return OPERATIONS[name]
    except KeyError:
        raise NotFound(name, f"Unknown operation {name!r}") from None


async def call(engine: Engine, actor: Principal, name: str, request: ApiRequest) -> Any:
    """Run operation ``name`` for ``actor``: check its scope, return its JSON data."""
    return (await call_with_status(engine, actor, name, request))[1]


async def call_with_status(
    engine: Engine, actor: Principal, name: str, request: ApiRequest, *, encoded: bool = False
) -> tuple[int, Any]:
    """Like :func:`call`, with the HTTP status the answer deserves. ``encoded``: the
    caller sends the answer as JSON and takes it as :class:`Encoded` too."""
    op = get_operation(name)
    if op.scope is not None:
        actor.require(op.scope)
    request = _checked_query(op, request)
    rule = AUDITED.get(name)
    if rule is None:
        handler = op.encoded_handler if encoded and op.encoded_handler else op.handler
        data = await handler(engine, actor, request)
    else:
        data = await _audited(engine, actor, op, rule, request)
    if isinstance(data, Accepted):
        return 202, data.data
    return op.status_code, data


#: Operations a synchronous caller's thread may answer without the event loop (the
#: synchronous door, issue #18): ``name -> fn(engine, actor, request)``, the answer as a
#: handler gives it, or ``None`` when the call needs the loop.
IN_THREAD: dict[str, Callable[[Engine, Principal, ApiRequest], Any]] = {}


def call_in_thread(
    engine: Engine, actor: Principal, name: str, request: ApiRequest
) -> tuple[int, Any] | None:
    """:func:`call_with_status` answered in the calling thread (not the loop's), or
    ``None``: then call the operation on the loop. Raises what the operation raises."""
    fn = IN_THREAD.get(name)
    if fn is None or name in AUDITED:
        return None
    op = get_operation(name)
    if op.scope is not None:
        actor.require(op.scope)
    data = fn(engine, actor, _checked_query(op, request))
    if data is None:
        return None
    if isinstance(data, Accepted):
        return 202, data.data
    return op.status_code, data


async def _audited(
    engine: Engine, actor: Principal, op: Operation, rule: AuditRule, request: ApiRequest
) -> Any:
    """Run ``op`` and record it in the audit log once it succeeded (its change committed):
    the target as the rule's read operation gave it before, and as the answer gives it."""
    before = None
    if rule.before is not None:
        read = ApiRequest(path={k: v for k, v in request.path.items() if k == rule.target})
        try:
            before = await get_operation(rule.before).handler(engine, actor, read)
        except AbiError:  # not there (the operation itself says so), or not readable
            before = None
    data = await op.handler(engine, actor, request)
    answer = data.data if isinstance(data, Accepted) else data
    target_id = rule.target_id(request.path, answer)
    try:
        await engine.audit.record(
            actor.user_id,
            rule.action,
            rule.target_type,
            target_id,
            before=before if isinstance(before, Mapping) else None,
            after=answer if rule.after and isinstance(answer, Mapping) else None,
        )
    except Exception:  # the change is committed: answer it, and say loudly what is missing
        _log.exception(
            "audit entry lost: %s %s %s by %s",
            rule.action,
            rule.target_type,
            target_id,
            actor.user_id,
        )
    return data


# As the adapter sends JSON (compact, ASCII): what a page's bytes are measured in.
_measure = json.JSONEncoder(separators=(",", ":"), default=str).encode


def bounded_page(items: list[Any], pagination: Pagination, max_bytes: int) -> dict[str, Any]:
    """The answer of a list: ``items`` (JSON-able) and their ``pagination``, at most
    ``max_bytes`` of items' JSON.

    A page whose items would be larger is answered with a smaller page size:
    the largest divisor of the requested ``page_size`` whose first items fit
    (one item at least). Because it divides the requested size, the page's
    first item is the first of a page of that size too, and the answer's
    ``pagination`` says which (``page``, ``page_size``, ``total_pages``): a
    client that asks next for ``page + 1`` at the answer's ``page_size`` gets
    the items that follow, without gaps or repeats.
    """
    data = {"items": items, "pagination": unstructure(pagination)}
    if len(items) <= 1 or len(_measure(items)) <= max_bytes:
        return data
    sizes = [len(_measure(item)) + 1 for item in items]  # and its comma
    size = pagination.page_size
    fits = next(
        d
        for d in range(min(size, len(items)), 0, -1)
        if size % d == 0 and (d == 1 or sum(sizes[:d]) + 1 <= max_bytes)
    )
    offset = (pagination.page - 1) * size
    total = pagination.total_items
    data["items"] = items[:fits]
    data["pagination"] = unstructure(
        Pagination(
            page=offset // fits + 1,
            page_size=fits,
            total_items=total,
            total_pages=(total + fits - 1) // fits,
        )
    )
    return data


def page_json(result: Any, engine: Engine) -> dict[str, Any]:
    return bounded_page(unstructure(result.items), result.pagination, engine.limits.max_page_bytes)


async def check_quota(
    engine: Engine, actor: Principal, kind: OwnedKind, limit_name: str, advice: str
) -> None:
    """Raise 409 ``INVALID_STATE`` when ``actor``'s user already holds as many ``kind``
    rows as ``engine.limits.<limit_name>`` allows (``None``: no limit)."""
    limit = getattr(engine.limits, limit_name)
    if limit is None:
        return
    held = await call_store(engine.store, engine.store.count_owned, kind, actor.user_id, limit)
    if held >= limit:
        raise quota_exceeded(kind, limit_name, limit, advice)


def quota_exceeded(kind: OwnedKind, limit_name: str, limit: int, advice: str) -> InvalidState:
    """The 409 ``INVALID_STATE`` of a user holding ``limit`` ``kind`` rows already."""
    what = kind.replace("_", " ")
    return InvalidState(
        f"The user already holds {limit} {what}, the most allowed ({limit_name}); {advice}",
        {"limit": limit_name, limit_name: limit},
    )


def _checked_query(op: Operation, request: ApiRequest) -> ApiRequest:
    """``request`` with its query checked against the operation's parameters.

    An unknown parameter is ``INVALID_REQUEST`` naming it (as an unknown body
    field is). A parameter given several times (a list of values) is refused
    unless its schema is an array; array parameters arrive as a list of
    strings, whether repeated (``status=a&status=b``) or comma-separated
    (``status=a,b``), each of them one of the items' ``enum`` (no empty value,
    no spaces).
    """
    if not request.query:
        return request
    declared = {q.name: q for q in op.query}
    unknown = sorted(set(request.query) - set(declared))
    if unknown:
        raise InvalidRequest(
            f"Unknown query parameter(s): {', '.join(unknown)}",
            {
                "field": unknown[0],
                "errors": [{"field": f, "message": "unknown query parameter"} for f in unknown],
                "allowed": sorted(declared),
            },
        )
    query: dict[str, Any] = {}
    for name, value in request.query.items():
        values = value if isinstance(value, list | tuple) else [value]
        if any("\x00" in str(item) for item in values):
            raise InvalidRequest(
                f"Query parameter '{name}': NUL characters (U+0000) are not allowed",
                {"field": name},
            )
        schema = declared[name].schema
        if schema.get("type") == "array":
            allowed = schema.get("items", {}).get("enum")
            parts = [part for item in values for part in str(item).split(",")]
            for part in parts:
                if not part or (allowed is not None and part not in allowed):
                    raise InvalidRequest(
                        f"Query parameter '{name}': {part!r} is not one of"
                        f" {', '.join(map(str, allowed or ()))}"
                        if part
                        else f"Query parameter '{name}' has an empty value",
                        {"field": name},
                    )
            query[name] = parts
        elif len(values) != 1:
            raise InvalidRequest(
                f"Query parameter '{name}' is given more than once", {"field": name}
            )
        else:
            query[name] = values[0]
    return attrs.evolve(request, query=query)


def body_object(request: ApiRequest) -> dict[str, Any]:
    if not isinstance(request.body, dict):
        raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
    return request.body


PAGE_QUERY = (
    QueryParam(
        name="page",
        schema={"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
    ),
    QueryParam(
        name="page_size",
        schema={"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 10},
        description=(
            "Items per page; the answer's page_size may be smaller when the page would be"
            " larger than the engine's max_page_bytes (see Pagination)"
        ),
    ),
)

WORKFLOW_ERRORS = ("WORKFLOW_NOT_FOUND",)
