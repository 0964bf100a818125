"""A batch of the hot write ops answers and stores what its ops, applied one at a time,
would (issue #18: on PostgreSQL a batch is a few multi-row statements in pipeline mode).

The batch groups its ops by kind (``ExecutionsMixin._apply_batch``), so the
one-at-a-time order compared with is the batch's: inserts first, then kind by
kind in the order each first appears, each kind's ops in their own order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from abi_engine.errors import InvalidRequest
from abi_engine.ids import new_id
from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage import Store
from abi_engine.storage.records import (
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    StepRecord,
    WriteOp,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = T0 + timedelta(days=3650)  # never expires during the test

# An op on execution ``target`` (0-3): kind, whether its token is the right one, a value.
_OP = st.tuples(
    st.sampled_from(["insert_again", "claim", "checkpoint", "finish", "insert_new"]),
    st.integers(0, 3),
    st.booleans(),
    st.integers(0, 1),
)


def _executions(store: Store, running: list[bool]) -> list[ExecutionRecord]:
    """Four executions (one workflow): queued under grant 10+i, or running under 20+i."""
    records = [
        ExecutionRecord(
            id=new_id("exec_"),
            workflow_id="wf_batch",
            workflow_type="t",
            status=ExecutionStatus.QUEUED,
            created_at=T0,
            owner="n",
            claim=10 + i,
            lease_until=LEASE,
        )
        for i in range(4)
    ]
    assert store.apply([InsertExecution(record=r) for r in records]) == [True] * 4
    claims = [_claim(r.id, i, True) for i, r in enumerate(records) if running[i]]
    assert store.apply(claims) == [True] * len(claims)
    return records


def _claim(execution_id: str, i: int, right: bool) -> ClaimExecution:
    return ClaimExecution(
        execution_id=execution_id,
        grant=10 + i if right else 99,
        token=20 + i,
        owner="n",
        lease_until=LEASE,
        started_at=T0,
    )


def _op(records: list[ExecutionRecord], spec: tuple[str, int, bool, int], n: int) -> WriteOp:
    kind, i, right, value = spec
    record, token = records[i], (20 + i if right else 98)
    step = StepRecord(
        execution_id=record.id,
        index=value,
        name=f"s{value}",
        status=StepStatus.COMPLETED,
        completed_at=T0 + timedelta(milliseconds=n),
        result={"n": n},
    )
    if kind == "insert_again":
        return InsertExecution(record=record)
    if kind == "insert_new":
        return InsertExecution(record=ExecutionRecord(**{**_fields(record), "id": new_id("exec_")}))
    if kind == "claim":
        return _claim(record.id, i, right)
    if kind == "checkpoint":
        return CheckpointStep(step=step, token=token)
    return FinishExecution(
        execution_id=record.id,
        workflow_id=record.workflow_id,
        status=ExecutionStatus.COMPLETED if value else ExecutionStatus.FAILED,
        completed_at=T0 + timedelta(seconds=1, milliseconds=n),
        duration_ms=n,
        result={"n": n},
        token=token,
        step=step,
    )


def _fields(record: ExecutionRecord) -> dict[str, Any]:
    return attrs.asdict(record, recurse=False)


def _stored(store: Store, records: list[ExecutionRecord]) -> list[Any]:
    seen = []
    for r in records:
        got = store.get_execution(r.id)
        assert got is not None
        steps = [
            (s.index, s.name, s.status, s.result, s.completed_at) for s in store.get_steps(r.id)
        ]
        seen.append((got.status, got.claim, got.result, got.completed_at, got.duration_ms, steps))
    return seen


@pytest.mark.parametrize("size", [1, 12])
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_batch_does_what_its_ops_one_at_a_time_would(
    make_store: Any, size: int, data: st.DataObject
) -> None:
    batched, single = make_store(), make_store()
    try:
        _compare(batched, single, data, size)
    finally:  # not at the test's end: 2 stores an example would hold many connections
        batched.close()
        single.close()


def _compare(batched: Store, single: Store, data: st.DataObject, size: int) -> None:
    running = data.draw(st.lists(st.booleans(), min_size=4, max_size=4), label="running")
    specs = data.draw(st.lists(_OP, min_size=1, max_size=size), label="ops")
    a, b = _executions(batched, running), _executions(single, running)
    ops_a = [_op(a, spec, n) for n, spec in enumerate(specs)]
    ops_b = [_op(b, spec, n) for n, spec in enumerate(specs)]
    results = batched.apply(ops_a)
    one_by_one = {i: single.apply([ops_b[i]])[0] for i in _grouped_indexes(ops_b)}
    assert results == [one_by_one[i] for i in range(len(ops_b))]
    assert _stored(batched, a) == _stored(single, b)


def _grouped_indexes(ops: list[WriteOp]) -> list[int]:
    """The batch's order: inserts first, then kind by kind as each first appears."""
    kinds = sorted(dict.fromkeys(type(op) for op in ops), key=lambda k: k is not InsertExecution)
    return [i for kind in kinds for i, op in enumerate(ops) if type(op) is kind]


def test_two_checkpoints_of_one_step_in_a_batch_store_the_later(make_store: Any) -> None:
    """One multi-row upsert per batch: of two writes of the same step, the later one stays
    (as with a statement per op), and PostgreSQL's upsert does not refuse the pair."""
    store = make_store()
    records = _executions(store, [True, True, False, False])
    first = _op(records, ("checkpoint", 0, True, 0), 1)
    second = _op(records, ("checkpoint", 0, True, 0), 2)
    other = _op(records, ("checkpoint", 1, True, 1), 3)
    assert store.apply([first, second, other]) == [True, True, True]
    assert [s.result for s in store.get_steps(records[0].id)] == [{"n": 2}]
    assert [s.result for s in store.get_steps(records[1].id)] == [{"n": 3}]


def test_a_bad_op_in_a_batch_fails_alone(make_store: Any) -> None:
    """A step PostgreSQL cannot store (a NUL character) fails the pipelined batch; the
    ops are then applied one by one: that one is a bad request, the others apply."""
    store = make_store()
    records = _executions(store, [True, True, True, False])
    ops: list[WriteOp] = [_op(records, ("checkpoint", i, True, 0), i) for i in range(3)]
    bad = ops[1]
    assert isinstance(bad, CheckpointStep)
    ops[1] = CheckpointStep(step=attrs.evolve(bad.step, name="a\x00b"), token=bad.token)
    results = store.apply(ops)
    if store.dialect.name == "postgresql":
        assert results[0] is True
        assert results[2] is True
        assert isinstance(results[1], InvalidRequest)
        assert store.get_steps(records[1].id) == []
    else:
        assert results == [True, True, True]
    assert [s.result for s in store.get_steps(records[2].id)] == [{"n": 2}]
