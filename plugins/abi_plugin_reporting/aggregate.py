"""Filtering, grouping and aggregating records: the arithmetic of a report.

:func:`aggregate` is a pure function over JSON records, so its rules are
tested against a plain oracle:

* a record that is not a JSON object is counted as ``invalid`` and left out;
* a record is kept when every filter expression is true for it; a filter
  that fails for a record (a missing key, a type error) counts as false and
  the record is counted in ``filter_errors``;
* records are grouped by the values of the ``group_by`` paths (missing:
  ``null``); without ``group_by`` there is one group;
* ``count`` counts a group's records; ``sum``, ``avg``, ``min`` and ``max``
  use the field's numbers (booleans, strings, ``null`` and missing values are
  ignored): ``sum`` of none is 0, the others ``null``; ``sum`` of integers is
  an integer, otherwise a float added exactly (``math.fsum``);
  ``count_distinct`` counts the distinct values present and not ``null``.
* rows are ordered by their group values (``null`` first, then booleans,
  numbers, strings, others), or by ``sort_by`` (``null`` values last,
  either order), then cut to ``limit``; ``totals`` are over every kept record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs
from abi_plugin_data_processing import Expression, ExpressionError, get_path

__all__ = ["AGGREGATIONS", "Aggregates", "Metric", "aggregate", "order_key"]

AGGREGATIONS = ("count", "sum", "avg", "min", "max", "count_distinct")


@attrs.define(kw_only=True)
class Metric:
    """``{"name": "revenue", "aggregation": "sum", "field": "amount"}``."""

    name: str
    aggregation: Literal["count", "sum", "avg", "min", "max", "count_distinct"]
    field: str | None = None


@attrs.define(kw_only=True)
class Aggregates:
    """The rows (one per group), the totals, and how many records went where."""

    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    matched: int
    filtered_out: int
    invalid: int
    filter_errors: int
    groups: int


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _compute(metric: Metric, records: Sequence[dict[str, Any]]) -> Any:
    if metric.aggregation == "count":
        return len(records)
    values = [get_path(r, metric.field or "")[1] for r in records]
    if metric.aggregation == "count_distinct":
        return len({_canonical(v) for v in values if v is not None})
    numbers = [v for v in values if _number(v)]
    if metric.aggregation == "sum":
        if all(isinstance(v, int) for v in numbers):
            return sum(numbers)
        return math.fsum(numbers)
    if not numbers:
        return None
    if metric.aggregation == "avg":
        return math.fsum(numbers) / len(numbers)
    return min(numbers) if metric.aggregation == "min" else max(numbers)


def order_key(value: Any) -> tuple[int, Any]:
    """A total order over JSON values: null, booleans, numbers, strings, then the rest."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    return (4, _canonical(value))


def _sorted(
    rows: list[dict[str, Any]], group_by: Sequence[str], sort_by: str | None, descending: bool
) -> list[dict[str, Any]]:
    rows = sorted(rows, key=lambda row: [order_key(row[f]) for f in group_by])
    if sort_by is None:
        return rows[::-1] if descending else rows
    present = [r for r in rows if r[sort_by] is not None]
    missing = [r for r in rows if r[sort_by] is None]
    present.sort(key=lambda row: order_key(row[sort_by]), reverse=descending)
    return present + missing


def aggregate(
    records: Sequence[Any],
    *,
    metrics: Sequence[Metric],
    group_by: Sequence[str] = (),
    filters: Sequence[Expression] = (),
    sort_by: str | None = None,
    descending: bool = False,
    limit: int | None = None,
) -> Aggregates:
    """Filter, group and aggregate ``records`` (see the module's rules)."""
    kept: list[dict[str, Any]] = []
    invalid = filter_errors = filtered_out = 0
    for record in records:
        if not isinstance(record, dict):
            invalid += 1
            continue
        passed = True
        for expression in filters:
            try:
                passed = bool(expression.evaluate({"record": record}))
            except ExpressionError:
                filter_errors += 1
                passed = False
            if not passed:
                break
        if passed:
            kept.append(record)
        else:
            filtered_out += 1
    groups: dict[str, tuple[list[Any], list[dict[str, Any]]]] = {}
    for record in kept:
        values = [get_path(record, path)[1] for path in group_by]
        groups.setdefault(_canonical(values), (values, []))[1].append(record)
    if not group_by:
        groups = {"[]": ([], kept)}
    rows = []
    for values, members in groups.values():
        row = dict(zip(group_by, values, strict=True))
        row.update({m.name: _compute(m, members) for m in metrics})
        rows.append(row)
    rows = _sorted(rows, group_by, sort_by, descending)
    totals = {m.name: _compute(m, kept) for m in metrics}
    return Aggregates(
        rows=rows[:limit] if limit is not None else rows,
        totals=totals,
        matched=len(kept),
        filtered_out=filtered_out,
        invalid=invalid,
        filter_errors=filter_errors,
        groups=len(rows),
    )
