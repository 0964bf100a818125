"""What a synchronization does: the creates, updates and deletes that make a target match.

:func:`plan_sync` compares the mapped source records with the target's
records by key. It is a pure function, so its rules are tested against a
plain oracle:

* a source record without a usable key (a string, or an integer, compared
  as text), or whose key an earlier source record already has, is rejected;
* a key only in the source is a **create**;
* a key on both sides is an **update** when one of the compared fields (all
  fields of the mapped source record, or ``compare_fields``) differs from
  the target record's, else **unchanged**. Values are compared as JSON
  (``1`` equals ``1.0``, ``true`` does not equal ``1``);
* in ``mirror`` mode a key only in the target is a **delete**; ``upsert``
  leaves it alone. Target records without a usable key are ignored; of two
  target records with the same key, the first counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from abi_plugin_data_processing import Rejection, get_path, set_path

__all__ = ["Plan", "TooManyDeletes", "json_equal", "key_of", "plan_sync"]


class TooManyDeletes(Exception):
    """A mirror's plan deletes more records than ``max_deletes`` allows (nothing is written)."""


def key_of(record: Any, key: str) -> str | None:
    """The record's key as text, or ``None`` when it has no usable one."""
    if not isinstance(record, dict):
        return None
    found, value = get_path(record, key)
    if not found or isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    return text if text else None


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value, but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@attrs.define(kw_only=True)
class Plan:
    """The operations, in order: each create/update is ``(key, body)``, each delete a key."""

    creates: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    updates: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)
    deletes: list[str] = attrs.Factory(list)
    unchanged: int = 0
    rejected: list[Rejection] = attrs.Factory(list)


def _changed(
    source: dict[str, Any], target: dict[str, Any], fields: Sequence[str] | None
) -> dict[str, Any]:
    """The compared fields whose source value differs from the target's (path -> value)."""
    changed: dict[str, Any] = {}
    for path in fields if fields is not None else list(source):
        found, value = get_path(source, path)
        if not found:
            continue
        there, current = get_path(target, path)
        if not there or not json_equal(value, current):
            changed[path] = value
    return changed


def plan_sync(
    source: Sequence[tuple[int, dict[str, Any]]],
    target: Sequence[Any],
    *,
    key: str,
    mirror: bool,
    compare_fields: Sequence[str] | None = None,
    partial_updates: bool = False,
) -> Plan:
    """The plan making ``target`` match ``source``.

    ``source`` holds ``(index read, mapped record)`` pairs (the index names
    the record in rejections). An update's body is the whole mapped record,
    or with ``partial_updates`` only the changed fields (as nested objects
    for dotted paths).
    """
    plan = Plan()
    existing: dict[str, dict[str, Any]] = {}
    for record in target:
        record_key = key_of(record, key)
        if record_key is not None:
            existing.setdefault(record_key, record)
    seen: set[str] = set()
    for index, record in source:
        record_key = key_of(record, key)
        if record_key is None:
            plan.rejected.append(Rejection(index, f"no usable key '{key}' (a string or integer)"))
            continue
        if record_key in seen:
            plan.rejected.append(Rejection(index, f"duplicate key {record_key!r}"))
            continue
        seen.add(record_key)
        current = existing.get(record_key)
        if current is None:
            plan.creates.append((record_key, record))
            continue
        changed = _changed(record, current, compare_fields)
        if not changed:
            plan.unchanged += 1
        elif partial_updates:
            body: dict[str, Any] = {}
            for path, value in changed.items():
                set_path(body, path, value)
            plan.updates.append((record_key, body))
        else:
            plan.updates.append((record_key, record))
    if mirror:
        plan.deletes = [k for k in existing if k not in seen]
    return plan
