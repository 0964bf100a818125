"""What a schedule does at its due times: the misfire and overlap rules, as pure functions.

Beside :mod:`abi_engine.schedule_math` (when a schedule is due), this module
decides what happens once due times have come: :func:`plan_missed` counts the
due times since the schedule's ``next_due`` and picks those that run under its
misfire policy (``skip``, ``run_once``, ``catch_up``); :func:`decide_overlap`
applies the overlap policy (``allow``, ``skip``, ``queue``) while an earlier
run is unfinished; :func:`decide_due` puts them together with the schedule's
state (disabled, workflow inactive). No clock, no store, no I/O: the scheduler
loop (:mod:`abi_engine.runtime.scheduler`) writes exactly what these return,
and tests/test_schedule_rules.py checks the rules with hypothesis.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from abi_engine.schedule_math import Timing

__all__ = [
    "MAX_FIRED_PER_TICK",
    "UNFINISHED",
    "DueDecision",
    "Missed",
    "Note",
    "decide_due",
    "decide_overlap",
    "plan_missed",
]

_MICRO = timedelta(microseconds=1)

#: Execution statuses of a run that is not over (the overlap policy applies).
UNFINISHED: frozenset[str] = frozenset({"queued", "running", "waiting", "paused"})


#: On-time due times one tick fires for one schedule; the rest wait for the next tick.
MAX_FIRED_PER_TICK = 1000


@attrs.frozen(kw_only=True)
class Missed:
    """What one tick does with a schedule's due times from its ``next_due`` up to now.

    ``count`` due times have come, ``last`` the latest; ``late`` of them are
    misfires (later than the grace). ``fire`` lists the due times to run,
    oldest first; ``skipped`` counts the misfires that do not run.
    ``following`` is the first due time after now; ``next_due`` is where the
    schedule goes: ``following``, or, when more than ``MAX_FIRED_PER_TICK`` due
    times were on time, the first of those left for the next tick.
    """

    count: int
    last: datetime
    late: int
    fire: tuple[datetime, ...]
    skipped: int
    following: datetime | None
    next_due: datetime | None


def _latest(timing: Timing, first: datetime, before: datetime, wanted: int) -> list[datetime]:
    """The ``wanted`` latest due times from ``first`` (one) to ``before`` (excluded), oldest
    first; there are at least ``wanted`` of them."""
    found: list[datetime] = []
    while len(found) < wanted:
        previous = timing.prev_before(before)
        if previous is None or previous <= first:
            break
        found.append(previous)
        before = previous
    if len(found) < wanted:
        found.append(first)
    found.reverse()
    return found


def plan_missed(
    timing: Timing,
    first: datetime,
    now: datetime,
    *,
    grace: timedelta,
    policy: str,
    catch_up_limit: int,
    limit: int = MAX_FIRED_PER_TICK,
) -> Missed:
    """The due times from ``first`` (a due time, at or before ``now``) to ``now``, and which
    of them run under the misfire ``policy`` (``skip``, ``run_once``, ``catch_up``).

    A due time more than ``grace`` before ``now`` is a misfire: ``skip`` runs
    none, ``run_once`` the latest (unless one on time runs anyway), ``catch_up``
    the latest ``catch_up_limit``. Due times within the grace all run (at most
    ``limit`` per call). The work is bounded by the runs planned, whatever the
    number of due times missed: they are counted, not listed.
    """
    count = 1 + timing.count(first, now)
    last = timing.prev_before(now + _MICRO) if count > 1 else first
    assert last is not None
    following = timing.next_after(now)
    cutoff = now - grace  # due times before it are misfires
    late = 0 if first >= cutoff else 1 + timing.count(first, cutoff - _MICRO)
    on_time: list[datetime] = []
    left = None
    due = first if first >= cutoff else timing.next_after(cutoff - _MICRO)
    while due is not None and due <= now:
        if len(on_time) == limit:
            left = due
            break
        on_time.append(due)
        due = timing.next_after(due)
    fire, skipped = on_time, 0
    if late:
        if policy == "catch_up":
            fire = _latest(timing, first, cutoff, min(late, catch_up_limit)) + on_time
            skipped = late - (len(fire) - len(on_time))
        elif policy == "run_once" and not on_time:
            fire, skipped = _latest(timing, first, cutoff, 1), late - 1
        else:  # skip, or run_once with an on-time run standing for the late ones
            skipped = late
    return Missed(
        count=count,
        last=last,
        late=late,
        fire=tuple(fire),
        skipped=skipped,
        following=following,
        next_due=left or following,
    )


@attrs.frozen
class Note:
    """A line of the schedule's history: what happened at a due time, and why."""

    due_at: datetime | None
    outcome: str
    detail: str | None = None


@attrs.frozen(kw_only=True)
class DueDecision:
    """What a tick does with a due schedule: the due times to ``fire``, where the
    schedule goes (``next_due``), its ``pending_runs`` (a queued run waiting for
    the current one) and the history ``notes`` of the due times that do not run."""

    fire: tuple[datetime, ...]
    next_due: datetime | None
    pending_runs: int
    notes: tuple[Note, ...]


def decide_overlap(
    policy: str,
    fire: tuple[datetime, ...],
    *,
    last_status: str | None,
    last_execution_id: str | None,
    pending_runs: int,
) -> tuple[tuple[datetime, ...], int, Note | None]:
    """Apply the overlap ``policy`` to due times about to ``fire``.

    While the schedule's last run is unfinished, ``skip`` runs none of them
    (noted ``skipped_overlap``); ``queue`` keeps one run waiting for the last
    to end (noted ``queued``; a second is ``skipped_overlap``); ``allow``
    runs them all. Returns the due times that fire now, the pending runs,
    and the history note (or ``None``).
    """
    if not fire or last_status not in UNFINISHED or policy == "allow":
        return fire, pending_runs, None
    if policy == "queue" and pending_runs == 0:
        note = Note(fire[-1], "queued", f"runs after execution {last_execution_id}")
        return (), 1, note
    if policy == "queue":
        return (), pending_runs, Note(fire[-1], "skipped_overlap", "a run is already queued")
    detail = f"execution {last_execution_id} still {last_status}"
    return (), pending_runs, Note(fire[-1], "skipped_overlap", detail)


def count_detail(count: int, reason: str) -> str:
    """``reason``, with the number of due times when more than one."""
    return reason if count == 1 else f"{reason} ({count} due times)"


def decide_due(
    missed: Missed,
    *,
    first: datetime,
    enabled: bool,
    workflow_active: bool,
    misfire_policy: str,
    overlap_policy: str,
    last_status: str | None,
    last_execution_id: str | None,
    pending_runs: int,
) -> DueDecision:
    """What a tick does with a schedule whose due times from ``first`` came (``missed``).

    A disabled schedule runs nothing and is parked (``next_due`` ``None``: enabling
    it computes a fresh due time), so it costs no tick at each of its due times;
    a schedule of an inactive workflow runs nothing and moves on; otherwise the
    misfire decision of ``missed`` runs, then the overlap policy.
    """
    if not enabled:
        note = Note(
            missed.last, "skipped_disabled", count_detail(missed.count, "the schedule is disabled")
        )
        return DueDecision(fire=(), next_due=None, pending_runs=pending_runs, notes=(note,))
    if not workflow_active:
        detail = count_detail(missed.count, "the workflow is inactive")
        note = Note(missed.last, "skipped_inactive", detail)
        return DueDecision(
            fire=(), next_due=missed.following, pending_runs=pending_runs, notes=(note,)
        )
    notes: list[Note] = []
    if missed.skipped:
        detail = f"{missed.skipped} due time(s) missed ({misfire_policy})"
        notes.append(Note(first, "skipped_misfire", detail))
    fire, pending, overlap = decide_overlap(
        overlap_policy,
        missed.fire,
        last_status=last_status,
        last_execution_id=last_execution_id,
        pending_runs=pending_runs,
    )
    if overlap is not None:
        notes.append(overlap)
    return DueDecision(
        fire=fire, next_due=missed.next_due, pending_runs=pending, notes=tuple(notes)
    )
