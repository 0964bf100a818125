"""Schedule writes applied in batches (group commit) act as if applied one by one (every backend)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs

from abi_engine import Workflow, WorkflowStatus
from abi_engine.events import DeferredEvent, Event, resolve
from abi_engine.ids import new_id, utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage import Store
from abi_engine.storage.records import ExecutionRecord
from abi_engine.storage.records_schedules import (
    DeleteSchedule,
    FireSchedule,
    HistoryRecord,
    InsertSchedule,
    ScheduleRecord,
    UpdateSchedule,
)
from abi_engine.storage.records_webhooks import WebhookRecord

NewWorkflow = Callable[..., Workflow]
StoreFactory = Callable[..., Store]


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


def _fire(workflow: Workflow, schedule: ScheduleRecord) -> FireSchedule:
    """Fire the schedule's due time (read as ``schedule``): one execution, one history line."""
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
        expected_version=schedule.version,
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

    first, second, third = _fire(workflow, record), _fire(workflow, record), _fire(workflow, other)
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


def test_every_write_is_a_compare_and_set_on_the_version(
    store: Store, new_workflow: NewWorkflow
) -> None:
    """Each write of a schedule adds one to its version; a write made from an older version
    (update, fire, delete) changes nothing and says so."""
    workflow = new_workflow(status=WorkflowStatus.ACTIVE)
    store.insert_workflow(workflow)
    record = _schedule(workflow.id, "versioned")
    assert store.apply([InsertSchedule(record=record)]) == [True]
    read = store.get_schedule(record.id)
    assert read is not None
    assert read.version == 0

    edited = attrs.evolve(read, description="edited")
    assert store.apply([UpdateSchedule(record=edited, expected_version=0)]) == [True]
    stale = attrs.evolve(read, description="stale", next_due=read.next_due)
    assert store.apply([UpdateSchedule(record=stale, expected_version=0)]) == [False]
    assert store.apply([_fire(workflow, read)]) == [False]  # planned from version 0
    assert store.apply([DeleteSchedule(schedule_id=record.id, expected_version=0)]) == [False]
    current = store.get_schedule(record.id)
    assert current is not None
    assert (current.version, current.description) == (1, "edited")

    assert store.apply([_fire(workflow, current)]) == [True]
    fired = store.get_schedule(record.id)
    assert fired is not None
    assert (fired.version, fired.description) == (2, "edited")
    assert fired.next_due == (read.next_due or utcnow()) + timedelta(hours=1)
    assert store.apply([UpdateSchedule(record=edited, expected_version=1)]) == [False]
    assert store.get_schedule(record.id) == fired  # not rewound
    assert store.apply([DeleteSchedule(schedule_id=record.id, expected_version=2)]) == [True]
    assert store.get_schedule(record.id) is None


def test_a_firing_applied_again_recognises_its_own_commit(
    store: Store, new_workflow: NewWorkflow
) -> None:
    """A firing whose commit is retried (outcome unknown) answers True again and writes nothing
    twice: one execution, one history line, the due time moved once."""
    workflow = new_workflow(status=WorkflowStatus.ACTIVE)
    store.insert_workflow(workflow)
    record = _schedule(workflow.id, "retried")
    assert store.apply([InsertSchedule(record=record)]) == [True]
    read = store.get_schedule(record.id)
    assert read is not None
    op = _fire(workflow, read)
    assert store.apply([op]) == [True]
    assert store.apply([op]) == [True]
    after = store.get_schedule(record.id)
    assert after is not None
    assert (after.version, after.next_due) == (1, op.next_due)
    assert store.schedule_history(record.id, 1, 10)[1] == 1
    other = _fire(workflow, read)  # another process's firing of the same due time
    assert store.apply([other]) == [False]
    assert store.get_execution(other.executions[0].id) is None


def test_deferred_events_are_written_only_for_subscribed_types(
    store: Store, new_workflow: NewWorkflow
) -> None:
    """A deferred event is built and stored only when, in its transaction, a subscription wants its type."""
    workflow = new_workflow()
    store.insert_workflow(workflow)
    built: list[str] = []

    def deferred(record: ScheduleRecord) -> InsertSchedule:
        def build() -> Event:
            built.append(record.id)
            return Event(type="schedule.created", data={"id": record.id})

        return InsertSchedule(record=record, events=(DeferredEvent("schedule.created", build),))

    quiet = _schedule(workflow.id, "nobody listens")
    assert store.apply([deferred(quiet)]) == [True]
    assert built == []
    assert store.events_after(0) == []

    now = utcnow()
    store.insert_webhook(
        WebhookRecord(
            id=new_id("wh_"),
            url="https://example.com/hook",
            events=["schedule.created"],
            secret="whsec_" + "A" * 32,
            created_at=now,
            updated_at=now,
        )
    )
    heard, refused = _schedule(workflow.id, "heard"), _schedule("wf_missing", "refused")
    assert store.apply([deferred(heard), deferred(refused)]) == [True, False]
    assert built == [heard.id]  # not built for the op that did not apply
    [stored] = store.events_after(0)
    assert isinstance(stored.event, Event)
    assert (stored.event.type, stored.event.data) == ("schedule.created", {"id": heard.id})


def test_resolve_builds_only_wanted_deferred_events_and_keeps_order() -> None:
    """resolve() keeps built events in order, builds wanted deferred ones once, asks for the types once."""
    asked: list[int] = []

    def subscribed() -> set[str]:
        asked.append(1)
        return {"schedule.updated"}

    first = Event(type="workflow.created", data={"n": 1})
    wanted = DeferredEvent(
        "schedule.updated", lambda: Event(type="schedule.updated", data={"n": 2})
    )
    unwanted = DeferredEvent("schedule.deleted", lambda: Event(type="schedule.deleted", data={}))
    kept = resolve([first, wanted, unwanted, wanted], subscribed)
    assert [e.type for e in kept] == ["workflow.created", "schedule.updated", "schedule.updated"]
    assert kept[1] is kept[2] is wanted.event()  # built once
    assert asked == [1]
    assert resolve([first], subscribed) == [first]
    assert asked == [1]  # no deferred event: the subscriptions are not read


def test_a_subscription_cannot_commit_between_the_read_and_the_change(
    make_store: StoreFactory, new_workflow: NewWorkflow
) -> None:
    """While a change has read the subscriptions, another store's new subscription waits for its commit.

    So whether a deferred event is written follows commit order: a subscription
    either committed before the change (and gets the event) or after it.
    """
    here = make_store()
    there = make_store(same=True)
    workflow = new_workflow()
    here.insert_workflow(workflow)

    def subscription(types: list[str]) -> WebhookRecord:
        now = utcnow()
        return WebhookRecord(
            id=new_id("wh_"),
            url="https://example.com/hook",
            events=types,
            secret="whsec_" + "A" * 32,
            created_at=now,
            updated_at=now,
        )

    here.insert_webhook(subscription(["schedule.created"]))
    paused, release = threading.Event(), threading.Event()
    record, other = _schedule(workflow.id, "paused"), _schedule(workflow.id, "other")

    def build_slowly() -> Event:  # runs after the subscriptions were read, in the transaction
        paused.set()
        assert release.wait(10)
        return Event(type="schedule.created", data={"id": record.id})

    ops = [
        InsertSchedule(record=record, events=(DeferredEvent("schedule.created", build_slowly),)),
        InsertSchedule(
            record=other,
            events=(
                DeferredEvent(
                    "schedule.updated",
                    lambda: Event(type="schedule.updated", data={"id": other.id}),
                ),
            ),
        ),
    ]
    change = threading.Thread(target=lambda: here.apply(ops))
    change.start()
    assert paused.wait(10)
    late = threading.Thread(target=lambda: there.insert_webhook(subscription(["schedule.updated"])))
    late.start()
    late.join(0.5)
    assert late.is_alive(), "the subscription committed while the change was under way"
    release.set()
    change.join(10)
    late.join(10)
    assert not change.is_alive()
    assert not late.is_alive()
    stored = [s.event for s in here.events_after(0)]
    assert [(e.type, e.data) for e in stored if isinstance(e, Event)] == [
        ("schedule.created", {"id": record.id})
    ]
    assert "schedule.updated" in here.subscribed_event_types()


def test_an_insert_at_a_workflow_version_applies_only_at_that_version(
    store: Store, new_workflow: NewWorkflow
) -> None:
    """``workflow_version``: the schedule's parameters were checked against that version of
    its workflow; an insert finding the workflow changed since applies ``False``."""
    workflow = new_workflow(name="versioned")
    store.insert_workflow(workflow)
    stored = store.get_workflow(workflow.id)
    assert stored is not None
    current, stale = _schedule(workflow.id, "current"), _schedule(workflow.id, "stale")
    older = stored.updated_at - timedelta(milliseconds=1)
    ops = [
        InsertSchedule(record=current, workflow_version=stored.updated_at),
        InsertSchedule(record=stale, workflow_version=older),
    ]
    assert store.apply(ops) == [True, False]
    assert store.get_schedule(current.id) is not None
    assert store.get_schedule(stale.id) is None
