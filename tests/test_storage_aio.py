"""The awaitable store: one coroutine per store method, inline or in a worker thread."""

from __future__ import annotations

import inspect
import threading
from pathlib import Path

import pytest

from abi_engine.storage.aio import AsyncStore
from abi_engine.storage.base import Store
from abi_engine.storage.sqlite import SQLiteStore


def _store_methods() -> list[str]:
    return sorted(
        name
        for name, value in vars(Store).items()
        if inspect.isfunction(value) and not name.startswith("_") and name != "close"
    )


def test_every_store_method_is_awaitable_with_the_same_parameters() -> None:
    methods = _store_methods()
    assert "get_workflow" in methods
    assert len(methods) > 50
    for name in methods:
        wrapper = getattr(AsyncStore, name)
        assert inspect.iscoroutinefunction(wrapper), name
        ours = inspect.signature(wrapper).parameters
        theirs = inspect.signature(getattr(Store, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == [
            (p.name, p.kind, p.default) for p in theirs.values()
        ], name


class _WhereStore(SQLiteStore):
    """A real SQLite store that records the thread each ``get_workflow`` runs on."""

    def __init__(self, path: Path, *, blocking: bool) -> None:
        super().__init__(path)
        self.blocking = blocking
        self.threads: list[int] = []

    def get_workflow(self, workflow_id: str):  # type: ignore[no-untyped-def]
        self.threads.append(threading.get_ident())
        return super().get_workflow(workflow_id)


@pytest.mark.anyio
@pytest.mark.parametrize("blocking", [False, True])
async def test_calls_run_inline_or_in_a_thread(tmp_path: Path, blocking: bool) -> None:
    store = _WhereStore(tmp_path / "a.db", blocking=blocking)
    try:
        wrapped = AsyncStore(store)
        assert wrapped.sync is store
        assert wrapped.blocking is blocking
        assert await wrapped.get_workflow("wf_missing") is None
        assert await wrapped.schema_version() == store.schema_version()
        on_loop = store.threads == [threading.get_ident()]
        assert on_loop is not blocking
    finally:
        store.close()
