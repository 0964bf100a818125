"""Report mode of ``feedback_analysis``: a digest of the feedback a workflow analysed lately.

An execution without ``feedback_text`` (nor ``feedback_id`` / ``customer_id``,
which name one piece of feedback), such as the seed's nightly schedule
``{"source": "daily_report", "include_recommendations": true}``, reads the
completed executions of its own workflow that analysed a text in its period
and sums them up: counts by sentiment, the average ``sentiment_score``, the
topics most talked about, the most frequent negative topics and the
recommendations that came up most.

The period ends when the report was requested (its execution's
``created_at``) and starts when the previous report of the same series was
requested (same ``source``, neither ``since`` nor ``period_hours``; however
old, among the newest :data:`MAX_REPORT_EXECUTIONS`), or 24 hours before
without one; ``since`` or ``period_hours`` set the start instead. A feedback execution belongs to the period when it *completed* in
it (``from <= completed_at < to``), so consecutive reports neither miss nor
repeat one. Executions are read through the engine's ``Host`` one page at a
time, newest first; at most :data:`MAX_REPORT_EXECUTIONS` are read in detail.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from abi_engine import Host
from abi_engine.errors import InvalidParameters

__all__ = [
    "DEFAULT_PERIOD_HOURS",
    "LOOKBACK",
    "MAX_PERIOD_HOURS",
    "MAX_REPORT_EXECUTIONS",
    "ReportParameters",
    "check_report_parameters",
    "collect",
    "is_report_request",
    "recommend_report",
    "summarize",
]

#: The most executions a report reads in detail (``Host.get_execution``); when
#: there are more in the period the newest are counted and ``truncated`` is true.
MAX_REPORT_EXECUTIONS = 10_000
#: The period of a series' first report (no earlier report found), in hours.
DEFAULT_PERIOD_HOURS = 24
#: The longest ``period_hours`` accepted (a leap year).
MAX_PERIOD_HOURS = 24 * 366
#: Feedback requested up to this long before the period starts is still counted
#: when it completed inside the period.
LOOKBACK = timedelta(hours=1)
#: Lengths of the ranked lists of the result.
TOP_TOPICS = 10
TOP_NEGATIVE_TOPICS = 5
TOP_RECOMMENDATIONS = 10
#: Distinct topics and recommendation texts tallied at most (the rest are not counted).
MAX_TRACKED = 1_000

_PAGE_SIZE = 100
_LABELS = ("positive", "negative", "mixed", "neutral")
_UNKNOWN = "unknown"
_PER_FEEDBACK = ("feedback_text", "feedback_id", "customer_id")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


@attrs.define(kw_only=True)
class ReportParameters:
    """A report execution's parameters (no ``feedback_text``)."""

    source: str | None = None
    include_recommendations: bool | None = None
    since: str | None = None
    period_hours: float | None = None
    #: ``true`` asks for a report explicitly (the seed's schedule sends it).
    generate_report: bool | None = None


def is_report_request(parameters: Mapping[str, Any]) -> bool:
    """Whether ``parameters`` ask for a report: none of the per-feedback fields is given."""
    return not any(key in parameters for key in _PER_FEEDBACK)


def _invalid(field: str, message: str) -> InvalidParameters:
    return InvalidParameters(
        f"Invalid value for 'parameters.{field}': {message}",
        {"field": f"parameters.{field}"},
    )


def parse_since(value: str) -> datetime:
    """``since`` as an aware UTC time; ``ValueError`` when it is not RFC 3339 with a zone."""
    if not _RFC3339.match(value):
        raise ValueError(value)
    text = value.replace("z", "Z").replace("t", "T")
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.astimezone(UTC)


def check_report_parameters(params: ReportParameters, now: datetime | None = None) -> None:
    """``since``: RFC 3339, not in the future; ``period_hours``: above 0, at most a year; not both."""
    if params.since is not None:
        try:
            since = parse_since(params.since)
        except ValueError:
            raise _invalid(
                "since", "must be an RFC 3339 time with a zone, e.g. 2023-05-01T00:00:00Z"
            ) from None
        if since > (now or datetime.now(UTC)):
            raise _invalid("since", "must not be in the future")
    if params.period_hours is not None:
        hours = params.period_hours
        if not math.isfinite(hours) or not 0 < hours <= MAX_PERIOD_HOURS:
            raise _invalid(
                "period_hours", f"must be more than 0 and at most {MAX_PERIOD_HOURS} hours"
            )
        if params.since is not None:
            raise _invalid("period_hours", "give either 'since' or 'period_hours', not both")


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z``; milliseconds only when not zero (as the engine shows times)."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    millis = value.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@attrs.define
class _Tally:
    """What a report keeps of the executions it reads: counts only."""

    track_recommendations: bool
    feedback: int = 0
    sentiments: dict[str, int] = attrs.Factory(lambda: dict.fromkeys((*_LABELS, _UNKNOWN), 0))
    score_sum: float = 0.0
    scored: int = 0
    topics: dict[str, dict[str, int]] = attrs.Factory(dict)
    recommendations: dict[str, int] = attrs.Factory(dict)

    def add(self, result: Any) -> None:
        """Count one feedback execution's result (the analysis result's shape)."""
        if not isinstance(result, Mapping):
            result = {}
        self.feedback += 1
        label = result.get("sentiment")
        self.sentiments[label if label in _LABELS else _UNKNOWN] += 1
        score = result.get("sentiment_score")
        if isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score):
            self.score_sum += float(score)
            self.scored += 1
        seen: set[str] = set()
        for component in _list(result.get("feedback_components")):
            if not isinstance(component, Mapping):
                continue
            topic = component.get("topic")
            if not isinstance(topic, str) or topic in seen:
                continue
            seen.add(topic)
            counts = self.topics.get(topic)
            if counts is None:
                if len(self.topics) >= MAX_TRACKED:
                    continue
                counts = self.topics[topic] = dict.fromkeys(("count", *_LABELS), 0)
            counts["count"] += 1
            sentiment = component.get("sentiment")
            if sentiment in _LABELS:
                counts[sentiment] += 1
        if self.track_recommendations:
            texts = dict.fromkeys(
                t for t in _list(result.get("recommendations")) if isinstance(t, str)
            )
            for text in texts:
                if text in self.recommendations:
                    self.recommendations[text] += 1
                elif len(self.recommendations) < MAX_TRACKED:
                    self.recommendations[text] = 1


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _period_start(params: ReportParameters, to: datetime) -> datetime | None:
    if params.since is not None:
        return min(parse_since(params.since), to)
    if params.period_hours is not None:
        return to - timedelta(hours=params.period_hours)
    return None


def _chains_from(parameters: Mapping[str, Any], source: str | None) -> bool:
    """Whether a report with ``parameters`` starts the period of a report of ``source``.

    Only a report of the same ``source`` without an explicit period does: an
    ad-hoc report (``since`` / ``period_hours``) or another series' report
    never cuts this series' period.
    """
    return (
        parameters.get("source") == source
        and parameters.get("since") is None
        and parameters.get("period_hours") is None
    )


async def collect(
    host: Host,
    *,
    workflow_id: str,
    execution_id: str,
    params: ReportParameters,
    track_recommendations: bool,
) -> dict[str, Any]:
    """Read the period's feedback executions of ``workflow_id`` and tally them.

    Pages through ``host.list_executions`` (completed, newest first). With
    ``since`` / ``period_hours`` it reads in detail only those that completed
    in the period. Without, the period starts at the previous report of the
    same ``source`` without an explicit period, however old: every execution
    is read until it is met (newest first, so all feedback read before it
    completed after it was requested), at most
    :data:`MAX_REPORT_EXECUTIONS`; when there is none among them, the period
    is the last :data:`DEFAULT_PERIOD_HOURS` hours and ``period_basis`` says
    why. Returns the tally as JSON: the checkpoint :func:`summarize` and
    :func:`recommend_report` build on.
    """
    me = await host.get_execution(execution_id)
    to = _as_utc(me.created_at or datetime.now(UTC))
    explicit = _period_start(params, to)
    scan = _Scan(
        execution_id=execution_id,
        source=params.source,
        to=to,
        floor=explicit if explicit is not None else to - timedelta(hours=DEFAULT_PERIOD_HOURS),
        searching=explicit is None,
        basis="since" if params.since is not None else "period_hours",
        tally=_Tally(track_recommendations=track_recommendations),
        day=_Tally(track_recommendations=track_recommendations),
    )
    # Fixed while paging; unbounded while searching (the previous report may be old).
    list_start = scan.floor - LOOKBACK if explicit is not None else None
    page = 1
    while not scan.done:
        listing = await host.list_executions(
            workflow_id=workflow_id,
            status="completed",
            start_date=list_start,
            end_date=to,
            page=page,
            page_size=_PAGE_SIZE,
        )
        await scan.read_page(host, listing.items)
        if len(listing.items) < _PAGE_SIZE:
            break
        page += 1
    return scan.result()


@attrs.define(kw_only=True)
class _Scan:
    """Where :func:`collect` stands while it pages newest first.

    ``searching``: the period's start is the previous report of the series,
    not met yet; meanwhile ``day`` tallies the last :data:`DEFAULT_PERIOD_HOURS`
    (``floor`` until then), the fallback when none is met.
    """

    execution_id: str
    source: str | None
    to: datetime
    floor: datetime
    searching: bool
    basis: str
    tally: _Tally
    day: _Tally
    previous: str | None = None
    read: int = 0
    truncated: bool = False
    done: bool = False
    #: Ids of the last two pages: pages may shift while executions complete.
    recent: list[set[str]] = attrs.Factory(lambda: [set(), set()])

    async def read_page(self, host: Host, items: Any) -> None:
        ids: set[str] = set()
        for summary in items:
            ids.add(summary.execution_id)
            completed = self._wanted(summary)
            if self.done:
                break
            if completed is not None:
                execution = await host.get_execution(summary.execution_id)
                self.read += 1
                self._count(summary.execution_id, execution, completed)
        self.recent = [self.recent[1], ids]

    def _wanted(self, summary: Any) -> datetime | None:
        """When the listed execution completed, if it is to be read (``done`` set when
        the scan ends before it)."""
        eid = summary.execution_id
        if eid == self.execution_id or eid in self.recent[0] or eid in self.recent[1]:
            return None
        started = _as_utc(summary.started_at) if summary.started_at is not None else None
        if not self.searching and started is not None and started < self.floor - LOOKBACK:
            self.done = True  # requested earlier still, and so is everything after it
            return None
        if summary.completed_at is None:
            return None
        completed = _as_utc(summary.completed_at)
        if not self.searching and not self.floor <= completed < self.to:
            return None
        if self.read >= MAX_REPORT_EXECUTIONS:
            # While searching, the fallback day misses some only if this one is recent.
            self.truncated = (
                not self.searching or started is None or started >= self.floor - LOOKBACK
            )
            if self.searching:
                self.basis = "search_limit"
            self.done = True
            return None
        return completed

    def _count(self, eid: str, execution: Any, completed: datetime) -> None:
        parameters = execution.parameters or {}
        if is_report_request(parameters):
            created = execution.created_at
            if (
                self.searching
                and created is not None
                and _as_utc(created) < self.to
                and _chains_from(parameters, self.source)
            ):
                # The newest earlier report of the series: the period starts when
                # it was requested, where its own period ended.
                self.previous = eid
                self.floor = _as_utc(created)
                self.searching = False
                self.basis = "previous_report"
            return
        if not isinstance(parameters.get("feedback_text"), str) or completed >= self.to:
            return
        if self.searching and completed >= self.floor:  # floor: the fallback day's start
            self.day.add(execution.result)
        if self.searching or completed >= self.floor:
            self.tally.add(execution.result)

    def result(self) -> dict[str, Any]:
        tally, basis = self.tally, self.basis
        if self.searching:  # no previous report: the last DEFAULT_PERIOD_HOURS
            tally = self.day
            if basis != "search_limit":
                basis = "no_previous_report"
        return {
            "source": self.source,
            "period": {"from": format_time(min(self.floor, self.to)), "to": format_time(self.to)},
            "previous_report": self.previous,
            "period_basis": basis,
            "feedback_analysed": tally.feedback,
            "sentiments": tally.sentiments,
            "score_sum": tally.score_sum,
            "scored": tally.scored,
            "topics": tally.topics,
            "recommendations": tally.recommendations,
            "executions_read": self.read,
            "truncated": self.truncated,
        }


def _topic_rows(topics: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    return [{"topic": name, **counts} for name, counts in topics.items()]


def summarize(collected: Mapping[str, Any]) -> dict[str, Any]:
    """The report's result from :func:`collect`'s tally, with ``recommendations: []``."""
    rows = _topic_rows(collected["topics"])
    top = sorted(rows, key=lambda r: (-r["count"], -r["negative"], r["topic"]))[:TOP_TOPICS]
    negative = sorted(
        (r for r in rows if r["negative"]),
        key=lambda r: (-r["negative"], -r["count"], r["topic"]),
    )[:TOP_NEGATIVE_TOPICS]
    scored = collected["scored"]
    average = round(collected["score_sum"] / scored, 4) if scored else None
    return {
        "source": collected["source"],
        "period": dict(collected["period"]),
        "previous_report": collected["previous_report"],
        "period_basis": collected.get("period_basis"),
        "feedback_analysed": collected["feedback_analysed"],
        "sentiments": dict(collected["sentiments"]),
        "average_sentiment_score": average,
        "top_topics": top,
        "negative_topics": [{"topic": r["topic"], "count": r["negative"]} for r in negative],
        "recommendations": [],
        "executions_read": collected["executions_read"],
        "truncated": collected["truncated"],
    }


def recommend_report(summary: Mapping[str, Any], collected: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` with the recommendations that came up most, most frequent first.

    Each distinct text counts once per execution; ties keep the order in which
    they were first met (newest feedback first).
    """
    counts: Mapping[str, int] = collected["recommendations"]
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:TOP_RECOMMENDATIONS]
    result = dict(summary)
    result["recommendations"] = [{"text": text, "count": count} for text, count in ranked]
    return result
