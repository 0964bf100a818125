"""Report mode: the seed's nightly schedule digests the feedback the workflow analysed lately."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import InvalidParameters, ParameterValidationError
from abi_plugin_feedback import report

from .conftest import SEED_CONFIGURATION

pytestmark = pytest.mark.anyio

STEPS = ["extract_sentiment", "identify_topics", "generate_recommendations"]
SEED_SCHEDULE = {
    "name": "Daily Feedback Analysis",
    "description": "Runs feedback analysis every night at midnight",
    "schedule_type": "cron",
    "cron_expression": "0 0 * * *",
    "parameters": {"source": "daily_report", "include_recommendations": True},
    "enabled": True,
    "timezone": "UTC",
}
REPORT = SEED_SCHEDULE["parameters"]
# Known inputs (default service, threshold 0.7): sentiment, score, components.
LATE_RUDE = "The delivery was late and the courier was rude."  # neg 0.8062: delivery-, support-
QUICK = "Delivery was quick and great."  # pos 0.8635: delivery+
LATE_REFUND = "The delivery was late. The refund never arrived!"  # neg 0.7929: delivery-, billing-
LOVE = "I love the product."  # pos 0.8185: product_overall+
DELIVERY_FIX = (
    "Check the order's delivery with the carrier and offer a remedy for the delay or damage"
)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Engine]:
    """A running engine on a fresh SQLite file."""
    eng = Engine(tmp_path / "abi.db")
    try:
        async with eng:
            yield eng
    finally:
        eng.close()


async def seed_workflow(engine: Engine) -> str:
    """The seed's feedback workflow, active."""
    workflow = await engine.workflows.create(
        {
            "name": "Customer Feedback Analysis",
            "type": "feedback_analysis",
            "configuration": {**SEED_CONFIGURATION, "generate_recommendations": True},
        }
    )
    await engine.workflows.activate(workflow.id)
    return workflow.id


async def analyse(engine: Engine, workflow_id: str, *texts: str) -> None:
    """Execute one feedback analysis per text, each completing before the next."""
    for text in texts:
        execution = await engine.executions.execute(
            workflow_id, {"feedback_text": text, "source": "email"}, timeout_seconds=30
        )
        assert execution.status is ExecutionStatus.COMPLETED
    await anyio.sleep(0.003)  # periods are to the millisecond


async def run_report(engine: Engine, workflow_id: str, **parameters: Any) -> Any:
    """Execute a report with the seed's schedule parameters (and ``parameters``)."""
    execution = await engine.executions.execute(
        workflow_id, {**REPORT, **parameters}, timeout_seconds=30
    )
    await anyio.sleep(0.003)
    return execution


def at(text: str) -> datetime:
    """An RFC 3339 time of a result."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_seed_schedule_parameters_give_a_digest(running: Engine) -> None:
    """The seed's schedule body, executed: counts, average, topics, ranked recommendations."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE, QUICK, LATE_REFUND, LOVE)
    execution = await run_report(running, workflow_id)
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        (name, StepStatus.COMPLETED) for name in STEPS
    ]
    result = execution.result
    assert result["source"] == "daily_report"
    assert result["feedback_analysed"] == 4
    assert result["sentiments"] == {
        "positive": 2,
        "negative": 2,
        "mixed": 0,
        "neutral": 0,
        "unknown": 0,
    }
    assert result["average_sentiment_score"] == pytest.approx(
        (0.8062 + 0.8635 + 0.7929 + 0.8185) / 4, abs=1e-4
    )
    assert result["top_topics"] == [
        {"topic": "delivery", "count": 3, "positive": 1, "negative": 2, "mixed": 0, "neutral": 0},
        {"topic": "billing", "count": 1, "positive": 0, "negative": 1, "mixed": 0, "neutral": 0},
        {"topic": "support", "count": 1, "positive": 0, "negative": 1, "mixed": 0, "neutral": 0},
        {
            "topic": "product_overall",
            "count": 1,
            "positive": 1,
            "negative": 0,
            "mixed": 0,
            "neutral": 0,
        },
    ]
    assert result["negative_topics"] == [
        {"topic": "delivery", "count": 2},
        {"topic": "billing", "count": 1},
        {"topic": "support", "count": 1},
    ]
    recommendations = result["recommendations"]
    assert recommendations[0] == {"text": DELIVERY_FIX, "count": 2}
    assert len(recommendations) == 5
    assert all(r["count"] == 1 for r in recommendations[1:])
    assert len({r["text"] for r in recommendations}) == 5
    assert result["previous_report"] is None
    assert result["period_basis"] == "no_previous_report"
    assert at(result["period"]["to"]) - at(result["period"]["from"]) == timedelta(hours=24)
    assert (result["executions_read"], result["truncated"]) == (4, False)
    assert (await running.executions.get(execution.execution_id)).result == result


async def test_seed_schedule_fires_and_completes(running: Engine) -> None:
    """The seed's schedule, fired at its due time: history 'fired', the report completed."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE, QUICK)
    schedule = await running.schedules.create(workflow_id, SEED_SCHEDULE)
    assert schedule.next_execution is not None
    await running.scheduler.tick(schedule.next_execution)
    history = await running.schedules.history(schedule.id)
    [entry] = history.items
    assert entry.outcome == "fired"
    assert entry.execution_id is not None
    execution = await running.executions.wait(entry.execution_id, 30)
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.parameters == SEED_SCHEDULE["parameters"]
    assert execution.result["feedback_analysed"] == 2
    assert execution.result["source"] == "daily_report"
    assert execution.result["period"]["to"] == report.format_time(schedule.next_execution)
    fetched = await running.schedules.get(schedule.id)
    assert fetched.last_execution is not None
    assert fetched.last_execution.status is ExecutionStatus.COMPLETED


async def test_period_starts_at_the_previous_report(running: Engine) -> None:
    """A second report counts only what completed since the first; reports are never counted."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE, QUICK)
    first = await run_report(running, workflow_id)
    assert first.result["feedback_analysed"] == 2
    await analyse(running, workflow_id, LOVE)
    second = await run_report(running, workflow_id)
    result = second.result
    assert result["previous_report"] == first.execution_id
    assert result["period"]["from"] == first.result["period"]["to"]
    assert at(result["period"]["from"]) == first.created_at
    assert result["feedback_analysed"] == 1
    assert result["sentiments"]["positive"] == 1
    assert [t["topic"] for t in result["top_topics"]] == ["product_overall"]
    assert result["negative_topics"] == []


class FakeExecutions:
    """``engine.executions`` over fixed executions (times the engine would not let a test set)."""

    def __init__(self, *executions: SimpleNamespace) -> None:
        self.executions = {e.execution_id: e for e in executions}

    async def get(self, execution_id: str) -> SimpleNamespace:
        return self.executions[execution_id]

    async def list(self, **query: Any) -> SimpleNamespace:
        start, end = query["start_date"], query["end_date"]
        items = sorted(
            (
                e
                for e in self.executions.values()
                if e.completed_at is not None
                and (start is None or start <= e.created_at)
                and e.created_at <= end
            ),
            key=lambda e: e.created_at,
            reverse=True,
        )
        size = query["page_size"]
        return SimpleNamespace(items=items[(query["page"] - 1) * size : query["page"] * size])


def fake(eid: str, created: datetime, parameters: dict[str, Any]) -> SimpleNamespace:
    """A completed execution, one second long."""
    return SimpleNamespace(
        execution_id=eid,
        created_at=created,
        started_at=created,
        completed_at=created + timedelta(seconds=1),
        parameters=parameters,
        result={"sentiment": "positive"},
    )


async def test_previous_report_days_old_still_starts_the_period() -> None:
    """A weekly report (or a missed nightly run): everything since the previous one is counted."""
    now = datetime(2023, 5, 8, tzinfo=UTC)
    weekly = {"source": "weekly_review"}
    executions = FakeExecutions(
        fake("rep_now", now, weekly),
        fake("fb_recent", now - timedelta(hours=2), {"feedback_text": "a"}),
        fake("adhoc", now - timedelta(days=2), {"source": "weekly_review", "period_hours": 1}),
        fake("fb_3days", now - timedelta(days=3), {"feedback_text": "b"}),
        fake("rep_prev", now - timedelta(days=7), weekly),
        fake("fb_8days", now - timedelta(days=8), {"feedback_text": "c"}),
    )
    result = await report.collect(
        # The host's two read-only queries the report uses, over the fake executions.
        SimpleNamespace(get_execution=executions.get, list_executions=executions.list),  # type: ignore[arg-type]
        workflow_id="w",
        execution_id="rep_now",
        params=report.ReportParameters(source="weekly_review"),
        track_recommendations=False,
    )
    assert result["previous_report"] == "rep_prev"
    assert result["period_basis"] == "previous_report"
    assert result["period"] == {"from": "2023-05-01T00:00:00Z", "to": "2023-05-08T00:00:00Z"}
    assert result["feedback_analysed"] == 2  # 2 hours and 3 days old; not 8 days old
    assert result["truncated"] is False


async def test_ad_hoc_report_does_not_cut_the_nightly_period(running: Engine) -> None:
    """Reports run by hand (``{}``, or with since / period_hours) are not a nightly's previous."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE)
    first = await run_report(running, workflow_id)
    await analyse(running, workflow_id, QUICK)
    by_hand = await running.executions.execute(workflow_id, {}, timeout_seconds=30)
    assert by_hand.result["feedback_analysed"] == 2  # its own first report: the last 24 h
    await run_report(running, workflow_id, period_hours=1)
    await analyse(running, workflow_id, LOVE)
    second = await run_report(running, workflow_id)
    assert second.result["previous_report"] == first.execution_id
    assert second.result["period"]["from"] == first.result["period"]["to"]
    assert second.result["feedback_analysed"] == 2  # QUICK and LOVE


async def test_sources_chain_separately(running: Engine) -> None:
    """A daily and a weekly series on one workflow: each period starts at its own last report."""
    workflow_id = await seed_workflow(running)
    weekly = await run_report(running, workflow_id, source="weekly_review")
    await analyse(running, workflow_id, LATE_RUDE)
    daily = await run_report(running, workflow_id)
    await analyse(running, workflow_id, QUICK)
    weekly_next = await run_report(running, workflow_id, source="weekly_review")
    daily_next = await run_report(running, workflow_id)
    assert weekly_next.result["previous_report"] == weekly.execution_id
    assert weekly_next.result["feedback_analysed"] == 2
    assert daily_next.result["previous_report"] == daily.execution_id
    assert daily_next.result["feedback_analysed"] == 1


async def test_since_and_period_hours_override_the_period(running: Engine) -> None:
    """since excludes older feedback; period_hours reaches back past an earlier report."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE)
    since = datetime.now(UTC)
    await anyio.sleep(0.003)
    await analyse(running, workflow_id, QUICK, LOVE)
    recent = await run_report(running, workflow_id, since=report.format_time(since))
    assert recent.result["feedback_analysed"] == 2
    assert recent.result["sentiments"]["negative"] == 0
    assert recent.result["previous_report"] is None
    assert at(recent.result["period"]["from"]) == since.replace(
        microsecond=since.microsecond // 1000 * 1000
    )
    hours = await run_report(running, workflow_id, period_hours=1)
    assert hours.result["feedback_analysed"] == 3
    assert at(hours.result["period"]["to"]) - at(hours.result["period"]["from"]) == timedelta(
        hours=1
    )


async def test_empty_period_completes_with_zero_counts(running: Engine) -> None:
    """No feedback in the period (only another workflow's): zeros and empty lists, completed."""
    workflow_id = await seed_workflow(running)
    other = await seed_workflow(running)
    await analyse(running, other, LATE_RUDE)
    execution = await run_report(running, workflow_id)
    assert execution.status is ExecutionStatus.COMPLETED
    result = execution.result
    assert result["feedback_analysed"] == 0
    assert set(result["sentiments"].values()) == {0}
    assert result["average_sentiment_score"] is None
    assert (result["top_topics"], result["negative_topics"], result["recommendations"]) == (
        [],
        [],
        [],
    )


async def test_cap_on_executions_read(running: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more feedback than the cap, the newest are counted and the result says truncated."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE, QUICK, LOVE)
    monkeypatch.setattr(report, "MAX_REPORT_EXECUTIONS", 2)
    result = (await run_report(running, workflow_id)).result
    assert (result["executions_read"], result["truncated"]) == (2, True)
    assert result["period_basis"] == "search_limit"  # no report among the 2: the last 24 h
    assert result["feedback_analysed"] == 2
    assert result["sentiments"]["positive"] == 2  # the two newest: QUICK and LOVE


async def test_paging_reads_every_page(running: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executions beyond the first page of the listing are read too."""
    monkeypatch.setattr(report, "_PAGE_SIZE", 2)
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE, QUICK, LATE_REFUND, LOVE, QUICK)
    result = (await run_report(running, workflow_id)).result
    assert result["feedback_analysed"] == 5
    assert result["top_topics"][0] == {
        "topic": "delivery",
        "count": 4,
        "positive": 2,
        "negative": 2,
        "mixed": 0,
        "neutral": 0,
    }


async def test_include_recommendations_false(running: Engine) -> None:
    """include_recommendations false: the last step is skipped and no recommendation is given."""
    workflow_id = await seed_workflow(running)
    await analyse(running, workflow_id, LATE_RUDE)
    execution = await run_report(running, workflow_id, include_recommendations=False)
    assert execution.steps is not None
    assert [s.status for s in execution.steps] == [
        StepStatus.COMPLETED,
        StepStatus.COMPLETED,
        StepStatus.SKIPPED,
    ]
    assert execution.result["recommendations"] == []
    assert execution.result["feedback_analysed"] == 1


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"since": "yesterday"}, "parameters.since"),
        ({"since": "2023-05-01T00:00:00"}, "parameters.since"),
        ({"since": "2023-05-01"}, "parameters.since"),
        ({"since": 1683000000}, "parameters.since"),
        ({"since": "2999-01-01T00:00:00Z"}, "parameters.since"),
        ({"period_hours": 0}, "parameters.period_hours"),
        ({"period_hours": -3}, "parameters.period_hours"),
        ({"period_hours": 100_000}, "parameters.period_hours"),
        ({"period_hours": "24"}, "parameters.period_hours"),
        ({"period_hours": True}, "parameters.period_hours"),
        ({"period_hours": float("nan")}, "parameters.period_hours"),
        ({"since": "2023-05-01T00:00:00Z", "period_hours": 24}, "parameters.period_hours"),
        ({"source": 7}, "parameters.source"),
        ({"bogus": 1}, "parameters.bogus"),
    ],
)
async def test_invalid_report_parameters_are_400(
    running: Engine, parameters: dict[str, Any], field: str
) -> None:
    """A wrong since / period_hours (or an unknown parameter) is INVALID_PARAMETERS naming it."""
    workflow_id = await seed_workflow(running)
    with pytest.raises(InvalidParameters) as caught:
        await running.executions.execute(workflow_id, {**REPORT, **parameters})
    assert caught.value.http_status == 400
    assert caught.value.details["field"] == field


async def test_feedback_parameters_are_checked_as_before(running: Engine) -> None:
    """A text still analyses one text; report-only fields beside it, or an id alone, are 400."""
    workflow_id = await seed_workflow(running)
    with pytest.raises(InvalidParameters) as caught:
        await running.executions.execute(
            workflow_id, {"feedback_text": "Great.", "since": "2023-05-01T00:00:00Z"}
        )
    assert caught.value.details["field"] == "parameters.since"
    with pytest.raises(InvalidParameters) as caught:
        await running.executions.execute(workflow_id, {"customer_id": "c_1", "source": "email"})
    assert caught.value.details["field"] == "parameters.feedback_text"
    with pytest.raises(InvalidParameters) as caught:
        await running.executions.execute(workflow_id, {"feedback_text": None})
    assert caught.value.details["field"] == "parameters.feedback_text"
    with pytest.raises(ParameterValidationError):
        await running.executions.execute(workflow_id, {"feedback_text": "", **REPORT})


async def test_report_needs_the_engine(feedback: Any) -> None:
    """Run in memory (no engine to read executions from), a report fails with a clear error."""
    with pytest.raises(RuntimeError, match="execution of the engine"):
        await feedback.run_inline({}, REPORT)
