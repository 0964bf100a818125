"""The core's extension points, in one module.

Each hook's docstring is its documentation (``docs/plugin-hooks.md`` is
generated from these docstrings, and from those of the hooks bundled plugins
declare: ``abi_step_handlers`` in ``abi_plugin_custom.hookspecs``,
``abi_nlp_services`` in ``abi_plugin_feedback.hookspecs``). Plugins implement
hooks with :data:`abi_engine.hookimpl` and declare their own with
:data:`abi_engine.hookspec` (:func:`abi_hookspecs`); built-in parts register
through the same hooks as third-party ones.
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

#: Mark a function as a hook specification (a plugin declaring hooks of its own).
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
def abi_notification_templates(register: Callable[[str, Any], None]) -> None:
    """Register message templates for the ``notification`` workflow type.

    A workflow whose ``templates`` name a template id (``"email":
    "template_123"``) uses the template registered under that id, unless its
    own ``template_library`` defines it. A template is a string (the body) or
    a mapping with ``body`` and optionally ``subject``, written with
    ``$name`` / ``${name}`` placeholders (see the notification plugin's docs).
    The engine itself reads them too: a managed template cannot be put under
    an id registered here.

    :param register: call it as ``register(template_id, template)``.
    """


@hookspec
def abi_hookspecs(add: Callable[[object], None]) -> None:
    """Declare hooks of this plugin's own, for other plugins to implement.

    Call ``add`` with a module or class whose functions carry the
    :data:`abi_engine.hookspec` marker. Called once, when the engine has
    loaded every plugin and before it checks their implementations, so a
    misspelled implementation of a declared hook still fails at startup. The
    declaring plugin collects what a ``register(name, value)`` hook registers
    with ``host.collect(hook, kind)``, from its workflow type's
    ``bind(host)`` (see :class:`~abi_engine.Host`). The bundled
    ``custom`` type declares ``abi_step_handlers`` this way, and
    ``feedback_analysis`` ``abi_nlp_services``. A plugin implementing another
    plugin's hook marks it ``@hookimpl(optionalhook=True)`` when it must load
    without that plugin too.

    :param add: call it with each module or class of hook specifications.

    Example::

        @hookimpl
        def abi_hookspecs(add):
            add(my_plugin.hookspecs)
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
    ``execution.completed``, ``execution.failed``, ``execution.skipped``,
    ``execution.rerun``, ``schedule.created``,
    ``schedule.updated``, ``schedule.deleted``, ``schedule.triggered`` and
    ``schedule.failed``.
    Implementations must be quick and must not raise: an exception is logged
    and swallowed. Durable delivery (webhooks) does not rely on this hook: the
    event is also written to the outbox in the same transaction as the change.

    :param event: the :class:`~abi_engine.events.Event` (``type``, ``timestamp``, ``data``).
    """
