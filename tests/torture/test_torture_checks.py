"""The torture suite's checker on hand-made ledgers: it catches what it must, and only that."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from torture_checks import Observed, check, parse_ledger

S = 1_000_000_000  # one second in the ledger's nanoseconds


def _run(
    eid: str, step: int, start: float, end: float | None, node: str = "n0.0", **kw: Any
) -> list[str]:
    run = kw.get("run", f"{eid[-3:]}{step}{int(start * 1000)}")
    seen = kw.get("seen", "-")
    lines = [f"S {eid} {step} {node} 100 {run} {int(start * S)} 2026-01-01T00:00:00Z 1 {seen}"]
    if end is not None:
        outcome = kw.get("outcome", "ok")
        lines.append(
            f"E {eid} {step} {node} 100 {run} {int(end * S)} 2026-01-01T00:00:00Z {outcome} {seen}"
        )
    return lines


def _fault(at: float, ids: str = "-", node: str = "n0.0", method: str = "apply") -> str:
    return f"F {node} 100 0 {method} CheckpointStep 1 before locked {int(at * S)} 2026-01-01T00:00:00Z {ids}"


def _completed(*eids: str, **params: Any) -> dict[str, dict[str, Any]]:
    return {e: {"status": "completed", "parameters": dict(params)} for e in eids}


def _sequential(eid: str, begin: float = 0.0) -> list[str]:
    return [line for i in range(3) for line in _run(eid, i, begin + i, begin + i + 0.5)]


def test_clean_run_has_no_problems() -> None:
    """Three steps run once each, in order, for a completed execution: nothing to report."""
    ledger = parse_ledger(_sequential("exec_a"))
    assert check(ledger, Observed(t0=0, executions=_completed("exec_a"))) == []


def test_two_overlapping_runs_break_fencing_and_exactly_once() -> None:
    """Two runs of one step at once (same process, as after a double enqueue) break both rules."""
    lines = _sequential("exec_a") + _run("exec_a", 1, 1.2, 1.7, run="dup")
    problems = check(parse_ledger(lines), Observed(t0=0, executions=_completed("exec_a")))
    assert len(problems) == 1
    assert "[fencing]" in problems[0]
    assert "[exactly once]" in problems[0]
    assert "step s1 of exec_a (?) ran 2 times" in problems[0]


def test_rerun_after_a_kill_of_an_unfinished_step_is_excused() -> None:
    """The step in flight when its process was killed may run again elsewhere."""
    lines = [*_run("exec_a", 0, 0, 0.5), *_run("exec_a", 1, 1, None)]
    lines += [*_run("exec_a", 1, 5, 5.5, node="n1.0"), *_run("exec_a", 2, 6, 6.5, node="n1.0")]
    observed = Observed(t0=0, killed={"n0.0": int(2 * S)}, executions=_completed("exec_a"))
    assert check(parse_ledger(lines), observed) == []


def test_rerun_after_the_execution_moved_on_is_not_excused_by_a_kill() -> None:
    """A kill after the next step started cannot excuse rerunning the step before it."""
    lines = [*_run("exec_a", 0, 0, 0.5), *_run("exec_a", 1, 0.6, None)]
    lines += [*_run("exec_a", 0, 5, 5.5, node="n1.0", run="again")]
    lines += [*_run("exec_a", 1, 6, 6.5, node="n1.0"), *_run("exec_a", 2, 7, 7.5, node="n1.0")]
    observed = Observed(t0=0, killed={"n0.0": int(2 * S)}, executions=_completed("exec_a"))
    problems = check(parse_ledger(lines), observed)
    assert len(problems) == 1
    assert "step s0 of exec_a (?) ran 2 times" in problems[0]
    assert "[exactly once]" in problems[0]
    assert "[fencing]" not in problems[0]


def test_a_fault_excuses_reruns_of_its_own_execution_only() -> None:
    """A failed write carrying exec_a excuses exec_a's rerun, not exec_b's."""
    lines = _sequential("exec_a") + _sequential("exec_b", 10)
    lines += _run("exec_a", 2, 3, 3.5, run="ra") + _run("exec_b", 2, 13, 13.5, run="rb")
    lines.append(_fault(2.7, ids="exec_a"))
    lines.append(_fault(12.7, ids="exec_c"))
    problems = check(parse_ledger(lines), Observed(t0=0, executions=_completed("exec_a", "exec_b")))
    assert len(problems) == 1, problems
    assert "exec_b" in problems[0]


def test_a_node_wide_fault_excuses_reruns_of_runs_in_that_process() -> None:
    """A failed lease renewal (no execution id) excuses reruns of that process's runs."""
    lines = [*_run("exec_a", 0, 0, 0.5), *_run("exec_a", 0, 2, 2.5, node="n1.0")]
    lines += [*_run("exec_a", 1, 3, 3.5), *_run("exec_a", 2, 4, 4.5)]
    lines.append(_fault(1.0, node="n0.0", method="renew_leases"))
    assert check(parse_ledger(lines), Observed(t0=0, executions=_completed("exec_a"))) == []
    lines[-1] = _fault(1.0, node="n2.0", method="renew_leases")
    assert len(check(parse_ledger(lines), Observed(t0=0, executions=_completed("exec_a")))) == 1


def test_statuses_need_a_cause() -> None:
    """timed_out never; cancelled only when asked; failed only when a fault hit it."""
    executions = {
        "exec_t": {"status": "timed_out", "parameters": {"kind": "replay"}},
        "exec_c": {"status": "cancelled", "parameters": {}},
        "exec_k": {"status": "cancelled", "parameters": {}},
        "exec_f": {"status": "failed", "parameters": {}},
    }
    observed = Observed(t0=0, executions=executions, cancel_requested={"exec_k"})
    problems = check(parse_ledger([]), observed)
    assert len(problems) == 3
    assert any("exec_t (replay) ended timed_out" in p for p in problems)
    assert any("exec_c ended cancelled" in p for p in problems)
    assert any("exec_f failed" in p for p in problems)


def test_a_due_time_fired_twice_is_reported() -> None:
    """Two 'fired' history lines for one due time break the schedule rule."""
    executions = {
        e: {"status": "completed", "schedule_id": "sched_1"} for e in ("exec_1", "exec_2", "exec_3")
    }
    history = {
        "sched_1": [
            {"due_at": "T1", "outcome": "fired", "execution_id": "exec_1"},
            {"due_at": "T2", "outcome": "fired", "execution_id": "exec_2"},
            {"due_at": "T2", "outcome": "fired", "execution_id": "exec_3"},
        ]
    }
    lines = [line for e in executions for line in _sequential(e)]
    problems = check(parse_ledger(lines), Observed(t0=0, executions=executions, history=history))
    assert problems == [
        "schedule sched_1: 1 extra firing(s) of due times that had fired already: T2 x2"
    ]


def test_stuck_died_and_refused_but_stored_are_reported() -> None:
    """Unfinished executions, processes that exited, and QUEUE_FULL answers that stored anyway."""
    observed = Observed(
        t0=0,
        stuck={"exec_s": "running"},
        drain_seconds=60,
        died={"n1.0": (3 * S, 1, "boom")},
        refused_nonces={"abc"},
        executions={"exec_q": {"status": "queued", "parameters": {"nonce": "abc"}}},
    )
    problems = check(parse_ledger([]), observed)
    assert any("process n1.0 exited on its own (code 1)" in p for p in problems)
    assert any("1 execution(s) not terminal 60s" in p and "exec_s" in p for p in problems)
    assert any("exec_q was stored although its request was refused" in p for p in problems)


def test_a_torn_last_line_is_reported_not_fatal() -> None:
    """A line cut by a kill is listed as malformed; the rest is still checked."""
    lines = [*_sequential("exec_a"), "S exec_b 0 n0"]
    problems = check(parse_ledger(lines), Observed(t0=0, executions=_completed("exec_a")))
    assert problems
    assert problems[-1].startswith("malformed ledger lines")


@given(
    st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=12),
    st.data(),
)
def test_any_sequential_ledger_is_clean_and_any_duplicate_is_caught(
    steps_done: list[int], data: st.DataObject
) -> None:
    """Executions whose steps ran once each pass; one more run of any step is always caught."""
    lines: list[str] = []
    executions: dict[str, dict[str, Any]] = {}
    t = 0.0
    for n, last in enumerate(steps_done):
        eid = f"exec_{n:03d}"
        for step in range(last + 1):
            lines += _run(eid, step, t, t + 0.1)
            t += 0.2
        executions[eid] = {"status": "completed" if last == 2 else "running", "parameters": {}}
    running = {e for e, d in executions.items() if d["status"] == "running"}
    clean = Observed(t0=0, executions=executions, stuck=dict.fromkeys(running, "running"))
    expected_stuck = 1 if running else 0
    assert len(check(parse_ledger(lines), clean)) == expected_stuck
    victim = data.draw(st.sampled_from(sorted(executions)))
    step = data.draw(st.integers(min_value=0, max_value=steps_done[int(victim[-3:])]))
    at = data.draw(st.floats(min_value=0, max_value=t + 1))
    lines += _run(victim, step, at, at + 0.05, run="extra")
    problems = check(parse_ledger(lines), clean)
    assert any(f"step s{step} of {victim} (?) ran 2 times" in p for p in problems), problems
