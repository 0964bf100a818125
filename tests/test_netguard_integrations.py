"""Integration connections are checked against the outbound URL rules when they are put
(``engine.integrations.put`` and REST ``PUT /api/v1/integrations/{id}``), through what each
provider declares (``url_fields``, ``host_fields``, ``check_outbound``), and again when used,
on every engine backend.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from abi_asgi import create_app

from abi_engine import Engine, IntegrationProvider, hookimpl
from abi_engine.errors import InvalidRequest, WorkflowExecutionError

pytestmark = pytest.mark.anyio

SLACK_SECRET = "T000/B000/XyZsecretPath"

#: Where a connection must not point, in forms the resolver reads.
PRIVATE_HOSTS = [
    "10.0.0.1",
    "169.254.169.254",
    "2852039166",
    "0xa9.0xfe.0xa9.0xfe",
    "127.1",
    "0177.0.0.1",
    "::ffff:10.0.0.1",
    "localhost",
    "metadata.google.internal",
]


def _in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def configs(host: str) -> list[tuple[str, dict[str, Any], str]]:
    """(provider, config, field) pointing each provider at ``host``."""
    return [
        ("http", {"base_url": f"https://{_in_url(host)}/api"}, "config.base_url"),
        (
            "smtp",
            {"host": host, "port": 587, "from_address": "alerts@example.com"},
            "config.host",
        ),
        (
            "slack",
            {"webhook_url": f"https://{_in_url(host)}/services/{SLACK_SECRET}"},
            "config.webhook_url",
        ),
    ]


@pytest.fixture
def make(databases: Callable[..., str | Path]) -> Iterator[Callable[..., Engine]]:
    """Engines on the test's database (SQLite or PostgreSQL)."""
    made: list[Engine] = []

    def build(**options: Any) -> Engine:
        engine = Engine(databases(), **options)
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.close()


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
async def test_private_connections_refused_at_put(make: Callable[..., Engine], host: str) -> None:
    """An http base URL, SMTP host or Slack URL on a private address (any literal form) or a
    local name is refused at put, in Python and over REST, naming the field; nothing is stored,
    and the error shows no secret."""
    engine = make()
    token = engine.tokens.create_token("usr_admin", ["integrations:admin"])
    transport = httpx.ASGITransport(app=create_app(engine, rate_limit=None))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver/api/v1",
        headers={"Authorization": f"Bearer {token}"},
    ) as rest:
        for provider, config, field in configs(host):
            with pytest.raises(InvalidRequest) as caught:
                await engine.integrations.put("int_target", provider, config)
            assert caught.value.details["field"] == field
            response = await rest.put(
                "/integrations/int_target", json={"provider": provider, "config": config}
            )
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["code"], error["details"]["field"]) == ("INVALID_REQUEST", field)
            assert SLACK_SECRET not in response.text
            assert (await rest.get("/integrations/int_target")).status_code == 404


@pytest.mark.parametrize("host", ["10.0.0.1", "0xa9fea9fe", "localhost"])
async def test_private_connections_accepted_when_allowed(
    make: Callable[..., Engine], host: str
) -> None:
    """With allow_private_urls the same connections are stored."""
    engine = make(allow_private_urls=True)
    for provider, config, _ in configs(host):
        stored = await engine.integrations.put("int_target", provider, config)
        assert stored.provider == provider


@pytest.mark.parametrize(
    ("provider", "config", "field"),
    [
        ("http", {"base_url": "https://api.example.com/\x00"}, "config.base_url"),
        ("http", {"base_url": "https://xn--/"}, "config.base_url"),
        ("http", {"base_url": "https://user:pw@api.example.com/"}, "config.base_url"),
        (
            "smtp",
            {"host": "mail\u2028.example.com", "from_address": "a@example.com"},
            "config.host",
        ),
        ("smtp", {"host": "[::1]", "from_address": "a@example.com"}, "config.host"),
        ("slack", {"webhook_url": "https://hooks.slack.com/\x7f"}, "config.webhook_url"),
    ],
)
async def test_unsendable_connections_refused_even_when_allowed(
    make: Callable[..., Engine], provider: str, config: dict[str, Any], field: str
) -> None:
    """A URL or host the client could not use is refused whatever the private-URL setting."""
    engine = make(allow_private_urls=True)
    with pytest.raises(InvalidRequest) as caught:
        await engine.integrations.put("int_target", provider, config)
    assert caught.value.details["field"] == field


class _Probe(IntegrationProvider):
    """A third-party provider declaring a nested URL field and a list of hosts."""

    name = "probe"
    url_fields: ClassVar[tuple[str, ...]] = ("server.url",)

    def check_outbound(self, config: Any, *, allow_private_urls: bool) -> None:
        super().check_outbound(config, allow_private_urls=allow_private_urls)
        from abi_engine.netguard import check_host

        for index, host in enumerate(config.get("replicas", [])):
            check_host(host, field=f"config.replicas[{index}]", allow_private=allow_private_urls)


class _ProbePlugin:
    @hookimpl
    def abi_integration_providers(self, register: Callable[[IntegrationProvider], None]) -> None:
        register(_Probe())


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"server": {"url": "http://169.254.169.254/x"}}, "config.server.url"),
        (
            {
                "server": {"url": "https://ok.example.com"},
                "replicas": ["a.example.com", "10.1.2.3"],
            },
            "config.replicas[1]",
        ),
    ],
)
async def test_providers_declare_where_they_connect(
    make: Callable[..., Engine], config: dict[str, Any], field: str
) -> None:
    """A provider's url_fields (dotted paths) and its check_outbound override are applied at put."""
    engine = make(plugins=[_ProbePlugin()])
    with pytest.raises(InvalidRequest) as caught:
        await engine.integrations.put("int_probe", "probe", config)
    assert caught.value.details["field"] == field
    await engine.integrations.put(
        "int_probe", "probe", {"server": {"url": "https://ok.example.com"}}
    )


# -- at use --------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def api() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on 127.0.0.1: its port and the paths it was asked for."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_name_that_comes_to_resolve_privately_is_refused_at_use(
    make: Callable[..., Engine], api: tuple[int, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base URL whose name passed the put but now resolves to 127.0.0.1 (DNS changed) is
    refused when a step uses it: the step fails with URLRefused, no request is sent, and the
    error does not say the address."""
    port, seen = api
    engine = make()
    await engine.integrations.put("int_crm", "http", {"base_url": f"http://crm.example.com:{port}"})
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:  # the DNS answer changed
        return real("127.0.0.1" if host == "crm.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    step = {"name": "call", "action": "http_request", "integration": "int_crm", "path": "/x"}
    async with engine:
        wf = await engine.workflows.create(
            {
                "name": "crm",
                "type": "custom",
                "configuration": {"steps": [step]},
                "integrations": [{"id": "int_crm", "required": True}],
            }
        )
        await engine.workflows.activate(wf.id)
        with pytest.raises(WorkflowExecutionError) as caught:
            await engine.executions.execute(wf.id, {})
        execution = await engine.executions.get(caught.value.details["execution_id"])
    assert execution.error is not None
    assert execution.error.type == "URLRefused"
    assert "not allowed" in execution.error.message
    assert "127.0.0.1" not in execution.error.message
    assert seen == []
