""":class:`~abi.workflows.WebhookManager`: event webhooks and their deliveries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from abi._client import (
    _check_id,
    _Client,
    _drop_none,
    _structure,
)
from abi_engine.errors import (
    AbiError,
    NotFound,
    WebhookNotFound,
)
from abi_engine.models import (
    DeleteResult,
    Page,
)
from abi_engine.models_webhooks import Delivery, Webhook


def _delivery_not_found(delivery_id: str) -> AbiError:
    error = NotFound(None, f"Delivery {delivery_id!r} not found")
    error.details["delivery_id"] = delivery_id
    return error


class WebhookManager(_Client):
    """Subscribe URLs to events, follow their deliveries and replay them.

    Deliveries are signed as the Standard Webhooks specification says; see
    ``docs/webhooks.md`` for verifying them.

    :param access_token: the bearer token to act with (scope ``webhooks:admin``).
    :param engine: an in-process :class:`abi_engine.Engine` to use.
    :param base_url: the root URL of a remote REST API (``/api/v1`` lives under it).
    :param timeout: seconds a remote call may take.
    """

    def create_webhook(
        self,
        url: str,
        events: Sequence[str],
        secret: str | None = None,
        description: str | None = None,
        enabled: bool = True,
    ) -> Webhook:
        """Subscribe ``url`` to ``events``; the answer holds the secret whole, this once.

        :param secret: a ``whsec_`` secret; without one the engine makes one.
        :raises InvalidRequest: a bad URL, unknown event type (``events[i]``) or bad secret.
        """
        body = _drop_none(
            {
                "url": url,
                "events": list(events),
                "secret": secret,
                "description": description,
                "enabled": enabled,
            }
        )
        return _structure(self._transport.request("create_webhook", body=body), Webhook)

    def get_webhook(self, webhook_id: str) -> Webhook:
        """The subscription (its secret masked).

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        return _structure(self._transport.request("get_webhook", path=path), Webhook)

    def list_webhooks(self, page: int = 1, page_size: int = 10) -> Page[Webhook]:
        """One page of subscriptions, newest first."""
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_webhooks", query=query)
        return _structure(data, Page[Webhook])

    def update_webhook(self, webhook_id: str, **fields: Any) -> Webhook:
        """Change a subscription: the fields given replace the current ones.

        Fields: ``url``, ``events``, ``description``, ``enabled``, ``secret``,
        or ``rotate_secret=True`` (the new secret is in the answer, this once).

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        data = self._transport.request("update_webhook", path=path, body=fields)
        return _structure(data, Webhook)

    def delete_webhook(self, webhook_id: str) -> DeleteResult:
        """Remove the subscription and its deliveries.

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        return _structure(self._transport.request("delete_webhook", path=path), DeleteResult)

    def list_deliveries(
        self, webhook_id: str, page: int = 1, page_size: int = 10
    ) -> Page[Delivery]:
        """One page of the webhook's deliveries, newest event first, with every attempt.

        :raises WebhookNotFound: no such webhook.
        """
        path = {"webhook_id": _check_id(webhook_id, WebhookNotFound)}
        query = {"page": page, "page_size": page_size}
        data = self._transport.request("list_webhook_deliveries", path=path, query=query)
        return _structure(data, Page[Delivery])

    def redeliver(self, webhook_id: str, delivery_id: str) -> Delivery:
        """Send a finished delivery again (same ``webhook-id``, fresh retry schedule).

        :raises WebhookNotFound: no such webhook.
        :raises NotFound: the webhook has no such delivery.
        :raises InvalidState: the delivery is still pending, or the webhook is disabled.
        """
        path = {
            "webhook_id": _check_id(webhook_id, WebhookNotFound),
            "delivery_id": _check_id(delivery_id, _delivery_not_found),
        }
        data = self._transport.request("redeliver_webhook_delivery", path=path)
        return _structure(data, Delivery)
