"""The REST operation of the audit log (registered into :data:`abi_engine.api.OPERATIONS`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.api.operations import PAGE_QUERY, ApiRequest, QueryParam, operation, page_json
from abi_engine.auth import Principal
from abi_engine.models import Scope
from abi_engine.models_audit import AuditEntry

if TYPE_CHECKING:
    from abi_engine.engine import Engine

__all__: list[str] = []

_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}
_TIME = {"type": "string", "format": "date-time"}


@operation(
    method="GET",
    path="/audit",
    scope=Scope.AUDIT_READ,
    summary="List audit log entries, newest first (who changed what, when, and how)",
    response_model=AuditEntry,
    paginated=True,
    query=(
        *PAGE_QUERY,
        QueryParam(name="actor", schema=_TEXT, description="the user id, 'cli' or 'system'"),
        QueryParam(name="action", schema=_TEXT, description="e.g. workflow.update"),
        QueryParam(name="target_type", schema=_TEXT, description="e.g. workflow"),
        QueryParam(name="target_id", schema=_TEXT),
        QueryParam(name="since", schema=_TIME, description="entries at or after this time"),
        QueryParam(name="until", schema=_TIME, description="entries before this time"),
    ),
    tag="audit",
    errors=("INVALID_REQUEST",),
)
async def list_audit(engine: Engine, actor: Principal, request: ApiRequest) -> Any:
    """Each entry carries ``hash`` and ``prev_hash``: ``abi-engine audit verify``
    checks the chain."""
    q = request.query
    page = await engine.audit.list(
        actor=q.get("actor"),
        action=q.get("action"),
        target_type=q.get("target_type"),
        target_id=q.get("target_id"),
        since=q.get("since"),
        until=q.get("until"),
        page=q.get("page", 1),
        page_size=q.get("page_size", 10),
    )
    return page_json(page, engine)
