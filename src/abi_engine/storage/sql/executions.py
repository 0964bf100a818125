"""Storage of executions, steps and signals, in the shared SQL (mixed into the stores).

Every write of an execution is an op of ``storage.records`` applied by
:meth:`ExecutionsMixin.apply` under the claim rules of ``storage/_fencing.py``:
each handler reads the executions it writes (one query for a batch) and asks
the rules what applies. Where transactions run concurrently (PostgreSQL),
those reads lock the rows (in id order, so two batches wait for each other
rather than deadlock on the same rows), and :meth:`ExecutionsMixin.claim_recoverable`
takes its work skipping rows being taken elsewhere; leases are then set and
judged in the database's clock (:attr:`~abi_engine.storage.sql.dialect.Dialect.clock`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, NamedTuple

from abi_engine.models import ExecutionStatus, StepStatus
from abi_engine.storage._codec import from_ms, loads, to_ms
from abi_engine.storage._fencing import (
    new_claim,
    types_filter,
)
from abi_engine.storage._rows_executions import (
    _EXEC_COLUMNS,
    _FROM,
    STEP_STATUSES,
    _row_to_record,
)
from abi_engine.storage._waiting import WouldWait, impatient
from abi_engine.storage.records import (
    TIMEOUT_SUFFIX,
    CheckpointStep,
    ClaimExecution,
    ExecutionQuery,
    ExecutionRecord,
    FinishExecution,
    InsertExecution,
    StepRecord,
    WriteOp,
    applied,
)
from abi_engine.storage.sql.concurrency import (
    BLOCKED,
    admit,
    blocked_rows,
    claim_order,
    free_slots_filter,
    slots,
)
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks
from abi_engine.storage.sql.execution_ops import (
    BULK,
    HANDLERS,
    STATEFUL,
    BatchStates,
    _claims,
)
from abi_engine.storage.sql.handoff import grant
from abi_engine.storage.sql.handoff import lease_sql as _lease
from abi_engine.storage.sql.handoff import lease_value as _lease_value
from abi_engine.storage.sql.shaping import DEBOUNCED, RATE_LIMITED, due_in
from abi_engine.storage.sql.signal_ops import SIGNAL_HANDLERS

__all__ = ["ExecutionsMixin"]

_HANDLERS = {**HANDLERS, **SIGNAL_HANDLERS}
#: The ops whose handlers read every result they use by fetching it (never a cursor's
#: ``rowcount``): a batch of only these may be written in pipeline mode (PostgreSQL).
PIPELINED = frozenset({InsertExecution, ClaimExecution, CheckpointStep, FinishExecution})

#: Executions whose leases one transaction of ``renew_leases`` extends.
RENEW_CHUNK = 2000


class ExecutionsMixin:
    """Execution storage, in the shared SQL."""

    # Provided by SQLStore and the backend.
    dialect: ClassVar[Dialect]
    write: Callable[..., Any]
    _read: Callable[[], Any]
    _insert_events: Callable[[Conn, Sequence[Any]], None]
    #: Running executions :meth:`claim_recoverable` granted (their owner's lease had
    #: expired, or its process ended): taken over, for the metrics.
    lease_takeovers: int = 0
    #: How long after the last :meth:`claim_recoverable` the next execution held by a
    #: rate limit or a debounce may be granted (``None``: none waits for a later time):
    #: the runtime claims again right then.
    next_due: timedelta | None = None
    #: How much waiting one level of priority is worth (ms): an execution queued this
    #: long before another of the next higher priority goes first (aging: a flood
    #: of higher priority work delays lower priority work by at most 9 times this).
    priority_aging_ms: int = 10_000

    def _insert_checked(
        self, conn: Conn, records: Sequence[ExecutionRecord], ops: Sequence[WriteOp]
    ) -> list[bool] | None:
        """Insert, each in one statement checking its workflow, the records that
        :func:`~abi_engine.storage.sql.flow_ops.insert_held` would insert as they are
        (their workflow active at the version they were checked against, not paused,
        without rules); whether each was (``None``: none). The others are left to it.
        This backend: none (it reads the workflows of a batch in one statement)."""
        return None

    def _insert_executions(self, conn: Conn, records: Sequence[ExecutionRecord]) -> list[Any]:
        """Insert execution rows; each one's result: ``True``, ``False`` when its
        idempotency key is taken, ``AGAIN`` when a row of its id is there already
        (ids are random: its own insert, committed, retried)."""
        raise NotImplementedError

    # -- writes ------------------------------------------------------------------------

    def _write_batch(self, fn: Callable[[Conn], Any]) -> Any:
        """:meth:`write` for a batch of :data:`PIPELINED` ops only (a backend may send
        its statements without waiting for each one's answer)."""
        return self.write(fn)

    def apply(self, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply ``ops`` in one transaction; return each one's result in order.

        If the batch fails as a whole, each op is retried in its own
        transaction so that one bad op cannot sink the others; its result is
        then the exception it raised. On the event loop (SQLite), that retry
        is made in a worker thread (:class:`~abi_engine.storage._waiting.WouldWait`).
        """
        write = self._write_batch if PIPELINED.issuperset(map(type, ops)) else self.write
        try:
            return list(write(lambda conn: self._apply_batch(conn, ops)))
        except Exception:
            if len(ops) == 1:
                raise
        if impatient():  # on the loop, a commit per op: the next one could wait there
            raise WouldWait()  # (for another writer); the failed batch wrote nothing
        results: list[Any] = []
        for op in ops:
            try:
                results.append(self.write(lambda conn, op=op: self._apply_one(conn, op)))
            except Exception as exc:
                results.append(exc)
        return results

    def _apply_batch(self, conn: Conn, ops: Sequence[WriteOp]) -> list[Any]:
        """Apply a batch: the hot kinds of op together (a few statements per kind; the
        executions that claims, checkpoints and finishes write read in one query).

        Ops in one batch come from different tasks, each waiting for its own
        result, so no op of a batch depends on another one: grouping them by
        kind is one valid order among the concurrent ones. Inserts go first, then
        each kind in the order it first appears: in pipeline mode the read of the
        executions goes with the inserts' check of paused workflows (one round trip).
        """
        if len(ops) == 1 and type(ops[0]) is InsertExecution:  # (a caller's commit: #18)
            return [self._apply_one(conn, ops[0])]  # (what a batch of one does, shorter)
        results: list[Any] = [None] * len(ops)
        groups: dict[type, list[int]] = {}
        for index, op in enumerate(ops):
            kind = type(op)
            if kind in BULK and not (kind is InsertExecution and op.record.idempotency_key):  # type: ignore[attr-defined]
                groups.setdefault(kind, []).append(index)
            else:
                results[index] = _HANDLERS[kind](self, conn, op)
        stateful = [ops[i] for kind, indexes in groups.items() if kind in STATEFUL for i in indexes]
        read = BatchStates(self.dialect, conn, stateful) if stateful else None
        for kind, indexes in sorted(groups.items(), key=lambda g: g[0] is not InsertExecution):
            kind_ops = [ops[i] for i in indexes]
            done = (
                BULK[kind](self, conn, kind_ops, read)  # type: ignore[call-arg]
                if kind in STATEFUL
                else BULK[kind](self, conn, kind_ops)
            )
            for index, result in zip(indexes, done, strict=True):
                results[index] = result
        events: list[Any] = []
        for op, result in zip(ops, results, strict=True):
            if (op.events or op.found) and applied(result):
                events.extend(op.events)
                events.extend(op.found)
        if events:
            self._insert_events(conn, events)
        return results

    def _apply_one(self, conn: Conn, op: WriteOp) -> Any:
        result = _HANDLERS[type(op)](self, conn, op)
        if applied(result) and (op.events or op.found):
            self._insert_events(conn, [*op.events, *op.found])
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
                " attempts, result, error, reused_from FROM execution_steps WHERE execution_id = ?"
                " ORDER BY idx",
                (execution_id,),
            ).fetchall()
        return [
            StepRecord(
                execution_id=r[0],
                index=r[1],
                name=r[2],
                status=STEP_STATUSES.get(r[3]) or StepStatus(r[3]),
                started_at=None if r[4] is None else from_ms(r[4]),
                completed_at=None if r[5] is None else from_ms(r[5]),
                duration_ms=r[6],
                attempts=r[7],
                result=None if r[8] is None else loads(r[8]),
                error=None if r[9] is None else loads(r[9]),
                reused_from=r[10],
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
        if query.rerun_of is not None:
            where.append("e.rerun_of = ?")
            args.append(query.rerun_of)
        if query.parent_execution_id is not None:
            where.append("e.parent_execution_id = ?")
            args.append(query.parent_execution_id)
        if query.awaiting_approval:
            where.append("e.status = ? AND (e.waiting_for = ? OR e.waiting_for LIKE ?)")
            args.extend(("waiting", "approval", "approval:%"))
        if query.start is not None:
            where.append("e.created_at >= ?")
            args.append(to_ms(query.start))
        if query.end is not None:
            where.append("e.created_at <= ?")
            args.append(to_ms(query.end))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        offset = (query.page - 1) * query.page_size
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM executions e {clause}", args).fetchone()
            if len(statuses) > 1:
                # The page's ids first, from an index alone: several statuses sort index
                # entries, not whole rows (211 -> 0.2 ms over 28,000 failures).
                page = (
                    f"SELECT {_EXEC_COLUMNS} {_FROM} WHERE e.id IN (SELECT e.id FROM executions"
                    f" e {clause} ORDER BY e.created_at DESC, e.id DESC LIMIT ? OFFSET ?)"
                    " ORDER BY e.created_at DESC, e.id DESC"
                )
            else:  # one index range, already in order
                page = (
                    f"SELECT {_EXEC_COLUMNS} {_FROM} {clause}"
                    " ORDER BY e.created_at DESC, e.id DESC LIMIT ? OFFSET ?"
                )
            rows = conn.execute(page, [*args, query.page_size, offset]).fetchall()
        return [_row_to_record(r) for r in rows], int(total[0] if total else 0)

    def execution_counts(
        self, start: datetime, end: datetime, bucket_ms: int
    ) -> list[tuple[int, str, int]]:
        """Executions per ``bucket_ms`` interval from ``start`` and status (see the Store)."""
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        statuses = [s.value for s in ExecutionStatus]
        start_ms = to_ms(start)
        # Every status named, so the (status, created_at) index serves each as a range.
        sql = (
            "SELECT (e.created_at - CAST(? AS BIGINT)) / CAST(? AS BIGINT) AS bucket,"
            " e.status, count(*) FROM executions e"
            f" WHERE e.status IN ({', '.join(['?'] * len(statuses))})"
            # Grouped in the index's order (status first): 1.7x faster than by bucket.
            " AND e.created_at >= ? AND e.created_at < ? GROUP BY e.status, bucket"
        )
        with self._read() as conn:
            rows = conn.execute(
                sql, [start_ms, bucket_ms, *statuses, start_ms, to_ms(end)]
            ).fetchall()
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    def queued_stats(self) -> tuple[int, datetime | None]:
        """How many executions are queued and the oldest one's request time (see the Store)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT count(*), min(created_at) FROM executions WHERE status = 'queued'"
            ).fetchone()
        return int(row[0]), from_ms(row[1])

    def claim_recoverable(
        self,
        owner: str,
        now: datetime,
        lease_until: datetime,
        limit: int,
        types: Collection[str] | None = None,
        dead: Collection[str] = (),
    ) -> list[tuple[str, int, int]]:
        """Grant ``owner`` unfinished executions nobody holds (see
        :meth:`~abi_engine.storage.base.Store.claim_recoverable`); rows another
        process is claiming (or changing) right now are left to it. A timed-out
        wait gets its timeout signal recorded; each grant is a fresh claim token."""
        d = self.dialect
        now_ms = to_ms(now)
        where = _recovery_filters(d, now_ms, types, dead)
        order_args = (self.priority_aging_ms,)
        running = [0]  # of this attempt of the transaction (it may be retried)

        def run(conn: Conn) -> list[tuple[str, int, int]]:
            taken = _timed_out_waits(d, conn, now_ms, where, limit)
            running[0] = 0
            room = max(0, limit - len(taken))
            if room:
                rows = _unowned_rows(d, conn, room, where, order_args)
                taken.extend((row[0], row[3], new_claim()) for row in rows)
                running[0] = sum(1 for row in rows if row[4] == "running")
            grant(d, conn, owner, lease_until, taken)
            self.next_due = due_in(d, conn)
            return taken

        granted = list(self.write(run))
        self.lease_takeovers += running[0]
        return granted

    def claim_freed(
        self,
        owner: str,
        workflow_id: str,
        lease_until: datetime,
        limit: int,
        types: Collection[str] | None = None,
    ) -> list[tuple[str, int, int]]:
        """Grant ``owner`` executions of ``workflow_id`` waiting for a concurrency slot
        (``concurrency_limit``), as many as its slots (and rate limit) allow now and at
        most ``limit``: what a node does when one of its slots frees, rather than a
        whole :meth:`claim_recoverable` (one transaction that only reads when none
        waits). Returns ``(execution_id, priority, token)``; sets :attr:`next_due` when
        one is held by a rate limit (else clears it)."""
        d = self.dialect
        where = _recovery_filters(d, None, types, ())
        order_args = (self.priority_aging_ms,)

        def run(conn: Conn) -> list[tuple[str, int, int]]:
            self.next_due = None
            rows = blocked_rows(
                d, conn, limit, where.types, (*where.type_args, *order_args), workflow_id
            )
            if not rows:
                return []
            granted = admit(d, conn, rows, limit)
            taken = [(row[0], row[3], new_claim()) for row in granted]
            grant(d, conn, owner, lease_until, taken)
            if len(taken) < len(rows):  # some held by a rate limit's window?
                self.next_due = due_in(d, conn)
            return taken

        return list(self.write(run))

    def renew_leases(self, claims: Mapping[str, int], lease_until: datetime) -> list[str]:
        """Extend the lease of each execution still queued or running under its claim
        in ``claims`` (id -> token) to ``lease_until``; return the ids that were not
        (lost: taken over, cancelled, ended).

        In transactions of ``RENEW_CHUNK`` executions (in id order: renewals never
        deadlock with batches), so that other writers (the group commit) pass in
        between when a node holds very many.
        """
        d = self.dialect
        lease = _lease(d)

        def run(conn: Conn, chunk: Sequence[str]) -> list[str]:
            current = _claims(d, conn, chunk)
            kept = [i for i in chunk if current.get(i) == claims[i]]
            value = _lease_value(d, lease_until)
            for part in chunks(kept):
                condition, args = d.any_of("id", part)
                conn.execute(
                    f"UPDATE executions SET lease_until = {lease} WHERE {condition}",
                    (value, *args),
                )
            return kept

        ids = sorted(claims)
        kept: set[str] = set()
        for start in range(0, len(ids), RENEW_CHUNK):
            chunk = ids[start : start + RENEW_CHUNK]
            kept.update(self.write(lambda conn, chunk=chunk: run(conn, chunk)))
        return [i for i in claims if i not in kept]

    def slots_wanted(self, workflow_id: str) -> bool:
        """Whether executions of ``workflow_id`` wait queued for a concurrency slot."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM executions WHERE workflow_id = ? AND status = 'queued'"
                f" AND queued_reason = '{BLOCKED}' LIMIT 1",
                (workflow_id,),
            ).fetchone()
        return row is not None

    def concurrency_slots(self, workflow_id: str) -> list[tuple[str, str | None, datetime, str]]:
        with self._read() as conn:
            return slots(self.dialect, conn, workflow_id)

    def next_wake_at(self) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT min(wake_at) FROM executions WHERE status = 'waiting'"
            ).fetchone()
        return from_ms(row[0]) if row and row[0] is not None else None


def _admit_woken(d: Dialect, conn: Conn, woken: Sequence[Any]) -> list[Any]:
    """Of the waits that timed out (``(id, waiting_for, priority, workflow_id, key)``),
    those a slot is free for; the others are queued without owner, for a later claim."""
    if not woken:
        return []
    rows = [(row[0], row[3], row[4], row) for row in woken]
    granted = {row[0] for row in admit(d, conn, rows)}
    conn.executemany(
        "UPDATE executions SET status = 'queued', waiting_for = NULL, wake_at = NULL,"
        f" owner = NULL, claim = NULL, lease_until = NULL, queued_reason = '{BLOCKED}'"
        " WHERE id = ?",
        [(row[0],) for row in woken if row[0] not in granted],
    )
    return [row for row in woken if row[0] in granted]


class _RecoveryFilters(NamedTuple):
    """The SQL conditions (and their arguments) of :meth:`claim_recoverable`."""

    types: str  # " AND <the workflow types this node runs>", or ""
    type_args: tuple[Any, ...]
    dead: str  # " OR <owned by a node that ended>", or ""
    dead_args: tuple[Any, ...]
    expired: str  # the lease has lapsed
    expired_args: tuple[Any, ...]
    due: str  # now, for the time a rate limit or a debounce holds an execution until
    due_args: tuple[Any, ...]


def _recovery_filters(
    d: Dialect, now_ms: int | None, types: Collection[str] | None, dead: Collection[str]
) -> _RecoveryFilters:
    """Which executions a recovery may take: of the types this node runs, with a lapsed
    lease or owned by a node that ended."""
    names = types_filter(types)
    type_clause, type_args = ("", ()) if names is None else d.any_of("workflow_type", names)
    gone = sorted(dead)
    dead_clause, dead_args = d.any_of("owner", gone) if gone else ("", ())
    expired, expired_args = (
        ("e.lease_until < ?", (now_ms,)) if d.clock is None else (f"e.lease_until < {d.clock}", ())
    )
    return _RecoveryFilters(
        types=f" AND {type_clause}" if type_clause else "",
        type_args=tuple(type_args),
        dead=f" OR {dead_clause}" if dead_clause else "",
        dead_args=tuple(dead_args),
        expired=expired,
        expired_args=tuple(expired_args),
        due="?" if d.clock is None else d.clock,
        due_args=(now_ms,) if d.clock is None else (),
    )


def _timed_out_waits(
    d: Dialect, conn: Conn, now_ms: int | None, where: _RecoveryFilters, limit: int
) -> list[tuple[str, int, int]]:
    """Waits that timed out, granted: each gets a signal the step can see, and is queued."""
    woken = conn.execute(
        "SELECT id, waiting_for, priority, workflow_id, concurrency_key FROM executions"
        f" WHERE status = 'waiting' AND wake_at <= ?{where.types}"
        f" ORDER BY wake_at LIMIT ?{d.claim()}",
        (now_ms, *where.type_args, limit),
    ).fetchall()
    conn.executemany(
        "INSERT INTO execution_signals (execution_id, name, payload, created_at)"
        " VALUES (?, ?, 'null', ?) ON CONFLICT DO NOTHING",
        [(row[0], f"{row[1]}{TIMEOUT_SUFFIX}", now_ms) for row in woken],
    )
    woken = _admit_woken(d, conn, woken)
    return [(row[0], row[2], new_claim()) for row in woken]


def _unowned_rows(
    d: Dialect, conn: Conn, room: int, where: _RecoveryFilters, order_args: tuple[Any, ...]
) -> list[Any]:
    """Up to ``room`` unowned executions, those whose lease lapsed and those of nodes that
    ended, admitted by their concurrency slots: runs to take over first (they hold their
    slot again), then those waiting for a slot (they have waited longest), then the others."""
    free, free_args = free_slots_filter(d)
    rows = conn.execute(
        "SELECT e.id, e.workflow_id, e.concurrency_key, e.priority, e.status"
        " FROM executions e LEFT JOIN workflows w ON w.id = e.workflow_id"
        " WHERE e.status IN ('queued', 'running')"
        f" AND (e.lease_until IS NULL OR {where.expired}{where.dead}){where.types}"
        " AND (e.queued_reason IS NULL OR e.queued_reason NOT IN"
        f" ('paused', '{BLOCKED}', '{RATE_LIMITED}', '{DEBOUNCED}')"
        f" OR (e.not_before <= {where.due} AND e.queued_reason IN"
        f" ('{RATE_LIMITED}', '{DEBOUNCED}'))){free}"
        f" ORDER BY {claim_order('e.')} LIMIT ?{d.claim(of='e')}",
        (
            *where.expired_args,
            *where.dead_args,
            *where.type_args,
            *where.due_args,
            *free_args,
            *order_args,
            room,
        ),
    ).fetchall()
    waiting = blocked_rows(d, conn, room, where.types, (*where.type_args, *order_args))
    again = [row for row in rows if row[4] == "running"]
    fresh = [row for row in rows if row[4] != "running"]
    return list(admit(d, conn, [*again, *waiting, *fresh], room))
