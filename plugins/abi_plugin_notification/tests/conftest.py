"""Fixtures for the notification plugin's tests: a real SMTP server and a real Slack receiver.

``smtp``: an aiosmtpd server on 127.0.0.1 (a :class:`Mailbox`: records each message,
refuses chosen recipients, checks a login when given credentials). ``slack``: an HTTP
server on 127.0.0.1 recording what is POSTed, answering ``status``. ``make_engine``:
started in-memory engines with this plugin (entry points off, so other plugins cannot
get in the way; ``test_registration`` checks the entry point). ``engine``: one with
private URLs allowed and ``int_smtp`` / ``int_slack`` connected to the two servers.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

import abi_plugin_notification
from abi_engine import Engine
from abi_engine.testing import engine_for

EngineFactory = Callable[..., Awaitable[Engine]]
SMTP_USER, SMTP_PASSWORD = "mailer", "s3cret-pa55"


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


class Mailbox:
    """An aiosmtpd handler: keeps messages, refuses ``refuse`` (``refuse_once`` the first time)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.refuse: set[str] = set()
        self.refuse_once: set[str] = set()
        self.logins: list[str] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        if address in self.refuse_once:
            self.refuse_once.discard(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), parsed))
        return "250 Message accepted"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        if ok:
            self.logins.append(SMTP_USER)
        return AuthResult(success=ok, handled=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on 127.0.0.1 (AUTH offered without TLS): (mailbox, port)."""
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=mailbox.authenticate,
        auth_require_tls=False,
    )
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


class Receiver:
    """A real HTTP server on 127.0.0.1 recording POSTed JSON; answers ``status``."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.paths: list[str] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.paths.append(self.path)
                receiver.bodies.append(json.loads(body or b"null"))
                answer = b"ok" if receiver.status < 400 else b"invalid_payload"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def slack() -> Iterator[Receiver]:
    """A Slack-like incoming webhook receiver on 127.0.0.1."""
    found = Receiver()
    thread = threading.Thread(target=found.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
async def make_engine() -> AsyncIterator[EngineFactory]:
    """``await make_engine(*plugins, **options)``: a started in-memory engine with this plugin."""
    async with AsyncExitStack() as stack:

        async def make(*plugins: object, **options: Any) -> Engine:
            return await stack.enter_async_context(
                engine_for(abi_plugin_notification, *plugins, load_entry_points=False, **options)
            )

        yield make


def smtp_config(port: int, **extra: Any) -> dict[str, Any]:
    """An ``smtp`` connection to the test server (no TLS: it is local)."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "starttls": False,
        "from_address": "alerts@example.com",
        "from_name": "ABI Alerts",
        **extra,
    }


@pytest.fixture
async def engine(make_engine: EngineFactory, smtp: tuple[Mailbox, int], slack: Receiver) -> Engine:
    """Private URLs allowed; int_smtp and int_slack connected to the test servers."""
    eng = await make_engine(allow_private_urls=True)
    await eng.integrations.put("int_smtp", "smtp", smtp_config(smtp[1]))
    await eng.integrations.put(
        "int_slack", "slack", {"webhook_url": f"{slack.url}/services/T0/B0/XyZsecret"}
    )
    return eng
