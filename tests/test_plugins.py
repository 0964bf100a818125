"""Plugins: registration hooks, entry points, duplicate names, startup validation.

Test-only plugins are small classes handed to one ``Engine(plugins=[...])``;
each engine owns its plugin manager, so nothing leaks between tests. Each
hook of ``abi_engine.hookspecs`` has a ``test_hook_<name>`` here (checked by
``tests/test_docs.py``).
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest

from abi_engine import Engine, IntegrationProvider, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidRequest, InvalidWorkflowConfig
from abi_engine.events import Event
from abi_engine.integrations import MASK
from abi_engine.storage import SQLiteStore, Store

FIXTURE = Path(__file__).parent / "plugins_fixture"
CUSTOM_STEPS = {"steps": [{"name": "s", "action": "delay", "seconds": 0}]}


class Greeting(WorkflowType):
    name = "greeting"
    description = "Greets"

    @attrs.define(kw_only=True)
    class Configuration:
        greeting: str
        times: int = 1

    @step
    async def greet(self, ctx: Any) -> str:
        return str(ctx.config.greeting)


class GreetingPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Greeting)


class OtherGreetingPlugin(GreetingPlugin):
    pass


# -- workflow types -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_hook_abi_workflow_types(tmp_path: Path) -> None:
    """An outside plugin object's type is usable, and its configuration schema is enforced."""
    engine = Engine(tmp_path / "abi.db", plugins=[GreetingPlugin()])
    try:
        assert "greeting" in engine.workflow_types
        assert engine.registry.origins[("workflow type", "greeting")].endswith("GreetingPlugin")
        wf = await engine.workflows.create(
            {"name": "Hi", "type": "greeting", "configuration": {"greeting": "Hi", "times": 2}}
        )
        assert (await engine.workflows.get(wf.id)).configuration == {"greeting": "Hi", "times": 2}
        for config, field in [
            ({"greeting": 5}, "configuration.greeting"),
            ({}, "configuration.greeting"),
            ({"greeting": "x", "times": "2"}, "configuration.times"),
            ({"greeting": "x", "colour": "red"}, "configuration.colour"),
        ]:
            with pytest.raises(InvalidWorkflowConfig) as info:
                await engine.workflows.create(
                    {"name": "Bad", "type": "greeting", "configuration": config}
                )
            assert info.value.details["field"] == field
            assert field in info.value.message
    finally:
        engine.close()


def test_register_checks_what_it_is_given() -> None:
    """register() refuses non-types and names that are not lower_snake_case, naming the plugin."""

    class NotAType:
        @hookimpl
        def abi_workflow_types(self, register: Callable[..., None]) -> None:
            register(object)

    class BadName(WorkflowType):
        name = "Bad-Name"

    class BadNamePlugin:
        @hookimpl
        def abi_workflow_types(self, register: Callable[..., None]) -> None:
            register(BadName)

    with pytest.raises(TypeError, match="NotAType"):
        Engine(":memory:", plugins=[NotAType()], load_entry_points=False)
    with pytest.raises(ValueError, match="lower_snake_case"):
        Engine(":memory:", plugins=[BadNamePlugin()], load_entry_points=False)


def test_duplicate_type_names_name_both_plugins() -> None:
    """Two plugins registering one type name fail at startup, naming both plugins."""
    with pytest.raises(ValueError, match="greeting") as info:
        Engine(":memory:", plugins=[GreetingPlugin(), OtherGreetingPlugin()])
    assert "OtherGreetingPlugin" in str(info.value)
    assert "GreetingPlugin'" in str(info.value)


def test_duplicate_of_an_entry_point_type() -> None:
    """A plugin object registering 'custom' clashes with the bundled entry point, both named."""

    class Impostor(WorkflowType):
        name = "custom"

    class ImpostorPlugin:
        @hookimpl
        def abi_workflow_types(self, register: Callable[..., None]) -> None:
            register(Impostor)

    with pytest.raises(ValueError, match="custom") as info:
        Engine(":memory:", plugins=[ImpostorPlugin()])
    assert "'custom'" in str(info.value)
    assert "ImpostorPlugin" in str(info.value)
    engine = Engine(":memory:", plugins=[ImpostorPlugin()], disable_plugins=["custom"])
    assert isinstance(engine.workflow_types["custom"], Impostor)
    engine.close()


def test_misspelled_hookimpl_fails_at_startup() -> None:
    """A hookimpl for a hook that does not exist, or with a wrong argument, fails at Engine()."""

    class Misspelled:
        @hookimpl
        def abi_workflow_type(self, register: Callable[..., None]) -> None:
            """Note the missing 's'."""

    class WrongArgument:
        @hookimpl
        def abi_workflow_types(self, registrar: Callable[..., None]) -> None:
            """'registrar' is not an argument of the hook."""

    with pytest.raises(pluggy.PluginValidationError, match="abi_workflow_type"):
        Engine(":memory:", plugins=[Misspelled()])
    with pytest.raises(pluggy.PluginValidationError, match="registrar"):
        Engine(":memory:", plugins=[WrongArgument()])


def test_custom_type_comes_from_the_entry_point() -> None:
    """The bundled 'custom' type is an entry-point plugin: absent with load_entry_points=False."""
    with_eps = Engine(":memory:")
    without = Engine(":memory:", load_entry_points=False)
    try:
        assert "custom" in with_eps.workflow_types
        assert with_eps.registry.origins[("workflow type", "custom")] == "custom"
        assert "custom" not in without.workflow_types
        assert "http" in without.registry.providers  # the core's own plugin is always there
    finally:
        with_eps.close()
        without.close()


def test_disable_plugins_blocks_an_entry_point() -> None:
    """disable_plugins=['custom'] leaves the bundled type out of that engine only."""
    blocked = Engine(":memory:", disable_plugins=["custom"])
    normal = Engine(":memory:")
    try:
        assert "custom" not in blocked.workflow_types
        assert "custom" in normal.workflow_types
    finally:
        blocked.close()
        normal.close()


def test_engines_have_their_own_plugins() -> None:
    """Two engines side by side see exactly the plugins each was given."""
    first = Engine(":memory:", plugins=[GreetingPlugin()])
    second = Engine(":memory:")
    try:
        assert "greeting" in first.workflow_types
        assert "greeting" not in second.workflow_types
        assert first.pm is not second.pm
    finally:
        first.close()
        second.close()


# -- an outside plugin installed through an entry point ----------------------------------------


def _write_dist_info(site: Path, project_file: Path) -> str:
    """Write the *.dist-info an installer would write for the project; return the module."""
    project = tomllib.loads(project_file.read_text())["project"]
    dist_name = project["name"].replace("-", "_")
    dist = site / f"{dist_name}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (dist / "top_level.txt").write_text("abi_test_plugin_hello\n")
    return "abi_test_plugin_hello"


@pytest.fixture
def installed_hello(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """tests/plugins_fixture installed into a temporary site directory on sys.path."""
    site = tmp_path / "site"
    module = _write_dist_info(site, FIXTURE / "pyproject.toml")
    shutil.copytree(FIXTURE / module, site / module)
    monkeypatch.syspath_prepend(str(site))
    try:
        yield module
    finally:
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[name]


@pytest.mark.anyio
async def test_installed_entry_point_plugin(installed_hello: str, tmp_path: Path) -> None:
    """A distribution declaring an abi_engine entry point is picked up by a new Engine."""
    engine = Engine(tmp_path / "abi.db")
    try:
        assert "hello" in engine.workflow_types
        assert engine.registry.origins[("workflow type", "hello")] == "hello"
        wf = await engine.workflows.create(
            {"name": "Hello", "type": "hello", "configuration": {"greeting": "Hej"}}
        )
        assert wf.type == "hello"
        with pytest.raises(InvalidWorkflowConfig) as info:
            await engine.workflows.create(
                {"name": "Hello", "type": "hello", "configuration": {"greeting": 1}}
            )
        assert info.value.details["field"] == "configuration.greeting"
    finally:
        engine.close()
    for options in ({"disable_plugins": ["hello"]}, {"load_entry_points": False}):
        other = Engine(":memory:", **options)  # type: ignore[arg-type]
        assert "hello" not in other.workflow_types
        other.close()


def test_not_installed_means_not_loaded() -> None:
    """Without its dist-info on sys.path the outside plugin's type does not exist."""
    engine = Engine(":memory:")
    try:
        assert "hello" not in engine.workflow_types
    finally:
        engine.close()


# -- integration providers ------------------------------------------------------------------------


@attrs.define(kw_only=True)
class EchoConfig:
    url: str
    api_key: str


class EchoProvider(IntegrationProvider):
    name = "echo"
    description = "Echoes"
    Config = EchoConfig

    def mask(self, config: Mapping[str, Any]) -> dict[str, Any]:
        return {**config, "api_key": MASK}


class EchoPlugin:
    @hookimpl
    def abi_integration_providers(self, register: Callable[[IntegrationProvider], None]) -> None:
        register(EchoProvider())


@pytest.mark.anyio
async def test_hook_abi_integration_providers() -> None:
    """A plugin's provider checks its config (fields named) and masks its secrets."""
    engine = Engine(":memory:", plugins=[EchoPlugin()])
    try:
        assert engine.registry.providers["echo"].name == "echo"
        shown = await engine.integrations.put("int_echo", "echo", {"url": "u", "api_key": "k"})
        assert shown.config == {"url": "u", "api_key": MASK}
        stored = await engine.integrations.get_secret("int_echo")
        assert stored is not None
        assert stored.config["api_key"] == "k"
        with pytest.raises(InvalidRequest) as info:
            await engine.integrations.put("int_echo", "echo", {"url": 1, "api_key": "k"})
        assert info.value.details["field"] == "config.url"
    finally:
        engine.close()

    class HttpAgain:
        @hookimpl
        def abi_integration_providers(self, register: Callable[..., None]) -> None:
            register(EchoProvider())
            register(type("Http2", (EchoProvider,), {"name": "http"})())

    with pytest.raises(ValueError, match="http") as err:
        Engine(":memory:", plugins=[HttpAgain()])
    assert "abi_engine.builtin" in str(err.value)


# -- storage ------------------------------------------------------------------------------------------


class MemTestStorage:
    """Storage for the made-up ``memtest://`` scheme: a SQLite store in memory."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def abi_storage(self, url: str, options: Mapping[str, Any]) -> Store | None:
        if not url.startswith("memtest://"):
            return None
        self.opened.append((url, dict(options)))
        return SQLiteStore(":memory:")


@pytest.mark.anyio
async def test_hook_abi_storage() -> None:
    """A plugin provides the store for its URL scheme; other URLs still reach SQLite."""
    plugin = MemTestStorage()
    engine = Engine("memtest://unit", plugins=[plugin], durability="full")
    try:
        assert plugin.opened == [("memtest://unit", {"durability": "full"})]
        assert isinstance(engine.store, SQLiteStore)
        assert engine.store.path == ":memory:"
        wf = await engine.workflows.create(
            {"name": "m", "type": "custom", "configuration": CUSTOM_STEPS}
        )
        assert (await engine.workflows.get(wf.id)).name == "m"
    finally:
        engine.close()
    with pytest.raises(ValueError, match="memtest://unit"):
        Engine("memtest://unit")
    plain = Engine(":memory:", plugins=[plugin])
    assert len(plugin.opened) == 1
    plain.close()


# -- events ---------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)


@pytest.mark.anyio
async def test_hook_abi_event(caplog: pytest.LogCaptureFixture) -> None:
    """abi_event sees each committed change; a raising observer never breaks the operation."""
    recorder = Recorder()

    class Broken:
        @hookimpl
        def abi_event(self, event: Event) -> None:
            raise RuntimeError("observer bug")

    engine = Engine(":memory:", plugins=[recorder, Broken()])
    try:
        wf = await engine.workflows.create(
            {"name": "e", "type": "custom", "configuration": CUSTOM_STEPS}
        )
        await engine.workflows.activate(wf.id)
        assert [e.type for e in recorder.events][-2:] == ["workflow.created", "workflow.activated"]
        assert recorder.events[-2].data["id"] == wf.id
        assert "abi_event hook failed" in caplog.text
    finally:
        engine.close()


# -- step handlers and NLP services ----------------------------------------------------------------


async def double(ctx: Any) -> Any:
    return {"value": ctx.parameters.get("x", 0) * 2}


class HandlerPlugin:
    @hookimpl
    def abi_step_handlers(self, register: Callable[[str, Any], None]) -> None:
        register("double", double)


class NlpPlugin:
    @hookimpl
    def abi_nlp_services(self, register: Callable[[str, Any], None]) -> None:
        register("echo_nlp", {"analyze": lambda text: text})


@pytest.mark.anyio
async def test_hook_abi_step_handlers() -> None:
    """A registered handler is in the registry and a custom workflow may name it; others fail."""
    engine = Engine(":memory:", plugins=[HandlerPlugin()])
    try:
        assert engine.registry.step_handlers["double"] is double
        assert engine.registry.origins[("step handler", "double")].endswith("HandlerPlugin")
        wf = await engine.workflows.create(
            {"name": "h", "type": "custom", "configuration": {"handler": "double"}}
        )
        assert wf.configuration == {"handler": "double"}
        with pytest.raises(InvalidWorkflowConfig) as info:
            await engine.workflows.create(
                {"name": "h", "type": "custom", "configuration": {"handler": "triple"}}
            )
        assert info.value.details["field"] == "configuration.handler"
        assert info.value.details["allowed"] == ["double"]
    finally:
        engine.close()
    with pytest.raises(ValueError, match="step handler 'double'"):
        Engine(":memory:", plugins=[HandlerPlugin(), type("Again", (HandlerPlugin,), {})()])


def test_hook_abi_nlp_services() -> None:
    """NLP services registered by a plugin land in the registry; a duplicate name fails."""
    engine = Engine(":memory:", plugins=[NlpPlugin()])
    try:
        assert engine.registry.nlp_services["echo_nlp"]["analyze"]("x") == "x"
        assert engine.registry.origins[("NLP service", "echo_nlp")].endswith("NlpPlugin")
    finally:
        engine.close()

    class Unnamed:
        @hookimpl
        def abi_nlp_services(self, register: Callable[[str, Any], None]) -> None:
            register("", object())

    with pytest.raises(ValueError, match="NLP service 'echo_nlp'"):
        Engine(":memory:", plugins=[NlpPlugin(), type("Again", (NlpPlugin,), {})()])
    with pytest.raises(ValueError, match="non-empty"):
        Engine(":memory:", plugins=[Unnamed()])
