"""REST operations of webhook subscriptions and their deliveries (scope ``webhooks:admin``).

Declared into :data:`abi_engine.api.OPERATIONS` like every other operation
(imported at the end of :mod:`abi_engine.api`), so the ASGI adapter routes
them and documents them in the OpenAPI document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import (
    PAGE_QUERY,
    ApiRequest,
    body_object,
    check_quota,
    operation,
    page_json,
)
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.models import DeleteResult, Scope
from abi_engine.models_webhooks import (
    Delivery,
    Webhook,
    WebhookCreateRequest,
    WebhookUpdateRequest,
)

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

_TAG = "webhooks"
_NOT_FOUND = ("WEBHOOK_NOT_FOUND",)


@operation(
    method="POST",
    path="/webhooks",
    scope=Scope.WEBHOOKS_ADMIN,
    summary="Subscribe a URL to events (the secret is shown whole in this answer only)",
    status_code=201,
    request_model=WebhookCreateRequest,
    response_model=Webhook,
    tag=_TAG,
    errors=("INVALID_REQUEST", "INVALID_STATE"),
)
async def create_webhook(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    await check_quota(engine, actor, "webhooks", "max_webhooks_per_user", "delete some first")
    return unstructure(await engine.webhooks.create(body_object(request), actor=actor))


@operation(
    method="GET",
    path="/webhooks",
    scope=Scope.WEBHOOKS_ADMIN,
    summary="List webhook subscriptions, newest first (secrets masked)",
    response_model=Webhook,
    paginated=True,
    query=PAGE_QUERY,
    tag=_TAG,
    errors=("INVALID_REQUEST",),
)
async def list_webhooks(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.webhooks.list(page=q.get("page", 1), page_size=q.get("page_size", 10)),
        engine,
    )


@operation(
    method="GET",
    path="/webhooks/{webhook_id}",
    scope=Scope.WEBHOOKS_ADMIN,
    summary="Get a webhook subscription (secret masked)",
    response_model=Webhook,
    tag=_TAG,
    errors=_NOT_FOUND,
)
async def get_webhook(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.webhooks.get(request.path["webhook_id"]))


@operation(
    method="PUT",
    path="/webhooks/{webhook_id}",
    scope=Scope.WEBHOOKS_ADMIN,
    summary=(
        "Update a webhook subscription: the fields given replace the current ones;"
        " rotate_secret generates a new secret, shown whole in this answer only"
    ),
    request_model=WebhookUpdateRequest,
    response_model=Webhook,
    tag=_TAG,
    errors=(*_NOT_FOUND, "INVALID_REQUEST"),
)
async def update_webhook(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    webhook = await engine.webhooks.update(request.path["webhook_id"], body_object(request))
    return unstructure(webhook)


@operation(
    method="DELETE",
    path="/webhooks/{webhook_id}",
    scope=Scope.WEBHOOKS_ADMIN,
    summary="Delete a webhook subscription and its deliveries",
    response_model=DeleteResult,
    tag=_TAG,
    errors=_NOT_FOUND,
)
async def delete_webhook(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.webhooks.delete(request.path["webhook_id"]))


@operation(
    method="GET",
    path="/webhooks/{webhook_id}/deliveries",
    scope=Scope.WEBHOOKS_ADMIN,
    summary="List a webhook's deliveries, newest event first, each with every attempt",
    response_model=Delivery,
    paginated=True,
    query=PAGE_QUERY,
    tag=_TAG,
    errors=(*_NOT_FOUND, "INVALID_REQUEST"),
)
async def list_webhook_deliveries(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    page = await engine.webhooks.deliveries(
        request.path["webhook_id"], page=q.get("page", 1), page_size=q.get("page_size", 10)
    )
    return page_json(page, engine)


@operation(
    method="POST",
    path="/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    scope=Scope.WEBHOOKS_ADMIN,
    summary="Send a failed (or succeeded) delivery again, with a fresh retry schedule",
    status_code=202,
    response_model=Delivery,
    tag=_TAG,
    errors=(*_NOT_FOUND, "NOT_FOUND", "INVALID_STATE"),
)
async def redeliver_webhook_delivery(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    delivery = await engine.webhooks.redeliver(
        request.path["webhook_id"], request.path["delivery_id"]
    )
    return unstructure(delivery)
