"""SQLite inserts a new execution in one statement that checks its workflow (issue #18).

``insert_held`` read the workflows of a batch (version, status, pause, rules) before
inserting its executions. On SQLite an execution whose workflow is, in the insert's
transaction, active at the version the request was checked against, not paused and
without rules is now inserted by one ``INSERT ... SELECT`` that checks exactly that;
any other goes the way it went. The rule: whatever the workflow's state and the
batch, the results and the rows stored are those of the old way (a store without
the one-statement insert, on its own file, same inputs).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine.ids import utcnow
from abi_engine.models import (
    ConcurrencyRule,
    DebounceRule,
    ExecutionStatus,
    RateLimitRule,
    Workflow,
    WorkflowStatus,
)
from abi_engine.storage import SQLiteStore
from abi_engine.storage._codec import to_ms
from abi_engine.storage.records import (
    AGAIN,
    ExecutionRecord,
    InsertExecution,
    WriteOp,
)

pytestmark = pytest.mark.sqlite_only

NOW = utcnow().replace(microsecond=0)

RULES: dict[str, dict[str, Any]] = {
    "none": {},
    "max_concurrency": {"max_concurrency": 1},
    "concurrency": {"concurrency": ConcurrencyRule(key="parameters.k", limit=1)},
    "rate_limit": {"rate_limit": RateLimitRule(limit=1, period_seconds=60)},
    "debounce": {"debounce": DebounceRule(seconds=60)},
}
STATES = [
    {"rules": rules, "status": status, "paused": paused, "deleted": deleted, "version": version}
    for rules, status, paused, deleted, version in itertools.product(
        sorted(RULES), ["active", "inactive"], [False, True], [False, True],
        ["current", "older", "none"],
    )
]  # fmt: skip
RETRIED = [{**state, "retried": True} for state in STATES]
#: A record: running (claimed at once), granted to a node, with an idempotency key.
Shape = tuple[bool, bool, bool]
_cases = itertools.count()


class _OldWay(SQLiteStore):
    """The store as it was: every insert reads its workflow first."""

    def _insert_checked(self, conn: Any, records: Any, ops: Any) -> list[bool] | None:
        return None


@pytest.fixture(scope="module")
def stores() -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    """A store inserting the new way and one the old way, on files of their own."""
    with tempfile.TemporaryDirectory() as tmp:
        new, old = SQLiteStore(Path(tmp) / "new.db"), _OldWay(Path(tmp) / "old.db")
        try:
            yield new, old
        finally:
            new.close()
            old.close()


def _workflow(wf_id: str, rules: str) -> Workflow:
    return Workflow(
        id=wf_id,
        name="checked",
        type="custom",
        status=WorkflowStatus.ACTIVE,
        configuration={"steps": []},
        created_at=NOW,
        updated_at=NOW,
        **RULES[rules],
    )


def _record(wf_id: str, index: int, running: bool, granted: bool, key: bool) -> ExecutionRecord:
    return ExecutionRecord(
        id=f"exec_{wf_id}_{index}",
        workflow_id=wf_id,
        workflow_type="custom",
        status=ExecutionStatus.RUNNING if running else ExecutionStatus.QUEUED,
        parameters={"k": index % 2},
        configuration={"steps": []},
        plan=["a"],
        created_at=NOW,
        started_at=NOW if running else None,
        idempotency_key=f"key{index % 2}" if key else None,
        owner="node_1" if granted or running else None,
        claim=index + 1 if granted or running else None,
        lease_until=NOW + timedelta(minutes=5) if granted or running else None,
    )


def _prepare(store: SQLiteStore, wf_id: str, state: dict[str, Any], before: int) -> None:
    store.insert_workflow(_workflow(wf_id, state["rules"]))
    store.write(
        lambda conn: conn.execute(
            "UPDATE workflows SET status = ?, paused_at = ?, deleted_at = ? WHERE id = ?",
            (
                state["status"],
                to_ms(NOW) if state["paused"] else None,
                to_ms(NOW) if state["deleted"] else None,
                wf_id,
            ),
        )
    )
    if before:  # executions of the workflow stored before (counted by its rules)
        stored = [_record(wf_id, 100 + i, False, True, False) for i in range(before)]
        store.apply([InsertExecution(record=r) for r in stored])


def _ops(wf_id: str, state: dict[str, Any], shapes: list[Shape]) -> list[WriteOp]:
    version = {"current": NOW, "older": NOW - timedelta(seconds=1), "none": None}
    return [
        InsertExecution(
            record=_record(wf_id, i, *shape), workflow_version=version[state["version"]]
        )
        for i, shape in enumerate(shapes)
    ]


def _stored(store: SQLiteStore, wf_id: str) -> list[tuple[Any, ...]]:
    conn = store._reader()
    columns = [r[1] for r in conn.execute("PRAGMA table_info(executions)")]
    # (the times the database's clock gives: not the same in both files)
    clocked = ("not_before", "rate_granted_at", "queued_since", "completed_at", "duration_ms")
    kept = [c for c in columns if c not in clocked]
    return conn.execute(
        f"SELECT {', '.join(kept)}, completed_at IS NULL FROM executions WHERE workflow_id = ?"
        " ORDER BY id",
        (wf_id,),
    ).fetchall()


def _run(store: SQLiteStore, wf_id: str, state: dict[str, Any], shapes: list[Shape], before: int):  # type: ignore[no-untyped-def]
    _prepare(store, wf_id, state, before)
    ops = _ops(wf_id, state, shapes)
    if state.get("retried"):  # the batch's first insert was committed, its answer lost
        store.apply(ops[:1])
    results = store.apply(ops)
    found = [[e.type for e in op.found] for op in ops]
    return results, found, _stored(store, wf_id)


def _same_both_ways(
    stores: tuple[SQLiteStore, SQLiteStore], state: dict[str, Any], shapes: list[Shape], before: int
) -> None:
    wf_id = f"wf_{next(_cases)}"
    new, old = stores
    assert _run(new, wf_id, state, shapes, before) == _run(old, wf_id, state, shapes, before), (
        state,
        shapes,
        before,
    )


@pytest.mark.parametrize(
    "shapes",
    [
        [(False, True, False)],  # asynchronous, granted
        [(False, False, False)],  # asynchronous, left queued (no worker free)
        [(True, True, False)],  # synchronous, claimed at once
        [(False, True, True)],  # with an idempotency key
        [(False, True, False), (False, True, False)],  # two granted: one too many?
        [(False, True, False), (False, False, False), (True, True, False)],
    ],
)
def test_every_workflow_state_stores_what_the_old_way_stores(
    stores: tuple[SQLiteStore, SQLiteStore], shapes: list[Shape]
) -> None:
    """Every workflow state (rules, active or not, paused, deleted, the request checked
    against its version, an older one, none), with and without an execution of the
    workflow stored before, the batch new or retried after its commit: the same results
    and rows both ways."""
    for state in STATES + RETRIED:
        for before in (0, 1):
            _same_both_ways(stores, state, shapes, before)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(STATES + RETRIED),
    st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=5),
    st.integers(0, 3),
)
def test_the_one_statement_insert_stores_what_the_old_way_stores(
    stores: tuple[SQLiteStore, SQLiteStore],
    state: dict[str, Any],
    shapes: list[Shape],
    before: int,
) -> None:
    """Rule: any batch of new executions, whatever the state of their workflow, gets the
    same results, the same events found, the same rows, with or without the
    one-statement insert."""
    _same_both_ways(stores, state, shapes, before)


def test_a_plain_insert_is_three_statements(tmp_path: Path) -> None:
    """A new execution of an active, unpaused workflow without rules: ``BEGIN``, the
    checking insert, ``COMMIT`` (the workflow is not read before)."""
    store = SQLiteStore(tmp_path / "plain.db")
    try:
        plain = {"rules": "none", "status": "active", "paused": False, "deleted": False}
        _prepare(store, "wf_plain", plain, 0)
        statements: list[str] = []
        store._writer.set_trace_callback(statements.append)
        op = InsertExecution(
            record=_record("wf_plain", 7, False, True, False), workflow_version=NOW
        )
        assert store.apply([op]) == [True]
        assert store.apply([op]) == [AGAIN]  # retried after its commit: found, not stored twice
        store._writer.set_trace_callback(None)
        assert statements[0] == "BEGIN IMMEDIATE"
        assert statements[1].startswith("INSERT INTO executions")
        assert "FROM workflows" in statements[1]
        assert statements[2] == "COMMIT"
        assert statements[3] == "BEGIN IMMEDIATE"
        assert store.get_execution("exec_wf_plain_7") is not None
    finally:
        store.close()
