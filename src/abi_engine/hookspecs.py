"""Every extension point of abi-engine, in one module.

Each hook's docstring is its documentation (``docs/plugin-hooks.md`` is
generated from these docstrings). Plugins implement hooks with
:data:`abi_engine.hookimpl`; built-in parts register through the same hooks
as third-party ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from abi_engine.events import Event
    from abi_engine.integrations import IntegrationProvider
    from abi_engine.storage.base import Store
    from abi_engine.types import WorkflowType

__all__ = ["hookimpl", "hookspec"]

PROJECT_NAME = "abi_engine"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Mark a plugin's function as the implementation of a hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Registration: what a plugin brings
# ---------------------------------------------------------------------------


@hookspec
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    """Register the workflow types this plugin provides.

    Call ``register`` once per type with a subclass of
    :class:`abi_engine.WorkflowType`. Workflow types come only from this hook:
    a type nobody registered cannot be used. Registering a name twice raises
    :class:`ValueError` naming both plugins.

    :param register: call it with each :class:`~abi_engine.WorkflowType` subclass.

    Example::

        @hookimpl
        def abi_workflow_types(register):
            register(GreetingType)
    """


@hookspec
def abi_integration_providers(register: Callable[[IntegrationProvider], None]) -> None:
    """Register integration providers (how a connection's ``config`` is checked and used).

    The built-in ``http`` provider registers itself through this hook.
    Registering a provider name twice raises :class:`ValueError`.

    :param register: call it with each :class:`~abi_engine.IntegrationProvider` instance.
    """


@hookspec
def abi_step_handlers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register named Python step handlers for the ``custom`` workflow type.

    A workflow whose configuration is ``{"handler": "<name>"}`` runs the
    handler registered under that name. A handler is either an async function
    ``(ctx) -> JSON-able`` (one step) or a :class:`~abi_engine.WorkflowType`
    subclass whose steps run in order.

    :param register: call it as ``register(name, handler)``.
    """


@hookspec
def abi_nlp_services(register: Callable[[str, Any], None]) -> None:
    """Register NLP services for the ``feedback_analysis`` workflow type.

    A workflow configured with ``"nlp_service": "<name>"`` (or
    ``"custom"`` together with ``"custom_service": "<name>"``) uses the service
    registered under that name. The service's interface is documented by the
    feedback_analysis plugin.

    :param register: call it as ``register(name, service)``.
    """


@hookspec
def abi_notification_templates(register: Callable[[str, Any], None]) -> None:
    """Register message templates for the ``notification`` workflow type.

    A workflow whose ``templates`` name a template id (``"email":
    "template_123"``) uses the template registered under that id, unless its
    own ``template_library`` defines it. A template is a string (the body) or
    a mapping with ``body`` and optionally ``subject``, written with
    ``$name`` / ``${name}`` placeholders (see the notification plugin's docs).

    :param register: call it as ``register(template_id, template)``.
    """


# ---------------------------------------------------------------------------
# Infrastructure
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def abi_storage(url: str, options: Mapping[str, Any]) -> Store | None:
    """Open the storage for a database URL.

    Return a :class:`~abi_engine.storage.Store` when this plugin handles the
    URL's scheme, else ``None``. The first non-``None`` answer wins. The
    built-in plugin handles SQLite paths (``/path/to.db``, ``sqlite:///...``,
    ``:memory:``).

    :param url: the database URL or SQLite path given to the engine.
    :param options: engine-wide storage options, e.g. ``{"durability": "full"}``.
    """


# ---------------------------------------------------------------------------
# Observation
# ---------------------------------------------------------------------------


@hookspec
def abi_event(event: Event) -> None:
    """Observe every event, after the change that caused it is committed.

    Events are ``workflow.created``, ``workflow.updated``,
    ``workflow.activated``, ``workflow.deactivated``, ``workflow.deleted``,
    ``workflow.executed``, ``execution.step_completed``,
    ``execution.completed``, ``execution.failed``, ``schedule.created``,
    ``schedule.updated``, ``schedule.deleted``, ``schedule.triggered`` and
    ``schedule.failed``.
    Implementations must be quick and must not raise: an exception is logged
    and swallowed. Durable delivery (webhooks) does not rely on this hook: the
    event is also written to the outbox in the same transaction as the change.

    :param event: the :class:`~abi_engine.events.Event` (``type``, ``timestamp``, ``data``).
    """
