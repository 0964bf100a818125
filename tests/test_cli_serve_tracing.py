"""``abi-engine serve --otlp-endpoint URL``: the traces of executions reach a real
OTLP/HTTP collector (a server on 127.0.0.1 decoding OTLP's protobuf), as an embedding
host's ``TracerProvider`` would send them; the spans batched when the server stops are
sent before it exits. A bad URL is one line and exit 2; without the flag nothing is
sent."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_cli import Server, auth, run_cli, start_server  # noqa: F401 - a fixture
from test_metrics_serve import CUSTOM, run_workflow, token

from abi_engine.cli.processes import _child_argv
from abi_engine.cli.tracing import otlp_endpoint

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Collector:
    """An OTLP/HTTP trace receiver: every span posted to /v1/traces, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.receive(self.path, self.headers["Content-Type"], body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        self.paths.append(path)
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "service": resource.get("service.name"),
                        }
                    )


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


@pytest.fixture
def collector() -> Iterator[Collector]:
    received = Collector()
    yield received
    received.server.shutdown()
    received.server.server_close()


@pytest.mark.slow
def test_serve_sends_the_traces_of_executions_to_the_collector(
    tmp_path: Path,
    collector: Collector,
    start_server: Callable[..., Server],  # noqa: F811 - the fixture imported above
) -> None:
    db = str(tmp_path / "traced.db")
    admin = token(db, tmp_path)
    server = start_server("serve", "--db", db, "--port", "0", "--otlp-endpoint", collector.url)
    api = server.wait_serving()
    with httpx.Client(base_url=api, timeout=30) as client:
        wf = run_workflow(client, auth(admin), CUSTOM)
        plain = client.post(f"/workflows/{wf}/execute", headers=auth(admin), json={})
        assert plain.status_code == 200, plain.text
        joined = client.post(
            f"/workflows/{wf}/execute", headers={**auth(admin), "traceparent": PARENT}, json={}
        )
        assert joined.status_code == 200, joined.text
    ids = {plain.json()["data"]["execution_id"], joined.json()["data"]["execution_id"]}
    assert server.stop() == 0, server.output()  # the batch still held is sent on the way out
    assert set(collector.paths) == {"/v1/traces"}
    runs = [s for s in collector.spans if s["name"] == "abi.execution"]
    steps = [s for s in collector.spans if s["name"] == "abi.step"]
    assert {s["attributes"]["abi.execution_id"] for s in runs} == ids
    assert {s["attributes"]["abi.status"] for s in runs} == {"completed"}
    assert [s["attributes"]["abi.step"] for s in steps] == ["add", "add"]
    assert {s["service"] for s in collector.spans} == {"abi-engine"}
    joined_id = joined.json()["data"]["execution_id"]
    [joined_run] = [s for s in runs if s["attributes"]["abi.execution_id"] == joined_id]
    assert joined_run["trace_id"] == TRACE_ID
    [plain_run] = [s for s in runs if s is not joined_run]
    assert plain_run["trace_id"] != TRACE_ID


@pytest.mark.parametrize(
    "url", ["127.0.0.1:4318", "ftp://collector", "http://", "http://c:4318/?x=1"]
)
def test_a_bad_endpoint_is_one_line(tmp_path: Path, url: str) -> None:
    result = run_cli("serve", "--db", str(tmp_path / "x.db"), "--otlp-endpoint", url, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "--otlp-endpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.db").exists()


def test_each_process_of_serve_processes_sends_its_own() -> None:
    """``serve --processes N`` children get the endpoint (each its own provider)."""

    class Args:
        host, durability, log_level, log_format = "127.0.0.1", "normal", "info", "text"
        forwarded_allow_ips, rate_limit, workers, lease_seconds = "", None, None, None
        allow_private_urls, dashboard = False, True
        otlp_endpoint = otlp_endpoint("http://127.0.0.1:4318/")

    argv = _child_argv(Args(), (3, 4, 5))  # type: ignore[arg-type]
    assert argv[argv.index("--otlp-endpoint") + 1] == "http://127.0.0.1:4318"
