"""The bundled ``custom`` type: declarative delay/transform/http_request steps (against a real
HTTP server on 127.0.0.1) and Python handlers registered through ``abi_step_handlers``."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from runtime_plugins import handlers
from runtime_plugins.helpers import EngineFactory, engines, new_workflow, wait_status

from abi_engine import Engine, ExecutionStatus, StepStatus
from abi_engine.errors import InvalidWorkflowConfig, WorkflowExecutionError

pytestmark = pytest.mark.anyio


# -- a real HTTP server ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.path, dict(self.headers), None))
        if self.path in ("/json", "/api/json"):
            self._answer(200, {"hello": "world"})
        elif self.path == "/redirect":
            self._answer(302, {"moved": True}, {"Location": "/json"})
        elif self.path.startswith("/flaky"):
            self.server.flaky += 1
            if self.server.flaky <= 2:
                self._answer(500, {"error": "try again"})
            else:
                self._answer(200, {"ok": self.server.flaky})
        elif self.path == "/fail":
            self._answer(500, {"error": "broken"})
        elif self.path == "/huge":  # 12 MiB, no Content-Length: read until the close
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(12):
                self.wfile.write(b"x" * (1 << 20))
        elif self.path == "/gzip":
            data = gzip.compress(json.dumps({"hello": "compressed"}).encode())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"null")
        self.server.seen.append(("POST", self.path, dict(self.headers), body))
        self._answer(201, {"received": body})


class Server(ThreadingHTTPServer):
    """A JSON HTTP server recording every request (method, path, headers, body)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        self.flaky = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    """A real HTTP server on 127.0.0.1 (in a thread), stopped after the test."""
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _fresh_handlers() -> None:
    handlers.CALLS.clear()


@pytest.fixture
def make(tmp_path: Path) -> Iterator[EngineFactory]:
    with engines(tmp_path) as factory:
        yield factory


@pytest.fixture
async def eng(make: EngineFactory) -> AsyncIterator[Engine]:
    """A running engine (custom type and test handlers) allowing private URLs."""
    engine = make(plugins=(handlers,), allow_private_urls=True)
    async with engine:
        yield engine


def steps(*definitions: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(definitions)}


async def custom(engine: Engine, configuration: dict[str, Any], **fields: Any) -> str:
    return await new_workflow(engine, "custom", configuration=configuration, **fields)


USES_API = {"integrations": [{"id": "int_api", "required": True}]}


async def _failure(engine: Engine, wf: str, params: dict[str, Any] | None = None) -> Any:
    with pytest.raises(WorkflowExecutionError) as caught:
        await engine.executions.execute(wf, params or {})
    return await engine.executions.get(caught.value.details["execution_id"])


# -- delay and transform ---------------------------------------------------------------------------


async def test_delay_and_transform(eng: Engine) -> None:
    """delay then transforms over parameters and earlier results; the last result is the result."""
    wf = await custom(
        eng,
        steps(
            {"name": "wait", "action": "delay", "seconds": 0.05},
            {
                "name": "total",
                "action": "transform",
                "expressions": {
                    "sum": "parameters['a'] + parameters['b']",
                    "names": "[upper(n) for n in parameters['names']]",
                },
            },
            {
                "name": "report",
                "action": "transform",
                "expressions": {
                    "doubled": "results['total']['sum'] * 2",
                    "slept": "results['wait']['slept_seconds']",
                    "big": "results['total']['sum'] > 10",
                    "count": "len(results['total']['names'])",
                },
            },
        ),
    )
    started = time.monotonic()
    execution = await eng.executions.execute(wf, {"a": 2, "b": 3, "names": ["ada", "bob"]})
    assert time.monotonic() - started >= 0.05
    assert execution.result == {"doubled": 10, "slept": 0.05, "big": False, "count": 2}
    assert execution.steps is not None
    assert [s.name for s in execution.steps] == ["wait", "total", "report"]
    assert eng.store.get_steps(execution.execution_id)[1].result == {
        "sum": 5,
        "names": ["ADA", "BOB"],
    }


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch {marker}')",
        "parameters.__class__",
        "().__class__.__bases__[0].__subclasses__()",
        "'{{0.__class__}}'.format(parameters)",
        "open('{marker}', 'w')",
        "9 ** 9 ** 9",
        "'x' * 10 ** 9",
        "lambda: 1",
    ],
)
async def test_unsafe_expressions_fail_the_step(
    eng: Engine, tmp_path: Path, expression: str
) -> None:
    """A transform expression reaching for imports, dunders, files or huge values fails its
    step (TransformError) and nothing runs."""
    marker = tmp_path / "pwned"
    wf = await custom(
        eng,
        steps(
            {
                "name": "evil",
                "action": "transform",
                "expressions": {"x": expression.format(marker=marker)},
            }
        ),
    )
    started = time.monotonic()
    execution = await _failure(eng, wf)
    assert time.monotonic() - started < 5
    assert execution.error.type == "TransformError"
    assert execution.error.step == "evil"
    assert execution.error.message.startswith("x: ")
    assert not marker.exists()


async def test_transform_of_missing_keys_fails(eng: Engine) -> None:
    """An expression over a missing parameter fails its step with the key named."""
    wf = await custom(
        eng, steps({"name": "t", "action": "transform", "expressions": {"v": "parameters['nope']"}})
    )
    execution = await _failure(eng, wf)
    assert "v: " in execution.error.message
    assert "nope" in execution.error.message


async def test_costly_transform_fails_its_step_at_once(eng: Engine) -> None:
    """A transform that would build a billion elements fails its step, naming why, in no time."""
    costly = "[[1]*99999 for a in 'x'*9999]"
    wf = await custom(
        eng, steps({"name": "t", "action": "transform", "expressions": {"v": costly}})
    )
    started = time.perf_counter()
    execution = await _failure(eng, wf)
    assert time.perf_counter() - started < 5
    assert "v: ExpressionTooCostly" in execution.error.message


@pytest.mark.parametrize(
    ("configuration", "field"),
    [
        ({}, "configuration"),
        ({"handler": "greet", "steps": []}, "configuration"),
        ({"steps": []}, "configuration.steps"),
        ({"steps": [{"name": "x", "action": "shell"}]}, "configuration.steps[0].action"),
        ({"steps": [{"name": "x", "action": "delay"}]}, "configuration.steps[0].seconds"),
        (
            {"steps": [{"name": "x", "action": "delay", "seconds": -1}]},
            "configuration.steps[0].seconds",
        ),
        (
            {
                "steps": [
                    {"name": "x", "action": "delay", "seconds": 0},
                    {"name": "x", "action": "delay", "seconds": 0},
                ]
            },
            "configuration.steps[1].name",
        ),
        (
            {"steps": [{"name": "t", "action": "transform", "expressions": {"a": "1 +"}}]},
            "configuration.steps[0].expressions.a",
        ),
        (
            {"steps": [{"name": "h", "action": "http_request", "url": "ftp://example.com"}]},
            "configuration.steps[0].url",
        ),
        (
            {
                "steps": [
                    {
                        "name": "r",
                        "action": "delay",
                        "seconds": 0,
                        "retry": {"attempts": 0},
                    }
                ]
            },
            "configuration.steps[0].retry.attempts",
        ),
        ({"handler": "nobody_registered_this"}, "configuration.handler"),
        ({"handler": "greet", "extra": 1}, "configuration.extra"),
    ],
)
async def test_bad_configurations_are_refused(
    eng: Engine, configuration: dict[str, Any], field: str
) -> None:
    """Invalid custom configurations are refused at creation with INVALID_WORKFLOW_CONFIG."""
    with pytest.raises(InvalidWorkflowConfig) as caught:
        await custom(eng, configuration)
    assert caught.value.details["field"] == field
    assert caught.value.http_status == 400


# -- http_request ---------------------------------------------------------------------------------


async def test_http_get_and_post(eng: Engine, server: Server) -> None:
    """http_request GETs and POSTs JSON to a real server; results carry status_code and body."""
    wf = await custom(
        eng,
        steps(
            {
                "name": "fetch",
                "action": "http_request",
                "method": "GET",
                "url": f"{server.url}/json",
            },
            {
                "name": "send",
                "action": "http_request",
                "method": "POST",
                "url": f"{server.url}/echo",
                "headers": {"X-Trace": "t-1"},
                "json": {"order": 42, "lines": [1, 2]},
            },
        ),
    )
    execution = await eng.executions.execute(wf)
    assert execution.status is ExecutionStatus.COMPLETED
    fetched = eng.store.get_steps(execution.execution_id)[0].result
    assert fetched["status_code"] == 200
    assert fetched["body"] == {"hello": "world"}
    assert fetched["headers"]["content-type"] == "application/json"
    assert execution.result["status_code"] == 201
    assert execution.result["body"] == {"received": {"order": 42, "lines": [1, 2]}}
    assert [(m, p, body) for m, p, _, body in server.seen] == [
        ("GET", "/json", None),
        ("POST", "/echo", {"order": 42, "lines": [1, 2]}),
    ]
    assert server.seen[1][2]["X-Trace"] == "t-1"


async def test_http_error_fails_the_step(eng: Engine, server: Server) -> None:
    """A 500 answer fails the step and the execution with the status in the message."""
    wf = await custom(
        eng, steps({"name": "call", "action": "http_request", "url": f"{server.url}/fail"})
    )
    execution = await _failure(eng, wf)
    assert execution.error.step == "call"
    assert execution.error.type == "HTTPStatusError"
    assert "500" in execution.error.message
    assert len(server.seen) == 1


async def test_http_answer_over_the_bound_fails_the_step(eng: Engine, server: Server) -> None:
    """An answer larger than the outbound bound (10 MiB) fails the step with a clear error,
    read no further than the bound: never a memory or database exhaustion."""
    wf = await custom(
        eng, steps({"name": "call", "action": "http_request", "url": f"{server.url}/huge"})
    )
    execution = await _failure(eng, wf)
    assert execution.error.step == "call"
    assert execution.error.type == "ResponseTooLarge"
    assert "larger than 10485760 bytes" in execution.error.message


async def test_http_compressed_answer_is_decoded(eng: Engine, server: Server) -> None:
    """A gzip answer (the engine asks for gzip, deflate or none) is decoded as usual."""
    wf = await custom(
        eng, steps({"name": "call", "action": "http_request", "url": f"{server.url}/gzip"})
    )
    execution = await eng.executions.execute(wf, {})
    assert execution.result["body"] == {"hello": "compressed"}
    assert server.seen[-1][2]["Accept-Encoding"] == "gzip, deflate"


async def test_http_retry_policy(eng: Engine, server: Server) -> None:
    """A step's retry policy retries a failing request until it succeeds."""
    wf = await custom(
        eng,
        steps(
            {
                "name": "call",
                "action": "http_request",
                "url": f"{server.url}/flaky",
                "retry": {"attempts": 3, "backoff_seconds": 0.01},
            }
        ),
    )
    execution = await eng.executions.execute(wf)
    assert execution.result["body"] == {"ok": 3}
    assert execution.steps is not None
    assert execution.steps[0].attempts == 3
    assert len(server.seen) == 3


async def test_http_redirects_are_not_followed(eng: Engine, server: Server) -> None:
    """A redirect answer is returned as it is; its Location is never requested."""
    wf = await custom(
        eng, steps({"name": "call", "action": "http_request", "url": f"{server.url}/redirect"})
    )
    execution = await eng.executions.execute(wf)
    assert execution.result["status_code"] == 302
    assert [p for _, p, _, _ in server.seen] == ["/redirect"]


async def test_http_through_an_integration(eng: Engine, server: Server) -> None:
    """An http_request through an http integration uses its base_url and auth header."""
    await eng.integrations.put(
        "int_api",
        "http",
        {"base_url": server.url, "auth": {"type": "bearer", "token": "tok-very-secret"}},
    )
    wf = await custom(
        eng,
        steps(
            {"name": "call", "action": "http_request", "integration": "int_api", "path": "/json"}
        ),
        **USES_API,
    )
    execution = await eng.executions.execute(wf)
    assert execution.result["body"] == {"hello": "world"}
    assert server.seen[0][2]["Authorization"] == "Bearer tok-very-secret"
    assert "tok-very-secret" not in repr(eng.store.get_steps(execution.execution_id))


async def test_integration_path_keeps_the_base_url(eng: Engine, server: Server) -> None:
    """An integration step's path is appended to the integration's base_url, prefix included."""
    await eng.integrations.put("int_api", "http", {"base_url": f"{server.url}/api"})
    wf = await custom(
        eng,
        steps(
            {"name": "a", "action": "http_request", "integration": "int_api", "path": "/json"},
            {"name": "b", "action": "http_request", "integration": "int_api", "path": "json"},
        ),
        **USES_API,
    )
    execution = await eng.executions.execute(wf)
    assert execution.result["body"] == {"hello": "world"}
    assert [p for _, p, _, _ in server.seen] == ["/api/json", "/api/json"]


@pytest.mark.parametrize("form", ["{url}/json", "//{host}/json"])
async def test_integration_credentials_stay_on_its_host(
    eng: Engine, server: Server, form: str
) -> None:
    """A path naming another host never sends the integration's credentials there."""
    other = Server()
    thread = threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        await eng.integrations.put(
            "int_api",
            "http",
            {"base_url": server.url, "auth": {"type": "bearer", "token": "tok-very-secret"}},
        )
        path = form.format(url=other.url, host=other.url.removeprefix("http://"))
        wf = await custom(
            eng,
            steps({"name": "x", "action": "http_request", "integration": "int_api", "path": path}),
            **USES_API,
        )
        with contextlib.suppress(WorkflowExecutionError):
            await eng.executions.execute(wf)
        assert other.seen == []
        assert len(server.seen) == 1  # the request stayed on the integration's host
    finally:
        other.shutdown()
        other.server_close()
        thread.join(5)


async def test_private_url_refused_without_permission(make: EngineFactory, server: Server) -> None:
    """Without allow_private_urls an http_request to 127.0.0.1 is refused when the workflow is
    created, naming configuration.steps[0].url; no request is sent."""
    engine = make()
    config = steps({"name": "call", "action": "http_request", "url": f"{server.url}/json"})
    with pytest.raises(InvalidWorkflowConfig) as caught:
        await custom(engine, config)
    assert caught.value.code == "INVALID_WORKFLOW_CONFIG"
    assert caught.value.details["field"] == "configuration.steps[0].url"
    assert server.seen == []


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0177.1", "127.0.0.1."])
async def test_disguised_loopback_refused_at_creation(
    make: EngineFactory, server: Server, host: str
) -> None:
    """Loopback spelled in a form the resolver reads (short, decimal, hex, octal, trailing dot) is
    refused when the workflow is created, naming the step's url; no request is sent (#11)."""
    engine = make()
    port = server.server_address[1]
    config = steps({"name": "call", "action": "http_request", "url": f"http://{host}:{port}/json"})
    with pytest.raises(InvalidWorkflowConfig) as caught:
        await custom(engine, config)
    assert caught.value.details["field"] == "configuration.steps[0].url"
    assert server.seen == []


async def test_private_integration_refused_at_run(make: EngineFactory, server: Server) -> None:
    """Without allow_private_urls, a connection on 127.0.0.1 stored anyway (by an engine that
    allowed it, on the same database) is refused when a step uses it: no request is sent."""
    allowing = make(allow_private_urls=True)
    await allowing.integrations.put("int_local", "http", {"base_url": server.url})
    allowing.close()
    engine = make()
    async with engine:
        wf = await custom(
            engine,
            steps(
                {"name": "call", "action": "http_request", "integration": "int_local", "path": "/"}
            ),
            integrations=[{"id": "int_local", "required": True}],
        )
        execution = await _failure(engine, wf)
    assert execution.error.step == "call"
    assert execution.error.type == "URLRefused"
    assert server.seen == []


# -- handlers ---------------------------------------------------------------------------------


async def test_function_handler(eng: Engine) -> None:
    """A function registered through abi_step_handlers runs as the workflow's one step."""
    wf = await custom(eng, {"handler": "greet"})
    execution = await eng.executions.execute(wf, {"who": "Ada"})
    assert execution.result == {"text": "Hello, Ada!"}
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [("greet", StepStatus.COMPLETED)]
    assert [(execution.execution_id, "greet")] == handlers.CALLS


async def test_class_handler(eng: Engine) -> None:
    """A WorkflowType subclass registered as a handler runs its steps in order."""
    wf = await custom(eng, {"handler": "pipeline", "description": "two steps"})
    execution = await eng.executions.execute(wf, {"factor": 10})
    assert execution.result == {"total": 60}
    assert execution.steps is not None
    assert [s.name for s in execution.steps] == ["fetch", "total"]
    assert [c for _, c in handlers.CALLS] == ["fetch", "total"]


async def test_handler_must_be_registered(make: EngineFactory) -> None:
    """Without the plugin that registers it, a handler name is an INVALID_WORKFLOW_CONFIG."""
    engine = make()
    with pytest.raises(InvalidWorkflowConfig) as caught:
        await custom(engine, {"handler": "greet"})
    assert caught.value.details["field"] == "configuration.handler"


async def test_long_delay_is_durable(make: EngineFactory) -> None:
    """A delay over a second parks the execution as waiting, durably: it finishes after the
    engine restarts, no earlier than the delay, with the configuration it started with."""
    first = make(plugins=(handlers,))
    async with first:
        wf = await custom(
            first,
            steps(
                {"name": "wait", "action": "delay", "seconds": 1.05},
                {"name": "sum", "action": "transform", "expressions": {"s": "parameters['a'] * 2"}},
            ),
        )
        execution = await first.executions.execute(wf, {"a": 21}, wait=False)
        started = time.monotonic()
        parked = await wait_status(first, execution.execution_id, ExecutionStatus.WAITING)
        assert parked.steps is not None
        assert parked.steps[0].status is StepStatus.RUNNING
        # A later change of the workflow does not change what the execution runs.
        await first.workflows.update(
            wf,
            {
                "configuration": steps(
                    {"name": "other", "action": "transform", "expressions": {"s": "0"}}
                )
            },
        )
    second = make(plugins=(handlers,))
    async with second:
        final = await wait_status(
            second, execution.execution_id, ExecutionStatus.COMPLETED, ExecutionStatus.FAILED
        )
    assert final.result == {"s": 42}
    assert time.monotonic() - started >= 0.95
    assert eng_steps(second, execution.execution_id) == ["completed", "completed"]
    # The delay step's timings cover the wait (and the restart), as its view showed them.
    waited = final.steps[0] if final.steps else None
    assert waited is not None
    assert waited.started_at == parked.steps[0].started_at == final.started_at
    assert waited.duration_ms is not None
    assert waited.duration_ms >= 1000
    assert final.duration_ms is not None
    assert final.duration_ms >= waited.duration_ms


def eng_steps(engine: Engine, execution_id: str) -> list[str]:
    return [s.status.value for s in engine.store.get_steps(execution_id)]


async def test_integration_not_listed_by_the_workflow_is_not_lent(
    eng: Engine, server: Server
) -> None:
    """A step naming a connection its workflow does not list fails; no request carries its secret."""
    await eng.integrations.put(
        "int_api",
        "http",
        {"base_url": server.url, "auth": {"type": "bearer", "token": "tok-very-secret"}},
    )
    wf = await custom(
        eng,
        steps({"name": "x", "action": "http_request", "integration": "int_api", "path": "/json"}),
    )
    with pytest.raises(WorkflowExecutionError) as caught:
        await eng.executions.execute(wf)
    assert "not one of this workflow" in caught.value.details["error_message"]
    assert server.seen == []
