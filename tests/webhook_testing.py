"""Shared pieces of the webhook and callback tests.

A real HTTP receiver on 127.0.0.1 (:class:`Receiver`): it runs
:class:`http.server.ThreadingHTTPServer` in a thread, records every request
(path, headers, body, arrival time) and answers each path from a plan: a list
of answers used in order (the last one repeats), each a status code,
``(status, seconds)`` to answer only after sleeping that long, or a function
called (in the server's thread) for the status, which may wait for something
first (:meth:`Receiver.hold`). Also a store whose chosen calls fail
(:class:`FaultyStore`), fast delivery settings, fixtures (``receiver``,
``make_engine``, ``eng``) and helpers that wait for deliveries.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from abi_engine import Engine
from abi_engine.models_webhooks import Delivery, DeliveryStatus
from abi_engine.webhooks import WebhookSettings

Answer = int | tuple[int, float] | Callable[[], int]


@attrs.frozen
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class _Server(ThreadingHTTPServer):
    # A burst of deliveries connects at once: with the default backlog (5) the kernel drops
    # connection attempts, which the client retries only after a second.
    request_queue_size = 128
    daemon_threads = True


class Receiver:
    """Records requests; answers from per-path plans (default 200 ``ok``)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._plans: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver._record(self.path, dict(self.headers.items()), body)
                answer = receiver._answer(self.path)
                if callable(answer):
                    status = answer()
                else:
                    status, delay = answer
                    if delay:
                        time.sleep(delay)
                payload = f"answer {status} to {self.path}".encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "text/plain")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (timeout): nothing to answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, answers: Sequence[Answer]) -> None:
        """Answer the next requests to ``path`` with ``answers`` (the last one repeats)."""
        with self._lock:
            self._plans[path] = list(answers)

    def hold(
        self, status: int, until: Callable[[], bool], timeout: float = 60.0
    ) -> Callable[[], int]:
        """An answer that waits until ``until()`` holds (at most ``timeout`` s), then ``status``."""

        def answer() -> int:
            deadline = time.monotonic() + timeout
            while not until() and time.monotonic() < deadline:
                time.sleep(0.01)
            return status

        return answer

    def _answer(self, path: str) -> tuple[int, float] | Callable[[], int]:
        with self._lock:
            plan = self._plans.get(path.split("?")[0])
            answer: Answer = 200
            if plan:
                answer = plan.pop(0) if len(plan) > 1 else plan[0]
        return (answer, 0.0) if isinstance(answer, int) else answer

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self._lock:
            self.requests.append(
                Received(
                    path=path,
                    headers={k.lower(): v for k, v in headers.items()},
                    body=body,
                    at=time.monotonic(),
                )
            )

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    async def wait_for(
        self, count: int, path: str | None = None, timeout: float = 30.0
    ) -> list[Received]:
        """Wait until ``count`` requests (to ``path``) arrived; return them."""
        with anyio.fail_after(timeout):
            while True:  # the server thread cannot set an anyio.Event: poll
                found = self.received(path)
                if len(found) >= count:
                    return found
                await anyio.sleep(0.01)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A started :class:`Receiver`, stopped afterwards."""
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# -- a store that fails on purpose ---------------------------------------------------------


class StoreFault(Exception):
    """Raised by :class:`FaultyStore` in place of a real call (when no driver error fits)."""


class FaultyStore:
    """A real store whose chosen calls fail: everything is delegated to ``store``, except
    that a call of a method given to :meth:`fail` raises the backend's own error instead
    (``sqlite3.OperationalError`` "disk I/O error", ``psycopg.OperationalError``
    "server closed the connection unexpectedly") while its plan says so.

    ``calls`` counts every call by method name; ``failures`` counts the failed ones.
    """

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.blocking = store.blocking
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._plans: dict[str, tuple[int, int]] = {}  # name -> (calls to let pass, calls to fail)
        self._lock = threading.Lock()

    def fail(self, name: str, times: int = 1, *, after: int = 0) -> None:
        """Let the next ``after`` calls of ``name`` pass, then fail ``times`` of them."""
        if not callable(getattr(self.inner, name, None)):
            raise AttributeError(f"the store has no method {name!r}")
        with self._lock:
            self._plans[name] = (after, times)

    def heal(self) -> None:
        """Every call works again."""
        with self._lock:
            self._plans.clear()

    def _error(self) -> Exception:
        if type(self.inner).__name__ == "PostgresStore":
            import psycopg

            return psycopg.OperationalError("server closed the connection unexpectedly")
        return sqlite3.OperationalError("disk I/O error")

    def _should_fail(self, name: str) -> bool:
        with self._lock:
            self.calls[name] += 1
            plan = self._plans.get(name)
            if plan is None:
                return False
            passing, failing = plan
            if passing > 0:
                self._plans[name] = (passing - 1, failing)
                return False
            if failing <= 1:
                del self._plans[name]
            else:
                self._plans[name] = (0, failing - 1)
            self.failures[name] += 1
            return True

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name.startswith("_") or not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._should_fail(name):
                raise self._error()
            return value(*args, **kwargs)

        return call


# -- engines, settings and waiting ----------------------------------------------------------

STEPS = {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "1 + 1"}}]}
FAILING = {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "parameters['x']"}}]}


def fast(**overrides: Any) -> WebhookSettings:
    """Settings for tests: retries after 50, 100 and 200 ms, quick polling, and a timeout
    no load reaches (a test of timeouts sets its own)."""
    values: dict[str, Any] = {
        "retry_schedule": (0.05, 0.1, 0.2),
        "jitter": 0.0,
        "timeout_seconds": 10.0,
        "poll_interval": 0.05,
        "subscription_refresh_seconds": 0.1,
    }
    values.update(overrides)
    return WebhookSettings(**values)


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Receiver]:
    """A running HTTP receiver on 127.0.0.1."""
    with running_receiver() as rx:
        yield rx


@pytest.fixture(name="make_engine")
def make_engine_fixture(databases: Callable[..., str | Path]) -> Iterator[Callable[..., Engine]]:
    """Engines on the test's database, on each engine backend (private URLs allowed
    unless told otherwise)."""
    made: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("allow_private_urls", True)
        kwargs.setdefault("webhook_settings", fast())
        engine = Engine(databases(), **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def open_store(db: str | Path) -> Any:
    """The store an engine would open on ``db`` (a SQLite path or a PostgreSQL URL)."""
    if isinstance(db, str) and db.startswith("postgresql"):
        from abi_engine.storage.postgres import PostgresStore

        return PostgresStore(db)
    from abi_engine.storage import SQLiteStore

    return SQLiteStore(db)


@pytest.fixture(name="faulty_engine")
def faulty_engine_fixture(
    databases: Callable[..., str | Path],
) -> Iterator[Callable[..., Engine]]:
    """Like ``make_engine``, over a :class:`FaultyStore` (``engine.store``) on the test's
    database: ``engine.store.fail(...)`` makes chosen calls fail."""
    made: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("allow_private_urls", True)
        kwargs.setdefault("webhook_settings", fast())
        engine = Engine(FaultyStore(open_store(databases())), **kwargs)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


@pytest.fixture(name="eng")
async def eng_fixture(make_engine: Callable[..., Engine]) -> AsyncIterator[Engine]:
    """A running engine with fast delivery settings."""
    engine = make_engine()
    async with engine:
        yield engine


async def make_workflow(
    engine: Engine, config: dict[str, Any] = STEPS, *, active: bool = True
) -> str:
    """A ``custom`` workflow (active unless told otherwise); its id."""
    wf = await engine.workflows.create({"name": "wh", "type": "custom", "configuration": config})
    if active:
        await engine.workflows.activate(wf.id)
    return wf.id


async def until_deliveries(
    engine: Engine, webhook_id: str, done: Callable[[list[Delivery]], bool], timeout: float = 30
) -> list[Delivery]:
    """Poll the webhook's deliveries until ``done(deliveries)``; return them (newest first)."""
    with anyio.fail_after(timeout):
        while True:
            page = await engine.webhooks.deliveries(webhook_id, page_size=100)
            if done(page.items):
                return page.items
            await anyio.sleep(0.02)


async def eventually(predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``predicate()`` holds."""
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


def all_finished(items: list[Delivery]) -> bool:
    """Some deliveries, none of them pending."""
    return bool(items) and all(d.status is not DeliveryStatus.PENDING for d in items)


def wait_sync(predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Wait (blocking) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
