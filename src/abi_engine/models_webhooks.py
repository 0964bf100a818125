"""Webhook subscriptions and their deliveries, as the REST API shows them.

Like :mod:`abi_engine.models`, every class is an attrs class turned into JSON
by the one converter; every field is present, ``null`` when empty.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, ClassVar

import attrs

from abi_engine.events import EVENT_TYPES
from abi_engine.limits import DESCRIPTION, URL, Choice, Items, Text

__all__ = [
    "Delivery",
    "DeliveryAttempt",
    "DeliveryStatus",
    "Webhook",
    "WebhookCreateRequest",
    "WebhookUpdateRequest",
]

#: Field limits of the request bodies (see :mod:`abi_engine.limits`).
EVENT_TYPE = Choice(EVENT_TYPES)
EVENTS = Items(min_items=1, max_items=50)
#: ``whsec_`` and 1 to 512 visible ASCII characters.
WEBHOOK_SECRET = Text(
    max_length=518,
    pattern=r"^whsec_[!-~]{1,512}$",
    hint="must be 'whsec_' and 1 to 512 visible ASCII characters (no spaces)",
)


class DeliveryStatus(enum.StrEnum):
    """Where a delivery stands: ``pending`` (to be tried, or retried), then
    ``succeeded`` (a 2xx answer) or ``failed`` (the last attempt failed)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@attrs.define(kw_only=True)
class Webhook:
    """A webhook subscription.

    Fields: ``id`` (``wh_...``), ``url`` (receives ``POST`` requests),
    ``events`` (the event types it receives), ``description``, ``secret``
    (whole only in the answer that set it when the engine generated it;
    otherwise masked as ``whsec_****abcd``), ``enabled`` (a disabled webhook
    receives nothing; its pending deliveries wait until it is enabled again),
    timestamps and ``created_by`` (the user id of the token that created it).
    """

    id: str
    url: str
    events: list[str] = attrs.Factory(list)
    description: str | None = None
    secret: str
    enabled: bool = True
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None


@attrs.define(kw_only=True)
class WebhookCreateRequest:
    """The body of ``POST /api/v1/webhooks``.

    ``secret`` is a ``whsec_`` secret; without one the engine makes one and
    returns it once, in the answer.
    """

    url: Annotated[str, URL]
    events: Annotated[list[Annotated[str, EVENT_TYPE]], EVENTS]
    secret: Annotated[str, WEBHOOK_SECRET] | None = None
    description: Annotated[str, DESCRIPTION] | None = None
    enabled: bool = True


@attrs.define(kw_only=True)
class WebhookUpdateRequest:
    """The body of ``PUT /api/v1/webhooks/{id}``: the fields given replace the current ones.

    ``secret`` sets a new secret; ``rotate_secret: true`` makes the engine
    generate one (returned once, in the answer). After a change of secret,
    deliveries carry signatures made with both the new and the previous
    secret for a grace period (``WebhookSettings.secret_rotation_grace_seconds``).
    """

    url: Annotated[str, URL] | None = None
    events: Annotated[list[Annotated[str, EVENT_TYPE]], EVENTS] | None = None
    description: Annotated[str, DESCRIPTION] | None = None
    enabled: bool | None = None
    secret: Annotated[str, WEBHOOK_SECRET] | None = None
    rotate_secret: bool = False

    #: For the OpenAPI document: ``secret`` and ``rotate_secret: true`` exclude each other.
    __openapi__: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"properties": {"rotate_secret": {"const": False}}},
            {"properties": {"secret": {"type": "null"}}},
        ]
    }


@attrs.define(kw_only=True)
class DeliveryAttempt:
    """One attempt of a delivery: one ``POST`` and what came of it.

    ``status`` is ``succeeded`` or ``failed``; ``status_code`` the HTTP status
    answered (``null`` when no answer came: refused URL, connection error,
    timeout); ``error`` why it failed; ``response_body`` the start of the
    answer's body (at most ``WebhookSettings.response_body_limit`` characters).
    """

    attempt: int
    status: DeliveryStatus
    status_code: int | None = None
    duration_ms: int
    error: str | None = None
    response_body: str | None = None
    created_at: datetime


@attrs.define(kw_only=True)
class Delivery:
    """One event sent to one target (a webhook, or an execution's ``callback_url``).

    ``id`` (``dlv_...``), ``webhook_id`` (``null`` for a callback),
    ``execution_id`` (a callback's execution, else ``null``), ``event_id`` (also the
    ``webhook-id`` header of every attempt), ``event_type``, ``status``,
    ``attempt_count``, ``next_attempt_at`` (while ``pending``, else ``null``), ``attempts``
    (every attempt, oldest first), timestamps.
    """

    id: str
    webhook_id: str | None = None
    execution_id: str | None = None
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempt_count: int = 0
    next_attempt_at: datetime | None = None
    attempts: list[DeliveryAttempt] = attrs.Factory(list)
    created_at: datetime
    updated_at: datetime
