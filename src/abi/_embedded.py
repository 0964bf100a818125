"""Embedded engines the seed's Python API opens by itself.

When neither ``engine=`` nor ``base_url=`` is given and ``ABI_ENGINE_URL`` is
unset, the facade uses an engine on ``ABI_ENGINE_DB`` (or ``./abi-engine.db``).
Engines are kept here, one per resolved database, so every facade object of
the process shares one :class:`~abi_engine.Engine`; they start in a background
thread on first use and are closed cleanly when the interpreter exits.
"""

from __future__ import annotations

import atexit
import os
import threading

from abi_engine.engine import Engine

__all__ = ["DEFAULT_DB", "close_all", "embedded_engine", "resolve_db"]

#: The database used when nothing else is configured, relative to the working directory.
DEFAULT_DB = "abi-engine.db"

_ENGINES: dict[str, Engine] = {}
_LOCK = threading.Lock()
_AT_EXIT = False


def resolve_db(db: str) -> str:
    """The registry key of ``db``: an absolute path, or the URL / ``:memory:`` as given."""
    if db == ":memory:" or "://" in db:
        return db
    return os.path.abspath(os.path.expanduser(db))


#: Set to ``1`` (or ``true``, ``yes``, ``on``) to let callback and webhook URLs point at
#: loopback and private addresses, as ``abi-engine serve --allow-private-urls`` does.
ENV_ALLOW_PRIVATE_URLS = "ABI_ENGINE_ALLOW_PRIVATE_URLS"


def allow_private_urls() -> bool:
    """Whether the environment lets URLs point at private addresses (as ``serve`` reads it)."""
    value = os.environ.get(ENV_ALLOW_PRIVATE_URLS, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _build_engine(db: str) -> Engine:
    """Make the engine for ``db`` (a seam tests may replace to add plugins)."""
    return Engine(db, allow_private_urls=allow_private_urls())


def embedded_engine(db: str) -> Engine:
    """The process-wide engine on ``db``, created on first use."""
    global _AT_EXIT
    key = resolve_db(db)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _build_engine(key)
            _ENGINES[key] = engine
            if not _AT_EXIT:
                atexit.register(close_all)
                _AT_EXIT = True
        return engine


def close_all() -> None:
    """Stop and close every embedded engine (run at interpreter exit)."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.close()
