"""Rate limits and debounce (#16): decided where work is granted, like concurrency slots.

A workflow's **rate limit** lets at most ``limit`` executions with the same key
(an expression over the parameters, kept on the execution as ``rate_key``)
start in any window of ``period``: an execution granted within it records
when (``rate_granted_at``), and a grant beyond it is refused: the execution
waits queued (``queued_reason`` ``rate_limit``) with the time the window lets
it start (``not_before``), when a claim takes it again. A **debounce** holds a
new execution queued (``debounce``) for its window and ends the one with its
key it replaces ``skipped`` (``debounced_by``): of a burst, only the last runs.

Both are decided in the transaction that grants (the insert of an execution,
:func:`shape_inserts`; the claim of queued work, :func:`rate_admit`) under the
per-workflow lock of the concurrency slots (PostgreSQL), so two processes
granting at once count one after the other; SQLite has one writer at a time.
Times are the database's clock where it has one (leases' clock).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import attrs

from abi_engine.expressions import evaluate_key
from abi_engine.ids import utcnow
from abi_engine.models import ExecutionStatus
from abi_engine.storage._codec import from_ms, to_ms
from abi_engine.storage.records import ExecutionRecord
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks

__all__ = [
    "DEBOUNCED",
    "PAUSED",
    "RATE_LIMITED",
    "SHAPING_COLUMNS",
    "WINDOWED",
    "Shaping",
    "lock_workflows",
    "now_ms",
    "rate_admit",
    "shape_inserts",
    "shaping_values",
    "window",
]

#: The columns of an execution row these keep (name, SQL array type), in insert order.
SHAPING_COLUMNS = (
    ("rate_key", "text"),
    ("rate_granted_at", "bigint"),
    ("debounce_key", "text"),
    ("debounced_by", "text"),
    ("not_before", "bigint"),
)

#: The ``queued_reason`` of an execution waiting for its rate limit's window.
RATE_LIMITED = "rate_limit"
#: The ``queued_reason`` of an execution waiting out its debounce window.
DEBOUNCED = "debounce"
#: The ``queued_reason`` of an execution held by its paused workflow.
PAUSED = "paused"
#: The condition on a queued execution that it waits out a debounce window (its own, or
#: held by its paused workflow meanwhile: ``not_before`` is kept only for a debounce).
WINDOWED = (
    f"(queued_reason = '{DEBOUNCED}' OR (queued_reason = '{PAUSED}' AND not_before IS NOT NULL))"
)


@attrs.frozen
class Shaping:
    """A workflow's rate limit (key expression, limit, period in ms) and debounce (key
    expression, window in ms); ``None`` where it has none."""

    rate_key: str | None = None
    rate_limit: int | None = None
    period_ms: int | None = None
    debounce_key: str | None = None
    debounce_ms: int | None = None


def shaping_values(r: ExecutionRecord) -> tuple[Any, ...]:
    """The values of :data:`SHAPING_COLUMNS` of an execution row."""
    return (
        r.rate_key,
        None if r.rate_granted_at is None else to_ms(r.rate_granted_at),
        r.debounce_key,
        r.debounced_by,
        None if r.not_before is None else to_ms(r.not_before),
    )


def window(granted: Iterable[int], now: int, limit: int, period: int) -> int | None:
    """When a start at ``now`` is allowed by a limit of ``limit`` starts per ``period``
    (ms), given the earlier starts ``granted`` (epoch ms): ``None`` at once, else the
    first time it is (the start that must leave the window, plus ``period``).

    A start counts in the window ``(t - period, t]`` of every later time ``t``: any
    ``period`` long window holds at most ``limit`` starts granted by this rule."""
    live = sorted(g for g in granted if g > now - period)
    if len(live) < limit:
        return None
    return live[len(live) - limit] + period


def now_ms(d: Dialect, conn: Conn) -> int:
    """Now, in the clock leases are judged by (the database's, where it has one)."""
    if d.clock is None:
        return to_ms(utcnow())  # type: ignore[return-value]
    return int(conn.execute(f"SELECT {d.clock}").fetchone()[0])


def lock_workflows(d: Dialect, conn: Conn, workflow_ids: Iterable[str]) -> None:
    """Take the granting lock of each workflow, in order (PostgreSQL; reentrant: the
    concurrency slots' count takes the same ones again)."""
    if d.row_locks:
        for workflow_id in sorted(set(workflow_ids)):
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
                (f"abi-slots:{workflow_id}",),
            ).fetchone()


class _Windows:
    """The recent starts per (workflow, rate key), read once each, growing as this
    transaction grants more."""

    def __init__(self, d: Dialect, conn: Conn, shaping: dict[str, Shaping], now: int) -> None:
        self.d, self.conn, self.shaping, self.now = d, conn, shaping, now
        self.starts: dict[tuple[str, str | None], list[int]] = {}

    def _recent(self, workflow_id: str, key: str | None, rule: Shaping) -> list[int]:
        found = self.starts.get((workflow_id, key))
        if found is None:
            # The ``limit`` latest starts are all the rule needs (an index range).
            found = [
                int(row[0])
                for row in self.conn.execute(
                    "SELECT rate_granted_at FROM executions WHERE workflow_id = ?"
                    f" AND rate_key {self.d.null_safe_eq} ? AND rate_granted_at > ?"
                    " ORDER BY rate_granted_at DESC LIMIT ?",
                    (workflow_id, key, self.now - (rule.period_ms or 0), rule.rate_limit),
                )
            ]
            self.starts[(workflow_id, key)] = found
        return found

    def take(self, workflow_id: str, key: str | None) -> int | None:
        """Grant a start now (``None``), or the time one is allowed."""
        rule = self.shaping[workflow_id]
        assert rule.rate_limit is not None
        assert rule.period_ms is not None
        recent = self._recent(workflow_id, key, rule)
        allowed = window(recent, self.now, rule.rate_limit, rule.period_ms)
        if allowed is None:
            recent.append(self.now)
        return allowed


def _debounce(
    d: Dialect, conn: Conn, records: list[ExecutionRecord], now: int, shaping: dict[str, Shaping]
) -> None:
    """Hold each queued record of a debounced workflow for its window, and end the one
    it replaces (the earlier of a batch, or a stored one still waiting) ``skipped``.
    A record stored already (its insert committed, retried) is left as it is: shaped
    again, it would end the very executions that replaced it; so is one whose
    idempotency key is taken (it is not inserted: it must end nothing)."""
    last: dict[tuple[str, str | None], int] = {}
    stored = _stored(
        d,
        conn,
        [
            r
            for r in records
            if r.workflow_id in shaping and shaping[r.workflow_id].debounce_ms is not None
        ],
    )
    for index, r in enumerate(records):
        rule = shaping.get(r.workflow_id)
        if rule is None or rule.debounce_ms is None or r.status is not ExecutionStatus.QUEUED:
            continue
        if r.id in stored:
            continue
        key = None if rule.debounce_key is None else evaluate_key(rule.debounce_key, r.parameters)
        records[index] = attrs.evolve(
            r,
            owner=None,
            claim=None,
            lease_until=None,
            # Held by its paused workflow: its window kept for when it resumes.
            queued_reason=PAUSED if r.queued_reason == PAUSED else DEBOUNCED,
            debounce_key=key,
            not_before=from_ms(now + rule.debounce_ms),
        )
        earlier = last.get((r.workflow_id, key))
        if earlier is not None:
            records[earlier] = _skipped(records[earlier], r.id, now)
        last[(r.workflow_id, key)] = index
    for (workflow_id, key), index in sorted(last.items(), key=lambda item: item[1]):
        ended = conn.execute(
            "UPDATE executions SET status = 'skipped', debounced_by = ?, completed_at = ?,"
            " queued_reason = NULL, not_before = NULL, owner = NULL, claim = NULL,"
            " lease_until = NULL WHERE workflow_id = ?"
            f" AND debounce_key {d.null_safe_eq} ? AND status = 'queued' AND {WINDOWED}"
            " RETURNING id",
            (records[index].id, now, workflow_id, key),
        ).fetchall()
        records[index].replaced = tuple(sorted(row[0] for row in ended))


def _stored(d: Dialect, conn: Conn, records: Sequence[ExecutionRecord]) -> set[str]:
    """The ids of ``records`` whose insert will not apply: stored already (a retry), or
    their idempotency key taken (under the workflow's lock: no insert of it commits
    between this read and theirs)."""
    found: set[str] = set()
    for chunk in chunks([r.id for r in records]):
        condition, args = d.any_of("id", chunk)
        found.update(
            row[0] for row in conn.execute(f"SELECT id FROM executions WHERE {condition}", args)
        )
    for r in records:
        if (
            r.idempotency_key is not None
            and conn.execute(
                "SELECT 1 FROM executions WHERE workflow_id = ? AND idempotency_key = ?",
                (r.workflow_id, r.idempotency_key),
            ).fetchone()
        ):
            found.add(r.id)
    return found


def _skipped(r: ExecutionRecord, by: str, now: int) -> ExecutionRecord:
    return attrs.evolve(
        r,
        status=ExecutionStatus.SKIPPED,
        debounced_by=by,
        completed_at=from_ms(now),
        queued_reason=None,
        not_before=None,
    )


def shape_inserts(
    d: Dialect,
    conn: Conn,
    shaping: dict[str, Shaping],
    records: Sequence[ExecutionRecord],
    now: int,
    *,
    rate: bool,
) -> list[ExecutionRecord]:
    """``records`` about to be inserted, given their rate keys; without ``rate``,
    debounced; with it, one granted to its node beyond its rate limit loses the grant
    and waits (``RATE_LIMITED``): run it after the concurrency slots are counted (a
    record they refused is not granted). Those still granted are changed in place
    (the node that inserts one runs that very record)."""
    out = list(records)
    if not rate:
        _debounce(d, conn, out, now, shaping)
    windows = _Windows(d, conn, shaping, now)
    for index, r in enumerate(out):
        rule = shaping.get(r.workflow_id)
        if rule is None or rule.rate_limit is None or r.status is not ExecutionStatus.QUEUED:
            continue
        r.rate_key = None if rule.rate_key is None else evaluate_key(rule.rate_key, r.parameters)
        if not rate or r.owner is None or r.queued_reason is not None:
            continue
        allowed = windows.take(r.workflow_id, r.rate_key)
        if allowed is None:
            r.rate_granted_at = from_ms(now)
        else:
            out[index] = attrs.evolve(
                r,
                owner=None,
                claim=None,
                lease_until=None,
                queued_reason=RATE_LIMITED,
                not_before=from_ms(allowed),
            )
    return out


def rate_admit(
    d: Dialect, conn: Conn, shaping: dict[str, Shaping], rows: Sequence[Sequence[Any]]
) -> list[Sequence[Any]]:
    """Of candidate rows ``(id, workflow_id, ...)`` in grant order (concurrency slots
    granted), those their rate limits let start now; the others wait, ``not_before``
    the time their window allows. A row that started once (granted before, or a run
    taken over) is not counted again."""
    rated = [row for row in rows if row[1] in shaping and shaping[row[1]].rate_limit]
    if not rated:
        return list(rows)
    ids = [row[0] for row in rated]
    condition, args = d.any_of("id", ids)
    # By primary key only: a status condition here makes SQLite walk every queued
    # execution through the status index once there are a few ids.
    fresh = {
        row[0]: row[1]
        for row in conn.execute(
            f"SELECT id, rate_key, status, rate_granted_at FROM executions WHERE {condition}",
            args,
        )
        if row[2] == "queued" and row[3] is None
    }
    if not fresh:
        return list(rows)
    now = now_ms(d, conn)
    windows = _Windows(d, conn, shaping, now)
    granted: list[Sequence[Any]] = []
    started: list[tuple[Any, ...]] = []
    held: list[tuple[Any, ...]] = []
    for row in rows:
        if row[0] not in fresh:
            granted.append(row)
            continue
        allowed = windows.take(row[1], fresh[row[0]])
        if allowed is None:
            granted.append(row)
            started.append((now, row[0]))
        else:
            held.append((allowed, row[0]))
    conn.executemany("UPDATE executions SET rate_granted_at = ? WHERE id = ?", started)
    conn.executemany(
        f"UPDATE executions SET queued_reason = '{RATE_LIMITED}', not_before = ?"
        " WHERE id = ? AND status = 'queued'",
        held,
    )
    return granted


def due_in(d: Dialect, conn: Conn) -> timedelta | None:
    """How long until the next execution held by a rate limit or a debounce may be
    granted (an index range, one query), ``None`` if none waits for a later time (one
    due already is the claims' to take: never a claim loop on it)."""
    now, args = ("?", (to_ms(utcnow()),)) if d.clock is None else (d.clock, ())
    row = conn.execute(
        f"SELECT min(not_before) - {now} FROM executions WHERE not_before > {now}"
        f" AND status = 'queued' AND queued_reason IN ('{RATE_LIMITED}', '{DEBOUNCED}')",
        (*args, *args),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return timedelta(milliseconds=max(0, int(row[0])))
