"""Schedule writes applied in batches (group commit) act as if applied one by one (every backend)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from abi_engine import Workflow, WorkflowStatus
from abi_engine.events import Event
from abi_engine.ids import new_id, utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage import Store
from abi_engine.storage.records import (
    ExecutionRecord,
    FireSchedule,
    HistoryRecord,
    InsertSchedule,
    ScheduleRecord,
)

NewWorkflow = Callable[..., Workflow]


def _schedule(workflow_id: str, name: str, **fields: Any) -> ScheduleRecord:
    now = utcnow()
    return ScheduleRecord(
        id=new_id("sched_"),
        workflow_id=workflow_id,
        name=name,
        schedule_type="interval",
        interval_value=1,
        interval_unit="hours",
        anchor_at=now,
        next_due=now + timedelta(hours=1),
        parameters={"name": name},
        created_at=now,
        updated_at=now,
        **fields,
    )


def _created(record: ScheduleRecord) -> InsertSchedule:
    return InsertSchedule(
        record=record, events=(Event(type="schedule.created", data={"id": record.id}),)
    )


def test_one_batch_inserts_only_schedules_of_live_workflows(
    store: Store, new_workflow: NewWorkflow
) -> None:
    """Inserts for a live, a deleted and a missing workflow in one batch: only the live ones apply."""
    live, gone = new_workflow(name="live"), new_workflow(name="gone")
    store.insert_workflow(live)
    store.insert_workflow(gone)
    assert store.delete_workflow(gone.id, utcnow())
    records = [
        _schedule(live.id, "a"),
        _schedule(gone.id, "b"),
        _schedule("wf_missing", "c"),
        _schedule(live.id, "d", description="second", enabled=False),
    ]
    assert store.apply([_created(r) for r in records]) == [True, False, False, True]
    for record, kept in zip(records, [True, False, False, True], strict=True):
        stored = store.get_schedule(record.id)
        assert (stored is not None) is kept
        if stored is not None:
            assert (stored.name, stored.description, stored.enabled, stored.parameters) == (
                record.name,
                record.description,
                record.enabled,
                record.parameters,
            )
            assert stored.next_due == record.next_due
    events = [s.event for s in store.events_after(0) if s.event.type == "schedule.created"]
    assert [e.data["id"] for e in events if isinstance(e, Event)] == [records[0].id, records[3].id]


def test_one_batch_fires_a_due_time_once(store: Store, new_workflow: NewWorkflow) -> None:
    """Two firings of one due time in one batch: the first applies, the second writes nothing."""
    workflow = new_workflow(status=WorkflowStatus.ACTIVE)
    store.insert_workflow(workflow)
    record = _schedule(workflow.id, "hourly")
    other = _schedule(workflow.id, "other")
    assert store.apply([InsertSchedule(record=record), InsertSchedule(record=other)]) == [
        True,
        True,
    ]
    due = record.next_due
    assert due is not None

    def fire(schedule: ScheduleRecord) -> FireSchedule:
        now = utcnow()
        execution = ExecutionRecord(
            id=new_id("exec_"),
            workflow_id=workflow.id,
            workflow_type=workflow.type,
            status=ExecutionStatus.QUEUED,
            parameters=dict(schedule.parameters),
            created_at=now,
            schedule_id=schedule.id,
        )
        return FireSchedule(
            schedule_id=schedule.id,
            expected_next_due=schedule.next_due,
            expected_pending=0,
            next_due=(schedule.next_due or now) + timedelta(hours=1),
            pending_runs=0,
            executions=(execution,),
            history=(
                HistoryRecord(
                    schedule_id=schedule.id,
                    due_at=schedule.next_due,
                    recorded_at=now,
                    outcome="fired",
                    execution_id=execution.id,
                ),
            ),
        )

    first, second, third = fire(record), fire(record), fire(other)
    assert store.apply([first, second, third]) == [True, False, True]
    stored = store.get_schedule(record.id)
    assert stored is not None
    assert stored.next_due == due + timedelta(hours=1)
    assert stored.last_execution_id == first.executions[0].id
    history, total = store.schedule_history(record.id, 1, 10)
    assert total == 1
    assert history[0].execution_id == first.executions[0].id
    assert store.get_execution(first.executions[0].id) is not None
    assert store.get_execution(second.executions[0].id) is None
    assert store.get_execution(third.executions[0].id) is not None
    assert store.schedule_history(other.id, 1, 10)[1] == 1
