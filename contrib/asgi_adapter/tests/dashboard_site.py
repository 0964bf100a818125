"""A real site for the dashboard's tests: uvicorn on 127.0.0.1 serving the adapter over a
SQLite file, a local HTTP receiver, and records of every kind made over the REST API.

``Site`` holds the base URL, two tokens (all scopes; all but ``executions:write``), the
ids seeded and the receiver. Every user-controlled text seeded carries ``XSS``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx
import uvicorn
from abi_asgi import create_app

from abi_engine import Engine
from abi_engine.models import Scope
from abi_engine.webhooks import WebhookSettings

#: A payload in every user-controlled field: it must only ever be shown as text.
XSS = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
#: Where the tests write screenshots (git-ignored: build/).
SCREENSHOTS = Path(__file__).resolve().parents[3] / "build" / "dashboard-screenshots"


class Receiver:
    """A local HTTP server: ``/refuse`` answers 503, ``/hang`` holds the request until
    :meth:`release` (or five minutes), ``/ok`` answers 200."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.hits: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                receiver.hits.append(self.path)
                if self.path.startswith("/hang"):
                    receiver.released.wait(300)
                status = 503 if self.path.startswith("/refuse") else 200
                body = b"refused by the test receiver" if status == 503 else b"{}"
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (a cancelled step)
                    pass

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def release(self) -> None:
        self.released.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn (lifespan on) in a thread on a free port of 127.0.0.1."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", ws="none", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def poll(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """``check()``'s first truthy value, asked every 0.2 s for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@attrs.define
class Site:
    url: str
    token: str
    reader_token: str
    receiver: Receiver
    ids: dict[str, str] = attrs.Factory(dict)

    def api(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=30,
        )


def _data(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()["data"]


def seed(site: Site) -> None:
    """Records of every kind, over the REST API: a failed execution, a running one (its
    step holds a request to the receiver), a waiting approval, a schedule, a webhook whose
    deliveries the receiver refuses."""
    with site.api() as api:
        hook = _data(
            api.post(
                "/webhooks",
                json={
                    "url": site.receiver.url + "/refuse",
                    "events": ["workflow.created", "execution.failed"],
                    "description": "Ops alerts " + XSS,
                },
            )
        )
        site.ids["webhook"] = hook["id"]
        failing = _data(
            api.post(
                "/workflows",
                json={
                    "name": "Nightly totals " + XSS,
                    "description": "Adds up the day " + XSS,
                    "type": "custom",
                    "metadata": {"department": "finance", "note": XSS},
                    "configuration": {
                        "steps": [
                            {
                                "name": "prepare",
                                "action": "transform",
                                "expressions": {"a": "parameters['a']"},
                            },
                            {
                                "name": "divide",
                                "action": "transform",
                                "expressions": {"ratio": "parameters['a'] / parameters['b']"},
                            },
                        ]
                    },
                },
            )
        )
        site.ids["failing"] = failing["id"]
        _data(api.post(f"/workflows/{failing['id']}/activate"))
        failed = api.post(
            f"/workflows/{failing['id']}/execute",
            json={"parameters": {"a": 1, "b": 0, "label": XSS}},
        )
        assert failed.status_code == 500, failed.text
        listed = _data(api.get("/workflow_executions", params={"status": "failed"}))
        site.ids["failed_execution"] = listed["items"][0]["execution_id"]

        slow = _data(
            api.post(
                "/workflows",
                json={
                    "name": "Slow fetch",
                    "type": "custom",
                    "configuration": {
                        "steps": [
                            {
                                "name": "fetch",
                                "action": "http_request",
                                "method": "GET",
                                "url": site.receiver.url + "/hang",
                                # running until cancelled, however slow the machine
                                "timeout_seconds": 300,
                            }
                        ]
                    },
                },
            )
        )
        _data(api.post(f"/workflows/{slow['id']}/activate"))
        running = _data(api.post(f"/workflows/{slow['id']}/execute_async", json={}))
        site.ids["running_execution"] = running["execution_id"]
        poll(
            lambda: any(h.startswith("/hang") for h in site.receiver.hits),
            "the slow step to reach the receiver",
        )

        approval = _data(
            api.post(
                "/workflows",
                json={
                    "name": "Laptop purchase",
                    "type": "approval",
                    "configuration": {"allow_self_approval": True},
                },
            )
        )
        _data(api.post(f"/workflows/{approval['id']}/activate"))
        waiting = _data(
            api.post(
                f"/workflows/{approval['id']}/execute_async",
                json={"parameters": {"subject": "A laptop " + XSS, "amount": 1200}},
            )
        )
        site.ids["approval_execution"] = waiting["execution_id"]
        poll(
            lambda: (
                _data(api.get(f"/workflow_executions/{waiting['execution_id']}"))["status"]
                == "waiting"
            ),
            "the approval to wait",
        )

        schedule = _data(
            api.post(
                f"/workflows/{failing['id']}/schedules",
                json={
                    "name": "Every morning " + XSS,
                    "schedule_type": "cron",
                    "cron_expression": "0 7 * * *",
                    "timezone": "Europe/Paris",
                    "parameters": {"a": 1, "b": 2},
                },
            )
        )
        site.ids["schedule"] = schedule["id"]

        def failed_delivery() -> str | None:
            page = _data(api.get(f"/webhooks/{hook['id']}/deliveries"))
            done = [d for d in page["items"] if d["status"] == "failed"]
            return done[0]["id"] if done else None

        site.ids["failed_delivery"] = poll(failed_delivery, "a failed delivery")


@contextlib.contextmanager
def running_site(directory: Path) -> Iterator[Site]:
    """The seeded site, served until the block ends."""
    engine = Engine(
        directory / "dashboard.db",
        allow_private_urls=True,
        webhook_settings=WebhookSettings(retry_schedule=(), timeout_seconds=5),
    )
    token = engine.tokens.create_token("usr_operator")
    reader = engine.tokens.create_token(
        "usr_reader", [s for s in Scope if s is not Scope.EXECUTIONS_WRITE]
    )
    try:
        with Receiver() as receiver, serving(create_app(engine, rate_limit=None)) as url:
            site = Site(url=url, token=token, reader_token=reader, receiver=receiver)
            seed(site)
            yield site
            receiver.release()
    finally:
        engine.close()
