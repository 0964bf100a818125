"""Outbound URLs are refused where they enter: webhooks (create and update), callback_url and
http_request steps, over REST (a real uvicorn server) and through the Python API
(``abi.workflows``, in-process and remote), on every engine backend.

A delivery whose URL cannot be sent (a subscription or callback stored before these rules)
is recorded as a failed attempt with a one-line reason, and logs no traceback.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
import uvicorn
from abi_asgi import create_app
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    all_finished,
    fast,
    make_engine_fixture,
    make_workflow,
    until_deliveries,
    wait_sync,
)

from abi.workflows import WebhookManager, WorkflowExecutor, WorkflowManager
from abi_engine import Engine
from abi_engine.errors import AbiError
from abi_engine.ids import utcnow
from abi_engine.models_webhooks import DeliveryStatus

#: URLs the sending client cannot send, or literal forms of private addresses.
BAD_URLS = [
    "https://ex\x00ample.com/hook",
    "https://example.com/\x01",
    "https://example.com/a\x7fb",
    "https://example.com/\u2028",
    "https://xn--/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://127.1/",
    "http://2852039166/latest/meta-data",
    "http://0xa9.0xfe.0xa9.0xfe/",
    "http://[::ffff:127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://0177.0.0.1/",
    "http://127.0.0.1./",
    "http://vm/",
]

STEPS = {"steps": [{"name": "wait", "action": "delay", "seconds": 0}]}


class Served:
    """An engine refusing private URLs, served by uvicorn on 127.0.0.1, and a token."""

    def __init__(self, engine: Engine, root: str, token: str) -> None:
        self.engine = engine
        self.root = root
        self.token = token

    def rest(self) -> httpx.Client:
        """A raw HTTP client on /api/v1 with the token."""
        return httpx.Client(
            base_url=f"{self.root}/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=60,
        )

    def python(self, cls: Any, remote: bool) -> Any:
        """A manager of ``abi.workflows``: over HTTP or in-process."""
        if remote:
            return cls(access_token=self.token, base_url=self.root)
        return cls(access_token=self.token, engine=self.engine)


@pytest.fixture
def served(databases: Callable[..., str | Path]) -> Iterator[Served]:
    """A running server on the test's database (SQLite or PostgreSQL)."""
    engine = Engine(databases(), allow_private_urls=False, webhook_settings=fast())
    token = engine.tokens.create_token("usr_net")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, rate_limit=None), log_level="warning", http="h11")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_sync(lambda: server.started, timeout=60)
        yield Served(engine, f"http://127.0.0.1:{sock.getsockname()[1]}", token)
    finally:
        server.should_exit = True
        thread.join(30)
        engine.close()
        sock.close()


def _refused_over_rest(response: httpx.Response, code: str, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["field"]) == (code, field), error


def _refused_in_python(call: Callable[[], Any], code: str, field: str) -> None:
    with pytest.raises(AbiError) as caught:
        call()
    assert (caught.value.code, caught.value.details["field"]) == (code, field)


SURFACES = ["rest", "python-local", "python-remote"]


@pytest.mark.parametrize("surface", SURFACES)
def test_webhook_urls_refused_at_registration(served: Served, surface: str) -> None:
    """Creating or updating a webhook with any of BAD_URLS is 400 INVALID_REQUEST naming
    'url', and nothing is stored or changed."""
    good = "https://hooks.example.com/in"
    with served.rest() as rest, served.python(WebhookManager, surface == "python-remote") as py:
        hook_id = py.create_webhook(good, ["workflow.created"]).id
        for url in BAD_URLS:
            body = {"url": url, "events": ["workflow.created"]}
            if surface == "rest":
                _refused_over_rest(rest.post("/webhooks", json=body), "INVALID_REQUEST", "url")
                _refused_over_rest(
                    rest.put(f"/webhooks/{hook_id}", json={"url": url}), "INVALID_REQUEST", "url"
                )
            else:
                _refused_in_python(
                    lambda u=url: py.create_webhook(u, ["workflow.created"]),
                    "INVALID_REQUEST",
                    "url",
                )
                _refused_in_python(
                    lambda u=url: py.update_webhook(hook_id, url=u), "INVALID_REQUEST", "url"
                )
        assert [h.url for h in py.list_webhooks(page_size=100).items] == [good]


@pytest.mark.parametrize("surface", SURFACES)
def test_callback_urls_refused_at_registration(served: Served, surface: str) -> None:
    """execute_async with any of BAD_URLS as callback_url is 400 INVALID_REQUEST naming
    'callback_url', and no execution is made."""
    remote = surface == "python-remote"
    with (
        served.rest() as rest,
        served.python(WorkflowManager, remote) as workflows,
        served.python(WorkflowExecutor, remote) as executor,
    ):
        wf_id = workflows.create_workflow(
            {"name": "cb", "type": "custom", "configuration": STEPS}
        ).id
        workflows.activate_workflow(wf_id)
        for url in BAD_URLS:
            if surface == "rest":
                response = rest.post(
                    f"/workflows/{wf_id}/execute_async", json={"callback_url": url}
                )
                _refused_over_rest(response, "INVALID_REQUEST", "callback_url")
            else:
                _refused_in_python(
                    lambda u=url: executor.execute_workflow_async(wf_id, callback_url=u),
                    "INVALID_REQUEST",
                    "callback_url",
                )
        assert executor.list_executions(workflow_id=wf_id).pagination.total_items == 0


@pytest.mark.parametrize("surface", SURFACES)
def test_http_step_urls_refused_at_registration(served: Served, surface: str) -> None:
    """A custom workflow whose http_request step has any of BAD_URLS (or a path with control
    characters) is refused (400 INVALID_WORKFLOW_CONFIG naming the step's field; a NUL,
    INVALID_REQUEST naming it), on create
    and update, and nothing is stored."""
    remote = surface == "python-remote"
    step = {"name": "call", "action": "http_request"}
    bad_steps = [({**step, "url": url}, "url") for url in BAD_URLS] + [
        ({**step, "integration": "int_x", "path": path}, "path")
        for path in ("/a\x00b", "/\u2028", "/a b")
    ]
    with served.rest() as rest, served.python(WorkflowManager, remote) as workflows:
        kept = workflows.create_workflow({"name": "kept", "type": "custom", "configuration": STEPS})
        for bad, name in bad_steps:
            field = f"configuration.steps[0].{name}"
            # No text may hold U+0000, whatever the type: refused as a bad request, naming
            # the exact field; the type refuses the rest.
            code = "INVALID_REQUEST" if "\x00" in bad[name] else "INVALID_WORKFLOW_CONFIG"
            body = {"name": "bad", "type": "custom", "configuration": {"steps": [bad]}}
            if surface == "rest":
                _refused_over_rest(rest.post("/workflows", json=body), code, field)
                update = {"configuration": {"steps": [bad]}}
                _refused_over_rest(rest.put(f"/workflows/{kept.id}", json=update), code, field)
            else:
                _refused_in_python(lambda b=body: workflows.create_workflow(b), code, field)
        page = workflows.list_workflows(page_size=100)
        assert [w.id for w in page.items] == [kept.id]
        assert workflows.get_workflow(kept.id).configuration == STEPS


# -- delivery ----------------------------------------------------------------------------------

UNSENDABLE = ["https://xn--/hook", "https://example.com/\x01", "http://0x7f000001:9/hook"]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]


@pytest.mark.anyio
async def test_unsendable_webhook_url_fails_each_attempt_in_one_line(
    make_engine: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscription stored before the rules (registration bypassed) gets every attempt
    recorded as failed with a one-line reason, and no traceback in the log."""

    engine = make_engine(allow_private_urls=False)
    hooks = []
    for url in UNSENDABLE:  # stored as an older version would have: the URL written as is
        hook = await engine.webhooks.create(
            {"url": "https://example.com/hook", "events": ["workflow.created"]}
        )
        record = engine.store.get_webhook(hook.id)
        assert record is not None
        assert engine.store.update_webhook(attrs.evolve(record, url=url), utcnow())
        hooks.append(hook)
    with caplog.at_level(logging.DEBUG, logger="abi_engine"):
        async with engine:
            await make_workflow(engine, active=False)
            found = [await until_deliveries(engine, h.id, all_finished) for h in hooks]
    for (delivery,) in found:
        assert delivery.status is DeliveryStatus.FAILED
        assert len(delivery.attempts) == 4  # the first try and the 3 retries of fast()
        for attempt in delivery.attempts:
            assert attempt.error is not None
            assert attempt.error.startswith("URL refused: ")
            assert "\n" not in attempt.error
            assert "127.0.0.1" not in attempt.error
    assert _tracebacks(caplog) == []


@pytest.mark.anyio
async def test_an_unexpected_failure_is_one_line_per_attempt(
    make_engine: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever else an attempt raises (a bug, a library's surprise) is recorded as a failed
    attempt with a one-line reason and logged in one line; the traceback only at DEBUG."""
    import abi_engine.runtime.delivery as delivery_module

    async def broken(self: Any, job: Any) -> tuple[int, str]:
        raise RuntimeError("surprise\nspanning lines")

    monkeypatch.setattr(delivery_module.DeliveryWorker, "_post", broken)
    engine = make_engine(allow_private_urls=False)
    hook = await engine.webhooks.create(
        {"url": "https://example.com/hook", "events": ["workflow.created"]}
    )
    with caplog.at_level(logging.INFO, logger="abi_engine"):
        async with engine:
            await make_workflow(engine, active=False)
            (delivery,) = await until_deliveries(engine, hook.id, all_finished)
    assert delivery.status is DeliveryStatus.FAILED
    assert len(delivery.attempts) == 4
    for attempt in delivery.attempts:
        assert attempt.error is not None
        assert "surprise" in attempt.error
        assert "\n" not in attempt.error
    warned = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(warned) == 4
    assert all("\n" not in r.getMessage() for r in warned)
    assert _tracebacks(caplog) == []


@pytest.mark.anyio
async def test_unsendable_callback_url_fails_each_attempt_in_one_line(
    make_engine: Callable[..., Engine],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An execution whose callback_url was stored before the rules gets its callback attempts
    recorded as failed with a one-line reason, and no traceback in the log."""
    import abi_engine.execution_requests

    engine = make_engine(allow_private_urls=False)
    with caplog.at_level(logging.DEBUG, logger="abi_engine"):
        async with engine:
            wf_id = await make_workflow(engine)
            monkeypatch.setattr(abi_engine.execution_requests, "check_url", lambda url, **_: url)
            executions = [
                await engine.executions.execute(wf_id, {}, wait=False, callback_url=url)
                for url in UNSENDABLE
            ]
            monkeypatch.undo()
            for execution in executions:
                (delivery,) = await _finished_callbacks(engine, execution.execution_id)
                assert delivery.status is DeliveryStatus.FAILED
                assert [a.error.startswith("URL refused: ") for a in delivery.attempts] == [
                    True
                ] * 4
                assert all("\n" not in (a.error or "") for a in delivery.attempts)
    assert _tracebacks(caplog) == []


async def _finished_callbacks(engine: Engine, execution_id: str) -> list[Any]:
    with anyio.fail_after(60):
        while True:
            found = await engine.webhooks.callback_deliveries(execution_id)
            if all_finished(found):
                return found
            await anyio.sleep(0.02)
