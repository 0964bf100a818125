"""JSON Schemas of the attrs classes workflow types take as configuration and parameters.

:func:`json_schema` describes what the engine's converter accepts when it
structures a request into an attrs class: every field by its JSON name, the
fields without a default required, unknown fields refused
(``additionalProperties: false``), ``X | None`` nullable, ``Literal`` and
enums as ``enum``, ``datetime`` as an RFC 3339 ``date-time`` string, nested
attrs classes under ``$defs``. The result is a JSON Schema (draft 2020-12)
document ``GET /api/v1/workflow_types`` lists for each type.
"""

from __future__ import annotations

import collections.abc
import datetime
import enum
import types
import typing
from typing import Any, Literal

import attrs

__all__ = ["DIALECT", "json_schema"]

#: The JSON Schema dialect of the documents :func:`json_schema` returns.
DIALECT = "https://json-schema.org/draft/2020-12/schema"

_NONE = type(None)
_ARRAYS = (
    list,
    tuple,
    set,
    frozenset,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.Collection,
    collections.abc.Iterable,
)
_OBJECTS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_PRIMITIVES: tuple[tuple[type, dict[str, Any]], ...] = (
    (bool, {"type": "boolean"}),  # before int: bool is an int
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (str, {"type": "string"}),
    (datetime.datetime, {"type": "string", "format": "date-time"}),
    (dict, {"type": "object"}),
    (list, {"type": "array"}),
)


def json_schema(cls: type[Any] | None) -> dict[str, Any]:
    """The JSON Schema of the JSON object the converter structures into ``cls``.

    ``None`` (a type that declares no class) gives ``{"type": "object"}``:
    any JSON object.
    """
    if cls is None:
        return {"$schema": DIALECT, "type": "object"}
    builder = _Builder()
    root = builder.object(cls)
    document: dict[str, Any] = {"$schema": DIALECT, **root}
    if builder.defs:
        document["$defs"] = builder.defs
    return document


def _enum(values: list[Any]) -> dict[str, Any]:
    kinds = {type(v) for v in values}
    for python_type, name in ((str, "string"), (bool, "boolean"), (int, "integer")):
        if kinds == {python_type}:
            return {"type": name, "enum": values}
    return {"enum": values}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str) and "$ref" not in schema:
        out = {**schema, "type": [kind, "null"]}
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    if not schema:
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _default(value: Any) -> tuple[bool, Any]:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, str | int | float | bool):
        return True, value
    return False, None


class _Builder:
    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self._names: dict[type, str] = {}
        self._root: type | None = None

    def schema(self, tp: Any) -> dict[str, Any]:
        if tp is Any or tp is object or isinstance(tp, str | typing.ForwardRef):
            return {}
        if tp is _NONE or tp is None:
            return {"type": "null"}
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:
            return self.schema(args[0])
        if origin is typing.Union or origin is types.UnionType:
            options = [a for a in args if a is not _NONE]
            inner = (
                self.schema(options[0])
                if len(options) == 1
                else {"anyOf": [self.schema(a) for a in options]}
            )
            return _nullable(inner) if len(options) < len(args) else inner
        if origin is Literal:
            return _enum(list(args))
        if origin in _OBJECTS:
            schema: dict[str, Any] = {"type": "object"}
            if len(args) == 2 and args[1] is not Any:
                schema["additionalProperties"] = self.schema(args[1])
            return schema
        if origin in _ARRAYS:
            array: dict[str, Any] = {"type": "array"}
            if args and args[-1] is not Ellipsis and origin is tuple:
                array["prefixItems"] = [self.schema(a) for a in args]
                array["minItems"] = array["maxItems"] = len(args)
            elif args:
                array["items"] = self.schema(args[0])
            return array
        if isinstance(tp, type):
            if attrs.has(tp):
                return self.ref(tp)
            if issubclass(tp, enum.Enum):
                return _enum([m.value for m in tp])
            for python_type, primitive in _PRIMITIVES:
                if issubclass(tp, python_type):
                    return dict(primitive)
        return {}

    def ref(self, cls: type) -> dict[str, Any]:
        if cls is self._root:
            return {"$ref": "#"}
        name = self._names.get(cls)
        if name is None:
            name = cls.__name__
            taken = set(self._names.values())
            n = 2
            while name in taken:
                name, n = f"{cls.__name__}{n}", n + 1
            self._names[cls] = name
            self.defs[name] = {}  # reserve the name: a recursive class stops here
            self.defs[name] = self.object(cls, root=False)
        return {"$ref": f"#/$defs/{name}"}

    def object(self, cls: type, *, root: bool = True) -> dict[str, Any]:
        if root:
            self._root = cls
        if not attrs.has(cls):
            return self.schema(cls) or {"type": "object"}
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable annotations document as "any value"
            hints = {}
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            if not field.init:
                continue
            name = field.name  # the key the converter reads (not the init alias)
            prop = self.schema(hints.get(field.name, field.type))
            if field.default is attrs.NOTHING:
                required.append(name)
            elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                ok, value = _default(field.default)
                if ok:
                    prop = {**prop, "default": value}
            properties[name] = prop
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        if required:
            schema["required"] = required
        doc = (cls.__doc__ or "").strip().split("\n", 1)[0].strip()
        if doc and not doc.startswith(f"{cls.__name__}("):  # attrs' generated docstring
            schema["description"] = doc
        return schema
