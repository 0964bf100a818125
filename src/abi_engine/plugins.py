"""Build one engine's plugin manager and collect what plugins register.

Importing abi-engine never loads plugins: each :class:`~abi_engine.Engine`
owns its own :class:`pluggy.PluginManager`, so engines with different plugin
sets can live side by side (tests do this).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pluggy

from abi_engine import _builtin, hookspecs
from abi_engine.hookspecs import PROJECT_NAME, hookspec
from abi_engine.integrations import IntegrationProvider
from abi_engine.storage import postgres_hook
from abi_engine.types import WorkflowType

__all__ = ["ENTRY_POINT_GROUP", "Registry", "collect", "collect_named", "make_plugin_manager"]

ENTRY_POINT_GROUP = "abi_engine"
#: Environment variable naming extra plugin modules to load (comma-separated).
ENV_PLUGINS = "ABI_ENGINE_PLUGINS"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

T = TypeVar("T")

log = logging.getLogger("abi_engine")


def make_plugin_manager(
    *,
    plugins: Iterable[object] = (),
    load_entry_points: bool = True,
    disable: Iterable[str] = (),
) -> pluggy.PluginManager:
    """A plugin manager with the core built-ins, entry-point plugins and ``plugins``.

    :param plugins: extra plugin objects (modules or instances) to register.
    :param load_entry_points: load the ``abi_engine`` entry-point group (the
        bundled workflow types are registered there, like any third-party type).
    :param disable: entry-point names to leave out.

    With ``load_entry_points``, the modules named in the environment variable
    ``ABI_ENGINE_PLUGINS`` (comma-separated, like ``PYTEST_PLUGINS``) are
    imported and registered too: a way to add a plugin to ``abi-engine
    serve`` without packaging it.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(_builtin, name="abi_engine.builtin")
    pm.register(postgres_hook, name="abi_engine.postgres")
    blocked = set(disable)
    for name in blocked:
        pm.set_blocked(name)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        for module_name in filter(None, os.environ.get(ENV_PLUGINS, "").split(",")):
            module_name = module_name.strip()
            if module_name and not pm.has_plugin(module_name) and module_name not in blocked:
                try:
                    module = importlib.import_module(module_name)
                except ImportError as exc:
                    raise ValueError(
                        f"{ENV_PLUGINS}: cannot import plugin module {module_name!r}: {exc}"
                    ) from None
                pm.register(module, name=module_name)
    for plugin in plugins:
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=_plugin_name(pm, plugin))
    pm.hook.abi_hookspecs(add=pm.add_hookspecs)
    _tolerate_moved_hooks(pm)
    pm.check_pending()
    return pm


class _StepHandlersSpec:
    @hookspec
    def abi_step_handlers(self, register: Callable[[str, Callable[..., Any]], None]) -> None:
        """Moved to the ``custom`` plugin (#13)."""


class _NlpServicesSpec:
    @hookspec
    def abi_nlp_services(self, register: Callable[[str, Any], None]) -> None:
        """Moved to the ``feedback_analysis`` plugin (#13)."""


#: Hooks the core declared until 0.1 and bundled plugins declare now, with the plugin.
_MOVED_HOOKS: dict[str, tuple[type, str]] = {
    "abi_step_handlers": (_StepHandlersSpec, "custom"),
    "abi_nlp_services": (_NlpServicesSpec, "feedback_analysis"),
}


def _tolerate_moved_hooks(pm: pluggy.PluginManager) -> None:
    """Accept, and ignore, implementations of a moved hook whose plugin is not loaded.

    Deprecated, for one release: an implementation of a hook nobody declared
    otherwise fails at startup (a misspelled name). A plugin that implements a
    bundled plugin's hook should mark it ``@hookimpl(optionalhook=True)``, so that
    an engine without that plugin (``disable_plugins``) still starts.
    """
    for name, (spec, plugin) in _MOVED_HOOKS.items():
        caller = getattr(pm.hook, name, None)
        if caller is None or caller.spec is not None:
            continue
        strict = [impl.plugin_name for impl in caller.get_hookimpls() if not impl.optionalhook]
        if not strict:
            continue
        pm.add_hookspecs(spec)
        log.warning(
            "%s is declared by the %r plugin, which is not loaded: its implementations"
            " (%s) are ignored; mark them @hookimpl(optionalhook=True)",
            name,
            plugin,
            ", ".join(strict),
        )


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    """A readable, unique name for error messages: the module's, else the class's dotted name."""
    cls = type(plugin)
    base = getattr(plugin, "__name__", None) or f"{cls.__module__}.{cls.__qualname__}"
    name, n = str(base), 1
    while pm.has_plugin(name):
        n += 1
        name = f"{base}#{n}"
    return name


class Registry:
    """What the plugins registered: types, providers, templates, and through hooks that
    plugins declared, whatever those plugins collected (:func:`collect_named`)."""

    def __init__(self) -> None:
        self.workflow_types: dict[str, WorkflowType] = {}
        self.providers: dict[str, IntegrationProvider] = {}
        self.notification_templates: dict[str, Any] = {}
        #: By hook name: what the implementations of a plugin-declared hook registered.
        self.collected: dict[str, dict[str, Any]] = {}
        self.origins: dict[tuple[str, str], str] = {}

    @property
    def step_handlers(self) -> dict[str, Any]:
        """Deprecated: ``abi_step_handlers`` registrations (the ``custom`` type collects them)."""
        return self.collected.get("abi_step_handlers", {})

    @property
    def nlp_services(self) -> dict[str, Any]:
        """Deprecated: ``abi_nlp_services`` registrations (``feedback_analysis`` collects them)."""
        return self.collected.get("abi_nlp_services", {})

    def _claim(self, kind: str, name: str, plugin: str) -> None:
        key = (kind, name)
        if key in self.origins:
            raise ValueError(
                f"{kind} {name!r} is registered twice: by {self.origins[key]!r} and by {plugin!r}"
            )
        self.origins[key] = plugin


def _each_impl(hook: Any, make_register: Callable[[str], Callable[..., None]]) -> None:
    for impl in reversed(hook.get_hookimpls()):
        impl.function(make_register(impl.plugin_name))


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call the registration hooks and return what they registered."""
    reg = Registry()

    def type_register(plugin: str) -> Callable[[type[WorkflowType]], None]:
        def register(cls: type[WorkflowType]) -> None:
            if not (isinstance(cls, type) and issubclass(cls, WorkflowType)):
                raise TypeError(f"{plugin}: register() takes a WorkflowType subclass, got {cls!r}")
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"{plugin}: workflow type name {name!r} must be lower_snake_case")
            reg._claim("workflow type", name, plugin)
            reg.workflow_types[name] = cls()

        return register

    def provider_register(plugin: str) -> Callable[[IntegrationProvider], None]:
        def register(provider: IntegrationProvider) -> None:
            if not isinstance(provider, IntegrationProvider):
                raise TypeError(f"{plugin}: register() takes an IntegrationProvider instance")
            reg._claim("integration provider", provider.name, plugin)
            reg.providers[provider.name] = provider

        return register

    _each_impl(pm.hook.abi_workflow_types, type_register)
    _each_impl(pm.hook.abi_integration_providers, provider_register)
    _each_impl(
        pm.hook.abi_notification_templates,
        _named_register(reg, "notification template", reg.notification_templates),
    )
    return reg


def _named_register(
    reg: Registry, kind: str, target: dict[str, Any]
) -> Callable[[str], Callable[..., None]]:
    def make(plugin: str) -> Callable[[str, Any], None]:
        def register(name: str, value: Any) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{plugin}: {kind} names must be non-empty strings")
            reg._claim(kind, name, plugin)
            target[name] = value

        return register

    return make


def collect_named(pm: pluggy.PluginManager, reg: Registry, hook: str, kind: str) -> dict[str, Any]:
    """Call the implementations of ``hook`` (a ``register(name, value)`` hook) once, and keep
    what they register in ``reg.collected[hook]``; later calls answer the same.

    Duplicate and empty names raise ``ValueError`` (see :class:`Registry`);
    a hook nobody declared raises ``LookupError``.
    """
    if hook in reg.collected:
        return reg.collected[hook]
    caller = getattr(pm.hook, hook, None)
    if caller is None or caller.spec is None:
        raise LookupError(f"no plugin declares the hook {hook!r}")
    target: dict[str, Any] = {}
    _each_impl(caller, _named_register(reg, kind, target))
    reg.collected[hook] = target
    return target
