"""Webhook subscriptions, Standard Webhooks signing, and the delivery settings.

``engine.webhooks`` manages subscriptions (create, list, get, update, delete),
lists their deliveries and redelivers one on request. Its background part
(:mod:`abi_engine.runtime.delivery`, started with the engine) turns outbox
events into deliveries and posts them, signed as the Standard Webhooks
specification says, with retries.

Signing: every request carries ``webhook-id`` (the event id, the same on every
retry), ``webhook-timestamp`` (Unix seconds of the attempt) and
``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
keyed as the Standard Webhooks reference library for Python keys it: the part
of the secret after ``whsec_``, base64-decoded the way that library decodes it.
A secret it cannot decode (or that decodes to nothing) is still accepted; its
key is then the UTF-8 bytes of the part after ``whsec_``.
"""

from __future__ import annotations

import builtins
import os
import secrets as _secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import attrs
from anyio.abc import TaskStatus

from abi_engine.auth import Principal
from abi_engine.converter import structure
from abi_engine.errors import InvalidRequest, InvalidState, NotFound, WebhookNotFound
from abi_engine.events import EVENT_TYPES, EventPolicy
from abi_engine.ids import new_id, utcnow
from abi_engine.models import DeleteResult, Page
from abi_engine.models_webhooks import (
    Delivery,
    Webhook,
    WebhookCreateRequest,
    WebhookUpdateRequest,
)
from abi_engine.netguard import check_url
from abi_engine.runtime.delivery import DeliveryWorker
from abi_engine.runtime.metrics import RuntimeMetrics
from abi_engine.runtime.settings import STANDARD_RETRY_SCHEDULE, WebhookSettings
from abi_engine.services import Service, check_page
from abi_engine.storage.records_webhooks import WebhookRecord
from abi_engine.webhook_signing import (
    SECRET_PREFIX,
    generate_secret,
    mask_secret,
    secret_key,
    sign,
    signature_header,
)

if TYPE_CHECKING:
    from abi_engine.storage.base import Store

__all__ = [
    "STANDARD_RETRY_SCHEDULE",
    "WebhookService",
    "WebhookSettings",
    "generate_secret",
    "mask_secret",
    "secret_key",
    "sign",
    "signature_header",
]

MAX_SECRET = 512
MAX_DESCRIPTION = 5_000


def _check_secret(value: Any, field: str = "secret") -> str:
    if (
        not isinstance(value, str)
        or not value.startswith(SECRET_PREFIX)
        or not 0 < len(value) - len(SECRET_PREFIX) <= MAX_SECRET
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise InvalidRequest(
            f"'{field}' must be a secret of the form 'whsec_<base64>' (up to {MAX_SECRET}"
            " characters after the prefix, no spaces)",
            {"field": field},
        )
    return value


def _check_events(events: Sequence[str]) -> list[str]:
    if not events:
        raise InvalidRequest("'events' must name at least one event type", {"field": "events"})
    for index, name in enumerate(events):
        if name not in EVENT_TYPES:
            raise InvalidRequest(
                f"Unknown event type {name!r} in 'events[{index}]'",
                {"field": f"events[{index}]", "allowed": list(EVENT_TYPES)},
            )
    return list(dict.fromkeys(events))


def _check_description(value: str | None) -> str | None:
    if value is not None and len(value) > MAX_DESCRIPTION:
        raise InvalidRequest(
            f"'description' is longer than {MAX_DESCRIPTION} characters",
            {"field": "description"},
        )
    return value


def _view(record: WebhookRecord, *, show_secret: bool = False) -> Webhook:
    return Webhook(
        id=record.id,
        url=record.url,
        events=list(record.events),
        description=record.description,
        secret=record.secret if show_secret else mask_secret(record.secret),
        enabled=record.enabled,
        created_at=record.created_at,
        updated_at=record.updated_at,
        created_by=record.created_by,
    )


def _delivery_not_found(delivery_id: str) -> NotFound:
    error = NotFound(None, f"Delivery {delivery_id!r} not found")
    error.details["delivery_id"] = delivery_id
    return error


def _node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_secrets.token_hex(4)}"


# -- the service --------------------------------------------------------------------------


class WebhookService(Service):
    """Webhook subscriptions and deliveries (``engine.webhooks``).

    Update semantics (``PUT``): the fields given replace the current ones,
    the others stay (``url``, ``events``, ``description``, ``enabled``,
    ``secret``; ``rotate_secret: true`` generates a new secret).
    """

    def __init__(
        self,
        store: Store,
        settings: WebhookSettings | None = None,
        *,
        events: EventPolicy,
        allow_private_urls: Callable[[], bool],
        in_flight: Callable[[], int],
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        super().__init__(store)
        self.settings = settings or WebhookSettings()
        self._metrics = metrics
        self.node_id = _node_id()
        self._event_policy = events
        self._allow_private_urls = allow_private_urls
        self._in_flight = in_flight
        events.on_committed(self.notify)
        self._wake: anyio.Event | None = None
        self._loop_thread: int | None = None
        self.refresh_subscriptions()

    # -- which events the engine must keep ----------------------------------------------

    def refresh_subscriptions(self) -> set[str]:
        """Make the engine keep the event types enabled subscriptions ask for; return them.

        Called at start, after every change here, and periodically by the
        delivery worker (subscriptions changed by another process).
        """
        wanted = self._store.sync.subscribed_event_types()
        self._event_policy.subscribe(wanted)
        return wanted

    def notify(self) -> None:
        """Wake the delivery worker: events were committed (called by the event policy)."""
        wake = self._wake
        if wake is not None and threading.get_ident() == self._loop_thread:
            wake.set()

    # -- subscriptions ----------------------------------------------------------------------

    async def create(
        self, data: Mapping[str, Any] | WebhookCreateRequest, *, actor: Principal | None = None
    ) -> Webhook:
        """Subscribe a URL to event types; the answer shows the secret whole, this once.

        :raises InvalidRequest: naming ``url``, ``events[i]``, ``secret`` or
            ``description`` when one is invalid.
        """
        req = (
            data
            if isinstance(data, WebhookCreateRequest)
            else structure(data, WebhookCreateRequest)
        )
        url = check_url(req.url, field="url", allow_private=self._allow_private_urls())
        events = _check_events(req.events)
        secret = generate_secret() if req.secret is None else _check_secret(req.secret)
        now = utcnow()
        record = WebhookRecord(
            id=new_id("wh_"),
            url=url,
            events=events,
            description=_check_description(req.description),
            secret=secret,
            enabled=req.enabled,
            created_at=now,
            updated_at=now,
            created_by=actor.user_id if actor else None,
        )
        await self._store.insert_webhook(record)
        self.refresh_subscriptions()
        return _view(record, show_secret=True)

    async def _load(self, webhook_id: Any) -> WebhookRecord:
        if not isinstance(webhook_id, str):
            raise WebhookNotFound(str(webhook_id))
        found = await self._store.get_webhook(webhook_id)
        if found is None:
            raise WebhookNotFound(webhook_id)
        return found

    async def get(self, webhook_id: str) -> Webhook:
        """The subscription, its secret masked."""
        return _view(await self._load(webhook_id))

    async def list(self, *, page: Any = 1, page_size: Any = 10) -> Page[Webhook]:
        """One page of subscriptions, newest first, secrets masked."""
        page, page_size = check_page(page, page_size)
        records, total = await self._store.list_webhooks(page, page_size)
        return Page.build([_view(r) for r in records], page, page_size, total)

    async def update(self, webhook_id: str, data: Mapping[str, Any]) -> Webhook:
        """Change a subscription: the fields given replace the current ones.

        A new ``secret`` (given, or generated with ``rotate_secret: true``)
        signs from now on; the previous one also signs during the grace period.
        A generated secret is shown whole in this answer only.
        """
        if not isinstance(data, Mapping):
            raise InvalidRequest("The request body must be a JSON object", {"field": "(body)"})
        req = structure(dict(data), WebhookUpdateRequest)
        current = await self._load(webhook_id)
        now = utcnow()
        updated = attrs.evolve(current, updated_at=now)
        if req.url is not None:
            updated.url = check_url(req.url, field="url", allow_private=self._allow_private_urls())
        if req.events is not None:
            updated.events = _check_events(req.events)
        if "description" in data:
            updated.description = _check_description(req.description)
        if req.enabled is not None:
            updated.enabled = req.enabled
        new_secret = None
        if req.secret is not None and req.rotate_secret:
            raise InvalidRequest(
                "Give either 'secret' or 'rotate_secret', not both", {"field": "rotate_secret"}
            )
        if req.secret is not None:
            new_secret = _check_secret(req.secret)
        elif req.rotate_secret:
            new_secret = generate_secret()
        if new_secret is not None and new_secret != current.secret:
            grace = self.settings.secret_rotation_grace_seconds
            updated.secret = new_secret
            updated.previous_secret = current.secret if grace > 0 else None
            updated.previous_secret_until = now + timedelta(seconds=grace) if grace > 0 else None
        if not await self._store.update_webhook(updated, now):
            raise WebhookNotFound(webhook_id)
        self.refresh_subscriptions()
        self.notify()
        return _view(updated, show_secret=req.rotate_secret)

    async def delete(self, webhook_id: str) -> DeleteResult:
        """Remove a subscription with its deliveries (pending ones are not sent)."""
        if not isinstance(webhook_id, str) or not await self._store.delete_webhook(webhook_id):
            raise WebhookNotFound(str(webhook_id))
        self.refresh_subscriptions()
        return DeleteResult(id=webhook_id, deleted=True)

    # -- deliveries ---------------------------------------------------------------------------

    async def deliveries(
        self, webhook_id: str, *, page: Any = 1, page_size: Any = 10
    ) -> Page[Delivery]:
        """One page of a subscription's deliveries, newest event first, with every attempt."""
        page, page_size = check_page(page, page_size)
        await self._load(webhook_id)
        items, total = await self._store.list_deliveries(webhook_id, page, page_size)
        return Page.build(items, page, page_size, total)

    async def redeliver(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Send a finished delivery (failed, or succeeded) again, its retry schedule anew.

        The request carries the same ``webhook-id`` as before, so a receiver
        that already handled it can tell.

        :raises WebhookNotFound: no such subscription.
        :raises NotFound: the subscription has no such delivery.
        :raises InvalidState: the delivery is still pending, or the
            subscription is disabled.
        """
        hook = await self._load(webhook_id)
        found = await self._store.get_delivery(delivery_id)
        if found is None or found.webhook_id != hook.id:
            raise _delivery_not_found(delivery_id)
        if not hook.enabled:
            raise InvalidState(
                f"Webhook {webhook_id!r} is disabled; enable it before redelivering",
                {"webhook_id": webhook_id, "enabled": False},
            )
        if not await self._store.redeliver(delivery_id, utcnow()):
            raise InvalidState(
                f"Delivery {delivery_id!r} is still pending",
                {"delivery_id": delivery_id, "status": found.status.value},
            )
        self.notify()
        again = await self._store.get_delivery(delivery_id)
        if again is None:  # its webhook was deleted meanwhile
            raise _delivery_not_found(delivery_id)
        return again

    async def callback_deliveries(self, execution_id: str) -> builtins.list[Delivery]:
        """The deliveries of an execution's callback (with their attempts)."""
        return await self._store.callback_deliveries(execution_id)

    # -- background work -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Fan out the outbox and deliver, until cancelled (started by the engine)."""
        worker = DeliveryWorker(
            self,
            self.settings,
            store=self._store.sync,
            in_flight=self._in_flight,
            allow_private_urls=self._allow_private_urls,
            metrics=self._metrics,
        )
        self._loop_thread = threading.get_ident()
        try:
            await worker.run(task_status=task_status)
        finally:
            self._wake = None
            self._loop_thread = None

    def _set_wake(self, event: anyio.Event | None) -> None:
        self._wake = event
