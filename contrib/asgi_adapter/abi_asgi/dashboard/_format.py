"""What the templates show: times, durations, the step timeline, the overview's chart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from abi_engine.execution_reading import ExecutionCount
from abi_engine.ids import parse_time

__all__ = [
    "RANGES",
    "Bar",
    "Chart",
    "TimelineRow",
    "absolute",
    "build_chart",
    "duration",
    "in_zone",
    "pretty_json",
    "relative",
    "timeline",
]

#: Statuses in the order the chart stacks them, with their CSS class.
STATUS_ORDER = (
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "skipped",
    "running",
    "waiting",
    "paused",
    "queued",
)
#: Overview ranges: (label, span, bucket).
RANGES: dict[str, tuple[str, timedelta, timedelta]] = {
    "hour": ("Last hour", timedelta(hours=1), timedelta(minutes=5)),
    "day": ("Last day", timedelta(days=1), timedelta(hours=1)),
    "week": ("Last week", timedelta(days=7), timedelta(hours=6)),
}


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return parse_time(str(value))
    except ValueError:
        return None


def absolute(value: Any) -> str:
    """``2026-01-05 12:00:03 UTC`` (empty when there is no time)."""
    moment = _time(value)
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: Any) -> str:
    """RFC 3339 with ``Z`` (for ``<time datetime>`` and the viewer's own zone)."""
    moment = _time(value)
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def relative(value: Any, now: datetime | None = None) -> str:
    """``3 min ago``, ``in 2 h``, ``just now``."""
    moment = _time(value)
    if moment is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    ahead = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size:
            amount = int(seconds // size)
            return f"in {amount} {unit}" if ahead else f"{amount} {unit} ago"
    return "just now"  # pragma: no cover - the loop always returns


def in_zone(value: Any, zone: str) -> str:
    """The time in the IANA zone ``zone`` (``2026-01-05 13:00 CET``)."""
    moment = _time(value)
    if moment is None:
        return ""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return absolute(moment)
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def duration(ms: Any) -> str:
    """``850 ms``, ``2.4 s``, ``3 min 12 s``, ``1 h 5 min``."""
    if ms is None or isinstance(ms, bool) or not isinstance(ms, int | float):
        return ""
    if ms < 1000:
        return f"{int(ms)} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def pretty_json(value: Any) -> str:
    """Indented JSON (the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


# -- the step timeline -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class TimelineRow:
    """One step: its bar's left edge and width in percent of the execution's span."""

    step: Mapping[str, Any]
    left: float
    width: float
    drawn: bool
    waiting: bool


def timeline(execution: Mapping[str, Any], now: datetime | None = None) -> list[TimelineRow]:
    """The bars of an execution's steps, start and duration to scale.

    The span runs from the execution's start (or its first step's) to its end
    (or ``now`` while it runs). A step that has not started has no bar; one
    still running reaches the span's end; a step running while the execution
    waits is drawn as a wait.
    """
    now = now or datetime.now(UTC)
    steps: Sequence[Mapping[str, Any]] = execution.get("steps") or []
    starts = [t for t in (_time(s.get("started_at")) for s in steps) if t is not None]
    begin = _time(execution.get("started_at")) or (min(starts) if starts else None)
    end = _time(execution.get("completed_at")) or now
    rows: list[TimelineRow] = []
    if begin is None:
        return [TimelineRow(step=s, left=0, width=0, drawn=False, waiting=False) for s in steps]
    ends = [t for t in (_time(s.get("completed_at")) for s in steps) if t is not None]
    end = max([end, *ends])
    span = max((end - begin).total_seconds(), 0.001)
    waiting_execution = execution.get("status") == "waiting"
    for step in steps:
        start = _time(step.get("started_at"))
        if start is None:
            rows.append(TimelineRow(step=step, left=0, width=0, drawn=False, waiting=False))
            continue
        stop = _time(step.get("completed_at")) or end
        left = max(0.0, (start - begin).total_seconds() / span * 100)
        width = min(100.0, max(0.6, (stop - start).total_seconds() / span * 100))
        left = min(left, 100 - width)
        rows.append(
            TimelineRow(
                step=step,
                left=round(left, 3),
                width=round(width, 3),
                drawn=True,
                waiting=waiting_execution and step.get("status") == "running",
            )
        )
    return rows


# -- the overview's chart ---------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Bar:
    """One rectangle of the stacked chart (SVG user units)."""

    x: float
    y: float
    width: float
    height: float
    status: str
    count: int
    label: str


@attrs.frozen(kw_only=True)
class Chart:
    """The overview's stacked bars, their totals and the axis labels."""

    bars: list[Bar]
    totals: dict[str, int]
    peak: int
    ticks: list[tuple[float, str]]
    width: int = 720
    height: int = 200
    failure_rate: float | None = None


def build_chart(
    counts: Sequence[ExecutionCount], start: datetime, span: timedelta, bucket: timedelta
) -> Chart:
    """Stacked bars per bucket and status, scaled to the busiest bucket."""
    n = max(1, int(span / bucket))
    per: list[dict[str, int]] = [{} for _ in range(n)]
    totals: dict[str, int] = {}
    for c in counts:
        index = int((c.bucket_start - start) / bucket)
        if 0 <= index < n:
            per[index][c.status.value] = per[index].get(c.status.value, 0) + c.executions
        totals[c.status.value] = totals.get(c.status.value, 0) + c.executions
    peak = max([sum(b.values()) for b in per] + [1])
    width, height, gap = 720, 200, 2.0
    slot = width / n
    bars: list[Bar] = []
    for i, bucket_counts in enumerate(per):
        y = float(height)
        for status in STATUS_ORDER:
            count = bucket_counts.get(status, 0)
            if not count:
                continue
            h = count / peak * (height - 10)
            y -= h
            at = start + i * bucket
            bars.append(
                Bar(
                    x=round(i * slot + gap / 2, 2),
                    y=round(y, 2),
                    width=round(max(slot - gap, 1), 2),
                    height=round(h, 2),
                    status=status,
                    count=count,
                    label=f"{count} {status.replace('_', ' ')} from {absolute(at)}",
                )
            )
    step = max(1, n // 6)
    ticks = [(round(i * slot, 2), _tick(start + i * bucket, span)) for i in range(0, n, step)]
    failed = totals.get("failed", 0) + totals.get("timed_out", 0)
    ended = ("completed", "cancelled", "skipped")
    finished = failed + sum(totals.get(status, 0) for status in ended)
    return Chart(
        bars=bars,
        totals=totals,
        peak=peak,
        ticks=ticks,
        width=width,
        height=height,
        failure_rate=(failed / finished * 100) if finished else None,
    )


def _tick(moment: datetime, span: timedelta) -> str:
    return moment.strftime("%H:%M" if span <= timedelta(days=1) else "%a %H:%M")
