"""SQLite storage of executions, steps and signals (mixed into SQLiteStore)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage._fencing import (
    MISSING,
    State,
    checkpoints,
    claims,
    ended_again,
    finishes,
    new_claim,
    types_filter,
)
from abi_engine.storage._nodelocks import NodeLocks
from abi_engine.storage._rows_executions import _EXEC_COLUMNS, _FROM, _UNFINISHED, _row_to_record
from abi_engine.storage.records import (
    AGAIN,
    TIMEOUT_SUFFIX,
    CancelExecution,
    CheckpointStep,
    ClaimExecution,
    DeliverSignal,
    ExecutionQuery,
    ExecutionRecord,
    FinishExecution,
    InsertEvents,
    InsertExecution,
    ReleaseExecutions,
    SaveProgress,
    StepRecord,
    SuspendExecution,
    WriteOp,
    applied,
)

__all__ = ["ExecutionsMixin"]


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
        step.result_json
        if step.result_json is not None
        else (None if step.result is None else dumps(step.result)),
        None if step.error is None else dumps(step.error),
    )


_UPSERT_STEP = (
    "INSERT OR REPLACE INTO execution_steps (execution_id, idx, name, status, started_at,"
    " completed_at, duration_ms, attempts, result, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class ExecutionsMixin:
    """Execution storage for :class:`~abi_engine.storage.sqlite.SQLiteStore`."""

    # Provided by SQLiteStore.
    transaction: Callable[[], Any]
    _read: Callable[[], Any]
    _insert_events: Callable[[sqlite3.Connection, Sequence[Any]], None]
    _nodes: NodeLocks | None

    # -- writes ------------------------------------------------------------------------

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply ``ops`` in one transaction; return each one's result in order.

        If the batch fails as a whole, each op is retried in its own
        transaction so that one bad op cannot sink the others; its result is
        then the exception it raised.
        """
        try:
            with self.transaction() as conn:
                return self._apply_batch(conn, ops)
        except Exception:
            if len(ops) == 1:
                raise
        results: list[Any] = []
        for op in ops:
            try:
                with self.transaction() as conn:
                    results.append(self._apply_one(conn, op))
            except Exception as exc:
                results.append(exc)
        return results

    def _apply_batch(self, conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply a batch: the hot kinds of op together (a few statements per kind).

        Ops in one batch come from different tasks, each waiting for its own
        result, so no op of a batch depends on another one: grouping them by
        kind is one valid order among the concurrent ones.
        """
        results: list[Any] = [None] * len(ops)
        groups: dict[type, list[int]] = {}
        for index, op in enumerate(ops):
            kind = type(op)
            if kind in _BULK and not (kind is InsertExecution and op.record.idempotency_key):  # type: ignore[attr-defined]
                groups.setdefault(kind, []).append(index)
            else:
                results[index] = _HANDLERS[kind](conn, op)
        for kind, indexes in groups.items():
            for index, result in zip(
                indexes, _BULK[kind](conn, [ops[i] for i in indexes]), strict=True
            ):
                results[index] = result
        events = [
            event
            for op, result in zip(ops, results, strict=True)
            if op.events and applied(result)
            for event in op.events
        ]
        self._insert_events(conn, events)
        return results

    def _apply_one(self, conn: sqlite3.Connection, op: WriteOp) -> Any:
        handler = _HANDLERS[type(op)]
        result = handler(conn, op)
        if applied(result) and op.events:
            self._insert_events(conn, op.events)
        return result

    # -- reads ---------------------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_EXEC_COLUMNS} {_FROM} WHERE e.id = ?", (execution_id,)
            ).fetchone()
        return None if row is None else _row_to_record(row)

    def get_steps(self, execution_id: str) -> list[StepRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT execution_id, idx, name, status, started_at, completed_at, duration_ms,"
                " attempts, result, error FROM execution_steps WHERE execution_id = ?"
                " ORDER BY idx",
                (execution_id,),
            ).fetchall()
        return [
            StepRecord(
                execution_id=r[0],
                index=r[1],
                name=r[2],
                status=StepStatus(r[3]),
                started_at=from_ms(r[4]),
                completed_at=from_ms(r[5]),
                duration_ms=r[6],
                attempts=r[7],
                result=loads(r[8]),
                error=loads(r[9]),
            )
            for r in rows
        ]

    def get_signals(self, execution_id: str) -> dict[str, Any]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, payload FROM execution_signals WHERE execution_id = ?",
                (execution_id,),
            ).fetchall()
        return {name: loads(payload) for name, payload in rows}

    def find_execution_by_key(self, workflow_id: str, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT id FROM executions WHERE workflow_id = ? AND idempotency_key = ?",
                (workflow_id, key),
            ).fetchone()
        return None if row is None else str(row[0])

    def list_executions(self, query: ExecutionQuery) -> tuple[list[ExecutionRecord], int]:
        where: list[str] = []
        args: list[Any] = []
        if query.workflow_id is not None:
            where.append("e.workflow_id = ?")
            args.append(query.workflow_id)
        statuses = query.status_values()
        if len(statuses) == 1:
            where.append("e.status = ?")
            args.append(statuses[0])
        elif statuses:
            where.append(f"e.status IN ({', '.join(['?'] * len(statuses))})")
            args.extend(statuses)
        if query.schedule_id is not None:
            where.append("e.schedule_id = ?")
            args.append(query.schedule_id)
        if query.created_by is not None:
            where.append("e.created_by = ?")
            args.append(query.created_by)
        if query.start is not None:
            where.append("e.created_at >= ?")
            args.append(to_ms(query.start))
        if query.end is not None:
            where.append("e.created_at <= ?")
            args.append(to_ms(query.end))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        offset = (query.page - 1) * query.page_size
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM executions e {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT {_EXEC_COLUMNS} {_FROM} {clause}"
                " ORDER BY e.created_at DESC, e.id DESC LIMIT ? OFFSET ?",
                [*args, query.page_size, offset],
            ).fetchall()
        return [_row_to_record(r) for r in rows], int(total)

    def claim_recoverable(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        types: Collection[str] | None = None,
        dead: Collection[str] = (),
    ) -> list[tuple[str, int, int]]:
        """Grant ``owner`` unfinished executions nobody holds; return ``(id, priority, token)``.

        Candidates: queued or running executions with no owner, an expired
        lease (whoever owned them, ``owner`` included: what a node owns but no
        longer holds is recovered like anything else) or an owner in ``dead``
        (nodes known to have ended, :meth:`dead_nodes`), and waiting executions
        whose ``wake_at`` passed (a timeout signal is recorded for them).
        ``types``: only executions of these workflow types (a node runs only
        the types it has). Each grant is a fresh claim token.
        """
        now_ms = to_ms(now)
        lease_ms = to_ms(lease_until)
        type_clause, type_args = _types_clause(types)
        taken: list[tuple[str, int, int]] = []
        with self.transaction() as conn:
            # Waits that timed out: record a signal the step can see, queue them.
            for ex_id, waiting_for, priority in conn.execute(
                "SELECT id, waiting_for, priority FROM executions"
                f" WHERE status = 'waiting' AND wake_at <= ?{type_clause}"
                " ORDER BY wake_at LIMIT ?",
                (now_ms, *type_args, limit),
            ).fetchall():
                conn.execute(
                    "INSERT OR IGNORE INTO execution_signals"
                    " (execution_id, name, payload, created_at) VALUES (?, ?, 'null', ?)",
                    (ex_id, f"{waiting_for}{TIMEOUT_SUFFIX}", now_ms),
                )
                taken.append((ex_id, priority, new_claim()))
            # Unowned work, expired leases, and work of nodes that ended.
            gone = sorted(dead)
            dead_clause = f" OR owner IN ({', '.join('?' for _ in gone)})" if gone else ""
            for ex_id, priority in conn.execute(
                "SELECT id, priority FROM executions WHERE status IN ('queued', 'running')"
                f" AND (lease_until IS NULL OR lease_until < ?{dead_clause}){type_clause}"
                " ORDER BY priority, created_at LIMIT ?",
                (now_ms, *gone, *type_args, max(0, limit - len(taken))),
            ).fetchall():
                taken.append((ex_id, priority, new_claim()))
            conn.executemany(
                "UPDATE executions SET owner = ?, claim = ?, lease_until = ?,"
                " waiting_for = NULL, wake_at = NULL,"
                " status = 'queued'"
                " WHERE id = ?",
                [(owner, token, lease_ms, ex_id) for ex_id, _, token in taken],
            )
        return taken

    def register_node(self, node_id: str) -> None:
        """Mark node ``node_id`` (a runtime of this process) alive until
        :meth:`unregister_node` or the end of the process (a kernel file lock)."""
        if self._nodes is not None:
            self._nodes.register(node_id)

    def unregister_node(self, node_id: str) -> None:
        if self._nodes is not None:
            self._nodes.unregister(node_id)

    def dead_nodes(self) -> list[str]:
        """Nodes known to have ended (their process is gone) that still own unfinished
        executions; the files of dead nodes that own nothing any more are removed."""
        if self._nodes is None:
            return []
        dead = self._nodes.dead()
        if not dead:
            return []
        owning: list[str] = []
        with self._read() as conn:
            for node_id in dead:
                row = conn.execute(
                    "SELECT 1 FROM executions WHERE owner = ?"
                    " AND status IN ('queued', 'running') LIMIT 1",
                    (node_id,),
                ).fetchone()
                if row is None:
                    self._nodes.forget(node_id)
                else:
                    owning.append(node_id)
        return owning

    def renew_leases(self, claims: Mapping[str, int], lease_until: datetime) -> list[str]:
        """Extend the lease of each execution still queued or running under its claim
        in ``claims`` (id -> token) to ``lease_until``; return the ids that were not
        (lost: taken over, cancelled, ended).

        In transactions of ``RENEW_CHUNK`` executions, so that other writers (the
        group commit) pass in between when a node holds very many.
        """
        lease_ms = to_ms(lease_until)
        ids = list(claims)
        lost: list[str] = []
        for start in range(0, len(ids), RENEW_CHUNK):
            chunk = ids[start : start + RENEW_CHUNK]
            with self.transaction() as conn:
                current = _claims(conn, chunk)
                kept = [i for i in chunk if current.get(i) == claims[i]]
                for at in range(0, len(kept), 500):
                    part = kept[at : at + 500]
                    conn.execute(
                        "UPDATE executions SET lease_until = ?"
                        f" WHERE id IN ({', '.join('?' * len(part))})",
                        (lease_ms, *part),
                    )
            lost.extend(i for i in chunk if current.get(i) != claims[i])
        return lost

    def next_wake_at(self) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT min(wake_at) FROM executions WHERE status = 'waiting'"
            ).fetchone()
        return from_ms(row[0]) if row and row[0] is not None else None


# -- op handlers -------------------------------------------------------------------------

#: Executions whose leases one transaction of ``renew_leases`` extends.
RENEW_CHUNK = 2000


def _types_clause(types: Collection[str] | None) -> tuple[str, list[str]]:
    names = types_filter(types)
    if names is None:
        return "", []
    return f" AND workflow_type IN ({', '.join('?' for _ in names) or 'NULL'})", names


def _claims(conn: sqlite3.Connection, ids: list[str]) -> dict[str, int | None]:
    """The claim token of each of ``ids`` that is queued or running."""
    found: dict[str, int | None] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        # By primary key only: a status condition here makes SQLite scan a status index.
        for row in conn.execute(
            f"SELECT id, claim, status FROM executions WHERE id IN ({marks})", chunk
        ):
            if row[2] in ("queued", "running"):
                found[row[0]] = row[1]
    return found


def _insert(conn: sqlite3.Connection, op: InsertExecution) -> Any:
    return insert_execution_row(conn, op.record)


_INSERT_EXECUTION = (
    "INSERT INTO executions (id, workflow_id, workflow_type, status, parameters,"
    " configuration, plan, created_at, started_at, callback_url, callback_secret,"
    " schedule_id, created_by, idempotency_key, priority, timeout_at, owner, lease_until,"
    " claim) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)


def insert_execution_row(conn: sqlite3.Connection, r: ExecutionRecord) -> Any:
    """Insert an execution row; ``False`` when its idempotency key is already taken.

    A row of the same id already there is this insert's own (ids are random):
    a retry after a commit whose outcome was lost, so ``AGAIN``.
    """
    cursor = conn.execute(_INSERT_EXECUTION, execution_row(r))
    if cursor.rowcount > 0:
        return True
    found = conn.execute("SELECT 1 FROM executions WHERE id = ?", (r.id,)).fetchone()
    return AGAIN if found is not None else False


def insert_execution_rows(conn: sqlite3.Connection, records: Sequence[ExecutionRecord]) -> None:
    """Insert execution rows that have no idempotency key (nothing to refuse), at once."""
    conn.executemany(_INSERT_EXECUTION, [execution_row(r) for r in records])


def execution_row(r: ExecutionRecord) -> tuple[Any, ...]:
    """The values of an execution row, in ``_INSERT_EXECUTION``'s order."""
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
        to_ms(r.lease_until),
        r.claim,
    )


def _claim(conn: sqlite3.Connection, op: ClaimExecution) -> Any:
    return _bulk_claim(conn, [op])[0]


def _runs_under(conn: sqlite3.Connection, execution_id: str, token: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM executions WHERE id = ? AND claim = ? AND status = 'running'",
        (execution_id, token),
    ).fetchone()
    return row is not None


def _checkpoint(conn: sqlite3.Connection, op: CheckpointStep) -> Any:
    return _bulk_checkpoint(conn, [op])[0]


def _stats(conn: sqlite3.Connection, workflow_id: str, status: ExecutionStatus, ms: int) -> None:
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


def _ended_already(
    conn: sqlite3.Connection,
    execution_id: str,
    status: ExecutionStatus,
    completed_at: datetime,
    token: int | None,
) -> Any:
    """``AGAIN`` when this very ending already applied (a retry), else ``False``."""
    state = _states(conn, [execution_id]).get(execution_id, MISSING)
    return AGAIN if ended_again(state, status.value, completed_at, token) else False


def _finish(conn: sqlite3.Connection, op: FinishExecution) -> Any:
    return _bulk_finish(conn, [op])[0]


def _suspend(conn: sqlite3.Connection, op: SuspendExecution) -> Any:
    row = conn.execute(
        "SELECT status, claim, waiting_for FROM executions WHERE id = ?", (op.execution_id,)
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
        (op.waiting_for, to_ms(op.wake_at), int(op.keep_timeout), op.execution_id),
    )
    if op.step is not None:
        conn.execute(_UPSERT_STEP, _step_params(op.step))
    return True


def _signal(conn: sqlite3.Connection, op: DeliverSignal) -> str | None:
    row = conn.execute(
        "SELECT status, waiting_for, claim FROM executions WHERE id = ?", (op.execution_id,)
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
        conn.execute(
            "UPDATE executions SET status = 'queued', waiting_for = NULL, wake_at = NULL,"
            " owner = ?, claim = ?, lease_until = ? WHERE id = ?",
            (op.grant_owner, op.grant_token, to_ms(op.lease_until), op.execution_id),
        )
        return "queued"
    return "stored"


def _save_progress(conn: sqlite3.Connection, op: SaveProgress) -> bool:
    if not _runs_under(conn, op.execution_id, op.token):
        return False
    conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (execution_id, name)"
        " DO UPDATE SET payload = excluded.payload, created_at = excluded.created_at",
        (op.execution_id, op.name, op.payload_json, to_ms(op.saved_at)),
    )
    return True


def _cancel(conn: sqlite3.Connection, op: CancelExecution) -> Any:
    row = conn.execute(
        "SELECT started_at FROM executions WHERE id = ?", (op.execution_id,)
    ).fetchone()
    started = row[0] if row else None
    done = to_ms(op.completed_at) or 0
    duration = max(0, done - started) if started is not None else 0
    claim_clause = " AND claim = ? AND status = 'running'" if op.token is not None else ""
    cursor = conn.execute(
        "UPDATE executions SET status = ?, completed_at = ?, duration_ms = ?, error = ?,"
        " owner = NULL, lease_until = NULL, waiting_for = NULL, wake_at = NULL"
        f" WHERE id = ? AND status IN {_UNFINISHED}{claim_clause}",
        (
            op.status.value,
            done,
            duration,
            None if op.error is None else dumps(op.error),
            op.execution_id,
            *(() if op.token is None else (op.token,)),
        ),
    )
    if cursor.rowcount == 0:
        return _ended_already(conn, op.execution_id, op.status, op.completed_at, op.token)
    if op.step is not None:
        conn.execute(_UPSERT_STEP, _step_params(op.step))
    _stats(conn, op.workflow_id, op.status, duration)
    return True


def _release(conn: sqlite3.Connection, op: ReleaseExecutions) -> int:
    cursor = conn.executemany(
        "UPDATE executions SET status = 'queued', owner = NULL, claim = NULL,"
        " lease_until = NULL WHERE id = ? AND claim = ? AND status IN ('queued', 'running')",
        list(op.claims),
    )
    return max(0, cursor.rowcount)


def _events_only(conn: sqlite3.Connection, op: InsertEvents) -> bool:
    return True


_HANDLERS: dict[type[WriteOp], Callable[[sqlite3.Connection, Any], Any]] = {
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
}


# -- bulk handlers: one SELECT and a few executemany per kind of op -----------------------


def _states(conn: sqlite3.Connection, ids: list[str]) -> dict[str, State]:
    """Status, claim token and end time of the executions ``ids``."""
    found: dict[str, State] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT id, status, claim, completed_at FROM executions WHERE id IN ({marks})",
            chunk,
        ):
            found[row[0]] = (row[1], row[2], row[3])
    return found


def _bulk_insert(conn: sqlite3.Connection, ops: list[InsertExecution]) -> list[Any]:
    return [insert_execution_row(conn, op.record) for op in ops]


def _bulk_claim(conn: sqlite3.Connection, ops: list[ClaimExecution]) -> list[Any]:
    results = claims(ops, _states(conn, [op.execution_id for op in ops]))
    conn.executemany(
        "UPDATE executions SET status = 'running', owner = ?, claim = ?, lease_until = ?,"
        " started_at = coalesce(started_at, ?) WHERE id = ?",
        [
            (op.owner, op.token, to_ms(op.lease_until), to_ms(op.started_at), op.execution_id)
            for op, result in zip(ops, results, strict=True)
            if result is True
        ],
    )
    return results


def _stored_steps(
    conn: sqlite3.Connection, ops: list[CheckpointStep]
) -> dict[tuple[str, int], int | None]:
    """``completed_at`` of the stored steps of the checkpoints that carry events."""
    found: dict[tuple[str, int], int | None] = {}
    for op in ops:
        if op.events:
            row = conn.execute(
                "SELECT completed_at FROM execution_steps WHERE execution_id = ? AND idx = ?",
                (op.step.execution_id, op.step.index),
            ).fetchone()
            if row is not None:
                found[(op.step.execution_id, op.step.index)] = row[0]
    return found


def _bulk_checkpoint(conn: sqlite3.Connection, ops: list[CheckpointStep]) -> list[Any]:
    # Leases are renewed by the node's heartbeat; a checkpoint only checks the claim.
    states = _states(conn, [op.step.execution_id for op in ops])
    results = checkpoints(ops, states, _stored_steps(conn, ops))
    conn.executemany(
        _UPSERT_STEP,
        [_step_params(op.step) for op, ok in zip(ops, results, strict=True) if ok is True],
    )
    return results


def _bulk_finish(conn: sqlite3.Connection, ops: list[FinishExecution]) -> list[Any]:
    results = finishes(ops, _states(conn, [op.execution_id for op in ops]))
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
                op.result_json
                if op.result_json is not None
                else (None if op.result is None else dumps(op.result)),
                None if op.error is None else dumps(op.error),
                op.execution_id,
            )
        )
        if op.step is not None:
            steps.append(_step_params(op.step))
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
    conn.executemany(_UPSERT_STEP, steps)
    conn.executemany(
        "UPDATE workflows SET runs_total = runs_total + ?, runs_success = runs_success + ?,"
        " runs_failed = runs_failed + ?, duration_total_ms = duration_total_ms + ? WHERE id = ?",
        [(*counts, workflow_id) for workflow_id, counts in stats.items()],
    )
    return results


_BULK: dict[type, Callable[[sqlite3.Connection, Any], list[Any]]] = {
    InsertExecution: _bulk_insert,
    ClaimExecution: _bulk_claim,
    CheckpointStep: _bulk_checkpoint,
    FinishExecution: _bulk_finish,
}


def _register_schedule_handlers() -> None:
    from abi_engine.storage.sqlite_schedules import SCHEDULE_BULK, SCHEDULE_HANDLERS

    _HANDLERS.update(SCHEDULE_HANDLERS)
    _BULK.update(SCHEDULE_BULK)


_register_schedule_handlers()
