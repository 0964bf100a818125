"""Storage of schedules and their history, in the shared SQL (mixed into the stores).

Every write of a schedule is a compare-and-set on ``version`` (firing also
on ``next_due`` and ``pending_runs``), and adds one to it. Where transactions
run concurrently (PostgreSQL at READ COMMITTED) an ``UPDATE`` that waited for
a concurrent one re-checks its ``WHERE`` on the row that one committed, so of
several processes firing the same due time exactly one applies, and an edit
never writes back a due time that a firing committed meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar

from abi_engine.storage._codec import dumps, from_ms, to_ms
from abi_engine.storage._rows_schedules import _COLUMNS, _FROM, _TERMINAL, HISTORY_KEPT, _row
from abi_engine.storage.records_schedules import (
    DeleteSchedule,
    FireSchedule,
    HistoryRecord,
    InsertSchedule,
    ScheduleQuery,
    ScheduleRecord,
    UpdateSchedule,
)
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks
from abi_engine.storage.sql.flow_ops import insert_held

__all__ = ["SCHEDULE_BULK", "SCHEDULE_HANDLERS", "SchedulesMixin"]


def _definition(r: ScheduleRecord) -> tuple[Any, ...]:
    return (
        r.name,
        r.description,
        r.schedule_type,
        r.cron_expression,
        r.interval_value,
        r.interval_unit,
        to_ms(r.execution_time),
        to_ms(r.anchor_at),
        r.timezone,
        dumps(r.parameters),
        bool(r.enabled),
        to_ms(r.next_due),
        r.misfire_policy,
        float(r.misfire_grace_seconds),
        r.catch_up_limit,
        r.overlap_policy,
        r.priority,
        bool(r.completed),
        to_ms(r.updated_at),
        r.max_consecutive_failures,
        r.paused_by,
        r.paused_reason,
        to_ms(r.paused_at),
        r.resume_policy,
        to_ms(r.end_time),
        r.max_runs,
        float(r.jitter_seconds),
        dumps(r.exclude_dates) if r.exclude_dates else None,
        r.on_gap,
        r.on_fold,
        r.rrule,
        r.exclude_rrule,
    )


class SchedulesMixin:
    """Schedule storage, in the shared SQL."""

    # Provided by SQLStore and the backend.
    dialect: ClassVar[Dialect]
    _read: Callable[[], Any]
    _insert_executions: Callable[[Conn, Sequence[Any]], list[Any]]

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE s.id = ?", (schedule_id,)
            ).fetchone()
        return None if row is None else _row(row)

    def list_schedules(self, query: ScheduleQuery) -> tuple[list[ScheduleRecord], int]:
        where: list[str] = []
        args: list[Any] = []
        if query.workflow_id is not None:
            where.append("s.workflow_id = ?")
            args.append(query.workflow_id)
        if query.enabled is not None:
            where.append("s.enabled = ?")
            args.append(bool(query.enabled))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM schedules s {clause}", args).fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} {clause} ORDER BY s.created_at DESC, s.id DESC"
                " LIMIT ? OFFSET ?",
                [*args, query.page_size, (query.page - 1) * query.page_size],
            ).fetchall()
        return [_row(r) for r in rows], int(total[0] if total else 0)

    def due_schedules(self, now: datetime, limit: int) -> list[ScheduleRecord]:
        """Schedules whose ``next_due`` has come (an index range scan), earliest first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE s.next_due <= ? ORDER BY s.next_due LIMIT ?",
                (to_ms(now), limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def queued_schedules_ready(self, limit: int) -> list[ScheduleRecord]:
        """Schedules with a queued run whose previous execution has ended."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE s.pending_runs > 0"
                f" AND (e.status IS NULL OR e.status IN {_TERMINAL}) LIMIT ?",
                (limit,),
            ).fetchall()
        return [_row(r) for r in rows]

    def next_schedule_due(self) -> datetime | None:
        """The earliest ``next_due`` of all schedules (from the partial index, not a scan)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT min(next_due) FROM schedules WHERE next_due IS NOT NULL"
            ).fetchone()
        return from_ms(row[0]) if row and row[0] is not None else None

    def schedule_history(
        self, schedule_id: str, page: int, page_size: int
    ) -> tuple[list[HistoryRecord], int]:
        with self._read() as conn:
            total = conn.execute(
                "SELECT count(*) FROM schedule_history WHERE schedule_id = ?", (schedule_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT schedule_id, due_at, recorded_at, outcome, execution_id, detail"
                " FROM schedule_history WHERE schedule_id = ? ORDER BY seq DESC LIMIT ? OFFSET ?",
                (schedule_id, page_size, (page - 1) * page_size),
            ).fetchall()
        return [
            HistoryRecord(
                schedule_id=r[0],
                due_at=from_ms(r[1]),
                recorded_at=from_ms(r[2]),  # type: ignore[arg-type]
                outcome=r[3],
                execution_id=r[4],
                detail=r[5],
            )
            for r in rows
        ], int(total[0] if total else 0)


_INSERT = (
    "INSERT INTO schedules (name, description, schedule_type, cron_expression,"
    " interval_value, interval_unit, execution_time, anchor_at, timezone, parameters,"
    " enabled, next_due, misfire_policy, misfire_grace_seconds, catch_up_limit,"
    " overlap_policy, priority, completed, updated_at, max_consecutive_failures, paused_by,"
    " paused_reason, paused_at, resume_policy, end_time, max_runs, jitter_seconds,"
    " exclude_dates, on_gap, on_fold, rrule, exclude_rrule, id, workflow_id, created_at,"
    " created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
    " ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_row(r: ScheduleRecord) -> tuple[Any, ...]:
    return (*_definition(r), r.id, r.workflow_id, to_ms(r.created_at), r.created_by)


def _insert(s: SchedulesMixin, conn: Conn, op: InsertSchedule) -> bool:
    """Insert the schedule if its workflow exists (not deleted); ``False`` otherwise."""
    return _bulk_insert(s, conn, [op])[0]


def _bulk_insert(s: SchedulesMixin, conn: Conn, ops: list[InsertSchedule]) -> list[bool]:
    """Insert schedules whose workflow exists (not deleted, at the ``workflow_version``
    given): one look at their workflows, one ``executemany``; ``False`` for the others.

    The workflow rows are read with a shared lock (in id order) where rows are
    locked, so a concurrent delete waits for this transaction; with one writer
    at a time none can come between the look and the insert anyway.
    """
    d = s.dialect
    wanted = sorted({op.record.workflow_id for op in ops})
    live: dict[str, int] = {}
    for chunk in chunks(wanted):
        condition, args = d.any_of("id", chunk)
        live.update(
            (row[0], row[1])
            for row in conn.execute(
                f"SELECT id, updated_at FROM workflows WHERE {condition} AND deleted_at IS NULL"
                f"{' ORDER BY id' + d.lock('SHARE') if d.row_locks else ''}",
                args,
            )
        )
    results = [
        op.record.workflow_id in live
        and (
            op.workflow_version is None or live[op.record.workflow_id] == to_ms(op.workflow_version)
        )
        for op in ops
    ]
    conn.executemany(
        _INSERT, [_insert_row(op.record) for op, ok in zip(ops, results, strict=True) if ok]
    )
    return results


def _update(s: SchedulesMixin, conn: Conn, op: UpdateSchedule) -> bool:
    """Replace the definition if the row is still at the version read (and count the write).

    At READ COMMITTED an ``UPDATE`` that waited for a concurrent write of the
    row re-checks ``version`` on the row that write committed, so it loses.
    """
    r = op.record
    cursor = conn.execute(
        "UPDATE schedules SET name = ?, description = ?, schedule_type = ?,"
        " cron_expression = ?, interval_value = ?, interval_unit = ?, execution_time = ?,"
        " anchor_at = ?, timezone = ?, parameters = ?, enabled = ?, next_due = ?,"
        " misfire_policy = ?, misfire_grace_seconds = ?, catch_up_limit = ?,"
        " overlap_policy = ?, priority = ?, completed = ?, updated_at = ?, max_consecutive_failures = ?,"
        " paused_by = ?, paused_reason = ?, paused_at = ?, resume_policy = ?,"
        " end_time = ?, max_runs = ?, jitter_seconds = ?, exclude_dates = ?,"
        " on_gap = ?, on_fold = ?, rrule = ?, exclude_rrule = ?, version = version + 1,"
        " consecutive_failures = CASE WHEN ? THEN 0 ELSE consecutive_failures END"
        " WHERE id = ? AND version = ?",
        (*_definition(r), op.reset_failures, r.id, op.expected_version),
    )
    if cursor.rowcount == 0:
        return False
    _write_history(conn, op.history)
    return True


def _delete(s: SchedulesMixin, conn: Conn, op: DeleteSchedule) -> bool:
    cursor = conn.execute(
        "DELETE FROM schedules WHERE id = ? AND version = ?", (op.schedule_id, op.expected_version)
    )
    if cursor.rowcount == 0:
        return False
    conn.execute("DELETE FROM schedule_history WHERE schedule_id = ?", (op.schedule_id,))
    return True


def _fire_sql(d: Dialect) -> str:
    return (
        "UPDATE schedules SET next_due = ?, pending_runs = ?, completed = ?,"
        f" enabled = coalesce({d.param('boolean')}, enabled),"
        f" last_execution_id = coalesce({d.param('text')}, last_execution_id),"
        " version = version + 1, failed_firings = failed_firings + ?,"
        f" last_failure = coalesce({d.param('text')}, last_failure),"
        " missed_count = missed_count + ?, consecutive_failures = ?,"
        f" paused_reason = coalesce({d.param('text')}, paused_reason),"
        f" paused_at = coalesce({d.param('bigint')}, paused_at),"
        " resume_policy = CASE WHEN ? THEN NULL ELSE resume_policy END,"
        " runs_count = runs_count + ?"
        f" WHERE id = ? AND version = ? AND next_due {d.null_safe_eq} {d.param('bigint')}"
        " AND pending_runs = ?"
    )


_INSERT_HISTORY = (
    "INSERT INTO schedule_history (schedule_id, due_at, recorded_at, outcome,"
    " execution_id, detail) VALUES (?, ?, ?, ?, ?, ?)"
)
# Keeps a schedule's last HISTORY_KEPT entries.
_TRIM_HISTORY = (
    "DELETE FROM schedule_history WHERE schedule_id = ? AND seq <="
    " (SELECT seq FROM schedule_history WHERE schedule_id = ?"
    " ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)


def _fire(s: SchedulesMixin, conn: Conn, op: FireSchedule) -> bool:
    return _bulk_fire(s, conn, [op])[0]


def _bulk_fire(s: SchedulesMixin, conn: Conn, ops: list[FireSchedule]) -> list[bool]:
    """Fire schedules: each one's move to its next due time is checked (optimistic:
    ``False`` when another process, or an edit, got there first); the executions
    and history lines of those that moved are written together. An op whose
    executions are already stored committed before (a retried write): ``True``."""
    fire = _fire_sql(s.dialect)
    results: list[bool] = []
    executions: list[Any] = []
    owners: list[FireSchedule] = []
    history: list[tuple[Any, ...]] = []
    trimmed: list[tuple[str, str, int]] = []
    for op in ops:
        last = op.executions[-1].id if op.executions else None
        cursor = conn.execute(
            fire,
            (
                to_ms(op.next_due),
                op.pending_runs,
                bool(op.completed),
                op.enabled,
                last,
                op.failures,
                None if op.last_failure is None else dumps(op.last_failure),
                op.missed,
                op.consecutive_failures,
                op.paused_reason,
                to_ms(op.paused_at),
                op.resumed,
                op.runs,
                op.schedule_id,
                op.expected_version,
                to_ms(op.expected_next_due),
                op.expected_pending,
            ),
        )
        if cursor.rowcount == 0:
            results.append(_already_fired(conn, op))
            continue
        results.append(True)
        executions.extend(op.executions)
        owners.extend(op for _ in op.executions)
        if op.history:
            history.extend(
                (
                    h.schedule_id,
                    to_ms(h.due_at),
                    to_ms(h.recorded_at),
                    h.outcome,
                    h.execution_id,
                    h.detail,
                )
                for h in op.history
            )
            trimmed.append((op.schedule_id, op.schedule_id, HISTORY_KEPT))
    if executions:
        insert_held(s, conn, executions, owners)
    if history:
        conn.executemany(_INSERT_HISTORY, history)
        conn.executemany(_TRIM_HISTORY, trimmed)
    return results


def _write_history(conn: Conn, lines: Sequence[HistoryRecord]) -> None:
    """Insert history lines of one schedule (and keep its last ``HISTORY_KEPT``)."""
    if not lines:
        return
    conn.executemany(
        _INSERT_HISTORY,
        [
            (
                h.schedule_id,
                to_ms(h.due_at),
                to_ms(h.recorded_at),
                h.outcome,
                h.execution_id,
                h.detail,
            )
            for h in lines
        ],
    )
    schedule_id = lines[0].schedule_id
    conn.execute(_TRIM_HISTORY, (schedule_id, schedule_id, HISTORY_KEPT))


def _already_fired(conn: Conn, op: FireSchedule) -> bool:
    """Whether ``op`` itself committed earlier (its first execution is stored)."""
    if not op.executions:
        return False
    found = conn.execute("SELECT 1 FROM executions WHERE id = ?", (op.executions[0].id,))
    return found.fetchone() is not None


#: The schedule write ops, one at a time: ``handler(store, conn, op)``.
SCHEDULE_HANDLERS: dict[type, Callable[[Any, Conn, Any], Any]] = {
    InsertSchedule: _insert,
    UpdateSchedule: _update,
    DeleteSchedule: _delete,
    FireSchedule: _fire,
}

#: The schedule write ops a batch applies together: ``handler(store, conn, ops)``.
SCHEDULE_BULK: dict[type, Callable[[Any, Conn, Any], list[Any]]] = {
    InsertSchedule: _bulk_insert,
    FireSchedule: _bulk_fire,
}
