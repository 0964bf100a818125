"""Turning source records into target records: renames, mappings, defaults, validation.

The rules, in order, for one record:

1. Each rule (the ``transformation_rules`` renames first, then the
   ``field_mappings``, each in its order) reads its ``source`` path from the
   record. Missing (or ``null``), the rule's ``default`` is used when it has
   one; else a ``required`` rule rejects the record, and any other rule sets
   nothing. An ``expression`` then computes the value from ``value`` (what was
   read) and ``record`` (the whole source record). The value is set at the
   rule's ``target`` path (later rules win when two write the same path).
2. With ``unmapped_fields: "keep"`` (the default), every top-level field of
   the record that no rule reads (a rule reads the first segment of its
   ``source`` path) is copied unchanged, unless the output already has it.
   With ``"drop"`` only what the rules set is kept.
3. Each of ``required_fields`` (paths in the output) must be present and not
   ``null``, and each of ``validation_rules`` (an expression over ``record``,
   the output) must be true; else the record is rejected with the reason.

Paths are field names, with dots for nested objects (``address.city``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from abi_engine.errors import InvalidWorkflowConfig
from abi_plugin_data_processing.expressions import Expression, ExpressionError

__all__ = [
    "NO_DEFAULT",
    "FieldMapping",
    "MappingOptions",
    "RecordMapper",
    "Rejection",
    "ValidationRule",
    "check_path",
    "config_error",
    "get_path",
    "set_path",
]

MAX_PATH = 200


class _NoDefault:
    """The ``default`` of a mapping that has none (``null`` is a default)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()


def config_error(field: str, message: str, **details: Any) -> InvalidWorkflowConfig:
    """``INVALID_WORKFLOW_CONFIG`` naming ``field`` (e.g. ``configuration.batch_size``)."""
    return InvalidWorkflowConfig(
        f"Invalid value for '{field}': {message}", {"field": field, **details}
    )


def _split(path: str) -> list[str]:
    return path.split(".")


def get_path(record: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted path in a record; not found through a non-object."""
    current: Any = record
    for part in _split(path):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current


def set_path(record: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path, creating (or replacing non-object) parents as objects."""
    parts = _split(path)
    current = record
    for part in parts[:-1]:
        child = current.get(part)
        if not isinstance(child, dict):
            child = current[part] = {}
        current = child
    current[parts[-1]] = value


def check_path(path: Any, field: str) -> None:
    """Raise ``INVALID_WORKFLOW_CONFIG`` on ``field`` unless ``path`` is a usable dotted path."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise config_error(field, f"expected a field name (1 to {MAX_PATH} characters)")
    if any(not part for part in _split(path)):
        raise config_error(field, "empty segment in a dotted path")


@attrs.define(kw_only=True)
class FieldMapping:
    """``{"source": "email", "target": "contact_email"}`` plus optional rules."""

    source: str
    target: str
    default: Any = NO_DEFAULT
    required: bool = False
    expression: str | None = None


@attrs.define(kw_only=True)
class ValidationRule:
    """``{"expression": "'@' in record['contact_email']", "message": "bad e-mail"}``."""

    expression: str
    message: str | None = None


@attrs.define(kw_only=True, slots=False)  # a mixin: slotted bases cannot be combined
class MappingOptions:
    """The mapping part of a configuration (shared by data_processing and integration)."""

    transformation_rules: dict[str, str] = attrs.Factory(dict)
    field_mappings: list[FieldMapping] = attrs.Factory(list)
    unmapped_fields: Literal["keep", "drop"] = "keep"
    required_fields: list[str] = attrs.Factory(list)
    validation_rules: list[ValidationRule] = attrs.Factory(list)


@attrs.frozen
class Rejection:
    """A record left out: its position in the input and why."""

    index: int
    reason: str

    def json(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason}


@attrs.frozen
class _Rule:
    source: str
    target: str
    default: Any
    required: bool
    expression: Expression | None


class RecordMapper:
    """The compiled rules of :class:`MappingOptions`; ``map(record)`` applies them.

    Building it checks the options: a problem raises ``INVALID_WORKFLOW_CONFIG``
    naming the field (``configuration.field_mappings[1].target``).
    """

    def __init__(self, options: MappingOptions, prefix: str = "configuration") -> None:
        rules: list[_Rule] = []
        for source, target in options.transformation_rules.items():
            where = f"{prefix}.transformation_rules.{source}"
            check_path(source, where)
            check_path(target, where)
            rules.append(_Rule(source, target, NO_DEFAULT, False, None))
        for index, mapping in enumerate(options.field_mappings):
            where = f"{prefix}.field_mappings[{index}]"
            check_path(mapping.source, f"{where}.source")
            check_path(mapping.target, f"{where}.target")
            if mapping.required and mapping.default is not NO_DEFAULT:
                raise config_error(f"{where}.default", "a required mapping has no default")
            expression = None
            if mapping.expression is not None:
                try:
                    expression = Expression(mapping.expression)
                except ExpressionError as exc:
                    raise config_error(f"{where}.expression", str(exc)) from None
            rules.append(
                _Rule(mapping.source, mapping.target, mapping.default, mapping.required, expression)
            )
        self._check_targets(rules, options, prefix)
        self.rules = tuple(rules)
        self.keep_unmapped = options.unmapped_fields == "keep"
        self.read_fields = frozenset(_split(rule.source)[0] for rule in rules)
        for index, path in enumerate(options.required_fields):
            check_path(path, f"{prefix}.required_fields[{index}]")
        self.required_fields = tuple(options.required_fields)
        validations: list[tuple[Expression, str]] = []
        for index, rule in enumerate(options.validation_rules):
            try:
                validations.append((Expression(rule.expression), rule.message or ""))
            except ExpressionError as exc:
                raise config_error(
                    f"{prefix}.validation_rules[{index}].expression", str(exc)
                ) from None
        self.validations = tuple(validations)

    @staticmethod
    def _check_targets(rules: Sequence[_Rule], options: MappingOptions, prefix: str) -> None:
        """A target must not be a parent object of another (``a`` and ``a.b``)."""
        seen: dict[str, int] = {}
        for index, rule in enumerate(rules):
            seen.setdefault(rule.target, index)
        renames = len(options.transformation_rules)
        for target, index in seen.items():
            for other in seen:
                if other.startswith(f"{target}."):
                    where = (
                        f"{prefix}.transformation_rules.{rules[index].source}"
                        if index < renames
                        else f"{prefix}.field_mappings[{index - renames}].target"
                    )
                    raise config_error(where, f"'{target}' is also the parent of '{other}'")

    def map(self, record: Any) -> tuple[dict[str, Any] | None, str | None]:
        """``(output, None)``, or ``(None, reason)`` when the record is rejected."""
        if not isinstance(record, Mapping):
            return None, f"not an object ({type(record).__name__})"
        out: dict[str, Any] = {}
        for rule in self.rules:
            found, value = get_path(record, rule.source)
            if not found or value is None:
                if rule.default is not NO_DEFAULT:
                    value = rule.default
                elif rule.required:
                    return None, f"missing required field '{rule.source}'"
                else:
                    continue
            if rule.expression is not None:
                try:
                    value = rule.expression.evaluate({"value": value, "record": record})
                except ExpressionError as exc:
                    return None, f"{rule.target}: {exc}"
            set_path(out, rule.target, value)
        if self.keep_unmapped:
            for key, value in record.items():
                if key not in self.read_fields and key not in out:
                    out[key] = value
        reason = self.check(out)
        return (None, reason) if reason is not None else (out, None)

    def check(self, out: Mapping[str, Any]) -> str | None:
        """Why a mapped record is invalid, or ``None``."""
        for path in self.required_fields:
            found, value = get_path(out, path)
            if not found or value is None:
                return f"missing required field '{path}'"
        for expression, message in self.validations:
            try:
                ok = expression.evaluate({"record": out})
            except ExpressionError as exc:
                return message or f"validation {expression.source!r} failed: {exc}"
            if not ok:
                return message or f"validation {expression.source!r} failed"
        return None

    def map_all(self, records: Sequence[Any]) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """The mapped records and the rejections (with each record's input index)."""
        mapped: list[dict[str, Any]] = []
        rejected: list[Rejection] = []
        for index, record in enumerate(records):
            out, reason = self.map(record)
            if out is None:
                rejected.append(Rejection(index, reason or "rejected"))
            else:
                mapped.append(out)
        return mapped, rejected
