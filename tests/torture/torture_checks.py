"""The invariants of a torture run, checked over what the run left behind.

Inputs: the ledger (step runs and injected faults, see ``torture_plugin``), the
harness's own record of what it did (kills, connection terminations, cancels,
refused requests, processes that died on their own) and the final state read
through the public API (executions, schedule history). Everything here is a
pure function of those, so the rules can be tested on hand-made ledgers.

A *run* of a step is one start line of the ledger and the end line with the
same run id, if any. Its interval is [start, end]; a run without an end line
ends when its process was killed or died (the harness's time), or never (it is
still running, or hangs).

**Fencing**: two runs of the same step of the same execution never overlap.

**Exactly once**: each step of each execution has at most one run, unless a
later run is *excused*. A run ``r2`` after an earlier run ``r1`` of the same
step is excused iff some event ``X`` happened at a time ``t`` with
``start(r1) <= t <= start(r2)``, no run of the execution's next step started
between ``start(r1)`` and ``t`` (the engine had not moved past the step, so
its checkpoint may not have committed), and ``X`` is one of:

- ``r1``'s process was killed (``kill -9``), or exited on its own (then at the
  latest when ``r1`` ended, if it ended other than ``ok``: the process was on
  its way out);
- an injected fault failed a store call carrying the execution's id (any process);
- an injected fault failed a store call about a whole process (no execution
  id: a lease renewal, a recovery poll) in ``r1``'s or ``r2``'s process;
- the harness terminated the engines' PostgreSQL connections.

Runs without kills, faults or terminations therefore allow no second run at all.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"completed", "failed", "timed_out", "cancelled"})
NS = 1_000_000_000


@dataclass
class Run:
    """One run of one step, from the ledger."""

    execution_id: str
    step: int
    node: str
    pid: int
    run: str
    start: int
    end: int | None = None
    outcome: str | None = None
    seen: str = "-"

    def label(self, t0: int) -> str:
        end = "-" if self.end is None else f"{(self.end - t0) / NS:.2f}s"
        return (
            f"run {self.run} in {self.node} (pid {self.pid}) "
            f"[{(self.start - t0) / NS:.2f}s..{end}] {self.outcome or 'no end line'}"
        )


@dataclass(frozen=True)
class Fault:
    """One injected fault, from the ledger."""

    node: str
    pid: int
    index: int
    method: str
    op: str
    nth: int
    mode: str
    error: str
    time: int
    ids: frozenset[str]

    def describe(self) -> str:
        on = f"{self.method}[{self.op}]" if self.op != "-" else self.method
        return f"{self.error} {self.mode} call #{self.nth} of {on} in {self.node}"


@dataclass
class Ledger:
    runs: list[Run] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)


def parse_ledger(lines: Iterable[str]) -> Ledger:
    """Runs and faults from the ledger's lines (a torn last line is reported, not fatal)."""
    ledger = Ledger()
    open_runs: dict[str, Run] = {}
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "S" and len(parts) == 10:
                run = Run(
                    execution_id=parts[1],
                    step=int(parts[2]),
                    node=parts[3],
                    pid=int(parts[4]),
                    run=parts[5],
                    start=int(parts[6]),
                    seen=parts[9],
                )
                open_runs[run.run] = run
                ledger.runs.append(run)
            elif parts[0] == "E" and len(parts) == 10:
                started = open_runs.pop(parts[5], None)
                if started is None:
                    ledger.malformed.append(line)
                    continue
                started.end, started.outcome, started.seen = int(parts[6]), parts[8], parts[9]
            elif parts[0] == "F" and len(parts) == 12:
                ledger.faults.append(
                    Fault(
                        node=parts[1],
                        pid=int(parts[2]),
                        index=int(parts[3]),
                        method=parts[4],
                        op=parts[5],
                        nth=int(parts[6]),
                        mode=parts[7],
                        error=parts[8],
                        time=int(parts[9]),
                        ids=frozenset() if parts[11] == "-" else frozenset(parts[11].split(",")),
                    )
                )
            else:
                ledger.malformed.append(line)
        except ValueError:
            ledger.malformed.append(line)
    return ledger


@dataclass
class Observed:
    """What the harness saw and did during a run, and the final state it read."""

    #: Monotonic ns at the start of the run (times in messages are relative to it).
    t0: int
    #: node label -> monotonic ns when the harness sent it SIGKILL.
    killed: dict[str, int] = field(default_factory=dict)
    #: node label -> (monotonic ns, exit code, last lines of its stderr): died on its own.
    died: dict[str, tuple[int, int | None, str]] = field(default_factory=dict)
    #: Monotonic ns of each termination of the engines' PostgreSQL connections.
    terminations: list[int] = field(default_factory=list)
    #: Executions the harness asked to cancel (whatever the answer).
    cancel_requested: set[str] = field(default_factory=set)
    #: Nonces of executions refused with 503 QUEUE_FULL.
    refused_nonces: set[str] = field(default_factory=set)
    #: Final executions by id (the API's JSON).
    executions: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Executions not terminal when the drain deadline passed: id -> status.
    stuck: dict[str, str] = field(default_factory=dict)
    drain_seconds: float = 0.0
    #: schedule id -> history entries (the API's JSON).
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _end_of(run: Run, observed: Observed) -> int | None:
    if run.end is not None:
        return run.end
    stops = [t for t in (observed.killed.get(run.node), _died_at(run.node, observed)) if t]
    later = [t for t in stops if t >= run.start]
    return min(later) if later else None


def _died_at(node: str, observed: Observed) -> int | None:
    died = observed.died.get(node)
    return died[0] if died else None


def _excuse(
    r1: Run,
    r2: Run,
    next_starts: list[int],
    ledger: Ledger,
    observed: Observed,
) -> str | None:
    """Why ``r2`` may run ``r1``'s step again (see the module docstring), or ``None``."""
    events: list[tuple[int, str]] = []
    if r1.node in observed.killed:
        events.append((observed.killed[r1.node], f"kill -9 of {r1.node}"))
    died = _died_at(r1.node, observed)
    if died is not None:
        # The harness notices a death a little late; a run the dying process ended
        # early (cancelled on its way out) counts as interrupted when it ended.
        if r1.end is not None and r1.outcome != "ok":
            died = min(died, r1.end)
        events.append((died, f"death of {r1.node}"))
    for fault in ledger.faults:
        if r1.execution_id in fault.ids or (not fault.ids and fault.node in (r1.node, r2.node)):
            events.append((fault.time, fault.describe()))
    events.extend((t, "termination of the PostgreSQL connections") for t in observed.terminations)
    for t, what in sorted(events):
        if not r1.start <= t <= r2.start:
            continue
        if any(r1.start <= s <= t for s in next_starts):
            continue  # the execution had moved on: the step's checkpoint was committed
        return what
    return None


def check(ledger: Ledger, observed: Observed, *, steps: int = 3) -> list[str]:
    """Every broken invariant, one message each (empty: the run is clean)."""
    problems: list[str] = []
    t0 = observed.t0

    def at(t: int) -> str:
        return f"+{(t - t0) / NS:.2f}s"

    # Processes never exit on their own.
    for node, (t, code, tail) in sorted(observed.died.items()):
        problems.append(
            f"process {node} exited on its own (code {code}) at {at(t)}; its stderr ends:\n{tail}"
        )

    # Every execution ends within the bound.
    if observed.stuck:
        shown = ", ".join(f"{e} ({s})" for e, s in sorted(observed.stuck.items())[:8])
        problems.append(
            f"{len(observed.stuck)} execution(s) not terminal {observed.drain_seconds:.0f}s"
            f" after the load stopped: {shown}"
        )

    faulted: set[str] = set()
    for fault in ledger.faults:
        faulted |= fault.ids

    runs_by_step: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for run in ledger.runs:
        runs_by_step[(run.execution_id, run.step)].append(run)
    for runs in runs_by_step.values():
        runs.sort(key=lambda r: r.start)

    # Final statuses: what the harness did explains each one.
    for eid, data in sorted(observed.executions.items()):
        status = data.get("status")
        kind = (data.get("parameters") or {}).get("kind")
        if status == "timed_out":
            why = {
                "sync": "its synchronous caller's timeout passed: it was stuck",
                "replay": "it has no timeout; its idempotent replay's timeout ended it",
            }.get(str(kind), "it has no timeout")
            problems.append(f"{eid} ({kind}) ended timed_out: {why}")
        elif status == "cancelled" and eid not in observed.cancel_requested:
            problems.append(f"{eid} ended cancelled, yet nobody cancelled it")
        elif status == "failed" and eid not in faulted:
            problems.append(f"{eid} failed, yet no fault hit it: {data.get('error')}")
        if status != "completed":
            continue
        for index in range(steps):
            ok = [r for r in runs_by_step.get((eid, index), []) if r.outcome == "ok"]
            if not ok:
                problems.append(f"{eid} completed, but step s{index} never ran to its end")
        nonce = (data.get("parameters") or {}).get("nonce")
        if (data.get("parameters") or {}).get("wait"):
            for run in runs_by_step.get((eid, 1), []):
                if run.seen != nonce:
                    problems.append(
                        f"{eid}: step s1 ran with signal payload {run.seen!r},"
                        f" not the one delivered ({nonce!r})"
                    )

    # Fencing and exactly once: one message per step of an execution.
    for (eid, index), runs in sorted(runs_by_step.items()):
        next_starts = [r.start for r in runs_by_step.get((eid, index + 1), [])]
        overlaps = 0
        unexcused = 0
        excused: list[str] = []
        for i, later in enumerate(runs[1:], start=1):
            for earlier in runs[:i]:
                end = _end_of(earlier, observed)
                if end is None or end > later.start:
                    overlaps += 1
            reason = _excuse(runs[i - 1], later, next_starts, ledger, observed)
            if reason is None:
                unexcused += 1
            else:
                excused.append(reason)
        if not overlaps and not unexcused:
            continue
        broken = []
        if overlaps:
            broken.append(f"{overlaps} overlapping pair(s) of runs [fencing]")
        if unexcused:
            broken.append(
                f"{unexcused} rerun(s) with no kill, fault or dropped connection between"
                " it and the run before while the step was unfinished [exactly once]"
            )
        labels = [r.label(t0) for r in runs]
        if len(labels) > 5:
            labels = [*labels[:4], f"... {len(labels) - 5} more ...", labels[-1]]
        kind = (observed.executions.get(eid, {}).get("parameters") or {}).get("kind", "?")
        problems.append(
            f"step s{index} of {eid} ({kind}) ran {len(runs)} times: {'; '.join(broken)}."
            f" Runs: {'; '.join(labels)}"
        )

    # Each due time fires once; each firing is one execution.
    fired_ids: set[str] = set()
    for sid, entries in sorted(observed.history.items()):
        fired = [e for e in entries if e.get("outcome") == "fired"]
        per_due = Counter(e.get("due_at") for e in fired)
        repeated = {due: n for due, n in per_due.items() if n > 1}
        if repeated:
            shown = ", ".join(f"{due} x{n}" for due, n in sorted(repeated.items())[:5])
            problems.append(
                f"schedule {sid}: {sum(repeated.values()) - len(repeated)} extra firing(s)"
                f" of due times that had fired already: {shown}"
            )
        for entry in fired:
            fired_id = entry.get("execution_id")
            if not fired_id:
                problems.append(
                    f"schedule {sid}: firing at {entry.get('due_at')} names no execution"
                )
            elif fired_id in fired_ids:
                problems.append(f"schedule {sid}: execution {fired_id} recorded for two firings")
            else:
                fired_ids.add(fired_id)
    scheduled = {e for e, d in observed.executions.items() if d.get("schedule_id")}
    if observed.history:
        lost = sorted(fired_ids - set(observed.executions))
        unrecorded = sorted(scheduled - fired_ids)
        if lost:
            problems.append(f"firings whose execution does not exist: {lost[:8]}")
        if unrecorded:
            problems.append(f"scheduled executions with no firing in the history: {unrecorded[:8]}")

    # A request refused with QUEUE_FULL leaves nothing behind.
    stored_nonces = {
        (d.get("parameters") or {}).get("nonce"): e for e, d in observed.executions.items()
    }
    for nonce in sorted(observed.refused_nonces):
        if nonce in stored_nonces:
            problems.append(
                f"{stored_nonces[nonce]} was stored although its request was refused"
                " with 503 QUEUE_FULL"
            )

    if ledger.malformed:
        problems.append(f"malformed ledger lines: {ledger.malformed[:3]}")
    return problems


def summary(ledger: Ledger, observed: Observed) -> dict[str, Any]:
    """Counts worth printing with a run (how much it exercised)."""
    statuses = Counter(d.get("status") for d in observed.executions.values())
    per_step = Counter((r.execution_id, r.step) for r in ledger.runs)
    return {
        "executions": len(observed.executions),
        "statuses": dict(statuses),
        "step_runs": len(ledger.runs),
        "reruns": sum(n - 1 for n in per_step.values() if n > 1),
        "faults": len(ledger.faults),
        "kills": len(observed.killed),
        "terminations": len(observed.terminations),
        "firings": sum(
            1 for es in observed.history.values() for e in es if e.get("outcome") == "fired"
        ),
    }


def by_kind(executions: Mapping[str, dict[str, Any]]) -> Counter[str]:
    """How many executions of each workload kind (``parameters.kind``)."""
    return Counter(str((d.get("parameters") or {}).get("kind")) for d in executions.values())
