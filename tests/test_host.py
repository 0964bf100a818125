"""The plugin host (#13, point 5): ``abi_engine.Host`` gives workflow types and steps the
outbound policy, one guarded HTTP client, integration clients, registrations of hooks a
plugin declared, and read-only queries; ``WorkflowType.bind(host)`` replaces
``attach(engine)``, which still works for one release with a ``DeprecationWarning``."""

from __future__ import annotations

import ast
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest

from abi_engine import Engine, Host, StepContext, WorkflowType, hookimpl, hookspec, step
from abi_engine.errors import ExecutionNotFound, InvalidRequest
from abi_engine.netguard import URLRefused, guarded_client
from abi_engine.testing import engine_for, run_workflow

pytestmark = pytest.mark.anyio


class _Handler(BaseHTTPRequestHandler):
    """``/hello`` answers ``hello``; ``/away`` redirects to ``/hello``."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/away":
            self.send_response(302)
            self.send_header("Location", "/hello")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def bare() -> Iterator[Engine]:
    """An engine without entry-point plugins."""
    engine = Engine(":memory:", load_entry_points=False)
    try:
        yield engine
    finally:
        engine.close()


# -- outbound policy and the guarded client ------------------------------------------------


async def test_http_client_applies_the_engines_outbound_rules(
    bare: Engine, server_url: str
) -> None:
    """host.http_client() refuses a loopback URL until the engine allows private URLs,
    follows no redirect, takes httpx options, and sees the setting as it is now."""
    assert bare.host.allow_private_urls is False
    async with bare.host.http_client() as client:
        with pytest.raises(URLRefused):
            await client.get(f"{server_url}/hello")
    bare.allow_private_urls = True
    assert bare.host.allow_private_urls is True
    async with bare.host.http_client(base_url=server_url, timeout=10) as client:
        assert client.trust_env is False
        assert (await client.get("/hello")).text == "hello"
        moved = await client.get("/away")
        assert (moved.status_code, moved.headers["location"]) == (302, "/hello")


async def test_http_client_bounds_answers(bare: Engine, server_url: str) -> None:
    """max_response_bytes goes to the transport: a 5-byte answer is too large for 4."""
    bare.allow_private_urls = True
    async with bare.host.http_client(max_response_bytes=4) as client:
        with pytest.raises(httpx.TransportError, match="larger than 4 bytes"):
            await client.get(f"{server_url}/hello")


def test_guarded_client_sets_its_safety_options_itself() -> None:
    """The one recipe cannot be loosened: transport, proxies, redirects, trust_env are its own."""
    for option in ("transport", "follow_redirects", "trust_env", "mounts", "proxy"):
        with pytest.raises(TypeError, match=option):
            guarded_client(allow_private=False, **{option: None})


def test_check_url_uses_the_engines_setting(bare: Engine) -> None:
    """host.check_url names the field and refuses private addresses unless allowed."""
    assert bare.host.check_url("https://example.com/x", field="hook") == "https://example.com/x"
    with pytest.raises(InvalidRequest) as refused:
        bare.host.check_url("http://10.0.0.1/", field="hook")
    assert refused.value.details["field"] == "hook"
    bare.allow_private_urls = True
    assert bare.host.check_url("http://10.0.0.1/", field="hook") == "http://10.0.0.1/"


async def test_client_of_a_connection(bare: Engine, server_url: str) -> None:
    """host.client(connection) is the provider's client, told the engine's setting."""
    bare.allow_private_urls = True  # to connect it; refused again below
    await bare.integrations.put("int_local", "http", {"base_url": server_url})
    async with bare.host.client(await bare.integrations.get_secret("int_local")) as client:
        assert (await client.get("/hello")).text == "hello"
    bare.allow_private_urls = False
    connection = await bare.integrations.get_secret("int_local")
    assert connection is not None
    async with bare.host.client(connection) as client:
        assert str(client.base_url).rstrip("/") == server_url
        with pytest.raises(URLRefused):
            await client.get("/hello")
    gone = type(connection)(
        id="int_x",
        provider="nobody",
        config={},
        created_at=connection.created_at,
        updated_at=connection.updated_at,
    )
    with pytest.raises(LookupError, match="nobody"):
        bare.host.client(gone)


def test_step_context_client_needs_an_engine() -> None:
    """A StepContext built by hand has no host: client() says so."""
    ctx = StepContext(
        execution_id="exec_1",
        workflow_id="wf_1",
        step_name="s",
        parameters={},
        configuration={},
        params={},
        config={},
        results={},
        integrations={"int_a": object()},
    )
    assert ctx.host is None
    with pytest.raises(RuntimeError, match="engine runs"):
        ctx.client("int_a")


# -- steps and types receive the host ----------------------------------------------------------


class Reader(WorkflowType):
    """A step that reads its own execution and its workflow's earlier runs through the host."""

    name = "host_reader"
    bound: list[Host] = []

    def bind(self, host: Host) -> None:
        Reader.bound.append(host)

    @step
    async def read(self, ctx: StepContext) -> Any:
        assert ctx.host is not None
        me = await ctx.host.get_execution(ctx.execution_id)
        page = await ctx.host.list_executions(
            workflow_id=ctx.workflow_id, status=["completed", "running"], page_size=5
        )
        try:
            await ctx.host.get_execution("exec_missing")
        except ExecutionNotFound:
            missing = True
        return {
            "me": me.execution_id,
            "status": me.status.value,
            "listed": [s.execution_id for s in page.items],
            "missing": missing,
            "same_host": ctx.host is Reader.bound[-1],
            "legacy_engine": type(ctx.services["engine"]).__name__,
        }


class ReaderPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Reader)


async def test_steps_get_the_host_and_its_queries(databases: Any) -> None:
    """ctx.host is the host the type was bound to; its queries read executions; the
    deprecated ctx.services["engine"] still gives the engine."""
    async with engine_for(ReaderPlugin(), db=databases(), load_entry_points=False) as engine:
        assert Reader.bound[-1] is engine.host
        first = await run_workflow(engine, "host_reader")
        assert first.result["me"] == first.execution_id
        assert first.result["status"] == "running"
        assert first.result["missing"] is True
        assert first.result["same_host"] is True
        assert first.result["legacy_engine"] == "Engine"
        second = await run_workflow(engine, "host_reader")
        assert second.workflow_id != first.workflow_id
        assert second.result["listed"] == [second.execution_id]


class Legacy(WorkflowType):
    """A type written for 0.1: it overrides attach(engine)."""

    name = "legacy_attach"
    attached: list[Any] = []

    def attach(self, engine: Any) -> None:
        Legacy.attached.append(engine)

    @step
    async def only(self, ctx: StepContext) -> Any:
        return {}


class LegacyPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Legacy)


def test_attach_still_gets_the_engine_with_a_deprecation_warning() -> None:
    """A type overriding attach(engine) gets the Engine, and a DeprecationWarning names bind."""
    with pytest.warns(DeprecationWarning, match=r"Legacy\.attach\(engine\) is deprecated.*bind"):
        engine = Engine(":memory:", plugins=[LegacyPlugin()], load_entry_points=False)
    try:
        assert Legacy.attached[-1] is engine
    finally:
        engine.close()


# -- hooks a plugin declares, and what it collects ------------------------------------------------


class GadgetSpecs:
    @hookspec
    def acme_gadgets(self, register: Callable[[str, Any], None]) -> None:
        """Register gadgets for the gadget type."""


class Gadgets(WorkflowType):
    """A type that declares acme_gadgets and collects them when bound."""

    name = "gadgets"
    collected: list[Any] = []

    def bind(self, host: Host) -> None:
        found = host.collect("acme_gadgets", "gadget")
        assert host.collect("acme_gadgets", "gadget") == found  # collected once, kept
        Gadgets.collected.append(found)

    @step
    async def only(self, ctx: StepContext) -> Any:
        return {}


class GadgetPlugin:
    @hookimpl
    def abi_hookspecs(self, add: Callable[[object], None]) -> None:
        add(GadgetSpecs)

    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Gadgets)


class Spanner:
    @hookimpl
    def acme_gadgets(self, register: Callable[[str, Any], None]) -> None:
        register("spanner", 42)


def test_hook_abi_hookspecs() -> None:
    """A plugin declares a hook of its own; others implement it; the declaring type
    collects their registrations through the host; mistakes fail at startup."""
    engine = Engine(":memory:", plugins=[GadgetPlugin(), Spanner()], load_entry_points=False)
    try:
        found = Gadgets.collected[-1]
        assert dict(found) == {"spanner": 42}
        with pytest.raises(TypeError):
            found["other"] = 1  # read-only
        assert engine.registry.origins[("gadget", "spanner")].endswith("Spanner")
        with pytest.raises(LookupError, match="acme_nothing"):
            engine.host.collect("acme_nothing", "thing")
    finally:
        engine.close()

    class Again(Spanner):
        pass

    with pytest.raises(ValueError, match="gadget 'spanner' is registered twice"):
        Engine(":memory:", plugins=[GadgetPlugin(), Spanner(), Again()], load_entry_points=False)

    class Misspelled:
        @hookimpl
        def acme_gadgets(self, registrar: Any) -> None:
            pass

    with pytest.raises(pluggy.PluginValidationError, match="registrar"):
        Engine(":memory:", plugins=[GadgetPlugin(), Misspelled()], load_entry_points=False)
    with pytest.raises(pluggy.PluginValidationError, match="acme_gadgets"):
        Engine(":memory:", plugins=[Spanner()], load_entry_points=False)  # nobody declares it


class StrayNlp:
    @hookimpl
    def abi_nlp_services(self, register: Callable[[str, Any], None]) -> None:
        register("stray", object())


class OptionalNlp:
    @hookimpl(optionalhook=True)
    def abi_nlp_services(self, register: Callable[[str, Any], None]) -> None:
        register("optional", object())


def test_moved_hooks_are_declared_by_their_plugins(caplog: pytest.LogCaptureFixture) -> None:
    """abi_step_handlers and abi_nlp_services come from the custom and feedback plugins;
    without them an implementation is ignored with a warning (deprecated), or silently
    when marked optionalhook."""
    with_plugins = Engine(":memory:", plugins=[StrayNlp()])
    try:
        assert "stray" in with_plugins.registry.nlp_services
        assert with_plugins.pm.hook.abi_nlp_services.spec.namespace.__name__ == (
            "abi_plugin_feedback.hookspecs"
        )
        assert with_plugins.pm.hook.abi_step_handlers.spec.namespace.__name__ == (
            "abi_plugin_custom.hookspecs"
        )
    finally:
        with_plugins.close()
    with caplog.at_level(logging.WARNING, logger="abi_engine"):
        without = Engine(":memory:", plugins=[StrayNlp()], disable_plugins=["feedback_analysis"])
    try:
        assert "feedback_analysis" not in without.workflow_types
        assert without.registry.nlp_services == {}
        assert "abi_nlp_services is declared by the 'feedback_analysis' plugin" in caplog.text
        assert "StrayNlp" in caplog.text
    finally:
        without.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="abi_engine"):
        quiet = Engine(":memory:", plugins=[OptionalNlp()], load_entry_points=False)
    quiet.close()
    assert caplog.text == ""


def test_registered_templates_are_read_only() -> None:
    """host.registered_templates shows abi_notification_templates registrations, read-only."""

    class Templates:
        @hookimpl
        def abi_notification_templates(self, register: Callable[[str, Any], None]) -> None:
            register("tpl_host", "Hi $name")

    engine = Engine(":memory:", plugins=[Templates()], load_entry_points=False)
    try:
        assert engine.host.registered_templates == {"tpl_host": "Hi $name"}
        with pytest.raises(TypeError):
            engine.host.registered_templates["x"] = "y"  # type: ignore[index]
        assert engine.host.cached_template("tpl_host") is None  # not a managed one
    finally:
        engine.close()


def test_host_imports_nothing_above_it() -> None:
    """abi_engine.host sits low: of the core it imports only models and netguard."""
    import abi_engine.host

    tree = ast.parse(Path(abi_engine.host.__file__ or "").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("abi_engine")
    }
    assert imported == {"abi_engine.models", "abi_engine.netguard"}
