"""The hook the ``feedback_analysis`` workflow type declares (through ``abi_hookspecs``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abi_engine import hookspec

__all__ = ["abi_nlp_services"]

# ---------------------------------------------------------------------------
# Declared by the bundled feedback_analysis type
# ---------------------------------------------------------------------------


@hookspec
def abi_nlp_services(register: Callable[[str, Any], None]) -> None:
    """Register NLP services for the ``feedback_analysis`` workflow type.

    A workflow configured with ``"nlp_service": "<name>"`` (or
    ``"custom"`` together with ``"custom_service": "<name>"``) uses the service
    registered under that name. The service's interface is documented by the
    feedback_analysis plugin. Declared by the bundled ``feedback`` plugin
    (``abi_plugin_feedback.hookspecs``).

    :param register: call it as ``register(name, service)``.
    """
