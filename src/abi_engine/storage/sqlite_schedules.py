"""SQLite storage of schedules and their history (mixed into SQLiteStore)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from abi_engine.storage._codec import dumps, from_ms, to_ms
from abi_engine.storage._rows_schedules import _COLUMNS, _FROM, _TERMINAL, HISTORY_KEPT, _row
from abi_engine.storage.records import (
    DeleteSchedule,
    FireSchedule,
    HistoryRecord,
    InsertSchedule,
    ScheduleQuery,
    ScheduleRecord,
    UpdateSchedule,
)

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
        int(r.enabled),
        to_ms(r.next_due),
        r.misfire_policy,
        r.misfire_grace_seconds,
        r.catch_up_limit,
        r.overlap_policy,
        int(r.completed),
        to_ms(r.updated_at),
    )


class SchedulesMixin:
    """Schedule storage for :class:`~abi_engine.storage.sqlite.SQLiteStore`."""

    _read: Callable[[], Any]
    transaction: Callable[[], Any]

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
            args.append(int(query.enabled))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM schedules s {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} {clause} ORDER BY s.created_at DESC, s.id DESC"
                " LIMIT ? OFFSET ?",
                [*args, query.page_size, (query.page - 1) * query.page_size],
            ).fetchall()
        return [_row(r) for r in rows], int(total)

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
            ).fetchone()[0]
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
        ], int(total)


_INSERT = (
    "INSERT INTO schedules (name, description, schedule_type, cron_expression,"
    " interval_value, interval_unit, execution_time, anchor_at, timezone, parameters,"
    " enabled, next_due, misfire_policy, misfire_grace_seconds, catch_up_limit,"
    " overlap_policy, completed, updated_at, id, workflow_id, created_at, created_by)"
)


def _insert_row(r: ScheduleRecord) -> tuple[Any, ...]:
    return (*_definition(r), r.id, r.workflow_id, to_ms(r.created_at), r.created_by)


def _insert(conn: sqlite3.Connection, op: InsertSchedule) -> bool:
    """Insert the schedule if its workflow exists (not deleted); ``False`` otherwise."""
    r = op.record
    cursor = conn.execute(
        f"{_INSERT} SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
        " WHERE EXISTS (SELECT 1 FROM workflows WHERE id = ? AND deleted_at IS NULL)",
        (*_insert_row(r), r.workflow_id),
    )
    return cursor.rowcount > 0


def _bulk_insert(conn: sqlite3.Connection, ops: list[InsertSchedule]) -> list[bool]:
    """Insert many schedules: one look at their workflows, one ``executemany``.

    Runs inside the write transaction, so no workflow can be deleted between
    the look and the insert; an op whose workflow is missing gets ``False``.
    """
    wanted = sorted({op.record.workflow_id for op in ops})
    live: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        live.update(
            row[0]
            for row in conn.execute(
                "SELECT id FROM workflows WHERE deleted_at IS NULL"
                f" AND id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )
        )
    results = [op.record.workflow_id in live for op in ops]
    conn.executemany(
        f"{_INSERT} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [_insert_row(op.record) for op, ok in zip(ops, results, strict=True) if ok],
    )
    return results


def _update(conn: sqlite3.Connection, op: UpdateSchedule) -> bool:
    """Replace the definition if the row is still at the version read (and count the write)."""
    r = op.record
    cursor = conn.execute(
        "UPDATE schedules SET name = ?, description = ?, schedule_type = ?,"
        " cron_expression = ?, interval_value = ?, interval_unit = ?, execution_time = ?,"
        " anchor_at = ?, timezone = ?, parameters = ?, enabled = ?, next_due = ?,"
        " misfire_policy = ?, misfire_grace_seconds = ?, catch_up_limit = ?,"
        " overlap_policy = ?, completed = ?, updated_at = ?, version = version + 1"
        " WHERE id = ? AND version = ?",
        (*_definition(r), r.id, op.expected_version),
    )
    return cursor.rowcount > 0


def _delete(conn: sqlite3.Connection, op: DeleteSchedule) -> bool:
    cursor = conn.execute(
        "DELETE FROM schedules WHERE id = ? AND version = ?", (op.schedule_id, op.expected_version)
    )
    if cursor.rowcount == 0:
        return False
    conn.execute("DELETE FROM schedule_history WHERE schedule_id = ?", (op.schedule_id,))
    return True


_FIRE = (
    "UPDATE schedules SET next_due = ?, pending_runs = ?, completed = ?,"
    " enabled = coalesce(?, enabled),"
    " last_execution_id = coalesce(?, last_execution_id), version = version + 1,"
    " failed_firings = failed_firings + ?, last_failure = coalesce(?, last_failure)"
    " WHERE id = ? AND version = ? AND next_due IS ? AND pending_runs = ?"
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


def _fire(conn: sqlite3.Connection, op: FireSchedule) -> bool:
    return _bulk_fire(conn, [op])[0]


def _bulk_fire(conn: sqlite3.Connection, ops: list[FireSchedule]) -> list[bool]:
    """Fire schedules: each one's move to its next due time is checked (optimistic:
    ``False`` when another process, or an edit, got there first); the executions
    and history lines of those that moved are written together. An op whose
    executions are already stored committed before (a retried write): ``True``."""
    from abi_engine.storage.sqlite_executions import insert_execution_rows

    results: list[bool] = []
    executions: list[Any] = []
    history: list[tuple[Any, ...]] = []
    trimmed: list[tuple[str, str, int]] = []
    for op in ops:
        last = op.executions[-1].id if op.executions else None
        cursor = conn.execute(
            _FIRE,
            (
                to_ms(op.next_due),
                op.pending_runs,
                int(op.completed),
                None if op.enabled is None else int(op.enabled),
                last,
                op.failures,
                None if op.last_failure is None else dumps(op.last_failure),
                op.schedule_id,
                op.expected_version,
                to_ms(op.expected_next_due),
                op.expected_pending,
            ),
        )
        fired = cursor.rowcount > 0
        if not fired:
            results.append(_already_fired(conn, op))
            continue
        results.append(True)
        executions.extend(op.executions)
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
        insert_execution_rows(conn, executions)
    if history:
        conn.executemany(_INSERT_HISTORY, history)
        conn.executemany(_TRIM_HISTORY, trimmed)
    return results


def _already_fired(conn: sqlite3.Connection, op: FireSchedule) -> bool:
    """Whether ``op`` itself committed earlier (its first execution is stored)."""
    if not op.executions:
        return False
    found = conn.execute("SELECT 1 FROM executions WHERE id = ?", (op.executions[0].id,))
    return found.fetchone() is not None


SCHEDULE_HANDLERS: dict[type, Callable[[sqlite3.Connection, Any], Any]] = {
    InsertSchedule: _insert,
    UpdateSchedule: _update,
    DeleteSchedule: _delete,
    FireSchedule: _fire,
}

#: Handlers applying all ops of one kind of a batch together (see ``_apply_batch``).
SCHEDULE_BULK: dict[type, Callable[[sqlite3.Connection, Any], list[Any]]] = {
    InsertSchedule: _bulk_insert,
    FireSchedule: _bulk_fire,
}
