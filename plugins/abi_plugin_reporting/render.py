"""Rendering a report: JSON, CSV, Markdown or HTML text.

Every value a record supplied is escaped for its format: HTML entities,
Markdown table pipes, line breaks and raw HTML (as entities), and CSV cells that a spreadsheet
would run as a formula (text starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return) get a leading ``'``.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CONTENT_TYPES", "render"]

CONTENT_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "markdown": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _text(value: Any, *, decimals: bool) -> str:
    """A value as table text; floats with at most 4 decimals when ``decimals``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and decimals:
        shown = f"{value:.4f}".rstrip("0").rstrip(".")
        return "0" if shown == "-0" else shown
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value, sort_keys=True)


def _csv_cell(value: Any) -> str:
    text = _text(value, decimals=False)
    return f"'{text}" if isinstance(value, str) and text.startswith(_FORMULA) else text


def _md_cell(value: Any) -> str:
    # Markdown passes raw HTML through to whatever renders it: write it as entities.
    text = html.escape(_text(value, decimals=True), quote=False)
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.split()) or " "


def _table_rows(report: Mapping[str, Any]) -> list[list[Any]]:
    """The rows to show, with a totals row when there are groups."""
    columns = report["columns"]
    rows = [[row.get(c) for c in columns] for row in report["rows"]]
    group_by = report["group_by"]
    if group_by:
        label: list[Any] = ["Total", *([None] * (len(group_by) - 1))]
        rows.append(label + [report["totals"].get(c) for c in columns[len(group_by) :]])
    return rows


def _csv(report: Mapping[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)  # RFC 4180: CRLF lines, fields with CR or LF quoted
    writer.writerow([_csv_cell(c) for c in report["columns"]])
    for row in report["rows"]:
        writer.writerow([_csv_cell(row.get(c)) for c in report["columns"]])
    return out.getvalue()


def _caption(report: Mapping[str, Any]) -> str:
    summary = report["summary"]
    return (
        f"Generated {report['generated_at']} from {summary['records']} records"
        f" ({summary['matched']} matched the filters)."
    )


def _markdown(report: Mapping[str, Any]) -> str:
    columns = report["columns"]
    lines = [
        f"# {_md_cell(report['title'])}",
        "",
        _caption(report),
        "",
        "| " + " | ".join(_md_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in _table_rows(report):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _html(report: Mapping[str, Any]) -> str:
    def cell(tag: str, value: Any) -> str:
        return f"<{tag}>{html.escape(_text(value, decimals=True))}</{tag}>"

    title = html.escape(str(report["title"]))
    head = "".join(cell("th", c) for c in report["columns"])
    body = "".join(
        "<tr>" + "".join(cell("td", v) for v in row) + "</tr>\n" for row in _table_rows(report)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n"
        f"<p>{html.escape(_caption(report))}</p>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
        "</body>\n</html>\n"
    )


def render(report: Mapping[str, Any], format: str) -> str:
    """The report as text in ``format`` (``json``, ``csv``, ``markdown`` or ``html``).

    ``report`` has ``title``, ``generated_at``, ``summary``, ``group_by``,
    ``columns`` (group fields, then metric names), ``rows`` and ``totals``.
    """
    if format == "json":
        return json.dumps(report, indent=2, sort_keys=False) + "\n"
    if format == "csv":
        return _csv(report)
    if format == "markdown":
        return _markdown(report)
    if format == "html":
        return _html(report)
    raise ValueError(f"unknown format {format!r}")


def columns_of(group_by: Sequence[str], metric_names: Sequence[str]) -> list[str]:
    """The report's columns: the group fields, then the metrics."""
    return [*group_by, *metric_names]
