"""Aggregation and rendering rules, checked against a plain oracle and by parsing the output."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pytest
from abi_plugin_data_processing import Expression
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_plugin_reporting import Metric, aggregate, order_key, render

GROUPS = ["g", "h"]
value = (
    st.none()
    | st.booleans()
    | st.integers(-50, 50)
    | st.floats(-1e6, 1e6)
    | st.sampled_from(["x", "y"])
)


@st.composite
def records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.integers() | st.text(max_size=2))  # not an object
    record: dict[str, Any] = {}
    for name, options in (("g", ["a", "b", None]), ("h", [1, 2, True])):
        if draw(st.booleans()):
            record[name] = draw(st.sampled_from(options))
    if draw(st.integers(0, 4)) > 0:
        record["v"] = draw(value)
    return record


METRICS = [
    Metric(name="n", aggregation="count"),
    Metric(name="total", aggregation="sum", field="v"),
    Metric(name="mean", aggregation="avg", field="v"),
    Metric(name="low", aggregation="min", field="v"),
    Metric(name="high", aggregation="max", field="v"),
    Metric(name="kinds", aggregation="count_distinct", field="v"),
]


def is_number(x: Any) -> bool:
    return type(x) in (int, float)


def oracle_metrics(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The documented metrics over one group's records, written out plainly."""
    numbers = [r["v"] for r in members if "v" in r and is_number(r["v"])]
    distinct = {json.dumps(r["v"]) for r in members if r.get("v") is not None}  # JSON values
    return {
        "n": len(members),
        "total": sum(numbers) if numbers else 0,
        "mean": sum(numbers) / len(numbers) if numbers else None,
        "low": min(numbers) if numbers else None,
        "high": max(numbers) if numbers else None,
        "kinds": len(distinct),
    }


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def same_row(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    return actual.keys() == expected.keys() and all(same(actual[k], expected[k]) for k in expected)


@settings(max_examples=200, deadline=None)
@given(
    batch=st.lists(records(), max_size=25),
    group_by=st.sampled_from([[], ["g"], ["h"], ["g", "h"]]),
    filtered=st.booleans(),
)
def test_aggregates_match_the_oracle(batch: list[Any], group_by: list[str], filtered: bool) -> None:
    """Rows, totals and counts equal a plain loop's, with or without a filter."""
    filters = [Expression("record['v'] > 0")] if filtered else []
    found = aggregate(batch, metrics=METRICS, group_by=group_by, filters=filters)
    objects = [r for r in batch if isinstance(r, dict)]
    kept, errors = [], 0
    for r in objects:
        if not filtered:
            kept.append(r)
        elif "v" not in r or (not is_number(r["v"]) and r["v"] is not True and r["v"] is not False):
            errors += 1  # a missing key or a comparison of text or null with a number
        elif r["v"] > 0:
            kept.append(r)
    assert found.invalid == len(batch) - len(objects)
    assert found.matched == len(kept)
    assert found.filter_errors == errors
    assert found.filtered_out == len(objects) - len(kept)
    assert same_row(found.totals, oracle_metrics(kept))
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in kept:
        groups.setdefault(tuple(repr(r.get(f)) for f in group_by), []).append(r)
    if not group_by:
        groups = {(): kept}
    assert found.groups == len(groups) == len(found.rows)
    for row in found.rows:
        members = groups[tuple(repr(row[f]) for f in group_by)]
        assert same_row({k: row[k] for k in oracle_metrics(members)}, oracle_metrics(members))
    keys = [[order_key(row[f]) for f in group_by] for row in found.rows]
    assert keys == sorted(keys)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(records(), max_size=25), descending=st.booleans(), limit=st.integers(1, 5))
def test_sort_by_a_metric_and_limit(batch: list[Any], descending: bool, limit: int) -> None:
    """Rows sorted by a metric (nulls last), cut to limit; totals still count every record."""
    everything = aggregate(batch, metrics=METRICS, group_by=["g"])
    found = aggregate(
        batch, metrics=METRICS, group_by=["g"], sort_by="high", descending=descending, limit=limit
    )
    values = [row["high"] for row in found.rows]
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=descending)
    assert values == present + [None] * (len(values) - len(present))
    assert len(found.rows) == min(limit, everything.groups)
    assert found.totals == everything.totals


def test_integer_sums_stay_integers() -> None:
    """A sum of integers is an integer; with a float it is a float added exactly."""
    metric = [Metric(name="s", aggregation="sum", field="v")]
    assert aggregate([{"v": 2}, {"v": 3}], metrics=metric).totals == {"s": 5}
    floats = [{"v": 0.1}] * 10
    assert aggregate(floats, metrics=metric).totals == {"s": 1.0}


def report(rows: list[dict[str, Any]], group_by: list[str], columns: list[str]) -> dict[str, Any]:
    return {
        "title": "T <b>",
        "generated_at": "2024-05-01T00:00:00Z",
        "summary": {"records": len(rows), "matched": len(rows)},
        "group_by": group_by,
        "columns": columns,
        "rows": rows,
        "totals": {"n": len(rows)},
    }


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.text(max_size=8), min_size=1, max_size=6))
def test_csv_cells_read_back_and_formulas_are_defused(names: list[str]) -> None:
    """Any text reads back from the CSV unchanged, except a formula-like start gets a quote."""
    rows = [{"name": name, "n": i} for i, name in enumerate(names)]
    text = render(report(rows, ["name"], ["name", "n"]), "csv")
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == ["name", "n"]
    for i, (name, line) in enumerate(zip(names, parsed[1:], strict=True)):
        expected = f"'{name}" if name.startswith(("=", "+", "-", "@", "\t", "\r")) else name
        assert line == [expected, str(i)]


def test_html_and_markdown_escape_record_values() -> None:
    """Markup in values and the title is escaped; pipes cannot break a Markdown table."""
    rows = [{"name": "<script>alert(1)</script>", "n": 1}, {"name": "a|b\nc", "n": 2}]
    page = render(report(rows, ["name"], ["name", "n"]), "html")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>T &lt;b&gt;</title>" in page
    table = render(report(rows, ["name"], ["name", "n"]), "markdown")
    assert "| a\\|b c | 2 |" in table
    assert table.splitlines()[-1] == "| Total | 2 |"
    assert "<script>" not in table  # raw HTML would pass through a Markdown renderer
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.23456789, "1.2346"), (2.0, "2"), (-0.00001, "0"), (True, "true"), ([1], "[1]")],
)
def test_table_numbers_are_short(value: Any, shown: str) -> None:
    """Markdown shows floats with at most four decimals, booleans and lists as JSON."""
    table = render(report([{"x": value, "n": 1}], ["x"], ["x", "n"]), "markdown")
    assert f"| {shown} | 1 |" in table
