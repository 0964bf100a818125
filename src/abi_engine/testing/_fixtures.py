"""The pytest fixtures of :mod:`abi_engine.testing` (imported only when they are used).

:mod:`abi_engine.testing` re-exports them lazily, so ``engine_for`` and
``run_workflow`` work where pytest is not installed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from abi_engine.engine import Engine
from abi_engine.testing._engines import engine_for

__all__ = ["abi_engine", "abi_engine_options", "abi_plugins"]


@pytest.fixture
def abi_plugins() -> list[object]:
    """Override to list the plugins the ``abi_engine`` fixture registers."""
    return []


@pytest.fixture
def abi_engine_options() -> dict[str, Any]:
    """Override to pass options to the ``abi_engine`` fixture's :class:`Engine`
    (e.g. ``{"allow_private_urls": True}`` for services on 127.0.0.1)."""
    return {}


@pytest.fixture
async def abi_engine(
    abi_plugins: list[object], abi_engine_options: dict[str, Any]
) -> AsyncIterator[Engine]:
    """A started in-memory engine with the entry-point plugins and ``abi_plugins``."""
    async with engine_for(*abi_plugins, **abi_engine_options) as engine:
        yield engine
