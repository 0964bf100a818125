"""Webhook and delivery rows as records: the columns and decoders both stores share."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from abi_engine.models_webhooks import Delivery, DeliveryAttempt, DeliveryStatus
from abi_engine.storage._codec import from_ms, loads
from abi_engine.storage.records_webhooks import WebhookRecord

_CURSOR = "deliveries"


_CALLBACK_TARGET = "callback"

#: The periods of subscriptions the fan-out may still need (those not closed at or
#: before the cursor), with whether their webhook is enabled now. Parameter: the cursor.
_PERIODS_QUERY = (
    "SELECT p.webhook_id, p.after_seq, p.until_seq, p.events, w.enabled"
    " FROM webhook_periods p JOIN webhooks w ON w.id = p.webhook_id"
    " WHERE p.until_seq IS NULL OR p.until_seq > {mark}"
)


def new_claim() -> int:
    """A fresh claim token (63 random bits: fits a signed 64-bit column)."""
    return secrets.randbits(63)


@attrs.frozen
class Period:
    """A stretch of outbox positions during which a subscription was enabled with ``types``.

    It receives the events at positions ``after < seq <= until`` (``until``
    ``None``: the period lasts); ``enabled`` tells whether its webhook is
    enabled now (a delivery for a disabled one is created parked).
    """

    webhook_id: str
    after: int
    until: int | None
    types: frozenset[str]
    enabled: bool

    def covers(self, seq: int, event_type: str) -> bool:
        """Whether the subscription listened to ``event_type`` when position ``seq`` was written."""
        return (
            self.after < seq and (self.until is None or seq <= self.until)
        ) and event_type in self.types


def periods_from(rows: Iterable[Sequence[Any]]) -> list[Period]:
    """The rows of :data:`_PERIODS_QUERY` as :class:`Period` values."""
    return [
        Period(row[0], int(row[1]), row[2], frozenset(loads(row[3])), bool(row[4])) for row in rows
    ]


_HOOK_COLUMNS = (
    "id, url, events, description, secret, previous_secret, previous_secret_until, enabled,"
    " created_at, updated_at, created_by"
)


_DELIVERY_COLUMNS = (
    "id, webhook_id, execution_id, event_id, event_type, status, attempt_count,"
    " next_attempt_at, created_at, updated_at"
)


def _row_to_webhook(row: Sequence[Any]) -> WebhookRecord:
    return WebhookRecord(
        id=row[0],
        url=row[1],
        events=loads(row[2]),
        description=row[3],
        secret=row[4],
        previous_secret=row[5],
        previous_secret_until=from_ms(row[6]),
        enabled=bool(row[7]),
        created_at=from_ms(row[8]),  # type: ignore[arg-type]
        updated_at=from_ms(row[9]),  # type: ignore[arg-type]
        created_by=row[10],
    )


def _row_to_delivery(row: Sequence[Any], attempts: list[DeliveryAttempt]) -> Delivery:
    return Delivery(
        id=row[0],
        webhook_id=row[1],
        execution_id=row[2],
        event_id=row[3],
        event_type=row[4],
        status=DeliveryStatus(row[5]),
        attempt_count=row[6],
        next_attempt_at=from_ms(row[7]) if row[5] == DeliveryStatus.PENDING else None,
        attempts=attempts,
        created_at=from_ms(row[8]),  # type: ignore[arg-type]
        updated_at=from_ms(row[9]),  # type: ignore[arg-type]
    )
