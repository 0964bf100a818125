"""Build one engine's plugin manager and collect what plugins register.

Importing abi-engine never loads plugins: each :class:`~abi_engine.Engine`
owns its own :class:`pluggy.PluginManager`, so engines with different plugin
sets can live side by side (tests do this).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pluggy

from abi_engine import _builtin, hookspecs
from abi_engine.hookspecs import PROJECT_NAME
from abi_engine.integrations import IntegrationProvider
from abi_engine.storage import postgres_hook
from abi_engine.types import WorkflowType

__all__ = ["ENTRY_POINT_GROUP", "Registry", "collect", "make_plugin_manager"]

ENTRY_POINT_GROUP = "abi_engine"
#: Environment variable naming extra plugin modules to load (comma-separated).
ENV_PLUGINS = "ABI_ENGINE_PLUGINS"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

T = TypeVar("T")


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
    pm.check_pending()
    return pm


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
    """What the plugins registered: types, providers, handlers, NLP services, templates."""

    def __init__(self) -> None:
        self.workflow_types: dict[str, WorkflowType] = {}
        self.providers: dict[str, IntegrationProvider] = {}
        self.step_handlers: dict[str, Any] = {}
        self.nlp_services: dict[str, Any] = {}
        self.notification_templates: dict[str, Any] = {}
        self.origins: dict[tuple[str, str], str] = {}

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

    def named_register(kind: str, target: dict[str, Any]) -> Callable[[str], Callable[..., None]]:
        def make(plugin: str) -> Callable[[str, Any], None]:
            def register(name: str, value: Any) -> None:
                if not isinstance(name, str) or not name:
                    raise ValueError(f"{plugin}: {kind} names must be non-empty strings")
                reg._claim(kind, name, plugin)
                target[name] = value

            return register

        return make

    _each_impl(pm.hook.abi_workflow_types, type_register)
    _each_impl(pm.hook.abi_integration_providers, provider_register)
    _each_impl(pm.hook.abi_step_handlers, named_register("step handler", reg.step_handlers))
    _each_impl(pm.hook.abi_nlp_services, named_register("NLP service", reg.nlp_services))
    _each_impl(
        pm.hook.abi_notification_templates,
        named_register("notification template", reg.notification_templates),
    )
    return reg
