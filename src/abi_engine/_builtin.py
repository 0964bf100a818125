"""The core's own plugin: SQLite storage and the ``http`` integration provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from abi_engine.hookspecs import hookimpl
from abi_engine.integrations import HttpProvider, IntegrationProvider
from abi_engine.storage.base import Store


@hookimpl(trylast=True)
def abi_storage(url: str, options: Mapping[str, Any]) -> Store | None:
    if "://" in url and not url.startswith("sqlite://"):
        return None  # another scheme (postgresql://, a plugin's): not a SQLite path
    from abi_engine.storage.sqlite import SQLiteStore

    path = url
    for prefix in ("sqlite:///", "sqlite://"):
        if path.startswith(prefix):
            path = path[len(prefix) :] or ":memory:"
            break
    return SQLiteStore(path, durability=options.get("durability", "normal"))


@hookimpl
def abi_integration_providers(register: Callable[[IntegrationProvider], None]) -> None:
    register(HttpProvider())
