"""The one cattrs converter of abi-engine.

It unstructures models into exactly the seed's JSON (RFC 3339 ``Z`` times,
enums by value, ``omit_none`` fields left out while ``None``) and structures
request bodies strictly: unknown keys and wrong types are refused, and the
failure becomes :class:`~abi_engine.errors.InvalidRequest` whose ``details``
name each offending field.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.gen import make_dict_unstructure_fn
from cattrs.v import transform_error

from abi_engine.errors import AbiError, InvalidRequest
from abi_engine.ids import format_time, parse_time
from abi_engine.limits import Constraint, NestedValueError

__all__ = ["converter", "field_errors", "structure", "unstructure"]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _structure_datetime(value: Any, _: type) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise TypeError("expected an RFC 3339 time string")
    return parse_time(value)


converter.register_unstructure_hook(datetime, format_time)
converter.register_structure_hook(datetime, _structure_datetime)


def _strict(kind: type, accepted: tuple[type, ...], name: str) -> None:
    def hook(value: Any, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {name}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return kind(value)

    converter.register_structure_hook(kind, hook)


_strict(str, (str,), "a string")


def _structure_int(value: Any, _: type) -> int:
    # JSON (and JSON Schema) has numbers, not kinds of them: 3.0 is the integer 3.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        name = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise TypeError(f"expected an integer, got {name}")
    return int(value)


converter.register_structure_hook(int, _structure_int)
_strict(float, (int, float), "a number")
_strict(bool, (bool,), "a boolean")


def _dict_any(value: Any, _: type) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise TypeError("object keys must be strings")
    return value


converter.register_structure_hook_func(lambda t: t == dict[str, Any], _dict_any)

_SCALARS = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """``converter.unstructure(value)`` for JSON data, several times faster: dicts and
    lists copied (deeply), strings, numbers, booleans and ``None`` as they are; any
    other value (a time, an enum, a model, a subclass) goes to the converter.

    The hook of ``dict[str, Any]`` fields (a workflow's ``configuration`` and
    ``metadata``, an execution's ``parameters``): cattrs walked them with a
    dispatch per value, the most of ``GET /workflows/{id}``'s time in the adapter.
    """
    kind = type(value)
    if kind is dict:
        return {
            (k if type(k) is str else converter.unstructure(k)): (
                v if type(v) in _SCALARS else json_copy(v)
            )
            for k, v in value.items()
        }
    if kind is list:
        return [v if type(v) in _SCALARS else json_copy(v) for v in value]
    if kind in _SCALARS:
        return value
    return converter.unstructure(value)


converter.register_unstructure_hook_func(lambda t: t == dict[str, Any], json_copy)


def _structure_enum(value: Any, cls: type[enum.Enum]) -> enum.Enum:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise ValueError(f"must be one of: {allowed}") from None


# StrEnum before str in the MRO: these must be registered per base, not by predicate,
# or the strict ``str`` hook would win for string enums.
for _base in (enum.StrEnum, enum.IntEnum, enum.Enum):
    converter.register_structure_hook(_base, _structure_enum)
    converter.register_unstructure_hook(_base, lambda member: member.value)


def _unstructure_factory(cls: type) -> Callable[[Any], dict[str, Any]]:
    base: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cls, converter)
    omit = tuple(f.name for f in attrs.fields(cls) if f.metadata.get("omit_none"))
    if not omit:
        return base

    def unstructure_omitting(obj: Any) -> dict[str, Any]:
        data = base(obj)
        for name in omit:
            if data.get(name, 0) is None:
                del data[name]
        return data

    return unstructure_omitting


converter.register_unstructure_hook_factory(attrs.has, _unstructure_factory)


def _list_of_str(value: Any, _: type) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError("expected a list of strings")
    return list(value)


converter.register_structure_hook_func(lambda t: t == list[str], _list_of_str)


def _is_list(tp: Any) -> bool:
    return tp is list or getattr(tp, "__origin__", None) is list


def _strict_list_factory(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Lists only from JSON arrays (cattrs would iterate a dict's keys or a string)."""
    base = list_structure_factory(tp, conv)

    def structure_list(value: Any, cls: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return base(value, cls)

    return structure_list


converter.register_structure_hook_factory(_is_list, _strict_list_factory)
converter.register_structure_hook_func(lambda t: t == list[str], _list_of_str)

# Sets become sorted JSON arrays (a set is not JSON-able, and sorting keeps output stable).
converter.register_unstructure_hook_func(
    lambda t: t in (set, frozenset) or getattr(t, "__origin__", None) in (set, frozenset),
    lambda value: sorted(converter.unstructure(item) for item in value),
)


def _constraints(tp: Any) -> list[Constraint]:
    if get_origin(tp) is not Annotated:
        return []
    return [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Constraint)]


def _limited_factory(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """``Annotated[X, Text(...), ...]``: structure as ``X``, then check each limit
    (:mod:`abi_engine.limits`); a broken limit fails naming the field."""
    base_type = get_args(tp)[0]
    limits = _constraints(tp)
    base = conv.get_structure_hook(base_type)

    if len(limits) == 1:  # (most fields: one limit, checked without a loop)
        check = limits[0].check

        def structure_limited_once(value: Any, _: Any) -> Any:
            result = base(value, base_type)
            check(result)
            return result

        return structure_limited_once

    def structure_limited(value: Any, _: Any) -> Any:
        result = base(value, base_type)
        for limit in limits:
            limit.check(result)
        return result

    return structure_limited


converter.register_structure_hook_factory(lambda t: bool(_constraints(t)), _limited_factory)


def field_errors(exc: BaseException) -> list[dict[str, str]]:
    """Turn a cattrs structuring failure into ``[{"field", "message"}]``.

    The field is a dotted path from the body's root (``integrations[0].id``).
    """
    out = []
    for line in transform_error(exc, path="$", format_exception=_format_exception):
        message, _, path = line.rpartition(" @ ")
        field = path[2:] if path.startswith("$.") else path.removeprefix("$")
        if _SUBPATH in message:  # a value inside a free-form JSON field: name it exactly
            message, _, inner = message.partition(_SUBPATH)
            field = f"{field}{inner}" if inner.startswith("[") or not field else f"{field}.{inner}"
        if message.startswith(_EXTRA):
            for name in message.removeprefix(_EXTRA).split(", "):
                out.append(
                    {"field": f"{field}.{name}" if field else name, "message": "unknown field"}
                )
            continue
        out.append({"field": field or "(body)", "message": message})
    return out


_EXTRA = "unknown field(s): "


_SUBPATH = " @@ "  # between a message and where, inside the field, the value is


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, NestedValueError):
        return f"{exc}{_SUBPATH}{exc.path}"
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return _EXTRA + ", ".join(sorted(exc.extra_fields))
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return f"invalid value for {getattr(type_, '__name__', type_)}"


def structure(data: Any, cls: type[T], *, error: type[AbiError] = InvalidRequest) -> T:
    """Structure ``data`` into ``cls``, raising ``error`` that names each bad field."""
    if attrs.has(cls) and not isinstance(data, dict):
        raise error(
            "The request body must be a JSON object",
            {"field": "(body)", "errors": [{"field": "(body)", "message": "expected an object"}]},
        )
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        errors = field_errors(exc)
        first = errors[0] if errors else {"field": "(body)", "message": str(exc)}
        raise error(
            f"Invalid value for '{first['field']}': {first['message']}",
            {"field": first["field"], "errors": errors},
        ) from None


def unstructure(obj: Any) -> Any:
    """The JSON-able form of a model (or list of models)."""
    return converter.unstructure(obj)
