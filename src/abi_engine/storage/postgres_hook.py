"""The built-in plugin that opens ``postgresql://`` and ``postgres://`` URLs.

Registered by every engine's plugin manager (name ``abi_engine.postgres``)
through the same :func:`~abi_engine.hookspecs.abi_storage` hook a third-party
storage plugin implements. It imports psycopg only when such a URL is opened,
and answers ``None`` when psycopg is not installed (the ``postgres`` extra),
so the engine reports that no storage handles the URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from abi_engine.hookspecs import hookimpl
from abi_engine.storage.base import Store

__all__ = ["SCHEMES", "abi_storage"]

SCHEMES = ("postgresql://", "postgres://")


@hookimpl
def abi_storage(url: str, options: Mapping[str, Any]) -> Store | None:
    if not url.startswith(SCHEMES):
        return None
    try:
        from abi_engine.storage.postgres import PostgresStore
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("psycopg", "psycopg_pool"):
            return None  # the postgres extra is not installed
        raise
    return PostgresStore(url, durability=options.get("durability", "normal"))
