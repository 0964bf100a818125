"""Fixtures for the approval plugin's tests.

``make_engine(db=..., **options)``: started engines with this plugin and
``custom`` (registered directly, so other installed plugins cannot get in the way;
``test_registration`` checks the entry point), fast polling, on a SQLite file under ``tmp_path`` unless ``db`` says otherwise, each
closed after the test. ``engine``: one of them. ``receiver``: a real HTTP server on
127.0.0.1 recording what is POSTed to it. ``settled(engine, id)``: the execution
once it has ended.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import abi_plugin_custom
import anyio
import pytest

import abi_plugin_approval
from abi_engine import Engine, Execution
from abi_engine.testing import engine_for

EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
def anyio_backend() -> str:
    """Run ``@pytest.mark.anyio`` tests on asyncio."""
    return "asyncio"


@pytest.fixture
async def make_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """``await make_engine(db=None, **options)``: a started engine, closed after the test."""
    async with AsyncExitStack() as stack:

        async def make(db: str | Path | None = None, **options: Any) -> Engine:
            path = str(db or tmp_path / "abi.db")
            plugins = (abi_plugin_approval, abi_plugin_custom)
            return await stack.enter_async_context(
                engine_for(*plugins, db=path, load_entry_points=False, **options)
            )

        yield make


@pytest.fixture
async def engine(make_engine: EngineFactory) -> Engine:
    """A started engine on a SQLite file, private URLs allowed (receivers on 127.0.0.1)."""
    return await make_engine(allow_private_urls=True)


async def settled(engine: Engine, execution_id: str, timeout: float = 10.0) -> Execution:
    """The execution once it has ended (it may wait on the way)."""
    # Polled: executions.wait() returns as soon as it waits, and it may wait more than once.
    with anyio.fail_after(timeout):
        while not (execution := await engine.executions.get(execution_id)).status.finished:  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return execution


class Receiver:
    """A real HTTP server on 127.0.0.1: records POSTed JSON, answers ``status``."""

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
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A :class:`Receiver` serving for the test."""
    found = Receiver()
    thread = threading.Thread(target=found.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield found
    found.server.shutdown()
    found.server.server_close()
