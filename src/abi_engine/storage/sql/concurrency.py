"""Concurrency limits (#16): slots are leases, counted where work is granted.

A workflow may limit how many of its executions run at once
(``max_concurrency``) and how many with the same key do
(``concurrency_key``/``concurrency_limit``: the key an expression over the
parameters, evaluated when an execution is inserted and kept on its row).

An execution **holds a slot** while it is queued or running under a live
lease (an owner, and ``lease_until`` not passed): a granted execution
holds one from its grant, and a process that dies holds its slots only
until their leases expire, so none ever leaks. Work is granted in two places,
both here: :func:`keyed` (an execution inserted already granted to the node
that requested it) and :func:`admit` (the claim of queued work,
``claim_recoverable``). Each counts the holders of the workflows it grants
(after taking, on PostgreSQL, a transaction-scoped advisory lock per
workflow, so two processes granting at once count one after the other) and
grants only within the limits; what it does not grant stays queued with
``queued_reason`` ``concurrency_limit``, for the next claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from abi_engine.expressions import evaluate_key
from abi_engine.ids import utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage._codec import from_ms, to_ms
from abi_engine.storage.records import ExecutionRecord
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks
from abi_engine.storage.sql.shaping import (
    DEBOUNCED,
    RATE_LIMITED,
    Shaping,
    lock_workflows,
    now_ms,
    rate_admit,
    shape_inserts,
)

__all__ = [
    "BLOCKED",
    "RULE_COLUMNS",
    "add_rules",
    "admit",
    "blocked_rows",
    "claim_order",
    "free_slots_filter",
    "grantable",
    "keyed",
    "rules",
    "slots",
    "waiting_groups",
]

#: The groups (workflow, key) of waiting executions one claim looks at.
MAX_GROUPS = 100

#: The ``queued_reason`` of an execution waiting for a slot.
BLOCKED = "concurrency_limit"

#: Limits of one workflow: (max_concurrency, key expression, limit per key).
Limits = tuple[int | None, str | None, int | None]
#: The concurrency limits and the shaping rules of workflows that have any.
Rules = tuple[dict[str, Limits], dict[str, Shaping]]


def claim_order(alias: str) -> str:
    """The order executions are granted in (its parameter: the ms one level of
    priority is worth): synchronous callers first, then by request time moved
    earlier by the priority, so that higher priority goes first while the wait of
    lower priority still counts (it cannot starve)."""
    return (
        f"CASE WHEN {alias}priority = 0 THEN 0 ELSE 1 END,"
        f" {alias}created_at + {alias}priority * CAST(? AS BIGINT), {alias}created_at"
    )


def _now(d: Dialect) -> tuple[str, tuple[Any, ...]]:
    """The SQL of now, by which leases are judged, and its parameters."""
    return ("?", (to_ms(utcnow()),)) if d.clock is None else (d.clock, ())


def _holding(d: Dialect, alias: str) -> tuple[str, tuple[Any, ...]]:
    now, args = _now(d)
    return (
        f"{alias}.status IN ('queued', 'running') AND {alias}.owner IS NOT NULL"
        f" AND {alias}.lease_until >= {now}",
        args,
    )


def free_slots_filter(d: Dialect) -> tuple[str, tuple[Any, ...]]:
    """A condition on a queued execution ``e`` joined to its workflow ``w``: a slot of
    its workflow and key is free (as committed now; :func:`admit` counts again)."""
    holding, args = _holding(d, "h")
    sql = (
        " AND (w.max_concurrency IS NULL OR (SELECT count(*) FROM executions h"
        f" WHERE h.workflow_id = e.workflow_id AND h.id <> e.id AND {holding})"
        " < w.max_concurrency)"
        " AND (w.concurrency_limit IS NULL OR e.concurrency_key IS NULL"
        " OR (SELECT count(*) FROM executions h WHERE h.workflow_id = e.workflow_id"
        f" AND h.concurrency_key = e.concurrency_key AND h.id <> e.id AND {holding})"
        " < w.concurrency_limit)"
    )
    return sql, args * 2


def _limits(d: Dialect, conn: Conn, workflow_ids: Sequence[str]) -> dict[str, Limits]:
    """The limits of those of ``workflow_ids`` that have any."""
    return _rules(d, conn, workflow_ids)[0]


def rules(d: Dialect, conn: Conn, workflow_ids: Sequence[str]) -> Rules:
    """The concurrency limits, and the rate limits and debounces, of those of
    ``workflow_ids`` that have any (one query)."""
    return _rules(d, conn, workflow_ids)


def _rules(d: Dialect, conn: Conn, workflow_ids: Sequence[str]) -> Rules:
    """The concurrency limits, and the rate limits and debounces, of those of
    ``workflow_ids`` that have any (one query)."""
    found: Rules = ({}, {})
    for chunk in chunks(sorted(set(workflow_ids))):
        condition, args = d.any_of("id", chunk)
        for row in conn.execute(
            f"SELECT id, {RULE_COLUMNS} FROM workflows"
            f" WHERE {condition} AND (max_concurrency IS NOT NULL"
            " OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL"
            " OR debounce_ms IS NOT NULL)",
            args,
        ):
            add_rules(found, row[0], row[1:])
    return found


#: The columns of a workflow's rules, as :func:`add_rules` reads them.
RULE_COLUMNS = (
    "max_concurrency, concurrency_key, concurrency_limit, rate_limit_key,"
    " rate_limit, rate_period_ms, debounce_key, debounce_ms"
)


def add_rules(found: Rules, workflow_id: str, row: Sequence[Any]) -> None:
    """Add the rules of ``workflow_id`` (``row``: its :data:`RULE_COLUMNS`) if it has any."""
    if row[0] is not None or row[2] is not None:
        found[0][workflow_id] = (row[0], row[1], row[2])
    if row[4] is not None or row[7] is not None:
        found[1][workflow_id] = Shaping(*row[3:8])


class _Counts:
    """Slots held per workflow and per (workflow, key), counted under the workflows'
    locks, growing as this transaction grants more."""

    def __init__(
        self,
        d: Dialect,
        conn: Conn,
        limits: dict[str, Limits],
        wanted: Sequence[tuple[str, str | None]],
        exclude: Sequence[str] = (),
        *,
        locked: bool = False,
    ) -> None:
        self.limits = limits
        self.total: dict[str, int] = {}
        self.keyed: dict[tuple[str, str | None], int] = {}
        if d.row_locks and not locked:  # one granter at a time per workflow (in order)
            for workflow_id in sorted(limits):
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                    (f"abi-slots:{workflow_id}",),
                ).fetchone()
        skip, skip_args = d.any_of("h.id", list(exclude)) if exclude else ("", ())
        skip = f" AND NOT ({skip})" if skip else ""
        for workflow_id, (most, _, _) in sorted(limits.items()):
            # Holders of the whole workflow (at most max_concurrency of them), or of
            # the keys asked for only (a key per execution: never a scan of them all).
            keys = sorted({k for w, k in wanted if w == workflow_id and k is not None})
            if most is not None:
                where, args = "", ()
            elif keys:
                where, args = d.any_of("h.concurrency_key", keys)
                where = f" AND {where}"
            else:
                continue
            holding, now_args = _holding(d, "h")
            rows = conn.execute(
                "SELECT h.concurrency_key, count(*) FROM executions h"
                f" WHERE h.workflow_id = ?{where} AND {holding}{skip}"
                " GROUP BY h.concurrency_key",
                (workflow_id, *args, *now_args, *skip_args),
            ).fetchall()
            for key, count in rows:
                self.total[workflow_id] = self.total.get(workflow_id, 0) + int(count)
                self.keyed[(workflow_id, key)] = int(count)

    def take(self, workflow_id: str, key: str | None, *, reserve: bool = True) -> bool:
        """Take a slot for an execution of ``workflow_id`` with ``key``, if one is free
        (with ``reserve`` false, only whether one is)."""
        limits = self.limits.get(workflow_id)
        if limits is None:
            return True
        most, _, per_key = limits
        if most is not None and self.total.get(workflow_id, 0) >= most:
            return False
        keyed = per_key is not None and key is not None
        if keyed and self.keyed.get((workflow_id, key), 0) >= per_key:  # type: ignore[operator]
            return False
        if not reserve:
            return True
        self.total[workflow_id] = self.total.get(workflow_id, 0) + 1
        self.keyed[(workflow_id, key)] = self.keyed.get((workflow_id, key), 0) + 1
        return True


def keyed(
    d: Dialect, conn: Conn, records: Sequence[ExecutionRecord], found: Rules | None = None
) -> list[ExecutionRecord]:
    """``records`` about to be inserted, each with its key, and granted only within
    the limits: one beyond them loses its grant and waits queued (``BLOCKED``).
    ``found``: the rules of the queued records' workflows, when read already."""
    queued = [r for r in records if r.status is ExecutionStatus.QUEUED]
    if not queued:
        return list(records)
    limits, shaping = found or _rules(d, conn, [r.workflow_id for r in queued])
    if not shaping:
        return _slots(d, conn, limits, records, queued) if limits else list(records)
    lock_workflows(d, conn, [*limits, *shaping])
    now = now_ms(d, conn)
    # Debounced first (held, not granted); the rate windows after the slots.
    records = shape_inserts(d, conn, shaping, records, now, rate=False)
    queued = [r for r in records if r.status is ExecutionStatus.QUEUED]
    if limits:
        records = _slots(d, conn, limits, records, queued)
    return shape_inserts(d, conn, shaping, records, now, rate=True)


def _slots(
    d: Dialect,
    conn: Conn,
    limits: dict[str, Limits],
    records: Sequence[ExecutionRecord],
    queued: Sequence[ExecutionRecord],
) -> list[ExecutionRecord]:
    for r in queued:
        limit = limits.get(r.workflow_id)
        if limit is not None:
            # In place: the node that inserts it runs this very record.
            r.limited = True
            r.concurrency_key = None if limit[1] is None else evaluate_key(limit[1], r.parameters)
    counts = _Counts(d, conn, limits, [(r.workflow_id, r.concurrency_key) for r in queued])
    out: list[ExecutionRecord] = []
    for r in records:
        if not r.limited or r.status is not ExecutionStatus.QUEUED:
            out.append(r)
            continue
        key = r.concurrency_key
        if r.queued_reason is None and not counts.take(
            r.workflow_id, key, reserve=r.owner is not None
        ):
            r = attrs.evolve(r, owner=None, claim=None, lease_until=None, queued_reason=BLOCKED)
        out.append(r)
    return out


def grantable(d: Dialect, conn: Conn, workflow_id: str, key: str | None) -> bool:
    """Whether a slot is free for an execution of ``workflow_id`` with ``key`` (that
    holds none), counted under the workflow's lock."""
    limits = _limits(d, conn, [workflow_id])
    return not limits or _Counts(d, conn, limits, [(workflow_id, key)]).take(workflow_id, key)


def admit(
    d: Dialect,
    conn: Conn,
    rows: Sequence[Sequence[Any]],
    room: int | None = None,
    *,
    rules: Rules | None = None,
    locked: bool = False,
) -> list[Sequence[Any]]:
    """Of candidate rows ``(id, workflow_id, concurrency_key, ...)`` in the order they
    would be granted, those within the limits (the first ``room`` of them); the others
    are marked ``BLOCKED``, or wait for their rate limit's window. Without ``room``
    (waits that time out: no new start), rate limits do not apply. ``rules``: their
    workflows' (:func:`rules`), read already; ``locked``: their grant locks held."""
    limits, shaping = rules or _rules(d, conn, [row[1] for row in rows])
    if room is None or not shaping:
        return _admit_slots(d, conn, limits, rows, locked)[:room]
    if not locked:
        lock_workflows(d, conn, [*limits, *shaping])
    return rate_admit(d, conn, shaping, _admit_slots(d, conn, limits, rows, locked)[:room])


def _admit_slots(
    d: Dialect,
    conn: Conn,
    limits: dict[str, Limits],
    rows: Sequence[Sequence[Any]],
    locked: bool = False,
) -> list[Sequence[Any]]:
    if not limits:
        return list(rows)
    wanted = [(row[1], row[2]) for row in rows]
    counts = _Counts(d, conn, limits, wanted, [row[0] for row in rows], locked=locked)
    granted = [row for row in rows if counts.take(row[1], row[2])]
    refused = [(row[0],) for row in rows if row not in granted]
    if refused:  # (a rate limit's or a debounce's window over: waiting for a slot now)
        # Waiting for a slot is waiting unowned: a refused row whose lease lapsed (say,
        # granted to a node that died before starting it) keeps no owner, or no claim
        # of waiting rows (they must have none) would ever find it again.
        conn.executemany(
            f"UPDATE executions SET queued_reason = '{BLOCKED}', not_before = NULL,"
            " owner = NULL, claim = NULL, lease_until = NULL WHERE id = ?"
            " AND status = 'queued' AND (queued_reason IS NULL"
            f" OR queued_reason IN ('{RATE_LIMITED}', '{DEBOUNCED}'))",
            refused,
        )
    return granted


def blocked_rows(
    d: Dialect,
    conn: Conn,
    room: int,
    type_clause: str,
    type_args: Sequence[Any],
    workflow_id: str | None = None,
    *,
    groups: Sequence[Sequence[Any]] | None = None,
    limits: dict[str, Limits] | None = None,
) -> list[Sequence[Any]]:
    """Candidates among the executions waiting for a slot (``BLOCKED``; of
    ``workflow_id`` only, if given), as rows ``(id, workflow_id, concurrency_key,
    priority, status)``: of each group (workflow and key), the first ones in grant
    order, as many as its limit at most (so that many waiting on one key cost a claim
    an index probe, not a scan of them all). ``groups`` (of :func:`waiting_groups`)
    and ``limits``: read already."""
    if groups is None:
        groups = waiting_groups(conn, workflow_id).fetchall()
    if not groups:
        return []
    if limits is None:
        limits = _limits(d, conn, [g[0] for g in groups])
    rows: list[Sequence[Any]] = []
    for group_id, key in groups:
        most, _, per_key = limits.get(group_id, (None, None, None))
        bounds = (most, per_key if key is not None else None, room - len(rows))
        bound = min(b for b in bounds if b is not None)
        if bound <= 0:
            break
        rows.extend(
            conn.execute(
                "SELECT id, workflow_id, concurrency_key, priority, status FROM executions"
                f" WHERE workflow_id = ? AND status = 'queued' AND concurrency_key"
                f" {d.null_safe_eq} ? AND queued_reason = '{BLOCKED}' AND owner IS NULL"
                f"{type_clause} ORDER BY {claim_order('')} LIMIT ?{d.claim()}",
                (group_id, key, *type_args, bound),
            ).fetchall()
        )
    return rows


def waiting_groups(conn: Conn, workflow_id: str | None = None) -> Any:
    """The groups (workflow, key) of executions waiting for a slot (of ``workflow_id``
    only, if given): the query, sent (its cursor; in pipeline mode not waited for)."""
    of, of_args = ("", ()) if workflow_id is None else (" AND workflow_id = ?", (workflow_id,))
    return conn.execute(
        "SELECT DISTINCT workflow_id, concurrency_key FROM executions"
        f" WHERE status = 'queued' AND queued_reason = '{BLOCKED}'{of} LIMIT ?",
        (*of_args, MAX_GROUPS),
    )


def slots(d: Dialect, conn: Conn, workflow_id: str) -> list[tuple[str, str | None, datetime, str]]:
    """The executions of ``workflow_id`` holding a slot: (id, key, since, status),
    ``since`` the time it started or else was requested."""
    holding, args = _holding(d, "h")
    return [
        (row[0], row[1], from_ms(row[2]) or utcnow(), row[3])
        for row in conn.execute(
            "SELECT h.id, h.concurrency_key, coalesce(h.started_at, h.queued_since,"
            f" h.created_at), h.status FROM executions h WHERE h.workflow_id = ? AND {holding}"
            " ORDER BY 3, h.id",
            (workflow_id, *args),
        )
    ]
