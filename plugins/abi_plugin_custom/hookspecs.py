"""The hook the ``custom`` workflow type declares (through ``abi_hookspecs``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abi_engine import hookspec

__all__ = ["abi_step_handlers"]

# ---------------------------------------------------------------------------
# Declared by the bundled custom type
# ---------------------------------------------------------------------------


@hookspec
def abi_step_handlers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register named Python step handlers for the ``custom`` workflow type.

    A workflow whose configuration is ``{"handler": "<name>"}`` runs the
    handler registered under that name. A handler is either an async function
    ``(ctx) -> JSON-able`` (one step) or a :class:`~abi_engine.WorkflowType`
    subclass whose steps run in order. Declared by the bundled ``custom``
    plugin (``abi_plugin_custom.hookspecs``).

    :param register: call it as ``register(name, handler)``.
    """
