"""Storage: the :class:`Store` interface and its backends. All SQL lives here."""

from abi_engine.storage.base import Store, StoredEvent, WorkflowQuery
from abi_engine.storage.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "StoredEvent", "WorkflowQuery"]
