"""OpenTelemetry traces (#15, point 2): a span per execution run and per step, the caller's
``traceparent`` as their parent, the trace continued after a restart; on every engine
backend, with the SDK's in-memory exporter."""

from __future__ import annotations

import time

import pytest
import runtime_plugins
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from runtime_plugins.helpers import (
    DatabaseFactory,
    EngineFactory,
    new_workflow,
    wait_status,
)
from served_engines import served
from webhook_testing import Receiver, eventually, receiver_fixture  # noqa: F401 - a fixture
from webhook_testing import fast as fast_webhooks

from abi_engine import ExecutionStatus
from abi_engine.errors import WorkflowExecutionError
from abi_engine.runtime.tracing import valid_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def tracer() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def hex_ids(span: ReadableSpan) -> tuple[str, str | None]:
    """The span's trace id and its parent's span id, as hex."""
    parent = span.parent
    return f"{span.context.trace_id:032x}", None if parent is None else f"{parent.span_id:016x}"


@pytest.mark.anyio
async def test_spans_of_an_execution_and_its_steps(make: EngineFactory) -> None:
    """One execution span, child of the caller's traceparent, holding a span per step; ids,
    type and outcome are attributes; a failed step and execution say so."""
    provider, exporter = tracer()
    async with make(tracer_provider=provider) as engine:
        wf = await new_workflow(engine, "test_three")
        done = await engine.executions.execute(wf, {}, traceparent=TRACEPARENT)
        with pytest.raises(WorkflowExecutionError):
            await engine.executions.execute(wf, {"do": {"second": {"raise": "no"}}})
    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "abi.execution"]
    assert len(runs) == 2
    [ok] = [s for s in runs if s.attributes["abi.execution_id"] == done.execution_id]
    assert hex_ids(ok) == (TRACE_ID, PARENT_ID)
    assert ok.attributes["abi.workflow_id"] == wf
    assert ok.attributes["abi.workflow_type"] == "test_three"
    assert ok.attributes["abi.status"] == "completed"
    steps = [s for s in spans if s.name == "abi.step" and s.context.trace_id == ok.context.trace_id]
    assert [s.attributes["abi.step"] for s in steps] == ["first", "second", "third"]
    assert all(s.parent is not None and s.parent.span_id == ok.context.span_id for s in steps)
    assert {s.attributes["abi.outcome"] for s in steps} == {"completed"}
    [bad] = [s for s in runs if s is not ok]
    assert f"{bad.context.trace_id:032x}" != TRACE_ID  # no traceparent: a trace of its own
    assert bad.parent is not None  # under the context stored with it
    assert bad.attributes["abi.status"] == "failed"
    assert not bad.status.is_ok
    failed_steps = [
        s for s in spans if s.name == "abi.step" and s.context.trace_id == bad.context.trace_id
    ]
    assert [s.attributes["abi.outcome"] for s in failed_steps] == ["completed", "failed"]


@pytest.mark.anyio
async def test_trace_continues_after_a_restart(make: EngineFactory) -> None:
    """An execution waiting for a signal when its process stops resumes in the next one in
    the same trace, under the same parent: the context is kept with the execution."""
    provider_a, exporter_a = tracer()
    async with make("shared.db", tracer_provider=provider_a) as first:
        wf = await new_workflow(first, "test_three")
        started = await first.executions.execute(
            wf, {"do": {"second": {"signal": "go"}}}, wait=False, traceparent=TRACEPARENT
        )
        await wait_status(first, started.execution_id, ExecutionStatus.WAITING, timeout=30)
    provider_b, exporter_b = tracer()
    async with make("shared.db", tracer_provider=provider_b) as second:
        await second.executions.signal(started.execution_id, "go", {"ok": True})
        await wait_status(second, started.execution_id, ExecutionStatus.COMPLETED, timeout=30)
    before = exporter_a.get_finished_spans()
    after = exporter_b.get_finished_spans()
    [run_a] = [s for s in before if s.name == "abi.execution"]
    [run_b] = [s for s in after if s.name == "abi.execution"]
    assert hex_ids(run_a) == hex_ids(run_b) == (TRACE_ID, PARENT_ID)
    assert run_a.attributes["abi.status"] == "waiting"
    assert run_b.attributes["abi.status"] == "completed"
    assert [
        (s.attributes["abi.step"], s.attributes["abi.outcome"])
        for s in before
        if s.name == "abi.step"
    ] == [
        ("first", "completed"),
        ("second", "suspended"),
    ]
    assert [s.attributes["abi.step"] for s in after if s.name == "abi.step"] == ["second", "third"]
    assert {s.context.trace_id for s in after} == {int(TRACE_ID, 16)}


@pytest.mark.anyio
async def test_traceparent_sent_on_callback_webhook_and_http_step(
    make: EngineFactory, receiver: Receiver
) -> None:
    """The execution's trace context goes out as traceparent on its callback and its
    webhook deliveries; an http_request step sends its own span as the parent."""
    provider, exporter = tracer()
    async with make(
        tracer_provider=provider, allow_private_urls=True, webhook_settings=fast_webhooks()
    ) as engine:
        await engine.webhooks.create(
            {"url": receiver.url("/hook"), "events": ["execution.completed"]}
        )
        step = {
            "name": "call",
            "action": "http_request",
            "method": "POST",
            "url": receiver.url("/api"),
        }
        wf = await engine.workflows.create(
            {"name": "c", "type": "custom", "configuration": {"steps": [step]}}
        )
        await engine.workflows.activate(wf.id)
        started = await engine.executions.execute(
            wf.id,
            {},
            wait=False,
            callback_url=receiver.url("/callback"),
            traceparent=TRACEPARENT,
        )
        await wait_status(engine, started.execution_id, ExecutionStatus.COMPLETED, timeout=30)
        await eventually(lambda: receiver.received("/hook") and receiver.received("/callback"))
    [callback] = receiver.received("/callback")
    [hook] = receiver.received("/hook")
    [call] = receiver.received("/api")
    assert callback.headers["traceparent"] == TRACEPARENT
    assert hook.headers["traceparent"] == TRACEPARENT
    [step_span] = [s for s in exporter.get_finished_spans() if s.name == "abi.step"]
    sent = call.headers["traceparent"]
    assert sent == f"00-{TRACE_ID}-{step_span.context.span_id:016x}-01"


def test_traceparent_header_over_rest(databases: DatabaseFactory) -> None:
    """``traceparent`` on execute and execute_async over HTTP becomes the spans' parent; a
    malformed one is ignored (a trace of its own), never an error."""
    provider, exporter = tracer()
    with served(databases(), plugins=[runtime_plugins], tracer_provider=provider) as api:
        client = api.client()
        created = client.post("/api/v1/workflows", json={"name": "t", "type": "test_three"})
        wf = created.json()["data"]["id"]
        client.post(f"/api/v1/workflows/{wf}/activate").raise_for_status()
        sync = client.post(
            f"/api/v1/workflows/{wf}/execute", json={}, headers={"traceparent": TRACEPARENT}
        )
        assert sync.status_code == 200, sync.text
        other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        queued = client.post(
            f"/api/v1/workflows/{wf}/execute_async", json={}, headers={"traceparent": other}
        )
        assert queued.status_code == 202, queued.text
        bad = client.post(
            f"/api/v1/workflows/{wf}/execute", json={}, headers={"traceparent": "00-zz-yy-01"}
        )
        assert bad.status_code == 200, bad.text
        queued_id = queued.json()["data"]["execution_id"]
        deadline = time.monotonic() + 30
        while client.get(f"/api/v1/workflow_executions/{queued_id}").json()["data"][
            "status"
        ] not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the queued execution did not end"
            time.sleep(0.05)
        runs = {
            s.attributes["abi.execution_id"]: hex_ids(s)
            for s in exporter.get_finished_spans()
            if s.name == "abi.execution"
        }
    assert runs[sync.json()["data"]["execution_id"]] == (TRACE_ID, PARENT_ID)
    assert runs[queued_id] == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert runs[bad.json()["data"]["execution_id"]][0] not in (
        TRACE_ID,
        "0af7651916cd43dd8448eb211c80319c",
    )


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        (TRACEPARENT.upper(), True),
        ("00-" + "0" * 32 + f"-{PARENT_ID}-01", False),
        (f"00-{TRACE_ID}-" + "0" * 16 + "-01", False),
        ("01-" + TRACE_ID + f"-{PARENT_ID}-01", False),
        ("garbage", False),
        (None, False),
    ],
)
def test_valid_traceparent(value: object, valid: bool) -> None:
    assert (valid_traceparent(value) is not None) is valid
