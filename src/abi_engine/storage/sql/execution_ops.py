"""The write operations of executions and schedules, in the shared SQL.

Each handler is ``handler(store, conn, op)`` (one op) or ``handler(store,
conn, ops)`` (the ops of one kind of a batch, :data:`BULK`); it reads the
executions it writes (one query for a batch; where rows are locked, in id
order, so two batches wait for each other rather than deadlock) and asks the
claim rules of ``storage/_fencing.py`` what applies, then writes the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from abi_engine.models import ExecutionStatus
from abi_engine.storage._codec import dumps, to_ms
from abi_engine.storage._fencing import State, checkpoints, claims, ended_again, finishes
from abi_engine.storage.records import (
    AGAIN,
    PAUSED,
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    ExecutionRecord,
    FinishExecution,
    InsertEvents,
    InsertExecution,
    ReleaseExecutions,
    SaveProgress,
    StepRecord,
)
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks, write_rows
from abi_engine.storage.sql.flow_ops import FLOW_HANDLERS, insert_held, pause_now, tell_parent
from abi_engine.storage.sql.handoff import hand_off
from abi_engine.storage.sql.handoff import lease_sql as _lease
from abi_engine.storage.sql.handoff import lease_value as _lease_value
from abi_engine.storage.sql.schedules import SCHEDULE_BULK, SCHEDULE_HANDLERS
from abi_engine.storage.sql.shaping import SHAPING_COLUMNS, shaping_values

__all__ = [
    "BULK",
    "EXECUTION_COLUMNS",
    "EXECUTION_TYPES",
    "HANDLERS",
    "STATEFUL",
    "BatchStates",
    "execution_row",
    "insert_execution_sql",
    "insert_executions_sql",
]


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


_STEP_TYPES = ("text", "int", "text", "text", "bigint", "bigint", "bigint", "int", "text", "text")


@cache
def _upsert_step(d: Dialect) -> str:
    return d.upsert("execution_steps", _STEP_COLUMNS, key=("execution_id", "idx"))


def _store_steps(d: Dialect, conn: Conn, steps: Sequence[StepRecord]) -> None:
    """Upsert ``steps``; of two of the same step, the later one is stored (as one
    statement per step would leave it)."""
    rows = {(s.execution_id, s.index): _step_params(s) for s in steps}
    sets = ", ".join(f"{c} = excluded.{c}" for c in _STEP_COLUMNS[2:])
    write_rows(
        d,
        conn,
        list(rows.values()),
        each=_upsert_step(d),
        together=f"INSERT INTO execution_steps ({', '.join(_STEP_COLUMNS)}) SELECT * FROM {{rows}}"
        f" ON CONFLICT (execution_id, idx) DO UPDATE SET {sets}",
        types=_STEP_TYPES,
    )


def _locked(d: Dialect) -> str:
    """The end of a ``SELECT`` of executions by id that locks them, in id order (the
    order every batch locks in: no deadlock between them); nothing without row locks."""
    return f" ORDER BY id{d.lock()}" if d.row_locks else ""


#: An execution row's columns in :func:`execution_row`'s order, with their PostgreSQL
#: array types (for the many-row insert): both inserts are written from this one list.
EXECUTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("workflow_id", "text"),
    ("workflow_type", "text"),
    ("status", "text"),
    ("parameters", "text"),
    ("configuration", "text"),
    ("plan", "text"),
    ("created_at", "bigint"),
    ("started_at", "bigint"),
    ("callback_url", "text"),
    ("callback_secret", "text"),
    ("schedule_id", "text"),
    ("created_by", "text"),
    ("idempotency_key", "text"),
    ("priority", "int"),
    ("timeout_at", "bigint"),
    ("owner", "text"),
    ("lease_until", "bigint"),
    ("claim", "bigint"),
    ("rerun_of", "text"),
    ("queued_reason", "text"),
    ("trace_context", "text"),
    ("parent_execution_id", "text"),
    ("scheduled_for", "bigint"),
    ("concurrency_key", "text"),
    *SHAPING_COLUMNS,
)
_NAMES = ", ".join(name for name, _ in EXECUTION_COLUMNS)
#: The array types of :data:`EXECUTION_COLUMNS`, in order.
EXECUTION_TYPES = tuple(t for _, t in EXECUTION_COLUMNS)


@cache
def insert_execution_sql(d: Dialect) -> str:
    """The insert of an execution row (values: :func:`execution_row`), nothing on conflict."""
    values = ", ".join(_lease(d) if n == "lease_until" else "?" for n, _ in EXECUTION_COLUMNS)
    return f"INSERT INTO executions ({_NAMES}) VALUES ({values}) ON CONFLICT DO NOTHING"


@cache
def insert_executions_sql(d: Dialect) -> str:
    """The insert of many execution rows in one statement (one array per column, of
    :func:`execution_row` values), returning the ids inserted; for dialects with arrays."""
    lease = "u.lease_until" if d.clock is None else f"{d.clock} + u.lease_until"
    select = ", ".join(lease if n == "lease_until" else f"u.{n}" for n, _ in EXECUTION_COLUMNS)
    arrays = ", ".join(f"{d.array_mark}::{t}[]" for _, t in EXECUTION_COLUMNS)
    return (
        f"INSERT INTO executions ({_NAMES}) SELECT {select} FROM unnest({arrays})"
        f" AS u({_NAMES}) ON CONFLICT DO NOTHING RETURNING id"
    )


def execution_row(d: Dialect, r: ExecutionRecord) -> tuple[Any, ...]:
    """The values of an execution row, in :func:`insert_execution_sql`'s order."""
    return (
        r.id,
        r.workflow_id,
        r.workflow_type,
        r.status._value_,  # (``.value`` is a property: two Python calls)
        dumps(r.parameters),
        r.configuration_json if r.configuration_json is not None else dumps(r.configuration),
        r.plan_json if r.plan_json is not None else dumps(r.plan),
        to_ms(r.created_at),
        None if r.started_at is None else to_ms(r.started_at),
        r.callback_url,
        r.callback_secret,
        r.schedule_id,
        r.created_by,
        r.idempotency_key,
        r.priority,
        None if r.timeout_at is None else to_ms(r.timeout_at),
        r.owner,
        _lease_value(d, r.lease_until),
        r.claim,
        r.rerun_of,
        r.queued_reason,
        r.trace_context,
        r.parent_execution_id,
        None if r.scheduled_for is None else to_ms(r.scheduled_for),
        r.concurrency_key,
        *shaping_values(r),
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
    return insert_held(s, conn, [op.record], [op])[0]


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
    return _read_states(_send_states(d, conn, ids), pausing, parents)


def _send_states(d: Dialect, conn: Conn, ids: Sequence[str]) -> list[Any]:
    """The queries of :func:`_states`, sent: their cursors (in pipeline mode, nothing
    waited for yet)."""
    locked = _locked(d)
    cursors = []
    for chunk in chunks(sorted(set(ids)) if locked else ids):
        condition, args = d.any_of("id", chunk)
        cursors.append(
            conn.execute(
                "SELECT id, status, claim, completed_at, pause_requested, parent_execution_id"
                f" FROM executions WHERE {condition}{locked}",
                args,
            )
        )
    return cursors


def _read_states(
    cursors: list[Any], pausing: set[str] | None, parents: dict[str, str] | None
) -> dict[str, State]:
    found: dict[str, State] = {}
    for cursor in cursors:
        for row in cursor.fetchall():
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
    return insert_held(s, conn, [op.record for op in ops], ops)


class BatchStates:
    """What the claims, checkpoints and finishes of a batch read of their executions, in
    one query (rows locked in id order): status, claim and end time (``states``, which
    the claim rules update as ops apply), those asked to pause (``pausing``), the
    parents of child executions (``parents``)."""

    def __init__(self, d: Dialect, conn: Conn, ops: Sequence[Any]) -> None:
        self._pausing: set[str] = set()
        self._parents: dict[str, str] = {}
        self._cursors = _send_states(d, conn, [_target(op) for op in ops])
        self._states: dict[str, State] | None = None
        if not d.arrays:  # SQLite: read now (its cursors step through live rows)
            self._read()

    def _read(self) -> dict[str, State]:
        """Read when first needed: in pipeline mode the query goes with the batch's next
        one whose answer is waited for (the paused-workflow check of its inserts)."""
        if self._states is None:
            self._states = _read_states(self._cursors, self._pausing, self._parents)
        return self._states

    @property
    def states(self) -> dict[str, State]:
        return self._read()

    @property
    def pausing(self) -> set[str]:
        self._read()
        return self._pausing

    @property
    def parents(self) -> dict[str, str]:
        self._read()
        return self._parents


def _target(op: Any) -> str:
    """The execution an op of :data:`STATEFUL` writes."""
    return str(op.step.execution_id if isinstance(op, CheckpointStep) else op.execution_id)


def _bulk_claim(
    s: Store, conn: Conn, ops: list[ClaimExecution], read: BatchStates | None = None
) -> list[Any]:
    d = s.dialect
    read = read or BatchStates(d, conn, ops)
    results = claims(ops, read.states)
    if read.pausing:  # asked to pause before this run began: paused instead of run
        for index, op in enumerate(ops):
            if results[index] is True and op.execution_id in read.pausing:
                pause_now(conn, op.execution_id)
                results[index] = False
    write_rows(
        d,
        conn,
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
        each=f"UPDATE executions SET status = 'running', owner = ?, claim = ?,"
        f" lease_until = {_lease(d)}, started_at = coalesce(started_at, ?) WHERE id = ?",
        together=f"UPDATE executions AS e SET status = 'running', owner = u.owner,"
        f" claim = u.claim, lease_until = {d.clock} + u.lease,"
        " started_at = coalesce(e.started_at, u.started_at)"
        " FROM {rows} AS u(owner, claim, lease, started_at, id) WHERE e.id = u.id",
        types=("text", "bigint", "bigint", "bigint", "text"),
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
            f" JOIN unnest({d.array_mark}::text[], {d.array_mark}::int[]) AS k(execution_id, idx)"
            " ON s.execution_id = k.execution_id AND s.idx = k.idx",
            (d.array([k[0] for k in keys], "text"), d.array([k[1] for k in keys], "int")),
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


def _bulk_checkpoint(
    s: Store, conn: Conn, ops: list[CheckpointStep], read: BatchStates | None = None
) -> list[Any]:
    # Leases are renewed by the node's heartbeat; a checkpoint only checks the claim.
    d = s.dialect
    read = read or BatchStates(d, conn, ops)
    results = checkpoints(ops, read.states, _stored_steps(d, conn, ops))
    _store_steps(d, conn, [op.step for op, ok in zip(ops, results, strict=True) if ok is True])
    if read.pausing:  # the step boundary a pause waited for: the execution pauses here
        for index, op in enumerate(ops):
            if results[index] is True and op.step.execution_id in read.pausing:
                pause_now(conn, op.step.execution_id)
                results[index] = PAUSED
    return results


def _write_finishes(d: Dialect, conn: Conn, updates: list[tuple[Any, ...]]) -> None:
    """End the executions of ``updates`` (status, completed_at, duration, result, error, id)."""
    write_rows(
        d,
        conn,
        updates,
        each="UPDATE executions SET status = ?, completed_at = ?, duration_ms = ?, result = ?,"
        " error = ?, owner = NULL, lease_until = NULL, waiting_for = NULL, wake_at = NULL"
        " WHERE id = ?",
        together="UPDATE executions AS e SET status = u.status, completed_at = u.completed_at,"
        " duration_ms = u.duration_ms, result = u.result, error = u.error, owner = NULL,"
        " lease_until = NULL, waiting_for = NULL, wake_at = NULL"
        " FROM {rows} AS u(status, completed_at, duration_ms, result, error, id)"
        " WHERE e.id = u.id",
        types=("text", "bigint", "bigint", "text", "text", "text"),
    )


def _bulk_finish(
    s: Store, conn: Conn, ops: list[FinishExecution], read: BatchStates | None = None
) -> list[Any]:
    read = read or BatchStates(s.dialect, conn, ops)
    parents = read.parents
    results = finishes(ops, read.states)
    updates = []
    steps: list[StepRecord] = []
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
            steps.append(op.step)
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
    _write_finishes(s.dialect, conn, updates)
    # Their slots are free now: the next executions granted in this very commit (#16).
    hand_off(s, conn, ops, results, list(read.states))
    _store_steps(s.dialect, conn, steps)
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

#: The bulk handlers that take a batch's :class:`BatchStates` (read once for all of them).
STATEFUL = frozenset({ClaimExecution, CheckpointStep, FinishExecution})
