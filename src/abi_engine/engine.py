"""The composition root: one :class:`Engine` owns plugins, storage and services."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Literal

from abi_engine.auth import TokenService
from abi_engine.events import Event
from abi_engine.integrations import IntegrationService
from abi_engine.plugins import Registry, collect, make_plugin_manager
from abi_engine.storage.base import Store
from abi_engine.types import WorkflowType
from abi_engine.workflows import WorkflowService

__all__ = ["Engine"]

log = logging.getLogger("abi_engine")


class Engine:
    """An abi-engine instance: workflows, executions, schedules and webhooks on one store.

    :param db: a SQLite path (created when missing), ``":memory:"``, a database
        URL handled by a storage plugin, or a ready :class:`Store`.
    :param plugins: extra plugin objects (modules or class instances).
    :param load_entry_points: load plugins of the ``abi_engine`` entry-point group.
    :param disable_plugins: entry-point names not to load.
    :param durability: ``"normal"`` (survives a killed process) or ``"full"``
        (survives power loss, slower).

    Management calls work as soon as the engine is built; ``async with
    engine:`` starts the background work (execution workers, scheduler,
    webhook delivery) and stops it cleanly.
    """

    def __init__(
        self,
        db: str | Path | Store = "abi-engine.db",
        *,
        plugins: Iterable[object] = (),
        load_entry_points: bool = True,
        disable_plugins: Iterable[str] = (),
        durability: Literal["normal", "full"] = "normal",
        allow_private_urls: bool = False,
    ) -> None:
        self.pm = make_plugin_manager(
            plugins=plugins, load_entry_points=load_entry_points, disable=disable_plugins
        )
        self.registry: Registry = collect(self.pm)
        self.allow_private_urls = allow_private_urls
        if isinstance(db, str | Path):
            url = str(db)
            store = self.pm.hook.abi_storage(url=url, options={"durability": durability})
            if store is None:
                raise ValueError(f"No storage plugin handles {url!r}")
            self.store: Store = store
            self.db_url: str = url
        else:
            self.store = db
            self.db_url = getattr(db, "path", "<store>")
        self.tokens = TokenService(self.store)
        self.integrations = IntegrationService(self.store, self.registry.providers)
        self.workflows = WorkflowService(
            self.store, self.registry.workflow_types, self.integrations, self.emit
        )
        for workflow_type in self.registry.workflow_types.values():
            workflow_type.attach(self)
        self._stack: AsyncExitStack | None = None
        self._closed = False

    # -- registry views ---------------------------------------------------------------

    @property
    def workflow_types(self) -> Mapping[str, WorkflowType]:
        """The registered workflow types by name."""
        return self.registry.workflow_types

    # -- events -------------------------------------------------------------------------

    def emit(self, events: Iterable[Event]) -> None:
        """Hand committed events to every ``abi_event`` hook; errors are logged."""
        for event in events:
            try:
                self.pm.hook.abi_event(event=event)
            except Exception:
                log.exception("abi_event hook failed for %s", event.type)

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._stack is not None

    async def __aenter__(self) -> Engine:
        if self._stack is not None:
            raise RuntimeError("Engine is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    def close(self) -> None:
        """Close the store. The engine cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            self.store.close()

    def __repr__(self) -> str:
        return f"<Engine db={self.db_url!r} types={sorted(self.workflow_types)}>"
