"""Edits and firings of one schedule, interleaved on purpose (issue #10, scenario 2).

Every write of a schedule is a compare-and-set on its ``version``. These
tests put one write between the read and the write of another, by wrapping
the engine's group committer so that the interleaving happens at a chosen
point, then check that no due time fires twice, none is lost, and the
edit lands on the schedule as it is after the firing. The real run of the
same race, with processes, is in ``tests/test_scheduling_processes.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from runtime_plugins.helpers import EngineFactory, new_workflow

from abi_engine import Engine, hookimpl, schedules
from abi_engine.errors import InvalidState
from abi_engine.events import Event
from abi_engine.ids import format_time
from abi_engine.models import Schedule
from abi_engine.storage.records import ExecutionQuery, WriteOp
from abi_engine.storage.records_schedules import DeleteSchedule, FireSchedule, UpdateSchedule

pytestmark = pytest.mark.anyio

TRANSFORM = {
    "steps": [
        {"name": "echo", "action": "transform", "expressions": {"source": "parameters['source']"}}
    ]
}
MINUTE = timedelta(seconds=60)


class Recorder:
    """Keeps every event (so schedule events are built at the change)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def eng(make: EngineFactory, recorder: Recorder) -> AsyncIterator[Engine]:
    engine = make(plugins=(recorder,))
    async with engine:
        yield engine


async def every_minute(engine: Engine, **fields: Any) -> tuple[Schedule, Any]:
    """A schedule every 60 s of a one-step workflow, and its first due time."""
    wf = await new_workflow(engine, "custom", configuration=TRANSFORM, name="Echo")
    body = {
        "name": "every minute",
        "schedule_type": "interval",
        "interval_value": 60,
        "interval_unit": "seconds",
        "parameters": {"source": "old"},
        **fields,
    }
    schedule = await engine.schedules.create(wf, body)
    assert schedule.next_execution is not None
    return schedule, schedule.next_execution


def started(engine: Engine, schedule_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(id, parameters) of the executions the schedule started."""
    records, _ = engine.store.list_executions(ExecutionQuery(page=1, page_size=100))
    return [(r.id, r.parameters) for r in records if r.schedule_id == schedule_id]


async def fired(engine: Engine, schedule_id: str) -> list[Any]:
    """The due times of the schedule's ``fired`` history lines, oldest first."""
    page = await engine.schedules.history(schedule_id, page_size=100)
    return [h.due_at for h in reversed(page.items) if h.outcome == "fired"]


def before_first(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    kind: type[WriteOp],
    meanwhile: Callable[[], Awaitable[Any]],
) -> list[WriteOp]:
    """Run ``meanwhile`` once, just before the first op of ``kind`` is committed (after its
    writer read the schedule); return the ops so caught."""
    committer = engine.runtime.committer
    submit, submit_many = committer.submit, committer.submit_many
    caught: list[WriteOp] = []

    async def catch(ops: Sequence[WriteOp]) -> None:
        if not caught and any(isinstance(op, kind) for op in ops):
            caught.extend(ops)
            await meanwhile()

    async def one(op: WriteOp) -> Any:
        await catch([op])
        return await submit(op)

    async def many(ops: Sequence[WriteOp]) -> list[Any]:
        await catch(ops)
        return await submit_many(ops)

    monkeypatch.setattr(committer, "submit", one)
    monkeypatch.setattr(committer, "submit_many", many)
    return caught


async def test_an_edit_that_read_before_a_firing_does_not_undo_it(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A firing commits between an edit's read and its write: the edit retries on the fired
    schedule, so the due time stays fired, once, and the edit keeps the firing's last run."""
    schedule, due = await every_minute(eng)
    caught = before_first(eng, monkeypatch, UpdateSchedule, lambda: eng.scheduler.tick(due))
    updated = await eng.schedules.update(schedule.id, {"description": "edited"})
    assert caught, "the firing ran inside the edit"
    [(execution_id, _)] = started(eng, schedule.id)
    assert updated.description == "edited"
    assert updated.next_execution == due + MINUTE
    assert updated.last_execution is not None
    assert updated.last_execution.execution_id == execution_id
    # The due time is not due again: a later tick starts nothing more.
    await eng.scheduler.tick(due + timedelta(seconds=30))
    assert len(started(eng, schedule.id)) == 1
    assert await fired(eng, schedule.id) == [due]
    stored = await eng.schedules.get(schedule.id)
    assert (stored.description, stored.next_execution) == ("edited", due + MINUTE)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"parameters": {"source": "new"}}, [{"source": "new"}]),
        ({"enabled": False}, []),
    ],
    ids=["parameters", "disable"],
)
async def test_a_firing_planned_before_an_edit_fires_the_edited_schedule(
    eng: Engine, monkeypatch: pytest.MonkeyPatch, edit: dict[str, Any], expected: list[Any]
) -> None:
    """An edit commits between a firing's plan and its commit: that firing applies nothing,
    and the next tick fires the due time from the edited schedule (new parameters; none
    when disabled)."""
    schedule, due = await every_minute(eng)

    async def edit_now() -> None:
        await eng.schedules.update(schedule.id, edit)

    caught = before_first(eng, monkeypatch, FireSchedule, edit_now)
    await eng.scheduler.tick(due)
    assert caught, "the edit ran inside the firing"
    assert started(eng, schedule.id) == []
    await eng.scheduler.tick(due)
    assert [parameters for _, parameters in started(eng, schedule.id)] == expected
    page = await eng.schedules.history(schedule.id, page_size=100)
    outcomes = [(h.outcome, h.due_at) for h in page.items]
    assert outcomes == [("fired" if expected else "skipped_disabled", due)]


async def test_a_delete_that_read_before_a_firing_reports_the_schedule_it_deleted(
    eng: Engine, monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    """A firing commits between a delete's read and its write: the delete retries, and its
    schedule.deleted event shows the schedule as deleted (fired, next due time moved)."""
    schedule, due = await every_minute(eng)
    caught = before_first(eng, monkeypatch, DeleteSchedule, lambda: eng.scheduler.tick(due))
    await eng.schedules.delete(schedule.id)
    assert caught, "the firing ran inside the delete"
    [(execution_id, _)] = started(eng, schedule.id)
    [deleted] = [e for e in recorder.events if e.type == "schedule.deleted"]
    assert deleted.data["last_execution"]["execution_id"] == execution_id
    assert deleted.data["next_execution"] == format_time(due + MINUTE)
    assert eng.store.get_schedule(schedule.id) is None


async def test_an_edit_that_keeps_losing_answers_invalid_state(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit that loses its compare-and-set at every attempt gives up with INVALID_STATE,
    and every write that beat it stands."""
    schedule, _ = await every_minute(eng)
    monkeypatch.setattr(schedules, "WRITE_ATTEMPTS", 4)
    committer = eng.runtime.committer
    submit = committer.submit

    async def beaten(op: WriteOp) -> Any:
        if isinstance(op, UpdateSchedule):  # another writer commits first, every time
            rival = UpdateSchedule(record=op.record, expected_version=op.expected_version)
            assert await submit(rival) is True
        return await submit(op)

    monkeypatch.setattr(committer, "submit", beaten)
    with pytest.raises(InvalidState) as caught:
        await eng.schedules.update(schedule.id, {"description": "lost"})
    assert caught.value.details == {"schedule_id": schedule.id, "attempts": 4}
    stored = eng.store.get_schedule(schedule.id)
    assert stored is not None
    assert (stored.version, stored.description) == (4, "lost")  # the rivals' writes
