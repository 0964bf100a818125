""""""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import attrs

from abi_engine.api.operations import (
    PAGE_QUERY,
    ApiRequest,
    body_object,
    operation,
    page_json,
)
from abi_engine.auth import Principal
from abi_engine.converter import structure, unstructure
from abi_engine.errors import InvalidState
from abi_engine.limits import Json, Text
from abi_engine.models import (
    DeleteResult,
    Integration,
    Scope,
)
from abi_engine.workflows import INTEGRATION_ID

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

# -- integrations ------------------------------------------------------------------------


#: Field limits of the request bodies below (see :mod:`abi_engine.limits`).
PROVIDER = Text(min_length=1, max_length=100)
INTEGRATION_CONFIG = Json(max_bytes=16_384, max_keys=64)
_INTEGRATION_PATH = {"integration_id": {"type": "string", **INTEGRATION_ID.json_schema()}}


@attrs.define(kw_only=True)
class IntegrationRequest:
    """The body of ``PUT /api/v1/integrations/{id}``."""

    provider: Annotated[str, PROVIDER]
    config: Annotated[dict[str, Any], INTEGRATION_CONFIG] = attrs.Factory(dict)


@operation(
    method="PUT",
    path="/integrations/{integration_id}",
    path_schemas=_INTEGRATION_PATH,
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Create or replace an integration connection",
    request_model=IntegrationRequest,
    response_model=Integration,
    tag="integrations",
    errors=("INVALID_REQUEST", "INVALID_STATE"),
)
async def put_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    body = structure(body_object(request), IntegrationRequest)
    await _check_integration_count(engine, request.path["integration_id"])
    result = await engine.integrations.put(
        request.path["integration_id"], body.provider, body.config
    )
    return unstructure(result)


async def _check_integration_count(engine: Engine, integration_id: str) -> None:
    """409 ``INVALID_STATE`` when a new connection would pass ``Limits.max_integrations``."""
    limit = engine.limits.max_integrations
    if limit is None:
        return
    held = (await engine.integrations.list(1, 1)).pagination.total_items
    if held >= limit and await engine.integrations.get_secret(integration_id) is None:
        raise InvalidState(
            f"The engine already holds {limit} integration connections, the most allowed"
            " (max_integrations); delete some first",
            {"limit": "max_integrations", "max_integrations": limit},
        )


@operation(
    method="GET",
    path="/integrations",
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="List integration connections",
    response_model=Integration,
    paginated=True,
    query=PAGE_QUERY,
    tag="integrations",
)
async def list_integrations(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.integrations.list(q.get("page", 1), q.get("page_size", 10)), engine
    )


@operation(
    method="GET",
    path="/integrations/{integration_id}",
    path_schemas=_INTEGRATION_PATH,
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Get an integration connection (secrets masked)",
    response_model=Integration,
    tag="integrations",
    errors=("NOT_FOUND",),
)
async def get_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.integrations.get(request.path["integration_id"]))


@operation(
    method="DELETE",
    path="/integrations/{integration_id}",
    path_schemas=_INTEGRATION_PATH,
    scope=Scope.INTEGRATIONS_ADMIN,
    summary="Delete an integration connection",
    response_model=DeleteResult,
    tag="integrations",
    errors=("NOT_FOUND",),
)
async def delete_integration(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    integration_id = request.path["integration_id"]
    await engine.integrations.delete(integration_id)
    return {"id": integration_id, "deleted": True}
