"""Engines served over real HTTP, and the seed's Python API reaching them both ways.

``served(database, **options)`` starts an :class:`~abi_engine.Engine` on a
database (a SQLite path or a PostgreSQL URL from the ``databases`` fixture)
behind ``abi_asgi.create_app`` under uvicorn on a free 127.0.0.1 port, in a
thread: the app's lifespan starts the engine. It yields a :class:`Served`
with the engine, the root URL, an all-scopes token and ``facade(cls, way)``,
which builds an ``abi.workflows`` object reaching the engine in-process
(``way="local"``) or over HTTP (``way="remote"``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import uvicorn

from abi_engine import Engine

__all__ = ["WAYS", "Served", "serve_app", "served"]

T = TypeVar("T")

#: How the seed's Python API reaches the engine in these tests.
WAYS = ("local", "remote")


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port (lifespan on); yield its root URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", http="h11", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@attrs.define
class Served:
    """An engine served at ``base_url``, with an all-scopes ``token``."""

    engine: Engine
    base_url: str
    token: str
    _made: list[Any] = attrs.Factory(list)

    def facade(self, cls: Callable[..., T], way: str, token: str | None = None) -> T:
        """``cls(access_token=...)`` reaching the engine in-process or over HTTP."""
        where: dict[str, Any] = (
            {"engine": self.engine} if way == "local" else {"base_url": self.base_url}
        )
        made = cls(access_token=token or self.token, **where)
        self._made.append(made)
        return made

    def client(self, token: str | None = None) -> httpx.Client:
        """A synchronous HTTP client of the REST API with the token."""
        made = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=120,
        )
        self._made.append(made)
        return made

    def close(self) -> None:
        for made in self._made:
            made.close()


@contextmanager
def served(database: str | Path, **options: Any) -> Iterator[Served]:
    """An engine on ``database`` behind the REST API on a real port, closed afterwards."""
    import abi_asgi

    engine = Engine(database, **options)
    try:
        token = engine.tokens.create_token("usr_spec")
        with serve_app(abi_asgi.create_app(engine, rate_limit=None)) as url:
            deadline = time.monotonic() + 60
            while not engine.running:  # the lifespan starts it
                if time.monotonic() > deadline:
                    raise RuntimeError("the engine did not start")
                time.sleep(0.02)
            result = Served(engine=engine, base_url=url, token=token)
            try:
                yield result
            finally:
                result.close()
    finally:
        engine.close()
