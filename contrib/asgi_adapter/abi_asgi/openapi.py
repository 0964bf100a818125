"""The OpenAPI 3.1 document of the REST API, generated from the operations table.

Every :class:`abi_engine.api.Operation` becomes one path item operation: its
method and path, ``operationId`` (the operation's name), summary, tag, bearer
security, path and query parameters, request body, success response (wrapped
in the success envelope) and error responses (the error envelope, by status).

Schemas of request and response bodies are generated from the attrs classes
the operations name, by walking :func:`attrs.fields` and their type hints:
``str``, ``int``, ``float``, ``bool``, ``datetime`` (``date-time`` strings),
enums and ``Literal`` (enums of values), ``list[X]``, ``dict[str, X]``,
``X | None`` (nullable), nested attrs classes (``$ref`` into
``components/schemas``) and generic attrs classes such as ``Page[T]``.
``Annotated[X, limit]`` adds the keywords of the field limits of
:mod:`abi_engine.limits` (``maxLength``, ``pattern``, ``maximum``,
``maxItems``, ``maxProperties``...), the very objects the server checks
requests with, so the document declares exactly what the server enforces.
"""

from __future__ import annotations

import collections.abc
import datetime
import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from abi_engine.api import OPERATIONS, Operation
from abi_engine.errors import error_for_code
from abi_engine.limits import Constraint
from abi_engine.models import Pagination

__all__ = [
    "ALWAYS_ERRORS",
    "API_VERSION",
    "HealthStatus",
    "SchemaBuilder",
    "build_openapi",
    "path_parameters",
]

#: ``info.version`` of the document: the API's version (its path is ``/api/v1``), not
#: the package's, which a caller without a token has no need to know.
API_VERSION = "v1"

#: Errors every authenticated operation can answer with.
ALWAYS_ERRORS: tuple[str, ...] = (
    "INVALID_REQUEST",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "RATE_LIMIT_EXCEEDED",
)

_REF = "#/components/schemas/"
_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_]+)?}")
_NONE_TYPE = type(None)
_ARRAY_ORIGINS = (
    list,
    tuple,
    set,
    frozenset,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
    collections.abc.Iterable,
    collections.abc.Collection,
)
_OBJECT_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_PRIMITIVES: tuple[tuple[type, dict[str, Any]], ...] = (
    (bool, {"type": "boolean"}),  # before int: bool is an int
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (datetime.datetime, {"type": "string", "format": "date-time"}),
    (datetime.date, {"type": "string", "format": "date"}),
    (bytes, {"type": "string"}),
    (dict, {"type": "object"}),
    (list, {"type": "array"}),
)


@attrs.define(kw_only=True)
class HealthStatus:
    """The answer of ``GET /api/v1/health``."""

    status: Literal["ok"]
    database: Literal["ok"]
    engine: Literal["running"]


def path_parameters(path: str) -> list[str]:
    """The names of the ``{parameters}`` of a route path, in order."""
    return _PATH_PARAM.findall(path)


def _openapi_path(path: str) -> str:
    """A Starlette path (``{id:int}`` converters allowed) as an OpenAPI path."""
    return _PATH_PARAM.sub(r"{\1}", path)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].strip()


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if kind is not None and "$ref" not in schema:
        kinds = list(kind) if isinstance(kind, list) else [kind]
        out = {**schema, "type": [*kinds, "null"] if "null" not in kinds else kinds}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    if not schema:
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _json_default(value: Any) -> tuple[bool, Any]:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, str | int | float | bool):
        return True, value
    return False, None


def _enum_schema(values: Iterable[Any]) -> dict[str, Any]:
    values = list(values)
    schema: dict[str, Any] = {"enum": values}
    kinds = {type(v) for v in values}
    for python_type, json_type in ((str, "string"), (bool, "boolean"), (int, "integer")):
        if kinds == {python_type}:
            schema = {"type": json_type, "enum": values}
            break
    return schema


def _limited(schema: dict[str, Any], markers: Iterable[Any]) -> dict[str, Any]:
    """``schema`` with the keywords of the field limits among ``markers``
    (:class:`abi_engine.limits.Constraint`: ``maxLength``, ``pattern``, ``maximum``...)."""
    out = dict(schema)
    for marker in markers:
        if isinstance(marker, Constraint):
            out.update(marker.json_schema())
    return out


class SchemaBuilder:
    """Turns Python types into JSON Schemas, collecting attrs classes as components.

    ``mode`` is ``"request"`` (fields with defaults are optional, unknown
    fields refused) or ``"response"`` (every field is present except those
    the converter omits while ``None``).
    """

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self._names: dict[tuple[Any, ...], str] = {}

    def schema(self, tp: Any, mode: str = "response") -> dict[str, Any]:
        """The JSON Schema of ``tp``."""
        return self._schema(tp, mode, {})

    def _schema(self, tp: Any, mode: str, typevars: Mapping[Any, Any]) -> dict[str, Any]:
        if isinstance(tp, typing.TypeVar):
            tp = typevars.get(tp, Any)
        if tp is Any or tp is object or isinstance(tp, str | typing.ForwardRef):
            return {}
        if tp is _NONE_TYPE or tp is None:
            return {"type": "null"}
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return _limited(self._schema(args[0], mode, typevars), tp.__metadata__)
        if origin is typing.Union or origin is types.UnionType:
            return self._union(args, mode, typevars)
        if origin is Literal:
            return _enum_schema(args)
        if origin in _OBJECT_ORIGINS:
            schema: dict[str, Any] = {"type": "object"}
            if len(args) == 2 and args[1] is not Any:
                schema["additionalProperties"] = self._schema(args[1], mode, typevars)
            return schema
        if origin in _ARRAY_ORIGINS:
            return self._array(origin, args, mode, typevars)
        if origin is not None and attrs.has(origin):
            params = getattr(origin, "__parameters__", ())
            bound = {
                p: typevars.get(a, a) if isinstance(a, typing.TypeVar) else a
                for p, a in zip(params, args, strict=False)
            }
            return self._ref(origin, mode, bound)
        if isinstance(tp, type):
            return self._class(tp, mode)
        return {}

    def _union(
        self, args: tuple[Any, ...], mode: str, typevars: Mapping[Any, Any]
    ) -> dict[str, Any]:
        options = [a for a in args if a is not _NONE_TYPE]
        nullable = len(options) < len(args)
        if len(options) == 1:
            schema = self._schema(options[0], mode, typevars)
        else:
            schema = {"anyOf": [self._schema(a, mode, typevars) for a in options]}
        return _nullable(schema) if nullable else schema

    def _array(
        self, origin: Any, args: tuple[Any, ...], mode: str, typevars: Mapping[Any, Any]
    ) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "array"}
        if origin is tuple and args and args[-1] is not Ellipsis:
            schema["prefixItems"] = [self._schema(a, mode, typevars) for a in args]
            schema["minItems"] = schema["maxItems"] = len(args)
            return schema
        if args:
            schema["items"] = self._schema(args[0], mode, typevars)
        if origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
            schema["uniqueItems"] = True
        return schema

    def _class(self, cls: type, mode: str) -> dict[str, Any]:
        if attrs.has(cls):
            return self._ref(cls, mode, {})
        if issubclass(cls, enum.Enum):
            return _enum_schema(member.value for member in cls)
        for python_type, schema in _PRIMITIVES:
            if issubclass(cls, python_type):
                return dict(schema)
        return {}

    # -- attrs classes as components ----------------------------------------------------

    def _component_name(self, cls: type, mode: str, typevars: Mapping[Any, Any]) -> str:
        base = cls.__name__ + "".join(
            getattr(a, "__name__", "Any").capitalize() if not attrs.has(a) else a.__name__
            for a in typevars.values()
        )
        taken = set(self._names.values())
        candidates = [base, f"{base}Input"] if mode == "request" else [base]
        candidates += [f"{base}{n}" for n in range(2, 1000)]
        return next(name for name in candidates if name not in taken)

    def _ref(self, cls: type, mode: str, typevars: Mapping[Any, Any]) -> dict[str, Any]:
        key = (cls, mode, tuple(typevars.items()))
        name = self._names.get(key)
        if name is None:
            name = self._component_name(cls, mode, typevars)
            self._names[key] = name
            self.components[name] = {}  # reserve the name; recursion stops here
            self.components[name] = self._object(cls, mode, typevars)
        return {"$ref": _REF + name}

    def _object(self, cls: type, mode: str, typevars: Mapping[Any, Any]) -> dict[str, Any]:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)  # keep the limits
        except Exception:  # unresolvable annotations document as "any value"
            hints = {}
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if mode == "request" and not field.init:
                continue
            tp = hints.get(field.name, field.type)
            prop = self._schema(tp, mode, typevars)
            has_default = field.default is not attrs.NOTHING
            if has_default and not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                ok, value = _json_default(field.default)
                if ok and mode == "request":
                    prop = {**prop, "default": value}
            properties[field.name] = prop
            if mode == "request":
                if not has_default:
                    required.append(field.name)
            elif not field.metadata.get("omit_none"):
                required.append(field.name)
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        if mode == "request":
            schema["additionalProperties"] = False
            schema.update(getattr(cls, "__openapi__", {}))  # rules across fields
        title = _first_line(cls.__doc__)
        if title and not title.startswith(f"{cls.__name__}("):  # attrs' generated docstring
            schema["description"] = title
        return schema


# -- the document ------------------------------------------------------------------------


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "data"],
        "properties": {"status": {"const": "success"}, "data": data},
    }


def _error_components() -> dict[str, dict[str, Any]]:
    return {
        "Error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "e.g. WORKFLOW_NOT_FOUND"},
                "message": {"type": "string", "description": "human readable"},
                "details": {"type": "object", "description": "machine-readable specifics"},
            },
        },
        "ErrorEnvelope": {
            "type": "object",
            "required": ["status", "error"],
            "properties": {"status": {"const": "error"}, "error": {"$ref": _REF + "Error"}},
        },
    }


def _error_responses(codes: Iterable[str]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code in codes:
        status = error_for_code(code, "").http_status
        if code not in by_status.setdefault(status, []):
            by_status[status].append(code)
    responses: dict[str, Any] = {}
    for status in sorted(by_status):
        codes_here = by_status[status]
        schema = {
            "allOf": [
                {"$ref": _REF + "ErrorEnvelope"},
                {"properties": {"error": {"properties": {"code": _enum_schema(codes_here)}}}},
            ]
        }
        response: dict[str, Any] = {
            "description": "Error: " + ", ".join(codes_here),
            "content": {"application/json": {"schema": schema}},
        }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        if status == 405:
            response["headers"] = {
                "Allow": {"description": "The allowed methods", "schema": {"type": "string"}}
            }
        responses[str(status)] = response
    return responses


def _takes_body(op: Operation) -> bool:
    return op.request_model is not None


def _success_schema(builder: SchemaBuilder, op: Operation, model: Any = None) -> dict[str, Any]:
    model = op.response_model if model is None else model
    data = builder.schema(model) if model is not None else {}
    if op.paginated:
        data = {
            "type": "object",
            "required": ["items", "pagination"],
            "properties": {
                "items": {"type": "array", "items": data},
                "pagination": builder.schema(Pagination),
            },
        }
    return _envelope(data)


def _success_responses(builder: SchemaBuilder, op: Operation) -> dict[str, Any]:
    """The operation's success answer, and its 202 answer when it may give one."""
    content: dict[str, Any] = {"application/json": {"schema": _success_schema(builder, op)}}
    if op.raw_media_type:  # sent as it is, without the envelope
        content = {op.raw_media_type.split(";")[0]: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {
        str(op.status_code): {"description": op.summary, "content": content}
    }
    if op.accepted_description:
        accepted = _success_schema(builder, op, op.accepted_model)
        responses["202"] = {
            "description": op.accepted_description,
            "content": {"application/json": {"schema": accepted}},
        }
    return responses


def _operation(builder: SchemaBuilder, op: Operation, prefix: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": dict(op.path_schemas.get(name, {"type": "string"})),
        }
        for name in path_parameters(prefix + op.path)
    ]
    for location, params in (("query", op.query), ("header", op.headers)):
        for query in params:
            param: dict[str, Any] = {
                "name": query.name,
                "in": location,
                "required": False,
                "schema": dict(query.schema),
            }
            if query.description:
                param["description"] = query.description
            parameters.append(param)
    errors = [*op.errors, *ALWAYS_ERRORS]
    if _takes_body(op):
        errors.append("PAYLOAD_TOO_LARGE")
    responses = _success_responses(builder, op)
    responses.update(_error_responses(errors))
    out: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.summary,
        "tags": [op.tag],
        "security": [] if op.public else [{"bearerAuth": []}],
        "parameters": parameters,
        "responses": responses,
    }
    if _takes_body(op):
        body = builder.schema(op.request_model, "request")
        if not op.request_body_required:  # a JSON null stands for no body
            body = {"anyOf": [body, {"type": "null"}]}
        out["requestBody"] = {
            "required": op.request_body_required,
            "content": {"application/json": {"schema": body}},
        }
    if op.public:  # its body is read as bytes (signed as sent): any JSON
        out["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {}}},
        }
    if op.handler.__doc__:
        out["description"] = op.handler.__doc__.strip()
    return out


def _meta_paths(builder: SchemaBuilder, prefix: str) -> dict[str, Any]:
    health = {
        "operationId": "health",
        "summary": "Is the service up and its database answering",
        "tags": ["meta"],
        "security": [],
        "responses": {
            "200": {
                "description": "The service is up",
                "content": {
                    "application/json": {"schema": _envelope(builder.schema(HealthStatus))}
                },
            },
            "503": {
                "description": "Error: SERVICE_UNAVAILABLE (the database does not answer),"
                " ENGINE_NOT_RUNNING (the engine was never started: a host app mounting"
                " the API must run `async with engine:` in its lifespan)",
                "content": {"application/json": {"schema": {"$ref": _REF + "ErrorEnvelope"}}},
            },
        },
    }
    document = {
        "operationId": "openapi",
        "summary": "This OpenAPI document",
        "tags": ["meta"],
        "security": [],
        "responses": {
            "200": {
                "description": "The OpenAPI 3.1 document",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    }
    return {f"{prefix}/health": {"get": health}, f"{prefix}/openapi.json": {"get": document}}


def build_openapi(
    operations: Mapping[str, Operation] | None = None,
    *,
    prefix: str = "/api/v1",
    server_url: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations`` (default: every registered one).

    :param operations: the operations to describe, by name.
    :param prefix: the path the operations' paths are relative to.
    :param server_url: when the API is mounted under a prefix, that prefix
        (it becomes the document's ``servers`` entry).
    """
    ops = OPERATIONS if operations is None else operations
    builder = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for op in ops.values():
        path = _openapi_path(prefix + op.path)
        paths.setdefault(path, {})[op.method.lower()] = _operation(builder, op, prefix)
    paths.update(_meta_paths(builder, prefix))
    tags = sorted({op.tag for op in ops.values()} | {"meta"})
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "abi-engine",
            "version": API_VERSION,
            "description": "The ABI Workflows REST API, served by abi-engine.",
        },
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {
            "schemas": {**_error_components(), **builder.components},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document
