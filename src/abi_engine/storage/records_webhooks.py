"""Internal records of webhook subscriptions and deliveries (what storage keeps).

The API shows :class:`~abi_engine.models_webhooks.Webhook` (secret masked);
storage keeps the whole secret, and the previous one while a rotation's grace
period lasts. The delivery worker claims :class:`DeliveryJob` values and hands
back :class:`AttemptOutcome` values.
"""

from __future__ import annotations

from datetime import datetime

import attrs

from abi_engine.models_webhooks import DeliveryStatus

__all__ = ["AttemptOutcome", "DeliveryJob", "WebhookRecord"]


@attrs.define(kw_only=True)
class WebhookRecord:
    """A subscription as stored (whole secrets included)."""

    id: str
    url: str
    events: list[str]
    description: str | None = None
    secret: str
    previous_secret: str | None = None
    previous_secret_until: datetime | None = None
    enabled: bool = True
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None


@attrs.frozen(kw_only=True)
class DeliveryJob:
    """A delivery claimed by a worker: what to send, where, and signed with what.

    The event comes as stored: ``data_json`` is its ``data`` as JSON text, or
    ``None`` for an execution event kept by reference (``ref_execution_id``,
    ``ref_step_index``), whose data the worker builds.
    ``url`` and ``secrets`` are read when the delivery is claimed: a
    webhook's current URL and secrets, or an execution's ``callback_url`` and
    ``callback_secret`` (no secrets: the request goes unsigned). ``tries`` is
    the number of attempts since the delivery was (re)started, which picks the
    next delay of the retry schedule; ``attempt_count`` counts every attempt.
    ``claim`` is the fencing token of this claim: the attempt's outcome moves
    the delivery on only while it still holds it (see
    :meth:`~abi_engine.storage.base.Store.record_attempts`).
    """

    id: str
    event_id: str
    event_type: str
    event_timestamp: datetime
    data_json: str | None
    url: str | None
    secrets: tuple[str, ...] = ()
    webhook_id: str | None = None
    execution_id: str | None = None
    tries: int = 0
    attempt_count: int = 0
    ref_execution_id: str | None = None
    ref_step_index: int | None = None
    claim: int | None = None
    #: The ``traceparent`` of the execution the delivery is about (sent along), if traced.
    traceparent: str | None = None


@attrs.frozen(kw_only=True)
class AttemptOutcome:
    """What an attempt came to, and what becomes of its delivery.

    ``status`` is the attempt's (``succeeded`` or ``failed``); the delivery
    becomes ``delivery_status`` and, while pending, is due again at
    ``next_attempt_at``. ``claim`` is the claim token of the job the
    attempt was made under (``None``: the delivery moves on while ``owner``
    holds its lease, whatever the claim). The store numbers the attempt when
    it records it (one more than the delivery's last, atomically), so
    ``attempt`` is only the number expected when the job was claimed.
    """

    delivery_id: str
    attempt: int
    status: DeliveryStatus
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str | None
    created_at: datetime
    delivery_status: DeliveryStatus
    next_attempt_at: datetime | None = None
    claim: int | None = None
