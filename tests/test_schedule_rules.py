"""The misfire and overlap rules (abi_engine.schedule_rules), as pure functions.

The scheduler loop writes exactly what ``decide_due`` returns, so these
properties are what a schedule does at its due times, whatever the clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from abi_engine.schedule_rules import UNFINISHED, Missed, decide_due, decide_overlap

START = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = st.sampled_from([None, "queued", "running", "waiting", "completed", "failed"])
POLICIES = st.sampled_from(["allow", "skip", "queue"])


@st.composite
def due_times(draw: st.DrawFn) -> tuple[datetime, ...]:
    count = draw(st.integers(0, 6))
    return tuple(START + timedelta(minutes=i) for i in range(count))


@st.composite
def misses(draw: st.DrawFn) -> Missed:
    fire = draw(due_times())
    count = draw(st.integers(max(1, len(fire)), 50))
    last = START + timedelta(minutes=count - 1)
    following = last + timedelta(minutes=1)
    return Missed(
        count=count,
        last=last,
        late=draw(st.integers(0, count)),
        fire=fire,
        skipped=draw(st.integers(0, count - len(fire))),
        following=following,
        next_due=draw(st.sampled_from([following, following + timedelta(minutes=5)])),
    )


@given(POLICIES, due_times(), STATUSES, st.integers(0, 3))
def test_overlap_runs_everything_unless_a_run_is_unfinished(
    policy: str, fire: tuple[datetime, ...], last: str | None, pending: int
) -> None:
    kept, pending_after, note = decide_overlap(
        policy, fire, last_status=last, last_execution_id="exec_1", pending_runs=pending
    )
    if last not in UNFINISHED or policy == "allow" or not fire:
        assert (kept, pending_after, note) == (fire, pending, None)
    else:  # skip and queue run nothing now, and say so at the latest due time
        assert kept == ()
        assert note is not None
        assert note.due_at == fire[-1]
        assert "exec_1" in (note.detail or "") or note.detail == "a run is already queued"


@given(due_times(), st.sampled_from(["queued", "running", "waiting"]), st.integers(0, 3))
def test_queue_keeps_at_most_one_run_waiting(
    fire: tuple[datetime, ...], last: str, pending: int
) -> None:
    _, pending_after, note = decide_overlap(
        "queue", fire, last_status=last, last_execution_id="exec_1", pending_runs=pending
    )
    if not fire:
        assert note is None
        assert pending_after == pending
    elif pending == 0:
        assert pending_after == 1
        assert note is not None
        assert note.outcome == "queued"
    else:
        assert pending_after == pending
        assert note is not None
        assert note.outcome == "skipped_overlap"


@given(
    misses(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["skip", "run_once", "catch_up"]),
    POLICIES,
    STATUSES,
    st.integers(0, 2),
)
def test_due_decision(
    missed: Missed,
    enabled: bool,
    active: bool,
    misfire: str,
    overlap: str,
    last: str | None,
    pending: int,
) -> None:
    decision = decide_due(
        missed,
        first=START,
        enabled=enabled,
        workflow_active=active,
        misfire_policy=misfire,
        overlap_policy=overlap,
        last_status=last,
        last_execution_id="exec_1",
        pending_runs=pending,
    )
    # What fires is always some of the due times the misfire rule picked, in order.
    assert set(decision.fire) <= set(missed.fire)
    assert list(decision.fire) == sorted(decision.fire)
    # Nothing fires beside an unfinished run unless the overlap policy allows it.
    if decision.fire and last in UNFINISHED:
        assert overlap == "allow"
    # At most one run waits for the current one; none is ever dropped from the count.
    assert pending <= decision.pending_runs <= max(pending, 1)
    # Every due time that does not run is accounted for in the history.
    if not decision.fire and missed.fire:
        assert decision.notes
    if not enabled:  # parked until enabled again
        assert decision.fire == ()
        assert decision.next_due is None
        assert [n.outcome for n in decision.notes] == ["skipped_disabled"]
    elif not active:  # moves on without running
        assert decision.fire == ()
        assert decision.next_due == missed.following
        assert [n.outcome for n in decision.notes] == ["skipped_inactive"]
    else:
        assert decision.next_due == missed.next_due
        assert ("skipped_misfire" in [n.outcome for n in decision.notes]) == bool(missed.skipped)


def test_the_notes_say_how_many_due_times_were_skipped() -> None:
    missed = Missed(
        count=3,
        last=START + timedelta(minutes=2),
        late=0,
        fire=(START, START + timedelta(minutes=1), START + timedelta(minutes=2)),
        skipped=0,
        following=START + timedelta(minutes=3),
        next_due=START + timedelta(minutes=3),
    )
    decision = decide_due(
        missed,
        first=START,
        enabled=False,
        workflow_active=True,
        misfire_policy="skip",
        overlap_policy="allow",
        last_status=None,
        last_execution_id=None,
        pending_runs=0,
    )
    assert decision.notes[0].detail == "the schedule is disabled (3 due times)"
    assert decision.notes[0].due_at == missed.last
