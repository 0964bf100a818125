"""The storage interface every backend implements.

All SQL lives in the storage package. Every mutating method that causes an
event takes the events and writes them to the outbox in the *same
transaction* as the change, so a crash never loses one. Methods are
synchronous and short; a backend that blocks on the network sets
``blocking = True`` and the engine calls it from a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import attrs

from abi_engine.events import Event
from abi_engine.models import Integration, Token, User, Workflow, WorkflowStatus

__all__ = ["Store", "StoredEvent", "WorkflowQuery"]

WorkflowSort = Literal["created_at", "updated_at", "name"]


@attrs.frozen(kw_only=True)
class WorkflowQuery:
    """Filters, order and page of a workflow listing."""

    page: int = 1
    page_size: int = 10
    sort_by: WorkflowSort = "created_at"
    sort_order: Literal["asc", "desc"] = "desc"
    status: WorkflowStatus | None = None
    type: str | None = None
    department: str | None = None


@attrs.frozen(kw_only=True)
class StoredEvent:
    """An event as kept in the outbox, with its position."""

    seq: int
    event: Event


@runtime_checkable
class Store(Protocol):
    """What the engine needs from storage.

    Implementations must be safe to call from many threads and tasks at once
    and never surface "database is locked": writes are serialized inside the
    store, reads run concurrently.
    """

    #: ``True`` when calls block on I/O long enough to deserve a worker thread.
    blocking: bool

    def close(self) -> None:
        """Release connections. Idempotent."""

    def schema_version(self) -> int:
        """The version of the last applied migration."""

    # -- users and tokens ------------------------------------------------------

    def ensure_user(self, user_id: str, created_at: datetime) -> User:
        """Return the user, creating it when missing."""

    def insert_token(self, token: Token, token_hash: str) -> None:
        """Store a token by its hash (the token itself is never stored)."""

    def get_token(self, token_hash: str) -> Token | None:
        """The token whose hash is ``token_hash``, or ``None``."""

    # -- workflows -----------------------------------------------------------

    def insert_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> None:
        """Insert a new workflow (its ``integrations`` without status)."""

    def get_workflow(self, workflow_id: str) -> Workflow | None:
        """The workflow (not deleted), with stats; integration statuses not filled."""

    def update_workflow(self, workflow: Workflow, events: Sequence[Event] = ()) -> bool:
        """Replace a workflow's mutable fields; ``False`` if it does not exist."""

    def delete_workflow(
        self, workflow_id: str, deleted_at: datetime, events: Sequence[Event] = ()
    ) -> bool:
        """Delete a workflow (kept for the history of its executions); ``False`` if missing."""

    def list_workflows(self, query: WorkflowQuery) -> tuple[list[Workflow], int]:
        """One page of workflows and the total count matching the filters."""

    # -- integrations ----------------------------------------------------------

    def put_integration(self, integration: Integration) -> bool:
        """Insert or replace a connection; ``True`` if it was created."""

    def get_integration(self, integration_id: str) -> Integration | None:
        """The connection, or ``None``."""

    def list_integrations(self, page: int, page_size: int) -> tuple[list[Integration], int]:
        """One page of connections (by id) and the total."""

    def delete_integration(self, integration_id: str) -> bool:
        """Remove a connection; ``False`` if it did not exist."""

    def existing_integration_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have a connection."""

    # -- events (outbox) --------------------------------------------------------

    def insert_events(self, events: Sequence[Event]) -> None:
        """Append events to the outbox on their own."""

    def events_after(self, seq: int, limit: int = 100) -> list[StoredEvent]:
        """Outbox events with a position greater than ``seq``, oldest first."""
