"""Webhook and delivery rows as records: the columns and decoders both stores share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abi_engine.models_webhooks import Delivery, DeliveryAttempt, DeliveryStatus
from abi_engine.storage._codec import from_ms, loads
from abi_engine.storage.records_webhooks import WebhookRecord

_CURSOR = "deliveries"


_CALLBACK_TARGET = "callback"


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
