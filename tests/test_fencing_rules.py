"""The claim rules as a state machine: whatever order ops arrive in, and however often
each is applied again (a retry after a lost answer), the store keeps one holder per
execution and never lets a stale claim write.

Hypothesis drives a real store of each backend (SQLite, PostgreSQL) with grants,
claims, checkpoints, suspensions, signals, finishes, cancellations, hand-backs and
recoveries from two nodes, pauses and resumes (#16: a running execution pauses at
its next checkpoint, or at its next claim when it was handed over meanwhile), plus
repeats of any op already applied, and checks each answer against a model.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from abi_engine.ids import new_id, utcnow
from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage import SQLiteStore, Store
from abi_engine.storage.records import (
    AGAIN,
    PAUSED,
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    DeliverSignal,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    PauseExecution,
    ReleaseExecutions,
    ResumeExecution,
    StepRecord,
    SuspendExecution,
    WriteOp,
)

NODES = ("node-a", "node-b")
_counter = itertools.count(1)
_stores: list[Store] = []  # one real store for every example (each its own execution)


def _token() -> int:
    return next(_counter)


class ClaimRules(RuleBasedStateMachine):
    """One execution at a time; the model: its status and the one claim that may write."""

    applied = Bundle("applied")

    def __init__(self) -> None:
        super().__init__()
        self.store = _stores[-1]
        self.now = utcnow()
        self.id = new_id("exec_")
        self.status = "queued"
        self.claim: int | None = None  # the token that may use the row (grant or run)
        self.running = False
        self.steps = 0
        self.waiting_for: str | None = None
        self.delivered: set[str] = set()
        self.pausing = False  # a pause was asked while it ran: it pauses at a boundary

    def _lease(self) -> Any:
        """Leases already over (in every clock): any recovery may take what is granted."""
        return utcnow() - timedelta(seconds=1)

    def _apply(self, op: WriteOp) -> Any:
        (result,) = self.store.apply([op])
        assert not isinstance(result, Exception), result
        return result

    @initialize(target=applied, node=st.sampled_from(NODES))
    def insert(self, node: str) -> WriteOp:
        self.claim = _token()
        record = ExecutionRecord(
            id=self.id,
            workflow_id="wf_1",
            workflow_type="t",
            status=ExecutionStatus.QUEUED,
            created_at=self.now,
            owner=node,
            claim=self.claim,
            lease_until=self._lease(),
        )
        op = InsertExecution(record=record)
        assert self._apply(op) is True
        return op

    @rule(target=applied, node=st.sampled_from(NODES), fresh=st.booleans())
    def claim_run(self, node: str, fresh: bool) -> Any:
        """A worker turns a grant into a run: the current grant, or a stale one."""
        grant = (self.claim if fresh and not self.running else None) or _token()
        token = _token()
        op = ClaimExecution(
            execution_id=self.id,
            grant=grant,
            token=token,
            owner=node,
            lease_until=self._lease(),
            started_at=self.now,
        )
        result = self._apply(op)
        ok = self.status == "queued" and grant == self.claim
        if ok and self.pausing:  # asked to pause before this run began: paused instead
            assert result is False
            self.status, self.claim, self.pausing = "paused", None, False
            return op
        assert result is ok, (result, ok)
        if ok:
            self.status, self.claim, self.running = "running", token, True
        return op

    @rule(target=applied, current=st.booleans())
    def checkpoint(self, current: bool) -> Any:
        token = (self.claim if current else None) or _token()
        step = StepRecord(
            execution_id=self.id,
            index=self.steps,
            name=f"s{self.steps}",
            status=StepStatus.COMPLETED,
            result=self.steps,
        )
        op = CheckpointStep(step=step, token=token)
        ok = self.running and token == self.claim
        result = self._apply(op)
        if ok and self.pausing:  # the boundary the pause waited for
            assert result == PAUSED
            self.status, self.claim, self.running, self.pausing = "paused", None, False, False
        else:
            assert result is ok
        if ok:
            self.steps += 1
        return op

    @rule(target=applied, current=st.booleans(), name=st.sampled_from(["go", "stop"]))
    def suspend(self, current: bool, name: str) -> Any:
        token = (self.claim if current else None) or _token()
        op = SuspendExecution(execution_id=self.id, token=token, waiting_for=name)
        ok = self.running and token == self.claim
        result = self._apply(op)
        if ok and name in self.delivered:
            assert result == "ready"  # the signal came first: the step goes on
        else:
            assert (result is True) is ok, result
            if ok:
                self.status, self.running, self.waiting_for = "waiting", False, name
        return op

    @rule(target=applied, node=st.sampled_from(NODES), name=st.sampled_from(["go", "stop"]))
    def signal(self, node: str, name: str) -> Any:
        token = _token()
        op = DeliverSignal(
            execution_id=self.id,
            name=f"{name}-{_token()}" if name == "stop" else name,
            payload={"n": 1},
            created_at=self.now + timedelta(milliseconds=_token()),
            grant_owner=node,
            grant_token=token,
            lease_until=self._lease(),
        )
        if self.status not in ("queued", "running", "waiting", "paused"):
            assert self._apply(op) is None  # nothing after the end (a paused one keeps it)
        elif self.status == "waiting" and op.name == self.waiting_for:
            assert self._apply(op) == "queued"
            self.status, self.claim, self.waiting_for = "queued", token, None
            self.delivered.add(op.name)
        else:  # kept for a later wait; a name sent again is the next item of its stream
            assert self._apply(op) == "stored"
            self.delivered.add(op.name)
        return op

    @rule(target=applied, current=st.booleans(), status=st.sampled_from(["completed", "failed"]))
    def finish(self, current: bool, status: str) -> Any:
        token = (self.claim if current else None) or _token()
        op = FinishExecution(
            execution_id=self.id,
            workflow_id="wf_1",
            status=ExecutionStatus(status),
            completed_at=self.now + timedelta(milliseconds=_token()),
            duration_ms=1,
            token=token,
        )
        ok = self.running and token == self.claim
        assert self._apply(op) is ok
        if ok:
            self.status, self.running = status, False
        return op

    @rule(target=applied)
    def cancel(self) -> Any:
        op = CancelExecution(
            execution_id=self.id,
            workflow_id="wf_1",
            status=ExecutionStatus.CANCELLED,
            completed_at=self.now + timedelta(milliseconds=_token()),
        )
        ok = self.status in ("queued", "running", "waiting", "paused")
        assert self._apply(op) is ok
        if ok:
            self.status, self.running = "cancelled", False
        return op

    @rule()
    def pause(self) -> None:
        """Pause (an API call, not a run's write: not repeated as one): a queued execution
        at once (its grant is void), a running or waiting one at its next boundary."""
        result = self._apply(PauseExecution(execution_id=self.id, paused_at=self.now))
        if self.status in ("queued", "paused"):
            assert result == "paused"
            self.status, self.claim, self.running = "paused", None, False
            self.pausing = False
        elif self.status in ("running", "waiting"):  # a waiting one once its wait ends
            assert result == "requested"
            self.pausing = True
        else:
            assert result is False

    @rule()
    def resume(self) -> None:
        """Resume: a paused execution is queued without owner; a pause asked of one that
        has not reached its boundary is withdrawn."""
        result = self._apply(ResumeExecution(execution_id=self.id, queued_since=self.now))
        if self.status == "paused":
            assert result == "queued"
            self.status = "queued"
        elif self.pausing and self.status in ("queued", "running", "waiting"):
            assert result == self.status
            self.pausing = False
        else:
            assert result is False

    @rule(target=applied, current=st.booleans())
    def hand_back(self, current: bool) -> Any:
        token = (self.claim if current else None) or _token()
        op = ReleaseExecutions(claims=((self.id, token),))
        ok = self.status in ("queued", "running") and token == self.claim
        assert self._apply(op) == int(ok)
        if ok:
            self.status, self.claim, self.running = "queued", None, False
        return op

    @rule(node=st.sampled_from(NODES))
    def recover_after_expiry(self, node: str) -> None:
        """Recovery (every lease is over): grants this node the execution if it is queued
        or running (queued again, under the grant)."""
        got = [
            g
            for g in self.store.claim_recoverable(node, utcnow(), self._lease(), 1000)
            if g[0] == self.id
        ]
        if self.status in ("queued", "running"):
            ((execution_id, _, token),) = got
            assert execution_id == self.id
            self.status, self.claim, self.running = "queued", token, False
        else:
            assert got == []

    @rule(op=consumes(applied))
    def repeat(self, op: WriteOp) -> None:
        """Any op applied again (its answer was lost): it changes nothing, and answers
        AGAIN, True (idempotent writes), or what it answers now on the same state."""
        before = self._row()
        result = self._apply(op)
        assert self._row() == before
        if isinstance(op, InsertExecution):
            assert result is AGAIN

    @rule()
    def renew(self) -> None:
        token = self.claim if self.status in ("queued", "running") else None
        if token is None:
            return
        lost = self.store.renew_leases({self.id: token}, self._lease())
        assert lost == []

    def _sql(self, sql: str) -> Any:
        mark = "?" if isinstance(self.store, SQLiteStore) else "%s"
        with self.store._read() as conn:  # type: ignore[attr-defined]
            return conn.execute(sql.replace("?", mark), (self.id,)).fetchone()

    def _row(self) -> tuple[Any, ...]:
        return tuple(self._sql("SELECT status, claim, waiting_for FROM executions WHERE id = ?"))

    @invariant()
    def matches_the_model(self) -> None:
        status, claim, waiting_for = self._row()
        assert status == self.status
        if status in ("queued", "running", "paused"):
            assert claim == self.claim
        pausing = self._sql("SELECT pause_requested FROM executions WHERE id = ?")[0]
        assert bool(pausing) is self.pausing
        assert waiting_for == (self.waiting_for if status == "waiting" else None)
        steps = self._sql("SELECT count(*) FROM execution_steps WHERE execution_id = ?")[0]
        assert steps == self.steps


def test_claim_rules_hold_in_any_order_with_any_retries(store: Store) -> None:
    """Two nodes' grants, claims, writes, hand-backs, recoveries and retries of any op, in
    any order: the store agrees with the model, one claim writes, retries change nothing."""
    _stores.append(store)
    try:
        run_state_machine_as_test(
            ClaimRules, settings=settings(max_examples=80, stateful_step_count=30, deadline=None)
        )
    finally:
        _stores.pop()
