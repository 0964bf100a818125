"""PostgreSQL storage of executions, steps and signals (mixed into PostgresStore).

The same operations as :mod:`abi_engine.storage.sqlite_executions`, with the
row locks that make them safe with many processes on one database (see
:mod:`abi_engine.storage.postgres`): the bulk handlers read their executions
``FOR UPDATE`` (in id order, so two batches wait for each other rather than
deadlock on the same rows), and :meth:`ExecutionsMixin.claim_recoverable`
takes its work ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from abi_engine.ids import utcnow
from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage._fencing import (
    State,
    checkpoints,
    claims,
    ended_again,
    finishes,
    new_claim,
    types_filter,
)
from abi_engine.storage._rows_executions import _EXEC_COLUMNS, _FROM, _row_to_record
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

__all__ = ["ExecutionsMixin", "insert_execution_rows"]

Conn = psycopg.Connection[Any]

#: The database's clock in ms: leases are set and judged by it, never by a host's clock.
DB_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


def lease_ms(lease_until: datetime | None) -> int | None:
    """A lease given in this host's clock as a duration from now (ms), for the SQL to
    add to the database's clock: hosts whose clocks disagree still agree on leases."""
    if lease_until is None:
        return None
    return round((lease_until - utcnow()).total_seconds() * 1000)


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


_UPSERT_STEP = (
    "INSERT INTO execution_steps (execution_id, idx, name, status, started_at,"
    " completed_at, duration_ms, attempts, result, error)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (execution_id, idx) DO UPDATE SET name = excluded.name,"
    " status = excluded.status, started_at = excluded.started_at,"
    " completed_at = excluded.completed_at, duration_ms = excluded.duration_ms,"
    " attempts = excluded.attempts, result = excluded.result, error = excluded.error"
)


def _many(conn: Conn, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    if rows:
        with conn.cursor() as cur:
            cur.executemany(sql, rows)


class ExecutionsMixin:
    """Execution storage for :class:`~abi_engine.storage.postgres.PostgresStore`."""

    # Provided by PostgresStore.
    write: Callable[..., Any]
    _read: Callable[[], Any]
    _insert_events: Callable[[Conn, Sequence[Any]], None]

    # -- writes ------------------------------------------------------------------------

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply ``ops`` in one transaction; return each one's result in order.

        If the batch fails as a whole, each op is retried in its own
        transaction so that one bad op cannot sink the others; its result is
        then the exception it raised.
        """
        try:
            return list(self.write(lambda conn: self._apply_batch(conn, ops)))
        except Exception:
            if len(ops) == 1:
                raise
        results: list[Any] = []
        for op in ops:
            try:
                results.append(self.write(lambda conn, op=op: self._apply_one(conn, op)))
            except Exception as exc:
                results.append(exc)
        return results

    def _apply_batch(self, conn: Conn, ops: Sequence[WriteOp]) -> list[Any]:
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

    def _apply_one(self, conn: Conn, op: WriteOp) -> Any:
        result = _HANDLERS[type(op)](conn, op)
        if applied(result) and op.events:
            self._insert_events(conn, op.events)
        return result

    # -- reads ---------------------------------------------------------------------------

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_EXEC_COLUMNS} {_FROM} WHERE e.id = %s", (execution_id,)
            ).fetchone()
        return None if row is None else _row_to_record(row)

    def get_steps(self, execution_id: str) -> list[StepRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT execution_id, idx, name, status, started_at, completed_at, duration_ms,"
                " attempts, result, error FROM execution_steps WHERE execution_id = %s"
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
                "SELECT name, payload FROM execution_signals WHERE execution_id = %s",
                (execution_id,),
            ).fetchall()
        return {name: loads(payload) for name, payload in rows}

    def find_execution_by_key(self, workflow_id: str, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT id FROM executions WHERE workflow_id = %s AND idempotency_key = %s",
                (workflow_id, key),
            ).fetchone()
        return None if row is None else str(row[0])

    def list_executions(self, query: ExecutionQuery) -> tuple[list[ExecutionRecord], int]:
        where: list[str] = []
        args: list[Any] = []
        if query.workflow_id is not None:
            where.append("e.workflow_id = %s")
            args.append(query.workflow_id)
        statuses = query.status_values()
        if len(statuses) == 1:
            where.append("e.status = %s")
            args.append(statuses[0])
        elif statuses:
            where.append(f"e.status IN ({', '.join(['%s'] * len(statuses))})")
            args.extend(statuses)
        if query.schedule_id is not None:
            where.append("e.schedule_id = %s")
            args.append(query.schedule_id)
        if query.created_by is not None:
            where.append("e.created_by = %s")
            args.append(query.created_by)
        if query.start is not None:
            where.append("e.created_at >= %s")
            args.append(to_ms(query.start))
        if query.end is not None:
            where.append("e.created_at <= %s")
            args.append(to_ms(query.end))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        offset = (query.page - 1) * query.page_size
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM executions e {clause}", args).fetchone()
            rows = conn.execute(
                f"SELECT {_EXEC_COLUMNS} {_FROM} {clause}"
                " ORDER BY e.created_at DESC, e.id DESC LIMIT %s OFFSET %s",
                [*args, query.page_size, offset],
            ).fetchall()
        return [_row_to_record(r) for r in rows], int(total[0] if total else 0)

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

        Candidates: queued or running executions with no owner or a lease
        expired in the database's clock (whoever owned them, ``owner``
        included) or an owner in ``dead`` (nodes known to have ended; this
        store knows none itself: across machines only the lease tells), and
        waiting executions whose ``wake_at`` passed. ``types``:
        only these workflow types. Each is taken ``FOR UPDATE SKIP LOCKED``:
        rows another process is claiming (or changing) right now are left to
        it. Each grant is a fresh claim token.
        """
        now_ms = to_ms(now)
        names = types_filter(types)
        type_clause = "" if names is None else " AND workflow_type = ANY(%s::text[])"
        type_args: tuple[Any, ...] = () if names is None else (names,)

        def run(conn: Conn) -> list[tuple[str, int, int]]:
            taken: list[tuple[str, int, int]] = []
            # Waits that timed out: record a signal the step can see, queue them.
            woken = conn.execute(
                "SELECT id, waiting_for, priority FROM executions"
                f" WHERE status = 'waiting' AND wake_at <= %s{type_clause}"
                " ORDER BY wake_at LIMIT %s FOR UPDATE SKIP LOCKED",
                (now_ms, *type_args, limit),
            ).fetchall()
            _many(
                conn,
                "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
                " VALUES (%s, %s, 'null', %s) ON CONFLICT DO NOTHING",
                [
                    (ex_id, f"{waiting_for}{TIMEOUT_SUFFIX}", now_ms)
                    for ex_id, waiting_for, _ in woken
                ],
            )
            taken.extend((ex_id, priority, new_claim()) for ex_id, _, priority in woken)
            room = max(0, limit - len(taken))
            if room:
                taken.extend(
                    (row[0], row[1], new_claim())
                    for row in conn.execute(
                        "SELECT id, priority FROM executions"
                        " WHERE status IN ('queued', 'running')"
                        f" AND (lease_until IS NULL OR lease_until < {DB_NOW_MS}"
                        f" OR owner = ANY(%s::text[])){type_clause}"
                        " ORDER BY priority, created_at LIMIT %s FOR UPDATE SKIP LOCKED",
                        (sorted(dead), *type_args, room),
                    )
                )
            _many(
                conn,
                f"UPDATE executions SET owner = %s, claim = %s, lease_until = {DB_NOW_MS} + %s,"
                " waiting_for = NULL, wake_at = NULL,"
                " status = 'queued'"
                " WHERE id = %s",
                [(owner, token, lease_ms(lease_until), ex_id) for ex_id, _, token in taken],
            )
            return taken

        return list(self.write(run))

    def renew_leases(self, claims: Mapping[str, int], lease_until: datetime) -> list[str]:
        """Extend the lease of each execution still queued or running under its claim
        in ``claims`` (id -> token); return the ids that were not (lost). In
        transactions of ``RENEW_CHUNK`` executions."""
        if not claims:
            return []
        duration = lease_ms(lease_until)

        def run(conn: Conn, chunk: list[str]) -> set[str]:
            _lock_in_order(conn, chunk)  # the order batches lock in: no deadlock with them
            return {
                row[0]
                for row in conn.execute(
                    f"UPDATE executions SET lease_until = {DB_NOW_MS} + %s"
                    " FROM unnest(%s::text[], %s::bigint[]) AS c(id, claim)"
                    " WHERE executions.id = c.id AND executions.claim = c.claim"
                    " AND executions.status IN ('queued', 'running')"
                    " RETURNING executions.id",
                    (duration, chunk, [claims[i] for i in chunk]),
                ).fetchall()
            }

        ids = sorted(claims)  # in id order: renewals never deadlock with batches
        kept: set[str] = set()
        for start in range(0, len(ids), RENEW_CHUNK):  # short transactions, few row locks
            chunk = ids[start : start + RENEW_CHUNK]
            kept |= self.write(lambda conn, chunk=chunk: run(conn, chunk))
        return [i for i in claims if i not in kept]

    def next_wake_at(self) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT min(wake_at) FROM executions WHERE status = 'waiting'"
            ).fetchone()
        return from_ms(row[0]) if row and row[0] is not None else None


# -- op handlers -------------------------------------------------------------------------

#: Executions whose leases one transaction of ``renew_leases`` extends.
RENEW_CHUNK = 2000

_INSERT_EXECUTION = (
    "INSERT INTO executions (id, workflow_id, workflow_type, status, parameters,"
    " configuration, plan, created_at, started_at, callback_url, callback_secret,"
    " schedule_id, created_by, idempotency_key, priority, timeout_at, owner, lease_until,"
    " claim) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
    f" {DB_NOW_MS} + %s, %s) ON CONFLICT DO NOTHING RETURNING id"
)


def _execution_params(r: ExecutionRecord) -> tuple[Any, ...]:
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
        lease_ms(r.lease_until),
        r.claim,
    )


def insert_execution_rows(conn: Conn, records: Sequence[ExecutionRecord]) -> list[Any]:
    """Insert execution rows; ``False`` for one whose idempotency key is already taken,
    ``AGAIN`` for one whose id is there already (its own insert, retried)."""
    if not records:
        return []
    inserted: set[str] = set()
    if len(records) == 1:
        row = conn.execute(_INSERT_EXECUTION, _execution_params(records[0])).fetchone()
        if row is not None:
            inserted.add(row[0])
    else:
        with conn.cursor() as cur:
            cur.executemany(
                _INSERT_EXECUTION, [_execution_params(r) for r in records], returning=True
            )
            while True:
                row = cur.fetchone()
                if row is not None:
                    inserted.add(row[0])
                if not cur.nextset():
                    break
    missed = [r.id for r in records if r.id not in inserted]
    present: set[str] = set()
    if missed:
        present = {
            row[0]
            for row in conn.execute(
                "SELECT id FROM executions WHERE id = ANY(%s::text[])", (missed,)
            ).fetchall()
        }
    return [True if r.id in inserted else (AGAIN if r.id in present else False) for r in records]


def _insert(conn: Conn, op: InsertExecution) -> Any:
    return insert_execution_rows(conn, [op.record])[0]


def _claim(conn: Conn, op: ClaimExecution) -> Any:
    return _bulk_claim(conn, [op])[0]


def _checkpoint(conn: Conn, op: CheckpointStep) -> Any:
    return _bulk_checkpoint(conn, [op])[0]


def _stats(conn: Conn, workflow_id: str, status: ExecutionStatus, ms: int) -> None:
    conn.execute(
        "UPDATE workflows SET runs_total = runs_total + 1,"
        " runs_success = runs_success + %s, runs_failed = runs_failed + %s,"
        " duration_total_ms = duration_total_ms + %s WHERE id = %s",
        (
            1 if status is ExecutionStatus.COMPLETED else 0,
            1 if status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT) else 0,
            ms,
            workflow_id,
        ),
    )


def _finish(conn: Conn, op: FinishExecution) -> Any:
    return _bulk_finish(conn, [op])[0]


def _suspend(conn: Conn, op: SuspendExecution) -> Any:
    # Lock the execution first: a signal delivered concurrently waits for this
    # transaction (DeliverSignal locks the same row), so it is seen either here
    # or by the waiting execution it queues.
    row = conn.execute(
        "SELECT status, claim, waiting_for FROM executions WHERE id = %s FOR UPDATE",
        (op.execution_id,),
    ).fetchone()
    if row is None or row[1] != op.token:
        return False
    if row[0] == "waiting" and row[2] == op.waiting_for:
        return AGAIN  # a retry of this suspension
    if row[0] != "running":
        return False
    arrived = conn.execute(
        "SELECT 1 FROM execution_signals WHERE execution_id = %s AND name IN (%s, %s)",
        (op.execution_id, op.waiting_for, f"{op.waiting_for}{TIMEOUT_SUFFIX}"),
    ).fetchone()
    if arrived:
        return "ready"
    conn.execute(
        "UPDATE executions SET status = 'waiting', waiting_for = %s, wake_at = %s, owner = NULL,"
        " lease_until = NULL, timeout_at = CASE WHEN %s THEN timeout_at END WHERE id = %s",
        (op.waiting_for, to_ms(op.wake_at), op.keep_timeout, op.execution_id),
    )
    if op.step is not None:
        conn.execute(_UPSERT_STEP, _step_params(op.step))
    return True


def _signal(conn: Conn, op: DeliverSignal) -> str | None:
    row = conn.execute(
        "SELECT status, waiting_for, claim FROM executions WHERE id = %s FOR UPDATE",
        (op.execution_id,),
    ).fetchone()
    if row is None:
        return None
    payload = dumps(op.payload)
    mine = conn.execute(
        "SELECT 1 FROM execution_signals WHERE execution_id = %s AND name = %s"
        " AND created_at = %s AND payload = %s",
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
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (op.execution_id, op.name, payload, to_ms(op.created_at)),
    )
    if cursor.rowcount == 0:
        return None
    if waiting:
        conn.execute(
            "UPDATE executions SET status = 'queued', waiting_for = NULL, wake_at = NULL,"
            f" owner = %s, claim = %s, lease_until = {DB_NOW_MS} + %s WHERE id = %s",
            (op.grant_owner, op.grant_token, lease_ms(op.lease_until), op.execution_id),
        )
        return "queued"
    return "stored"


def _save_progress(conn: Conn, op: SaveProgress) -> bool:
    row = conn.execute(
        "SELECT status, claim FROM executions WHERE id = %s FOR SHARE", (op.execution_id,)
    ).fetchone()
    if row is None or row[0] != "running" or row[1] != op.token:
        return False
    conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (execution_id, name)"
        " DO UPDATE SET payload = excluded.payload, created_at = excluded.created_at",
        (op.execution_id, op.name, op.payload_json, to_ms(op.saved_at)),
    )
    return True


def _cancel(conn: Conn, op: CancelExecution) -> Any:
    row = conn.execute(
        "SELECT status, claim, completed_at, started_at FROM executions WHERE id = %s FOR UPDATE",
        (op.execution_id,),
    ).fetchone()
    if row is None:
        return False
    status, claim, completed_at, started = row
    if op.token is not None:
        ok = status == "running" and claim == op.token
    else:
        ok = status in ("queued", "running", "waiting")
    if not ok:
        again = ended_again(
            (status, claim, completed_at), op.status.value, op.completed_at, op.token
        )
        return AGAIN if again else False
    done = to_ms(op.completed_at) or 0
    duration = max(0, done - started) if started is not None else 0
    conn.execute(
        "UPDATE executions SET status = %s, completed_at = %s, duration_ms = %s, error = %s,"
        " owner = NULL, lease_until = NULL, waiting_for = NULL, wake_at = NULL WHERE id = %s",
        (op.status.value, done, duration, _json_or_none(op.error), op.execution_id),
    )
    if op.step is not None:
        conn.execute(_UPSERT_STEP, _step_params(op.step))
    _stats(conn, op.workflow_id, op.status, duration)
    return True


def _release(conn: Conn, op: ReleaseExecutions) -> int:
    if not op.claims:
        return 0
    ids = [c[0] for c in op.claims]
    tokens = [c[1] for c in op.claims]
    _lock_in_order(conn, ids)
    cursor = conn.execute(
        "UPDATE executions SET status = 'queued', owner = NULL, claim = NULL,"
        " lease_until = NULL FROM unnest(%s::text[], %s::bigint[]) AS c(id, claim)"
        " WHERE executions.id = c.id AND executions.claim = c.claim"
        " AND executions.status IN ('queued', 'running')",
        (ids, tokens),
    )
    return cursor.rowcount


def _events_only(conn: Conn, op: InsertEvents) -> bool:
    return True


_HANDLERS: dict[type[WriteOp], Callable[[Conn, Any], Any]] = {
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


# -- bulk handlers: one locking SELECT and a few executemany per kind of op -----------------


def _states(conn: Conn, ids: list[str]) -> dict[str, State]:
    """Status, claim and end time of the executions ``ids``, locked until the
    transaction ends (in id order: two batches wait for each other, never deadlock)."""
    rows = conn.execute(
        "SELECT id, status, claim, completed_at FROM executions WHERE id = ANY(%s::text[])"
        " ORDER BY id FOR UPDATE",
        (sorted(set(ids)),),
    ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def _lock_in_order(conn: Conn, ids: Sequence[str]) -> None:
    """Lock the rows of ``ids`` in id order, as every batch does (no deadlock with them)."""
    conn.execute(
        "SELECT 1 FROM executions WHERE id = ANY(%s::text[]) ORDER BY id FOR UPDATE",
        (sorted(set(ids)),),
    ).fetchall()


def _bulk_insert(conn: Conn, ops: list[InsertExecution]) -> list[Any]:
    return insert_execution_rows(conn, [op.record for op in ops])


def _bulk_claim(conn: Conn, ops: list[ClaimExecution]) -> list[Any]:
    results = claims(ops, _states(conn, [op.execution_id for op in ops]))
    _many(
        conn,
        f"UPDATE executions SET status = 'running', owner = %s, claim = %s,"
        f" lease_until = {DB_NOW_MS} + %s, started_at = coalesce(started_at, %s) WHERE id = %s",
        [
            (op.owner, op.token, lease_ms(op.lease_until), to_ms(op.started_at), op.execution_id)
            for op, result in zip(ops, results, strict=True)
            if result is True
        ],
    )
    return results


def _stored_steps(conn: Conn, ops: list[CheckpointStep]) -> dict[tuple[str, int], int | None]:
    """``completed_at`` of the stored steps of the checkpoints that carry events."""
    keys = [(op.step.execution_id, op.step.index) for op in ops if op.events]
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT s.execution_id, s.idx, s.completed_at FROM execution_steps s"
        " JOIN unnest(%s::text[], %s::int[]) AS k(execution_id, idx)"
        " ON s.execution_id = k.execution_id AND s.idx = k.idx",
        ([k[0] for k in keys], [k[1] for k in keys]),
    ).fetchall()
    return {(row[0], row[1]): row[2] for row in rows}


def _bulk_checkpoint(conn: Conn, ops: list[CheckpointStep]) -> list[Any]:
    # Leases are renewed by the node's heartbeat; a checkpoint only checks the claim.
    states = _states(conn, [op.step.execution_id for op in ops])
    results = checkpoints(ops, states, _stored_steps(conn, ops))
    _many(
        conn,
        _UPSERT_STEP,
        [_step_params(op.step) for op, ok in zip(ops, results, strict=True) if ok is True],
    )
    return results


def _bulk_finish(conn: Conn, ops: list[FinishExecution]) -> list[Any]:
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
                _json_or_none(op.result, op.result_json),
                _json_or_none(op.error),
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
    _many(
        conn,
        "UPDATE executions SET status = %s, completed_at = %s, duration_ms = %s, result = %s,"
        " error = %s, owner = NULL, lease_until = NULL, waiting_for = NULL, wake_at = NULL"
        " WHERE id = %s",
        updates,
    )
    _many(conn, _UPSERT_STEP, steps)
    _many(
        conn,
        "UPDATE workflows SET runs_total = runs_total + %s, runs_success = runs_success + %s,"
        " runs_failed = runs_failed + %s, duration_total_ms = duration_total_ms + %s"
        " WHERE id = %s",
        [(*counts, workflow_id) for workflow_id, counts in sorted(stats.items())],
    )
    return results


_BULK: dict[type, Callable[[Conn, Any], list[Any]]] = {
    InsertExecution: _bulk_insert,
    ClaimExecution: _bulk_claim,
    CheckpointStep: _bulk_checkpoint,
    FinishExecution: _bulk_finish,
}


def _register_schedule_handlers() -> None:
    from abi_engine.storage.postgres_schedules import SCHEDULE_BULK, SCHEDULE_HANDLERS

    _HANDLERS.update(SCHEDULE_HANDLERS)
    _BULK.update(SCHEDULE_BULK)


_register_schedule_handlers()
