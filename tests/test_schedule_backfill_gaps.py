"""Backfill gaps (#17): a backfill without due times ends at once and says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_schedule_backfill import Heard, a_workflow, eng, heard  # noqa: F401

from abi_engine import Engine
from abi_engine.ids import format_time
from abi_engine.models_backfills import BackfillRun, BackfillStatus

pytestmark = pytest.mark.anyio


async def test_a_backfill_without_due_times_completes_and_emits_its_event(
    eng: Engine,  # noqa: F811
    heard: Heard,  # noqa: F811
) -> None:
    """Its range holds no due time: completed at once, and ``schedule.backfill_completed``
    is emitted as for one that ran."""
    workflow_id = await a_workflow(eng)
    daily = {"name": "daily", "schedule_type": "cron", "cron_expression": "0 3 * * *"}
    schedule = await eng.schedules.create(workflow_id, daily)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=2)
    end = end.replace(hour=4, minute=0)
    start = end.replace(hour=3, minute=30)  # 03:30 to 04:00: no 03:00 in it
    job = await eng.schedules.backfill(
        schedule.id, {"start": format_time(start), "end": format_time(end)}
    )
    assert isinstance(job, BackfillRun)
    assert (job.status, job.total, job.started) == (BackfillStatus.COMPLETED, 0, 0)
    assert job.finished_at is not None
    [ended] = [e for e in heard.events if e.type == "schedule.backfill_completed"]
    assert ended.data["id"] == job.id
    assert (ended.data["status"], ended.data["total"]) == ("completed", 0)
    again = await eng.schedules.get_backfill(schedule.id, job.id)
    assert again.status is BackfillStatus.COMPLETED
