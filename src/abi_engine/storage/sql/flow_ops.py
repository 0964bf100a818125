"""The write operations of reruns, pause and resume (#16), in the shared SQL.

Each handler is ``handler(store, conn, op)`` like those of
``storage/sql/execution_ops.py``, which registers them in its ``HANDLERS``.
A paused execution has no owner, claim or lease: no node holds it, the
recovery poller passes it by (it takes only queued and running work), and a
grant or run token handed out before the pause can change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import attrs

from abi_engine.events import ExecutionEventRef
from abi_engine.ids import utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage._codec import dumps, to_ms
from abi_engine.storage.records import (
    ExecutionRecord,
    InsertExecution,
    InsertRerun,
    PauseExecution,
    PauseWorkflow,
    ResumeExecution,
    StepRecord,
    WriteOp,
)
from abi_engine.storage.sql.concurrency import RULE_COLUMNS, Rules, add_rules, keyed
from abi_engine.storage.sql.dialect import NEXT_VERSION, Conn, chunks
from abi_engine.storage.sql.shaping import DEBOUNCED, PAUSED, WINDOWED

__all__ = ["CHILD_PREFIX", "FLOW_HANDLERS", "held", "insert_held", "pause_now", "tell_parent"]

#: The signal a parent receives when its child execution ends: this and the child's id.
CHILD_PREFIX = "child:"

#: The store applying the op (an ``SQLStore``).
Store = Any

_INSERT_STEP = (
    "INSERT INTO execution_steps (execution_id, idx, name, status, started_at, completed_at,"
    " duration_ms, attempts, result, error, reused_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)


def pause_now(conn: Conn, execution_id: str) -> None:
    """Store ``execution_id`` paused: no owner, claim or lease; the request served. One
    waiting out its debounce window keeps its hold (``queued_reason`` and ``not_before``,
    not shown while paused) for :func:`_resume` to restore (#16)."""
    conn.execute(
        "UPDATE executions SET status = 'paused', owner = NULL, claim = NULL,"
        f" lease_until = NULL, pause_requested = ?, not_before = CASE WHEN {WINDOWED}"
        f" THEN not_before END, queued_reason = CASE WHEN {WINDOWED} THEN '{DEBOUNCED}'"
        " END WHERE id = ?",
        (False, execution_id),
    )


def tell_parent(
    conn: Conn,
    parent_id: str,
    child_id: str,
    status: str,
    result_json: str | None,
    error_json: str | None,
    at_ms: int | None,
) -> None:
    """Store the signal ``child:<child_id>`` with the parent (kept if it does not wait for
    it yet), and queue the parent, without owner, if it waits for exactly that: the
    recovery poller runs it on. In the transaction that ends the child."""
    name = f"{CHILD_PREFIX}{child_id}"
    payload = (
        f'{{"execution_id": {dumps(child_id)}, "status": {dumps(status)},'
        f' "result": {result_json or "null"}, "error": {error_json or "null"}}}'
    )
    conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (parent_id, name, payload, at_ms),
    )
    conn.execute(
        "UPDATE executions SET status = 'queued', waiting_for = NULL, wake_at = NULL,"
        " owner = NULL, claim = NULL, lease_until = NULL"
        " WHERE id = ? AND status = 'waiting' AND waiting_for = ?",
        (parent_id, name),
    )


def _step_row(step: StepRecord) -> tuple[Any, ...]:
    return (
        step.execution_id,
        step.index,
        step.name,
        step.status.value,
        to_ms(step.started_at),
        to_ms(step.completed_at),
        step.duration_ms,
        step.attempts,
        step.result_json if step.result_json is not None else dumps(step.result),
        None if step.error is None else dumps(step.error),
        step.reused_from,
    )


def held(
    s: Store,
    conn: Conn,
    records: Sequence[ExecutionRecord],
    paused: set[str],
    rules: Rules | None = None,
) -> list[ExecutionRecord]:
    """``records`` as inserted: a queued one of a ``paused`` workflow held (``queued_reason``
    ``paused``, no owner or claim: the grant its node holds cannot be used, and recovery
    passes it by), whatever path inserts it (API, schedule, rerun); each with its
    concurrency key, and granted only within its workflow's limits (``keyed``;
    ``rules``: those of the queued records' workflows, when read already)."""
    if not paused:
        return keyed(s.dialect, conn, records, rules)
    return keyed(
        s.dialect,
        conn,
        [
            attrs.evolve(r, owner=None, claim=None, lease_until=None, queued_reason="paused")
            if r.workflow_id in paused and r.status is ExecutionStatus.QUEUED
            else r
            for r in records
        ],
        rules,
    )


def _workflows(
    s: Store, conn: Conn, records: Sequence[ExecutionRecord]
) -> dict[str, tuple[Any, ...]]:
    """The workflows of ``records`` not deleted: id -> (version, status, paused_at, and
    their rules: :data:`RULE_COLUMNS`), in one statement (#18: the inserts' concurrency
    checks read their rules here, not again)."""
    found: dict[str, tuple[Any, ...]] = {}
    for chunk in chunks(sorted({r.workflow_id for r in records})):
        condition, args = s.dialect.any_of("id", chunk)
        for row in conn.execute(
            f"SELECT id, updated_at, status, paused_at, {RULE_COLUMNS} FROM workflows"
            f" WHERE {condition} AND deleted_at IS NULL",
            args,
        ):
            found[row[0]] = tuple(row[1:])
    return found


def insert_held(
    s: Store, conn: Conn, records: Sequence[ExecutionRecord], ops: Sequence[WriteOp]
) -> list[Any]:
    """Insert ``records`` as :func:`held` makes them (``ops[i]`` inserts ``records[i]``);
    each result as ``_insert_executions`` gives it. An op whose insert applies now
    finds (``op.found``) an ``execution.skipped`` for each execution it ended by
    debounce: an earlier record of the batch, or a stored one still waiting. They
    are written with the op's events, in this transaction, so none is lost or
    repeated (a retry of a committed insert ends nothing: its results are ``AGAIN``).

    Records the store inserts at once, checking their workflow in the same statement
    (``_insert_checked``: active at the op's version, not paused, no rules, as below
    then inserts them as they are), skip the rest (#18)."""
    direct = s._insert_checked(conn, records, ops)
    if direct is not None:
        for op, done in zip(ops, direct, strict=True):
            if done:
                op.found.clear()  # what an attempt rolled back found
        rest = [i for i, done in enumerate(direct) if not done]
        results: list[Any] = [True] * len(records)
        if rest:
            left = _insert_held(s, conn, [records[i] for i in rest], [ops[i] for i in rest])
            for i, result in zip(rest, left, strict=True):
                results[i] = result
        return results
    return _insert_held(s, conn, records, ops)


def _insert_held(
    s: Store, conn: Conn, records: Sequence[ExecutionRecord], ops: Sequence[WriteOp]
) -> list[Any]:
    """:func:`insert_held` of the records the store did not insert at once."""
    workflows = _workflows(s, conn, records)
    stale = _stale(s, conn, records, ops, workflows)
    if stale:  # not stored: their requests are checked again against the new version
        kept = [i for i in range(len(ops)) if i not in stale]
        results: list[Any] = [None] * len(ops)
        if kept:
            done = _insert_held(s, conn, [records[i] for i in kept], [ops[i] for i in kept])
            for i, result in zip(kept, done, strict=True):
                results[i] = result
        return results
    paused = {w for w, row in workflows.items() if row[2] is not None}
    rules: Rules = ({}, {})
    for w in {r.workflow_id for r in records if r.status is ExecutionStatus.QUEUED}:
        if w in workflows:
            add_rules(rules, w, workflows[w][3:])
    shaped = held(s, conn, records, paused, rules)
    results = list(s._insert_executions(conn, shaped))
    for result, op in zip(results, ops, strict=True):
        if result is True:
            op.found.clear()  # what an attempt rolled back found
    ending = [
        r
        for r, result in zip(shaped, results, strict=True)
        if result is True and (r.replaced or r.status is ExecutionStatus.SKIPPED)
    ]
    if ending:
        owner = {r.id: op for r, op in zip(records, ops, strict=True)}
        now = utcnow()
        for r in ending:
            if r.status is ExecutionStatus.SKIPPED:  # inserted ended: by a later one of the batch
                owner[r.id].found.append(_skip_event(r.id, r.completed_at or now))
            owner[r.id].found.extend(_skip_event(ended, now) for ended in r.replaced)
    return results


def _stale(
    s: Store,
    conn: Conn,
    records: Sequence[ExecutionRecord],
    ops: Sequence[WriteOp],
    workflows: dict[str, tuple[Any, ...]],
) -> set[int]:
    """The indexes of the ops checked against a version of their workflow (active, at
    ``workflow_version``) it no longer has in this transaction, and not stored already
    (a retry of a committed insert applies ``AGAIN`` as before)."""
    stale: set[int] = set()
    for i, op in enumerate(ops):
        version = op.workflow_version if isinstance(op, InsertExecution) else None
        if version is not None:
            now = workflows.get(records[i].workflow_id)
            if now is None or now[0] != to_ms(version) or now[1] != "active":
                stale.add(i)
    for chunk in chunks(sorted(records[i].id for i in stale)):
        condition, args = s.dialect.any_of("id", chunk)
        stored = {
            row[0] for row in conn.execute(f"SELECT id FROM executions WHERE {condition}", args)
        }
        stale = {i for i in stale if records[i].id not in stored}
    return stale


def _skip_event(execution_id: str, at: datetime) -> ExecutionEventRef:
    return ExecutionEventRef("execution.skipped", execution_id, None, at)


def _insert_rerun(s: Store, conn: Conn, op: InsertRerun) -> Any:
    result = insert_held(s, conn, [op.record], [op])[0]
    if result is True and op.steps:
        conn.executemany(_INSERT_STEP, [_step_row(step) for step in op.steps])
    return result


def _pause(s: Store, conn: Conn, op: PauseExecution) -> Any:
    row = conn.execute(
        f"SELECT status, pause_requested FROM executions WHERE id = ?{s.dialect.lock()}",
        (op.execution_id,),
    ).fetchone()
    if row is None:
        return False
    status = row[0]
    if status == "queued":
        pause_now(conn, op.execution_id)
        return "paused"
    if status == "paused":
        return "paused"
    if status in ("running", "waiting"):
        # At its next step boundary: for a waiting one, once its wait ends (woken, it
        # ends the waiting step and pauses rather than going on).
        if not row[1]:
            conn.execute(
                "UPDATE executions SET pause_requested = ? WHERE id = ?", (True, op.execution_id)
            )
        return "requested"
    return False


def _resume(s: Store, conn: Conn, op: ResumeExecution) -> Any:
    row = conn.execute(
        f"SELECT status, pause_requested FROM executions WHERE id = ?{s.dialect.lock()}",
        (op.execution_id,),
    ).fetchone()
    if row is None:
        return False
    if row[0] == "paused":
        # Queued again; held still if its workflow is paused meanwhile, and for the rest
        # of its debounce window if it was waiting one out (over already: it runs).
        conn.execute(
            "UPDATE executions SET status = 'queued', owner = NULL, claim = NULL,"
            " lease_until = NULL, queued_since = ?, queued_reason = CASE WHEN EXISTS"
            " (SELECT 1 FROM workflows w WHERE w.id = executions.workflow_id"
            f" AND w.paused_at IS NOT NULL) THEN '{PAUSED}'"
            f" WHEN queued_reason = '{DEBOUNCED}' THEN queued_reason END WHERE id = ?",
            (to_ms(op.queued_since), op.execution_id),
        )
        return "queued"
    if row[0] in ("running", "queued", "waiting") and row[1]:
        conn.execute(
            "UPDATE executions SET pause_requested = ? WHERE id = ?", (False, op.execution_id)
        )
        return row[0]
    return False


def _pause_workflow(s: Store, conn: Conn, op: PauseWorkflow) -> int | None:
    at = to_ms(op.at)
    cursor = conn.execute(
        f"UPDATE workflows SET paused_at = ?, updated_at = {NEXT_VERSION}"
        " WHERE id = ? AND deleted_at IS NULL"
        + (" AND paused_at IS NULL" if op.paused else " AND paused_at IS NOT NULL"),
        (at if op.paused else None, at, at, op.workflow_id),
    )
    if cursor.rowcount == 0:
        found = conn.execute(
            "SELECT 1 FROM workflows WHERE id = ? AND deleted_at IS NULL", (op.workflow_id,)
        ).fetchone()
        return None if found is None else 0
    if op.paused:  # what is queued without an owner yet waits with the new ones
        # (a debounce window kept in ``not_before``; a rate limit's checked again)
        cursor = conn.execute(
            f"UPDATE executions SET queued_reason = '{PAUSED}', not_before = CASE WHEN"
            f" queued_reason = '{DEBOUNCED}' THEN not_before END WHERE workflow_id = ?"
            " AND status = 'queued' AND owner IS NULL",
            (op.workflow_id,),
        )
    else:  # released; those in a debounce window wait for the rest of it
        cursor = conn.execute(
            "UPDATE executions SET queued_reason = CASE WHEN not_before IS NOT NULL"
            f" THEN '{DEBOUNCED}' END, queued_since = ? WHERE workflow_id = ?"
            f" AND status = 'queued' AND queued_reason = '{PAUSED}'",
            (at, op.workflow_id),
        )
    return max(0, int(cursor.rowcount))


#: The ops of this module: ``handler(store, conn, op)``.
FLOW_HANDLERS: dict[type, Callable[[Any, Conn, Any], Any]] = {
    InsertRerun: _insert_rerun,
    PauseExecution: _pause,
    ResumeExecution: _resume,
    PauseWorkflow: _pause_workflow,
}
