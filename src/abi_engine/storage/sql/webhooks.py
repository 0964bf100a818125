"""Storage of webhook subscriptions and deliveries, in the shared SQL (mixed into the stores).

Deliveries come from the outbox: :meth:`WebhooksMixin.fan_out` reads the
events after the durable cursor and, in the same transaction, creates one
delivery per (event, target) and advances the cursor, so every event is fanned
out exactly once even with several processes on one database (the cursor row
is read with the dialect's row lock: concurrent fan-outs run one after the
other). Workers then claim due deliveries under a lease
(:meth:`WebhooksMixin.claim_deliveries`, skipping rows being claimed
elsewhere); a lease that expires (its process died) makes the delivery
claimable again. Every claim carries a fresh token; recording an attempt moves
the delivery on only while that token still holds it (fencing), and numbers
the attempt one past the delivery's last under the delivery's row lock, so
racing recorders get distinct numbers.

Which subscriptions an event goes to follows commit order: each subscription
has periods of outbox positions during which it was enabled with one list of
event types (``webhook_periods``), opened and closed at the last position
written when the change commits. A subscription change takes the store's
subscriptions lock (:meth:`~abi_engine.storage.sql.store.SQLStore._lock_subscriptions`)
and then the outbox lock, so every event is before or after it; the fan-out
and the recording of attempts hold the shared form
(:meth:`~abi_engine.storage.sql.store.SQLStore._hold_subscriptions`), so a
change never commits between their read and their writes. On SQLite writes
are serialized and these locks are nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, ClassVar

from abi_engine.events import ExecutionEventRef
from abi_engine.ids import new_id
from abi_engine.models_webhooks import Delivery, DeliveryAttempt, DeliveryStatus
from abi_engine.storage._codec import dumps, from_ms, loads, to_ms
from abi_engine.storage._refs import outbox_entries, unpack, whole_rows
from abi_engine.storage._rows_webhooks import (
    _CALLBACK_TARGET,
    _CURSOR,
    _DELIVERY_COLUMNS,
    _HOOK_COLUMNS,
    _PERIODS_QUERY,
    _row_to_delivery,
    _row_to_webhook,
    new_claim,
    periods_from,
)
from abi_engine.storage.records_webhooks import AttemptOutcome, DeliveryJob, WebhookRecord
from abi_engine.storage.sql.dialect import Conn, Dialect, chunks

__all__ = ["WebhooksMixin", "subscribed_types"]


def _webhook_params(hook: WebhookRecord) -> tuple[Any, ...]:
    return (
        hook.url,
        dumps(hook.events),
        hook.description,
        hook.secret,
        hook.previous_secret,
        to_ms(hook.previous_secret_until),
        bool(hook.enabled),
        to_ms(hook.created_at),
        to_ms(hook.updated_at),
        hook.created_by,
    )


def _jobs(rows: Sequence[Sequence[Any]], claims: Sequence[int], now: datetime) -> list[DeliveryJob]:
    now_ms = to_ms(now) or 0
    unpacked: dict[int, list[ExecutionEventRef]] = {}
    jobs = []
    for claim, row in zip(claims, rows, strict=True):
        (delivery_id, webhook_id, execution_id, tries, attempt_count) = row[:5]
        (event_seq, event_index, event_id, event_type) = row[5:9]
        (found, timestamp, data, refs) = row[9:13]
        (url, secret, previous, previous_until, callback_url, callback_secret) = row[13:19]
        traceparent = row[19] if webhook_id is None else None  # a callback's execution
        if webhook_id is not None:
            secrets: tuple[str, ...] = (secret,) if secret else ()
            if previous and previous_until is not None and previous_until > now_ms:
                secrets += (previous,)
        else:
            url = callback_url
            secrets = (callback_secret,) if callback_secret else ()
        ref = None
        if refs is not None:
            if event_seq not in unpacked:
                unpacked[event_seq] = unpack(None, refs)
            ref = unpacked[event_seq][event_index]
        jobs.append(
            DeliveryJob(
                id=delivery_id,
                event_id=event_id,
                event_type=event_type,
                event_timestamp=ref.timestamp if ref is not None else from_ms(timestamp) or now,
                data_json=data if data is not None else (None if ref else "null"),
                ref_execution_id=ref.execution_id if ref is not None else None,
                ref_step_index=ref.step_index if ref is not None else None,
                url=url if found is not None else None,
                secrets=secrets,
                webhook_id=webhook_id,
                execution_id=execution_id,
                tries=tries,
                attempt_count=attempt_count,
                claim=claim,
                traceparent=traceparent,
            )
        )
    return jobs


def subscribed_types(conn: Conn) -> set[str]:
    """The event types enabled subscriptions ask for, as ``conn`` sees them (also mid-transaction)."""
    rows = conn.execute("SELECT events FROM webhooks WHERE enabled").fetchall()
    return {t for (events,) in rows for t in loads(events)}


def _record(d: Dialect, conn: Conn, owner: str, o: AttemptOutcome) -> int:
    """Record one attempt (numbered here) and move its delivery on if its claim still holds.

    The number is taken under the delivery's row lock (the ``UPDATE``), so two
    processes recording attempts of one delivery at once get distinct numbers.
    """
    if (
        o.claim is not None
        and conn.execute(
            "SELECT 1 FROM webhook_attempts WHERE delivery_id = ? AND claim = ?",
            (o.delivery_id, o.claim),
        ).fetchone()
    ):
        return 0  # recorded already: a retry of a write that committed
    numbered = conn.execute(
        f"UPDATE webhook_deliveries SET attempt_count = {d.greatest}(attempt_count, coalesce((SELECT"
        " max(attempt) FROM webhook_attempts WHERE delivery_id = ?), 0)) + 1"
        " WHERE id = ? RETURNING attempt_count",
        (o.delivery_id, o.delivery_id),
    ).fetchone()
    if numbered is None:
        return 0  # the delivery is gone (its webhook was deleted)
    # The attempt happened even if the claim was lost meanwhile: it is recorded.
    conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, status, status_code,"
        " duration_ms, error, response_body, created_at, claim)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            o.delivery_id,
            numbered[0],
            o.status.value,
            o.status_code,
            o.duration_ms,
            o.error,
            o.response_body,
            to_ms(o.created_at),
            o.claim,
        ),
    )
    return int(
        conn.execute(
            "UPDATE webhook_deliveries SET status = ?, tries = tries + 1,"
            # A webhook disabled meanwhile parks the retry (no due time).
            " next_attempt_at = CASE WHEN webhook_id IS NULL OR EXISTS (SELECT 1"
            f" FROM webhooks w WHERE w.id = webhook_id AND w.enabled) THEN {d.param('bigint')}"
            " END, lease_owner = NULL, lease_until = NULL, claim = NULL, updated_at = ?"
            f" WHERE id = ? AND lease_owner = ? AND ({d.param('bigint')} IS NULL OR claim = ?)",
            (
                o.delivery_status.value,
                to_ms(o.next_attempt_at),
                to_ms(o.created_at),
                o.delivery_id,
                owner,
                o.claim,
                o.claim,
            ),
        ).rowcount
    )


class WebhooksMixin:
    """Webhook storage, in the shared SQL."""

    # Provided by SQLStore and the backend.
    dialect: ClassVar[Dialect]
    write: Callable[..., Any]
    _read: Callable[[], Any]
    _snapshot: Callable[[], Any]
    _lock_outbox: Callable[[Conn], None]
    _lock_subscriptions: Callable[[Conn], None]
    _hold_subscriptions: Callable[[Conn], None]

    # -- subscriptions ------------------------------------------------------------------

    def _position(self, conn: Conn) -> int:
        """The last outbox position written; no event commits after this with a smaller one.

        Takes the outbox lock (until commit): event writers hold it from their
        insert to their commit, one at a time, so positions follow commit order.
        """
        self._lock_outbox(conn)
        row = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return int(row[0]) if row else 0

    def _open_period(self, conn: Conn, hook: WebhookRecord) -> None:
        conn.execute(
            "INSERT INTO webhook_periods (webhook_id, after_seq, until_seq, events)"
            " VALUES (?, ?, NULL, ?)",
            (hook.id, self._position(conn), dumps(hook.events)),
        )

    def insert_webhook(self, webhook: WebhookRecord) -> None:
        def run(conn: Conn) -> None:
            self._lock_subscriptions(conn)
            conn.execute(
                "INSERT INTO webhooks (url, events, description, secret, previous_secret,"
                " previous_secret_until, enabled, created_at, updated_at, created_by, id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_webhook_params(webhook), webhook.id),
            )
            if webhook.enabled:
                self._open_period(conn, webhook)

        self.write(run)

    def get_webhook(self, webhook_id: str) -> WebhookRecord | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_HOOK_COLUMNS} FROM webhooks WHERE id = ?", (webhook_id,)
            ).fetchone()
        return None if row is None else _row_to_webhook(row)

    def update_webhook(self, webhook: WebhookRecord, now: datetime) -> bool:
        def run(conn: Conn) -> bool:
            self._lock_subscriptions(conn)
            row = conn.execute(
                f"SELECT enabled, events FROM webhooks WHERE id = ?{self.dialect.lock()}",
                (webhook.id,),
            ).fetchone()
            if row is None:
                return False
            if (bool(row[0]), set(loads(row[1]))) != (webhook.enabled, set(webhook.events)):
                # What it listens to changes here: events written so far keep the old period.
                conn.execute(
                    "UPDATE webhook_periods SET until_seq = ?"
                    " WHERE webhook_id = ? AND until_seq IS NULL",
                    (self._position(conn), webhook.id),
                )
                if webhook.enabled:
                    self._open_period(conn, webhook)
            conn.execute(
                "UPDATE webhooks SET url = ?, events = ?, description = ?, secret = ?,"
                " previous_secret = ?, previous_secret_until = ?, enabled = ?,"
                " created_at = ?, updated_at = ?, created_by = ? WHERE id = ?",
                (*_webhook_params(webhook), webhook.id),
            )
            was_enabled = bool(row[0])
            if was_enabled and not webhook.enabled:
                # Park pending deliveries: no due time until the webhook is enabled again.
                conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = NULL, updated_at = ?"
                    " WHERE webhook_id = ? AND status = 'pending'",
                    (to_ms(now), webhook.id),
                )
            elif webhook.enabled and not was_enabled:
                conn.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at = ?, updated_at = ?"
                    " WHERE webhook_id = ? AND status = 'pending'",
                    (to_ms(now), to_ms(now), webhook.id),
                )
            return True

        return bool(self.write(run))

    def delete_webhook(self, webhook_id: str) -> bool:
        def run(conn: Conn) -> bool:
            self._lock_subscriptions(conn)  # no fan-out makes deliveries for it meanwhile
            conn.execute(
                "DELETE FROM webhook_attempts WHERE delivery_id IN"
                " (SELECT id FROM webhook_deliveries WHERE webhook_id = ?)",
                (webhook_id,),
            )
            conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,))
            conn.execute("DELETE FROM webhook_periods WHERE webhook_id = ?", (webhook_id,))
            return bool(
                conn.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,)).rowcount > 0
            )

        return bool(self.write(run))

    def list_webhooks(self, page: int, page_size: int) -> tuple[list[WebhookRecord], int]:
        with self._read() as conn:
            total = conn.execute("SELECT count(*) FROM webhooks").fetchone()
            rows = conn.execute(
                f"SELECT {_HOOK_COLUMNS} FROM webhooks ORDER BY created_at DESC, id DESC"
                " LIMIT ? OFFSET ?",
                (page_size, (page - 1) * page_size),
            ).fetchall()
        return [_row_to_webhook(row) for row in rows], int(total[0] if total else 0)

    def subscribed_event_types(self) -> set[str]:
        with self._read() as conn:
            return subscribed_types(conn)

    # -- fan-out ----------------------------------------------------------------------------

    def fan_out_pending(self) -> bool:
        with self._read() as conn:
            row = conn.execute(
                "SELECT (SELECT coalesce(max(seq), 0) FROM events)"
                " > (SELECT seq FROM webhook_cursor WHERE name = ?)",
                (_CURSOR,),
            ).fetchone()
        return bool(row and row[0])

    def fan_out(self, now: datetime, limit: int, callback_types: Collection[str]) -> int:
        now_ms = to_ms(now)
        d = self.dialect

        def run(conn: Conn) -> int:
            cursor_row = conn.execute(
                f"SELECT seq FROM webhook_cursor WHERE name = ?{d.lock()}", (_CURSOR,)
            ).fetchone()
            position = cursor_row[0] if cursor_row else 0
            rows = conn.execute(
                "SELECT seq, id, type, timestamp, data, refs FROM events"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (position, limit),
            ).fetchall()
            if not rows:
                return 0
            events = whole_rows(outbox_entries(rows, callback_types), limit)
            # Callback targets: the execution an execution event is about, when it
            # has a callback URL.
            about = sorted({e.execution_id for e in events if e.execution_id is not None})
            with_callback: set[str] = set()
            for chunk in chunks(about):
                condition, args = d.any_of("id", chunk)
                with_callback.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT id FROM executions WHERE {condition} AND callback_url IS NOT NULL",
                        args,
                    )
                )
            # A subscription receives the events written while it listened to their type
            # (a delivery for a webhook disabled since then is created parked). No
            # subscription change commits until this does.
            self._hold_subscriptions(conn)
            periods = periods_from(conn.execute(_PERIODS_QUERY.format(mark="?"), (position,)))
            new: list[tuple[Any, ...]] = []
            for e in events:
                event = (e.seq, e.offset, e.event_id, e.type)
                for p in periods:
                    if p.covers(e.seq, e.type):
                        due = now_ms if p.enabled else None
                        new.append((p.webhook_id, p.webhook_id, None, *event, due))
                if e.execution_id in with_callback:
                    new.append((_CALLBACK_TARGET, None, e.execution_id, *event, now_ms))
            conn.executemany(
                "INSERT INTO webhook_deliveries (id, target, webhook_id,"
                " execution_id, event_seq, event_index, event_id, event_type, status,"
                " next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(new_id("dlv_"), *row, now_ms, now_ms) for row in new],
            )
            conn.execute(
                "UPDATE webhook_cursor SET seq = ? WHERE name = ?", (events[-1].seq, _CURSOR)
            )
            return len(events)

        return int(self.write(run))

    # -- claiming and recording -------------------------------------------------------------

    def deliveries_due(self, now: datetime) -> bool:
        now_ms = to_ms(now)
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM webhook_deliveries WHERE status = 'pending'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
                " LIMIT 1",
                (now_ms, now_ms),
            ).fetchone()
        return row is not None

    def next_delivery_due(self, after: datetime) -> datetime | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT min(next_attempt_at) FROM webhook_deliveries"
                " WHERE status = 'pending' AND next_attempt_at > ?",
                (to_ms(after),),
            ).fetchone()
        return from_ms(row[0]) if row and row[0] is not None else None

    def claim_deliveries(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[DeliveryJob]:
        now_ms = to_ms(now)

        def run(conn: Conn) -> tuple[list[Any], list[int]]:
            rows = conn.execute(
                "SELECT d.id, d.webhook_id, d.execution_id, d.tries, d.attempt_count,"
                " d.event_seq, d.event_index, d.event_id, d.event_type,"
                " e.seq, e.timestamp, e.data, e.refs,"
                " w.url, w.secret, w.previous_secret, w.previous_secret_until,"
                " x.callback_url, x.callback_secret, x.trace_context"
                " FROM webhook_deliveries d"
                " LEFT JOIN events e ON e.seq = d.event_seq"
                " LEFT JOIN webhooks w ON w.id = d.webhook_id"
                " LEFT JOIN executions x ON x.id = d.execution_id"
                " WHERE d.status = 'pending' AND d.next_attempt_at <= ?"
                " AND (d.lease_until IS NULL OR d.lease_until < ?)"
                " AND (d.webhook_id IS NULL OR w.enabled)"
                f" ORDER BY d.next_attempt_at LIMIT ?{self.dialect.claim(of='d')}",
                (now_ms, now_ms, limit),
            ).fetchall()
            claims = [new_claim() for _ in rows]
            conn.executemany(
                "UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ?, claim = ?"
                " WHERE id = ?",
                [
                    (owner, to_ms(lease_until), c, row[0])
                    for c, row in zip(claims, rows, strict=True)
                ],
            )
            return rows, claims

        rows, claims = self.write(run)
        return _jobs(rows, claims, now)

    def record_attempts(self, owner: str, outcomes: Sequence[AttemptOutcome]) -> int:
        def run(conn: Conn) -> int:
            # Whether a retry is parked follows the webhook's enabled state in commit
            # order: a change that disables it waits for this, or this sees it.
            self._hold_subscriptions(conn)
            return sum(_record(self.dialect, conn, owner, o) for o in outcomes)

        return int(self.write(run))

    def release_deliveries(self, owner: str) -> int:
        return int(
            self.write(
                lambda conn: (
                    conn.execute(
                        "UPDATE webhook_deliveries SET lease_owner = NULL, lease_until = NULL,"
                        " claim = NULL WHERE lease_owner = ?",
                        (owner,),
                    ).rowcount
                )
            )
        )

    # -- observation and replay -----------------------------------------------------------------

    def _with_attempts(self, conn: Conn, rows: list[Any]) -> list[Delivery]:
        if not rows:
            return []
        ids = [row[0] for row in rows]
        attempts: dict[str, list[DeliveryAttempt]] = {i: [] for i in ids}
        condition, args = self.dialect.any_of("delivery_id", ids)
        for r in conn.execute(
            "SELECT delivery_id, attempt, status, status_code, duration_ms, error,"
            f" response_body, created_at FROM webhook_attempts WHERE {condition}"
            " ORDER BY delivery_id, attempt",
            args,
        ):
            attempts[r[0]].append(
                DeliveryAttempt(
                    attempt=r[1],
                    status=DeliveryStatus(r[2]),
                    status_code=r[3],
                    duration_ms=r[4],
                    error=r[5],
                    response_body=r[6],
                    created_at=from_ms(r[7]),  # type: ignore[arg-type]
                )
            )
        return [_row_to_delivery(row, attempts[row[0]]) for row in rows]

    def list_deliveries(
        self, webhook_id: str, page: int, page_size: int
    ) -> tuple[list[Delivery], int]:
        with self._snapshot() as conn:  # the deliveries and their attempts, as of one instant
            total = conn.execute(
                "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = ?", (webhook_id,)
            ).fetchone()
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = ?"
                " ORDER BY event_seq DESC, event_index DESC LIMIT ? OFFSET ?",
                (webhook_id, page_size, (page - 1) * page_size),
            ).fetchall()
            return self._with_attempts(conn, rows), int(total[0] if total else 0)

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self._snapshot() as conn:  # the deliveries and their attempts, as of one instant
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?",
                (delivery_id,),
            ).fetchall()
            found = self._with_attempts(conn, rows)
        return found[0] if found else None

    def callback_deliveries(self, execution_id: str) -> list[Delivery]:
        with self._snapshot() as conn:  # the deliveries and their attempts, as of one instant
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries"
                " WHERE execution_id = ? ORDER BY event_seq, event_index",
                (execution_id,),
            ).fetchall()
            return self._with_attempts(conn, rows)

    def redeliver(self, delivery_id: str, now: datetime) -> bool:
        return bool(
            self.write(
                lambda conn: (
                    conn.execute(
                        "UPDATE webhook_deliveries SET status = 'pending', tries = 0,"
                        " next_attempt_at = ?, lease_owner = NULL, lease_until = NULL,"
                        " claim = NULL, updated_at = ?"
                        " WHERE id = ? AND status IN ('succeeded', 'failed')",
                        (to_ms(now), to_ms(now), delivery_id),
                    ).rowcount
                    > 0
                )
            )
        )

    def prune_deliveries(self, before: datetime) -> int:
        def run(conn: Conn) -> int:
            old = "SELECT id FROM webhook_deliveries WHERE updated_at < ? AND status <> 'pending'"
            conn.execute(
                f"DELETE FROM webhook_attempts WHERE delivery_id IN ({old})", (to_ms(before),)
            )
            pruned = conn.execute(
                "DELETE FROM webhook_deliveries WHERE updated_at < ? AND status <> 'pending'",
                (to_ms(before),),
            ).rowcount
            # Outbox events as old, once fanned out and no delivery still refers to them.
            conn.execute(
                "DELETE FROM events WHERE timestamp < ?"
                " AND seq <= (SELECT seq FROM webhook_cursor WHERE name = ?)"
                " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = events.seq)",
                (to_ms(before), _CURSOR),
            )
            # Periods that ended at or before the cursor: no event left to fan out falls in them.
            conn.execute(
                "DELETE FROM webhook_periods WHERE until_seq <="
                " (SELECT seq FROM webhook_cursor WHERE name = ?)",
                (_CURSOR,),
            )
            return int(pruned)

        return int(self.write(run))
