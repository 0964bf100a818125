"""The write operations of executions and schedules, in the shared SQL.

Each handler is ``handler(store, conn, op)`` (one op) or ``handler(store,
conn, ops)`` (the ops of one kind of a batch, :data:`BULK`); it reads the
executions it writes (one query for a batch; where rows are locked, in id
order, so two batches wait for each other rather than deadlock) and asks the
claim rules of ``storage/_fencing.py`` what applies, then writes the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from abi_engine.ids import utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage._codec import dumps, to_ms
from abi_engine.storage._fencing import State, checkpoints, claims, ended_again, finishes
from abi_engine.storage.records import (
    AGAIN,
    PAUSED,
    TIMEOUT_SUFFIX,
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    DeliverSignal,
    ExecutionRecord,
    FinishExecution,
    InsertEvents,
    InsertExecution,
    ReleaseExecutions,
    SaveProgress,
    StepRecord,
    SuspendExecution,
)
from abi_engine.storage.sql.concurrency import BLOCKED, grantable
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks
from abi_engine.storage.sql.flow_ops import FLOW_HANDLERS, held, pause_now, tell_parent
from abi_engine.storage.sql.schedules import SCHEDULE_BULK, SCHEDULE_HANDLERS

__all__ = ["BULK", "HANDLERS", "execution_row", "insert_execution_sql"]


def _json_or_none(value: Any, text: str | None = None) -> str | None:
    if text is not None:
        return text
    return None if value is None else dumps(value)


def _step_params(step: StepRecord) -> tuple[Any, ...]:
    return (
        step.execution_id,
        step.index,
        step.name,
        step.status.value,
        to_ms(step.started_at),
        to_ms(step.completed_at),
        step.duration_ms,
        step.attempts,
        _json_or_none(step.result, step.result_json),
        _json_or_none(step.error),
    )


_STEP_COLUMNS = (
    "execution_id",
    "idx",
    "name",
    "status",
    "started_at",
    "completed_at",
    "duration_ms",
    "attempts",
    "result",
    "error",
)


@cache
def _upsert_step(d: Dialect) -> str:
    return d.upsert("execution_steps", _STEP_COLUMNS, key=("execution_id", "idx"))


def _lease(d: Dialect) -> str:
    """The SQL of a lease end given by :func:`_lease_value`."""
    return "?" if d.clock is None else f"{d.clock} + ?"


def _lease_value(d: Dialect, lease_until: datetime | None) -> int | None:
    """A lease end in epoch ms, or, judged in the database's clock, as a duration
    from now in this host's clock (for the SQL to add to the database's)."""
    if d.clock is None or lease_until is None:
        return to_ms(lease_until)
    return round((lease_until - utcnow()).total_seconds() * 1000)


def _locked(d: Dialect) -> str:
    """The end of a ``SELECT`` of executions by id that locks them, in id order (the
    order every batch locks in: no deadlock between them); nothing without row locks."""
    return f" ORDER BY id{d.lock()}" if d.row_locks else ""


@cache
def insert_execution_sql(d: Dialect) -> str:
    """The insert of an execution row (values: :func:`execution_row`), nothing on conflict."""
    return (
        "INSERT INTO executions (id, workflow_id, workflow_type, status, parameters,"
        " configuration, plan, created_at, started_at, callback_url, callback_secret,"
        " schedule_id, created_by, idempotency_key, priority, timeout_at, owner, lease_until,"
        " claim, rerun_of, queued_reason, trace_context, parent_execution_id, concurrency_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
        f" {_lease(d)}, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
    )


def execution_row(d: Dialect, r: ExecutionRecord) -> tuple[Any, ...]:
    """The values of an execution row, in :func:`insert_execution_sql`'s order."""
    return (
        r.id,
        r.workflow_id,
        r.workflow_type,
        r.status.value,
        dumps(r.parameters),
        dumps(r.configuration),
        dumps(r.plan),
        to_ms(r.created_at),
        to_ms(r.started_at),
        r.callback_url,
        r.callback_secret,
        r.schedule_id,
        r.created_by,
        r.idempotency_key,
        r.priority,
        to_ms(r.timeout_at),
        r.owner,
        _lease_value(d, r.lease_until),
        r.claim,
        r.rerun_of,
        r.queued_reason,
        r.trace_context,
        r.parent_execution_id,
        r.concurrency_key,
    )


# -- op handlers: handler(store, conn, op) ------------------------------------------------

#: The store applying the op (an ``SQLStore``: ``dialect``, ``_insert_executions``).
Store = Any


def _claims(d: Dialect, conn: Conn, ids: Sequence[str]) -> dict[str, int | None]:
    """The claim token of each of ``ids`` that is queued or running (rows locked)."""
    found: dict[str, int | None] = {}
    for chunk in chunks(ids):
        condition, args = d.any_of("id", chunk)
        # By primary key only: a status condition here makes SQLite scan a status index.
        for row in conn.execute(
            f"SELECT id, claim, status FROM executions WHERE {condition}{_locked(d)}", args
        ):
            if row[2] in ("queued", "running"):
                found[row[0]] = row[1]
    return found


def _insert(s: Store, conn: Conn, op: InsertExecution) -> Any:
    return s._insert_executions(conn, held(s, conn, [op.record]))[0]


def _claim(s: Store, conn: Conn, op: ClaimExecution) -> Any:
    return _bulk_claim(s, conn, [op])[0]


def _checkpoint(s: Store, conn: Conn, op: CheckpointStep) -> Any:
    return _bulk_checkpoint(s, conn, [op])[0]


def _stats(conn: Conn, workflow_id: str, status: ExecutionStatus, ms: int) -> None:
    conn.execute(
        "UPDATE workflows SET runs_total = runs_total + 1,"
        " runs_success = runs_success + ?, runs_failed = runs_failed + ?,"
        " duration_total_ms = duration_total_ms + ? WHERE id = ?",
        (
            1 if status is ExecutionStatus.COMPLETED else 0,
            1 if status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT) else 0,
            ms,
            workflow_id,
        ),
    )


def _finish(s: Store, conn: Conn, op: FinishExecution) -> Any:
    return _bulk_finish(s, conn, [op])[0]


def _suspend(s: Store, conn: Conn, op: SuspendExecution) -> Any:
    # Lock the execution first: a signal delivered concurrently waits for this
    # transaction (DeliverSignal locks the same row), so it is seen either here
    # or by the waiting execution it queues.
    row = conn.execute(
        f"SELECT status, claim, waiting_for FROM executions WHERE id = ?{s.dialect.lock()}",
        (op.execution_id,),
    ).fetchone()
    if row is None or row[1] != op.token:
        return False
    if row[0] == "waiting" and row[2] == op.waiting_for:
        return AGAIN  # a retry of this suspension
    if row[0] != "running":
        return False
    arrived = conn.execute(
        "SELECT 1 FROM execution_signals WHERE execution_id = ? AND name IN (?, ?)",
        (op.execution_id, op.waiting_for, f"{op.waiting_for}{TIMEOUT_SUFFIX}"),
    ).fetchone()
    if arrived:
        return "ready"
    conn.execute(
        "UPDATE executions SET status = 'waiting', waiting_for = ?, wake_at = ?, owner = NULL,"
        " lease_until = NULL, timeout_at = CASE WHEN ? THEN timeout_at END WHERE id = ?",
        (op.waiting_for, to_ms(op.wake_at), bool(op.keep_timeout), op.execution_id),
    )
    if op.step is not None:
        conn.execute(_upsert_step(s.dialect), _step_params(op.step))
    return True


def _signal(s: Store, conn: Conn, op: DeliverSignal) -> str | None:
    d = s.dialect
    row = conn.execute(
        "SELECT status, waiting_for, claim, workflow_id, concurrency_key FROM executions"
        f" WHERE id = ?{d.lock()}",
        (op.execution_id,),
    ).fetchone()
    if row is None:
        return None
    payload = dumps(op.payload)
    mine = conn.execute(
        "SELECT 1 FROM execution_signals WHERE execution_id = ? AND name = ?"
        " AND created_at = ? AND payload = ?",
        (op.execution_id, op.name, to_ms(op.created_at), payload),
    ).fetchone()
    if mine:  # a retry: this very signal is stored already
        granted = op.grant_token is not None and row[0] == "queued" and row[2] == op.grant_token
        return "queued" if granted else "stored"
    if row[0] not in ("queued", "running", "waiting"):
        return None
    waiting = row[0] == "waiting" and row[1] == op.name
    if op.require_waiting and not waiting:
        return None
    cursor = conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (op.execution_id, op.name, payload, to_ms(op.created_at)),
    )
    if cursor.rowcount == 0:
        return None
    if waiting:
        # Granted at once, within its workflow's concurrency limits; else it waits queued.
        free = op.grant_owner is None or grantable(d, conn, row[3], row[4])
        conn.execute(
            "UPDATE executions SET status = 'queued', waiting_for = NULL, wake_at = NULL,"
            f" owner = ?, claim = ?, lease_until = {_lease(d)}, queued_reason = ? WHERE id = ?",
            (
                op.grant_owner if free else None,
                op.grant_token if free else None,
                _lease_value(d, op.lease_until) if free else None,
                None if free else BLOCKED,
                op.execution_id,
            ),
        )
        return "queued"
    return "stored"


def _save_progress(s: Store, conn: Conn, op: SaveProgress) -> bool:
    row = conn.execute(
        f"SELECT status, claim FROM executions WHERE id = ?{s.dialect.lock('SHARE')}",
        (op.execution_id,),
    ).fetchone()
    if row is None or row[0] != "running" or row[1] != op.token:
        return False
    conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (execution_id, name)"
        " DO UPDATE SET payload = excluded.payload, created_at = excluded.created_at",
        (op.execution_id, op.name, op.payload_json, to_ms(op.saved_at)),
    )
    return True


def _cancel(s: Store, conn: Conn, op: CancelExecution) -> Any:
    row = conn.execute(
        "SELECT status, claim, completed_at, started_at, parent_execution_id FROM executions"
        f" WHERE id = ?{s.dialect.lock()}",
        (op.execution_id,),
    ).fetchone()
    if row is None:
        return False
    status, claim, completed_at, started, parent = row
    if op.token is not None:
        ok = status == "running" and claim == op.token
    else:
        ok = status in ("queued", "running", "waiting", "paused")
    if not ok:
        again = ended_again(
            (status, claim, completed_at), op.status.value, op.completed_at, op.token
        )
        return AGAIN if again else False
    done = to_ms(op.completed_at) or 0
    duration = max(0, done - started) if started is not None else 0
    conn.execute(
        "UPDATE executions SET status = ?, completed_at = ?, duration_ms = ?, error = ?,"
        " owner = NULL, lease_until = NULL, waiting_for = NULL, wake_at = NULL WHERE id = ?",
        (op.status.value, done, duration, _json_or_none(op.error), op.execution_id),
    )
    if op.step is not None:
        conn.execute(_upsert_step(s.dialect), _step_params(op.step))
    _stats(conn, op.workflow_id, op.status, duration)
    if parent is not None:
        error = _json_or_none(op.error)
        tell_parent(conn, parent, op.execution_id, op.status.value, None, error, done)
    return True


def _release(s: Store, conn: Conn, op: ReleaseExecutions) -> int:
    if not op.claims:
        return 0
    _lock_in_order(s.dialect, conn, [c[0] for c in op.claims])
    cursor = conn.executemany(
        "UPDATE executions SET status = 'queued', owner = NULL, claim = NULL,"
        " lease_until = NULL WHERE id = ? AND claim = ? AND status IN ('queued', 'running')",
        list(op.claims),
    )
    return max(0, int(cursor.rowcount))


def _events_only(s: Store, conn: Conn, op: InsertEvents) -> bool:
    return True


#: Every write op, one at a time: ``handler(store, conn, op)``.
HANDLERS: dict[type, Callable[[Any, Conn, Any], Any]] = {
    InsertExecution: _insert,
    ClaimExecution: _claim,
    CheckpointStep: _checkpoint,
    FinishExecution: _finish,
    SuspendExecution: _suspend,
    DeliverSignal: _signal,
    SaveProgress: _save_progress,
    CancelExecution: _cancel,
    ReleaseExecutions: _release,
    InsertEvents: _events_only,
    **SCHEDULE_HANDLERS,
    **FLOW_HANDLERS,
}


# -- bulk handlers: one (locking) SELECT and a few executemany per kind of op ---------------


def _states(
    d: Dialect,
    conn: Conn,
    ids: Sequence[str],
    pausing: set[str] | None = None,
    parents: dict[str, str] | None = None,
) -> dict[str, State]:
    """Status, claim token and end time of the executions ``ids`` (locked until the
    transaction ends, in id order: two batches wait for each other, never deadlock);
    ``pausing`` receives those asked to pause (``pause_requested``), ``parents`` the
    parent execution of those that have one."""
    found: dict[str, State] = {}
    locked = _locked(d)
    for chunk in chunks(sorted(set(ids)) if locked else ids):
        condition, args = d.any_of("id", chunk)
        for row in conn.execute(
            "SELECT id, status, claim, completed_at, pause_requested, parent_execution_id"
            f" FROM executions WHERE {condition}{locked}",
            args,
        ):
            found[row[0]] = (row[1], row[2], row[3])
            if row[4] and pausing is not None:
                pausing.add(row[0])
            if row[5] and parents is not None:
                parents[row[0]] = row[5]
    return found


def _lock_in_order(d: Dialect, conn: Conn, ids: Sequence[str]) -> None:
    """Lock the rows of ``ids`` in id order, as every batch does (no deadlock with them)."""
    if d.row_locks:
        _states(d, conn, ids)


def _bulk_insert(s: Store, conn: Conn, ops: list[InsertExecution]) -> list[Any]:
    return list(s._insert_executions(conn, held(s, conn, [op.record for op in ops])))


def _bulk_claim(s: Store, conn: Conn, ops: list[ClaimExecution]) -> list[Any]:
    d = s.dialect
    pausing: set[str] = set()
    results = claims(ops, _states(d, conn, [op.execution_id for op in ops], pausing))
    if pausing:  # asked to pause before this run began: paused instead of run
        for index, op in enumerate(ops):
            if results[index] is True and op.execution_id in pausing:
                pause_now(conn, op.execution_id)
                results[index] = False
    conn.executemany(
        f"UPDATE executions SET status = 'running', owner = ?, claim = ?,"
        f" lease_until = {_lease(d)}, started_at = coalesce(started_at, ?) WHERE id = ?",
        [
            (
                op.owner,
                op.token,
                _lease_value(d, op.lease_until),
                to_ms(op.started_at),
                op.execution_id,
            )
            for op, result in zip(ops, results, strict=True)
            if result is True
        ],
    )
    return results


def _stored_steps(
    d: Dialect, conn: Conn, ops: list[CheckpointStep]
) -> dict[tuple[str, int], int | None]:
    """``completed_at`` of the stored steps of the checkpoints that carry events."""
    keys = [(op.step.execution_id, op.step.index) for op in ops if op.events]
    if not keys:
        return {}
    if d.arrays:  # one statement
        rows = conn.execute(
            "SELECT s.execution_id, s.idx, s.completed_at FROM execution_steps s"
            " JOIN unnest(?::text[], ?::int[]) AS k(execution_id, idx)"
            " ON s.execution_id = k.execution_id AND s.idx = k.idx",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        return {(row[0], row[1]): row[2] for row in rows}
    found: dict[tuple[str, int], int | None] = {}
    for key in keys:
        row = conn.execute(
            "SELECT completed_at FROM execution_steps WHERE execution_id = ? AND idx = ?", key
        ).fetchone()
        if row is not None:
            found[key] = row[0]
    return found


def _bulk_checkpoint(s: Store, conn: Conn, ops: list[CheckpointStep]) -> list[Any]:
    # Leases are renewed by the node's heartbeat; a checkpoint only checks the claim.
    d = s.dialect
    pausing: set[str] = set()
    states = _states(d, conn, [op.step.execution_id for op in ops], pausing)
    results = checkpoints(ops, states, _stored_steps(d, conn, ops))
    conn.executemany(
        _upsert_step(d),
        [_step_params(op.step) for op, ok in zip(ops, results, strict=True) if ok is True],
    )
    if pausing:  # the step boundary a pause waited for: the execution pauses here
        for index, op in enumerate(ops):
            if results[index] is True and op.step.execution_id in pausing:
                pause_now(conn, op.step.execution_id)
                results[index] = PAUSED
    return results


def _bulk_finish(s: Store, conn: Conn, ops: list[FinishExecution]) -> list[Any]:
    parents: dict[str, str] = {}
    results = finishes(
        ops, _states(s.dialect, conn, [op.execution_id for op in ops], None, parents)
    )
    updates = []
    steps = []
    stats: dict[str, list[int]] = {}
    for op, result in zip(ops, results, strict=True):
        if result is not True:
            continue
        updates.append(
            (
                op.status.value,
                to_ms(op.completed_at),
                op.duration_ms,
                _json_or_none(op.result, op.result_json),
                _json_or_none(op.error),
                op.execution_id,
            )
        )
        if op.step is not None:
            steps.append(_step_params(op.step))
        if op.execution_id in parents:
            tell_parent(
                conn,
                parents[op.execution_id],
                op.execution_id,
                op.status.value,
                _json_or_none(op.result, op.result_json),
                _json_or_none(op.error),
                to_ms(op.completed_at),
            )
        counts = stats.setdefault(op.workflow_id, [0, 0, 0, 0])
        counts[0] += 1
        counts[1] += op.status is ExecutionStatus.COMPLETED
        counts[2] += op.status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT)
        counts[3] += op.duration_ms
    conn.executemany(
        "UPDATE executions SET status = ?, completed_at = ?, duration_ms = ?, result = ?,"
        " error = ?, owner = NULL, lease_until = NULL, waiting_for = NULL, wake_at = NULL"
        " WHERE id = ?",
        updates,
    )
    conn.executemany(_upsert_step(s.dialect), steps)
    conn.executemany(
        "UPDATE workflows SET runs_total = runs_total + ?, runs_success = runs_success + ?,"
        " runs_failed = runs_failed + ?, duration_total_ms = duration_total_ms + ? WHERE id = ?",
        [(*counts, workflow_id) for workflow_id, counts in sorted(stats.items())],
    )
    return results


#: The write ops a batch applies together: ``handler(store, conn, ops)``.
BULK: dict[type, Callable[[Any, Conn, Any], list[Any]]] = {
    InsertExecution: _bulk_insert,
    ClaimExecution: _bulk_claim,
    CheckpointStep: _bulk_checkpoint,
    FinishExecution: _bulk_finish,
    **SCHEDULE_BULK,
}
