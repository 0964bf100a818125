"""PostgreSQL storage of schedules and their history (mixed into PostgresStore).

Every write of a schedule is a compare-and-set on ``version`` (firing also
on ``next_due`` and ``pending_runs``), and adds one to it: at READ
COMMITTED, an ``UPDATE`` that waited for a concurrent one re-checks its
``WHERE`` on the row that one committed, so of several processes firing the
same due time exactly one applies, and an edit never writes back a due time
that a firing committed meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

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

Conn = psycopg.Connection[Any]


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
        bool(r.completed),
        to_ms(r.updated_at),
    )


class SchedulesMixin:
    """Schedule storage for :class:`~abi_engine.storage.postgres.PostgresStore`."""

    _read: Callable[[], Any]

    def get_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE s.id = %s", (schedule_id,)
            ).fetchone()
        return None if row is None else _row(row)

    def list_schedules(self, query: ScheduleQuery) -> tuple[list[ScheduleRecord], int]:
        where: list[str] = []
        args: list[Any] = []
        if query.workflow_id is not None:
            where.append("s.workflow_id = %s")
            args.append(query.workflow_id)
        if query.enabled is not None:
            where.append("s.enabled = %s")
            args.append(bool(query.enabled))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM schedules s {clause}", args).fetchone()
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} {clause} ORDER BY s.created_at DESC, s.id DESC"
                " LIMIT %s OFFSET %s",
                [*args, query.page_size, (query.page - 1) * query.page_size],
            ).fetchall()
        return [_row(r) for r in rows], int(total[0] if total else 0)

    def due_schedules(self, now: datetime, limit: int) -> list[ScheduleRecord]:
        """Schedules whose ``next_due`` has come (an index range scan), earliest first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE s.next_due <= %s ORDER BY s.next_due LIMIT %s",
                (to_ms(now), limit),
            ).fetchall()
        return [_row(r) for r in rows]

    def queued_schedules_ready(self, limit: int) -> list[ScheduleRecord]:
        """Schedules with a queued run whose previous execution has ended."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} {_FROM} WHERE s.pending_runs > 0"
                f" AND (e.status IS NULL OR e.status IN {_TERMINAL}) LIMIT %s",
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
                "SELECT count(*) FROM schedule_history WHERE schedule_id = %s", (schedule_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT schedule_id, due_at, recorded_at, outcome, execution_id, detail"
                " FROM schedule_history WHERE schedule_id = %s ORDER BY seq DESC"
                " LIMIT %s OFFSET %s",
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
    " overlap_policy, completed, updated_at, id, workflow_id, created_at, created_by)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
    " %s, %s, %s, %s)"
)


def _insert_row(r: ScheduleRecord) -> tuple[Any, ...]:
    return (*_definition(r), r.id, r.workflow_id, to_ms(r.created_at), r.created_by)


def _insert(conn: Conn, op: InsertSchedule) -> bool:
    """Insert the schedule if its workflow exists (not deleted); ``False`` otherwise."""
    return _bulk_insert(conn, [op])[0]


def _bulk_insert(conn: Conn, ops: list[InsertSchedule]) -> list[bool]:
    """Insert schedules whose workflow exists (not deleted); ``False`` for the others.

    The workflow rows are locked ``FOR SHARE`` (in id order) so a concurrent
    delete waits for this transaction.
    """
    wanted = sorted({op.record.workflow_id for op in ops})
    live = {
        row[0]
        for row in conn.execute(
            "SELECT id FROM workflows WHERE id = ANY(%s) AND deleted_at IS NULL"
            " ORDER BY id FOR SHARE",
            (wanted,),
        ).fetchall()
    }
    results = [op.record.workflow_id in live for op in ops]
    rows = [_insert_row(op.record) for op, ok in zip(ops, results, strict=True) if ok]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(_INSERT, rows)
    return results


def _update(conn: Conn, op: UpdateSchedule) -> bool:
    """Replace the definition if the row is still at the version read (and count the write).

    At READ COMMITTED an ``UPDATE`` that waited for a concurrent write of the
    row re-checks ``version`` on the row that write committed, so it loses.
    """
    r = op.record
    cursor = conn.execute(
        "UPDATE schedules SET name = %s, description = %s, schedule_type = %s,"
        " cron_expression = %s, interval_value = %s, interval_unit = %s, execution_time = %s,"
        " anchor_at = %s, timezone = %s, parameters = %s, enabled = %s, next_due = %s,"
        " misfire_policy = %s, misfire_grace_seconds = %s, catch_up_limit = %s,"
        " overlap_policy = %s, completed = %s, updated_at = %s, version = version + 1"
        " WHERE id = %s AND version = %s",
        (*_definition(r), r.id, op.expected_version),
    )
    return cursor.rowcount > 0


def _delete(conn: Conn, op: DeleteSchedule) -> bool:
    cursor = conn.execute(
        "DELETE FROM schedules WHERE id = %s AND version = %s",
        (op.schedule_id, op.expected_version),
    )
    if cursor.rowcount == 0:
        return False
    conn.execute("DELETE FROM schedule_history WHERE schedule_id = %s", (op.schedule_id,))
    return True


def _fire(conn: Conn, op: FireSchedule) -> bool:
    from abi_engine.storage.postgres_executions import insert_execution_rows

    last = op.executions[-1].id if op.executions else None
    cursor = conn.execute(
        "UPDATE schedules SET next_due = %s, pending_runs = %s, completed = %s,"
        " enabled = coalesce(%s::boolean, enabled),"
        " last_execution_id = coalesce(%s::text, last_execution_id), version = version + 1,"
        " failed_firings = failed_firings + %s,"
        " last_failure = coalesce(%s::text, last_failure)"
        " WHERE id = %s AND version = %s AND next_due IS NOT DISTINCT FROM %s::bigint"
        " AND pending_runs = %s",
        (
            to_ms(op.next_due),
            op.pending_runs,
            bool(op.completed),
            op.enabled,
            last,
            op.failures,
            None if op.last_failure is None else dumps(op.last_failure),
            op.schedule_id,
            op.expected_version,
            to_ms(op.expected_next_due),
            op.expected_pending,
        ),
    )
    if cursor.rowcount == 0:
        # Its own earlier commit (a retried write) stored its executions: applied.
        return bool(op.executions) and (
            conn.execute(
                "SELECT 1 FROM executions WHERE id = %s", (op.executions[0].id,)
            ).fetchone()
            is not None
        )
    insert_execution_rows(conn, op.executions)
    if op.history:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO schedule_history (schedule_id, due_at, recorded_at, outcome,"
                " execution_id, detail) VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (
                        h.schedule_id,
                        to_ms(h.due_at),
                        to_ms(h.recorded_at),
                        h.outcome,
                        h.execution_id,
                        h.detail,
                    )
                    for h in op.history
                ],
            )
        conn.execute(
            "DELETE FROM schedule_history WHERE schedule_id = %s AND seq <="
            " (SELECT seq FROM schedule_history WHERE schedule_id = %s"
            " ORDER BY seq DESC LIMIT 1 OFFSET %s)",
            (op.schedule_id, op.schedule_id, HISTORY_KEPT),
        )
    return True


SCHEDULE_HANDLERS: dict[type, Callable[[Conn, Any], Any]] = {
    InsertSchedule: _insert,
    UpdateSchedule: _update,
    DeleteSchedule: _delete,
    FireSchedule: _fire,
}

#: Handlers applying all ops of one kind of a batch together (see ``_apply_batch``).
SCHEDULE_BULK: dict[type, Callable[[Conn, Any], list[Any]]] = {
    InsertSchedule: _bulk_insert,
}
