"""Handing a freed concurrency slot on in the transaction that frees it (#16).

An execution that held a slot ends with a ``FinishExecution`` op; when the op
carries a :class:`~abi_engine.storage.records.HandOff`, the batch that applies
it grants the finishing node the executions of its workflow waiting for a slot
(``concurrency_limit``), as ``claim_freed`` would in a transaction of its own:
the next execution is granted in the commit that ends the previous one, so the
node starts it as soon as the commit returns (one transaction per hand-off, not
two).

The same rules decide as everywhere work is granted (:func:`~abi_engine.storage.sql.
concurrency.admit`: slots counted under the workflow's grant lock, rate limits,
candidates taken ``SKIP LOCKED``). One thing differs: the batch locks its
executions' rows before it gets here, and others take the workflow's lock
before their rows (a batch's inserts, then its finishes), so waiting for the
lock here could deadlock. The lock is only *tried*: when another transaction
holds it, nothing is granted here (``decided`` false) and the node claims the
freed slot in a transaction of its own, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from abi_engine.ids import utcnow
from abi_engine.storage._codec import to_ms
from abi_engine.storage._fencing import new_claim, types_filter
from abi_engine.storage._rows_executions import _EXEC_COLUMNS, _FROM, _row_to_record
from abi_engine.storage.records import ExecutionRecord, FinishExecution, HandedOff
from abi_engine.storage.sql.concurrency import BLOCKED, admit, blocked_rows, rules, waiting_groups
from abi_engine.storage.sql.dialect import Conn, Dialect
from abi_engine.storage.sql.shaping import DEBOUNCED, RATE_LIMITED, due_in

__all__ = ["grant", "hand_off", "lease_sql", "lease_value"]


def lease_sql(d: Dialect) -> str:
    """The SQL of a lease end given by :func:`lease_value`."""
    return "?" if d.clock is None else f"{d.clock} + ?"


def lease_value(d: Dialect, lease_until: datetime | None) -> int | None:
    """A lease end in epoch ms, or, judged in the database's clock, as a duration
    from now in this host's clock (for the SQL to add to the database's)."""
    if d.clock is None or lease_until is None:
        return to_ms(lease_until)
    return round((lease_until - utcnow()).total_seconds() * 1000)


def grant(
    d: Dialect,
    conn: Conn,
    owner: str,
    lease_until: datetime,
    taken: Sequence[tuple[str, int, int]],
) -> None:
    """Grant ``owner`` the executions ``taken`` (id, priority, claim token), queued."""
    conn.executemany(
        f"UPDATE executions SET owner = ?, claim = ?, lease_until = {lease_sql(d)},"
        " waiting_for = NULL, wake_at = NULL, status = 'queued', not_before = NULL,"
        " queued_reason = CASE WHEN queued_reason IN"
        f" ('{BLOCKED}', '{RATE_LIMITED}', '{DEBOUNCED}') THEN NULL"
        " ELSE queued_reason END WHERE id = ?",
        [(owner, token, lease_value(d, lease_until), ex_id) for ex_id, _, token in taken],
    )


def _try_lock(d: Dialect, conn: Conn, workflow_id: str) -> Any:
    """Take the workflow's grant lock if nobody else holds it (PostgreSQL; reentrant:
    the slots' count takes it again), never waiting for it: the query, sent (its
    cursor answers whether it was taken); ``None`` without row locks (SQLite)."""
    if not d.row_locks:
        return None
    return conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(?, 0))", (f"abi-slots:{workflow_id}",)
    )


def _hand_one(
    s: Any, conn: Conn, op: FinishExecution, room: int, mine: frozenset[str]
) -> HandedOff:
    """Grant the node of ``op.hand_off`` what waits for a slot of ``op``'s workflow (none
    of ``mine``, the batch's own executions: their ops decide them). In pipeline mode
    the lock, the waiting groups and the workflow's rules go in one round trip, the
    candidates and the holders in one each."""
    d = s.dialect
    wanted = op.hand_off
    assert wanted is not None
    if room <= 0:
        return HandedOff(decided=False)
    lock = _try_lock(d, conn, op.workflow_id)
    groups = waiting_groups(conn, op.workflow_id)
    found = rules(d, conn, [op.workflow_id])
    if lock is not None and not lock.fetchone()[0]:
        return HandedOff(decided=False)
    names = types_filter(wanted.types)
    clause, args = ("", ()) if names is None else d.any_of("workflow_type", names)
    rows = blocked_rows(
        d,
        conn,
        room,
        f" AND {clause}" if clause else "",
        (*args, s.priority_aging_ms),
        op.workflow_id,
        groups=groups.fetchall(),
        limits=found[0],
    )
    rows = [row for row in rows if row[0] not in mine]
    if not rows:
        return HandedOff()
    granted = admit(d, conn, rows, room, rules=found, locked=True)
    taken = tuple((row[0], row[3], new_claim()) for row in granted)
    grant(d, conn, wanted.owner, wanted.lease_until, taken)
    due = due_in(d, conn) if len(taken) < len(rows) else None
    return HandedOff(taken, due=due, records=_granted(d, conn, [t[0] for t in taken]))


def _granted(d: Dialect, conn: Conn, ids: Sequence[str]) -> tuple[ExecutionRecord, ...]:
    """The executions ``ids`` as granted (one query: the node needs not read them)."""
    if not ids:
        return ()
    condition, args = d.any_of("e.id", list(ids))
    rows = conn.execute(f"SELECT {_EXEC_COLUMNS} {_FROM} WHERE {condition}", args).fetchall()
    return tuple(_row_to_record(row) for row in rows)


def hand_off(
    s: Any, conn: Conn, ops: Sequence[FinishExecution], results: list[Any], mine: Sequence[str]
) -> None:
    """Replace the result of each finish that applied and asks for a hand-off by a
    :class:`HandedOff` (run after the finishes' rows are written: their slots are
    free). One grant per workflow and node for the whole batch (the first finish's
    result carries it; the others' is an empty ``HandedOff``): a batch ending many
    executions of one workflow looks for what waits once, not once each."""
    done: dict[tuple[str, str], HandedOff] = {}
    batch = frozenset(mine)
    for index, op in enumerate(ops):
        if op.hand_off is None or results[index] is not True:
            continue
        key = (op.workflow_id, op.hand_off.owner)
        if key in done:
            results[index] = HandedOff(decided=done[key].decided)
            continue
        done[key] = results[index] = _hand_one(s, conn, op, op.hand_off.room, batch)
