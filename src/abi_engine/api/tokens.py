"""REST operations of self-service access tokens (``/api/v1/tokens``).

Any valid token may call them (no scope of their own: the contract's scope
list is fixed); each acts on the caller's user only. A new token may carry
only scopes the calling token has, so no caller grants itself more. Declared
into :data:`abi_engine.api.OPERATIONS` like every other operation (imported
at the end of :mod:`abi_engine.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import PAGE_QUERY, ApiRequest, body_object, operation, page_json
from abi_engine.auth import Principal
from abi_engine.converter import unstructure
from abi_engine.models import CreatedToken, RevokeResult, Token, TokenCreateRequest

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

_TAG = "tokens"


@operation(
    method="GET",
    path="/tokens",
    scope=None,
    summary="List the caller's user's live access tokens, newest first (never the secrets)",
    response_model=Token,
    paginated=True,
    query=PAGE_QUERY,
    tag=_TAG,
    errors=("INVALID_REQUEST",),
)
async def list_tokens(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    q = request.query
    return page_json(
        await engine.tokens.list_own(
            actor, page=q.get("page", 1), page_size=q.get("page_size", 10)
        ),
        engine,
    )


@operation(
    method="POST",
    path="/tokens",
    scope=None,
    summary=(
        "Create an access token for the caller's user, with some of the caller's scopes"
        " (the token is shown whole in this answer only)"
    ),
    status_code=201,
    request_model=TokenCreateRequest,
    request_body_required=False,
    response_model=CreatedToken,
    tag=_TAG,
    errors=("INVALID_REQUEST", "FORBIDDEN", "INVALID_STATE"),
)
async def create_token(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    data = {} if request.body is None else body_object(request)
    return unstructure(await engine.tokens.create_own(actor, data))


@operation(
    method="DELETE",
    path="/tokens/{token_id}",
    scope=None,
    summary=(
        "Revoke one of the caller's user's access tokens (the calling one too) and every"
        " live token created from it, directly or not; another user's token answers NOT_FOUND"
    ),
    response_model=RevokeResult,
    tag=_TAG,
    errors=("NOT_FOUND",),
)
async def revoke_token(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    return unstructure(await engine.tokens.revoke_own(actor, request.path["token_id"]))
