"""The write operations of waits and signals, in the shared SQL.

A signal ``name`` delivered to an execution is kept under its stream key
(``name``, then ``name#2``, ``name#3``...: :func:`~abi_engine.storage.records.stream_key`),
numbered under the execution's row lock, so each is read by exactly one wait
and in the order delivered. A signal addressed by correlation key is either
handed to the execution waiting on that key or kept in ``correlated_signals``
for the first wait with that key: both sides take the key's lock first (a
transaction-level advisory lock on PostgreSQL; SQLite's one writer excludes
the rest), then the execution's row, so a wait and a signal never miss each
other and a kept signal is taken by one wait only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from abi_engine.ids import utcnow
from abi_engine.storage._codec import dumps, to_ms
from abi_engine.storage.records import (
    AGAIN,
    TIMEOUT_SUFFIX,
    DeliverCorrelatedSignal,
    DeliverSignal,
    SuspendExecution,
    stream_key,
)
from abi_engine.storage.sql.concurrency import BLOCKED, grantable
from abi_engine.storage.sql.dialect import Conn, Dialect
from abi_engine.storage.sql.execution_ops import _step_params, _upsert_step
from abi_engine.storage.sql.handoff import lease_sql as _lease
from abi_engine.storage.sql.handoff import lease_value as _lease_value

__all__ = ["SIGNAL_HANDLERS", "correlation"]

#: The store applying the op (an ``SQLStore``: ``dialect``).
Store = Any


def correlation(name: str, key: str) -> str:
    """What a wait on ``key`` for signal ``name`` stores in ``executions.waiting_key``
    (no signal name holds ``#``, so the two parts never run together)."""
    return f"{name}#{key}"


def _lock_key(d: Dialect, conn: Conn, text: str) -> None:
    """Take the transaction-level lock of ``text`` (a correlation)."""
    if d.key_lock is None:
        return
    digest = hashlib.blake2b(f"abi_engine:signal:{text}".encode(), digest_size=8).digest()
    conn.execute(d.key_lock, (int.from_bytes(digest, "big", signed=True),))


def _base(waiting_for: str) -> str:
    """The signal name of a wait's stream key (``go#3`` -> ``go``)."""
    return waiting_for.partition("#")[0]


def _suspend(s: Store, conn: Conn, op: SuspendExecution) -> Any:
    d = s.dialect
    waiting_key = None
    if op.correlation is not None:
        waiting_key = correlation(_base(op.waiting_for), op.correlation)
        _lock_key(d, conn, waiting_key)  # before the row: the order deliveries take them in
    # Lock the execution first: a signal delivered concurrently waits for this
    # transaction (DeliverSignal locks the same row), so it is seen either here
    # or by the waiting execution it queues.
    row = conn.execute(
        f"SELECT status, claim, waiting_for FROM executions WHERE id = ?{d.lock()}",
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
    if arrived or (waiting_key is not None and _take_kept(s, conn, op, waiting_key)):
        return "ready"
    conn.execute(
        "UPDATE executions SET status = 'waiting', waiting_for = ?, wake_at = ?, owner = NULL,"
        " lease_until = NULL, waiting_key = ?,"
        " timeout_at = CASE WHEN ? THEN timeout_at END WHERE id = ?",
        (op.waiting_for, to_ms(op.wake_at), waiting_key, bool(op.keep_timeout), op.execution_id),
    )
    if op.step is not None:
        conn.execute(_upsert_step(d), _step_params(op.step))
    return True


def _take_kept(s: Store, conn: Conn, op: SuspendExecution, waiting_key: str) -> bool:
    """Hand the oldest signal kept for ``waiting_key`` (not expired) to the suspending
    execution; whether there was one."""
    now = to_ms(utcnow())
    kept = conn.execute(
        "SELECT id, payload, created_at FROM correlated_signals"
        " WHERE correlation = ? AND execution_id IS NULL AND expires_at > ?"
        " ORDER BY seq LIMIT 1",
        (waiting_key, now),
    ).fetchone()
    if kept is None:
        return False
    conn.execute(
        "UPDATE correlated_signals SET execution_id = ?, delivered_at = ? WHERE id = ?",
        (op.execution_id, now, kept[0]),
    )
    conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, ?, ?)",
        (op.execution_id, op.waiting_for, kept[1], kept[2]),
    )
    return True


def _delivered(conn: Conn, execution_id: str, name: str) -> tuple[int, list[tuple[int, str]]]:
    """How many stream slots of signal ``name`` the execution has used (a wait that
    timed out uses its slot), and the ``created_at`` and payload text of those delivered."""
    rows = conn.execute(
        "SELECT name, created_at, payload FROM execution_signals"
        " WHERE execution_id = ? AND name NOT LIKE ?",
        (execution_id, "#%"),
    ).fetchall()
    used = 0
    given: list[tuple[int, str]] = []
    for key, created, payload in rows:
        timed_out = key.endswith(TIMEOUT_SUFFIX)
        slot = _slot(key.removesuffix(TIMEOUT_SUFFIX) if timed_out else key, name)
        if slot:
            used = max(used, slot)
            if not timed_out:
                given.append((created, payload))
    return used, given


def _slot(key: str, name: str) -> int:
    """The stream slot (from 1) ``key`` is of signal ``name``; 0: another signal's."""
    if key == name:
        return 1
    number = key.removeprefix(f"{name}#")
    return int(number) if number != key and number.isdigit() else 0


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
    used, given = _delivered(conn, op.execution_id, op.name)
    created = to_ms(op.created_at)
    if (created, payload) in given:  # a retry: stored already
        granted = op.grant_token is not None and row[0] == "queued" and row[2] == op.grant_token
        return "queued" if granted else "stored"
    if row[0] not in ("queued", "running", "waiting", "paused"):
        return None  # ended (a paused one keeps it, like an early signal)
    key = stream_key(op.name, used + 1)
    waiting = row[0] == "waiting" and row[1] == key
    if op.require_waiting and not waiting:
        return None
    conn.execute(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, ?, ?)",
        (op.execution_id, key, payload, created),
    )
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


def _correlated(s: Store, conn: Conn, op: DeliverCorrelatedSignal) -> tuple[str, str | None]:
    waiting_key = correlation(op.name, op.correlation_key)
    _lock_key(s.dialect, conn, waiting_key)
    seen = conn.execute(
        "SELECT execution_id FROM correlated_signals WHERE id = ?", (op.signal_id,)
    ).fetchone()
    if seen is not None:  # a retry
        return ("delivered", seen[0]) if seen[0] else ("pending", None)
    now = to_ms(op.created_at) or 0
    conn.execute(  # kept ones that expired (and delivered ones a day after)
        "DELETE FROM correlated_signals WHERE correlation = ? AND expires_at <= ?",
        (waiting_key, now),
    )
    waiting = conn.execute(
        "SELECT id FROM executions WHERE status = 'waiting' AND waiting_key = ?"
        " ORDER BY created_at, id",
        (waiting_key,),
    ).fetchall()
    for (execution_id,) in waiting:
        state = _signal(s, conn, _as_signal(op, execution_id))
        if state == "queued":
            _keep(conn, op, waiting_key, execution_id)
            return "queued", execution_id
    _keep(conn, op, waiting_key, None)
    return "pending", None


def _as_signal(op: DeliverCorrelatedSignal, execution_id: str) -> DeliverSignal:
    return DeliverSignal(
        execution_id=execution_id,
        name=op.name,
        payload=op.payload,
        created_at=op.created_at,
        require_waiting=True,
        grant_owner=op.grant_owner,
        grant_token=op.grant_token,
        lease_until=op.lease_until,
    )


#: How long a delivered correlated signal's record is kept (so that a retry finds it).
DELIVERED_KEPT_MS = 86_400_000


def _keep(
    conn: Conn, op: DeliverCorrelatedSignal, waiting_key: str, execution_id: str | None
) -> None:
    created = to_ms(op.created_at) or 0
    expires = created + DELIVERED_KEPT_MS if execution_id else to_ms(op.expires_at)
    conn.execute(
        "INSERT INTO correlated_signals (id, correlation, name, correlation_key, payload,"
        " created_at, expires_at, execution_id, delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            op.signal_id,
            waiting_key,
            op.name,
            op.correlation_key,
            dumps(op.payload),
            created,
            expires,
            execution_id,
            created if execution_id else None,
        ),
    )


#: The write ops of waits and signals: ``handler(store, conn, op)``.
SIGNAL_HANDLERS: dict[type, Callable[[Any, Conn, Any], Any]] = {
    SuspendExecution: _suspend,
    DeliverSignal: _signal,
    DeliverCorrelatedSignal: _correlated,
}
