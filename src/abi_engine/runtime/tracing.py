"""OpenTelemetry traces of executions (the ``otel`` extra): a span per run and per step.

An execution carries its trace context durably (``ExecutionRecord.trace_context``,
a W3C ``traceparent``): the one its creator sent (``traceparent`` on
``execute``/``execute_async``), or a new one when tracing is on and none was
sent. Every run of the execution (the first, and each resumption after a wait
or a restart, in whichever process) opens an ``abi.execution`` span whose
parent is that context, so all of them belong to one trace; each step run
opens an ``abi.step`` span inside it. Spans carry the ids, the workflow type
and the outcome as attributes.

Nothing here is imported unless an engine is given a tracer provider.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from abi_engine.storage.records import ExecutionRecord

__all__ = ["Tracing", "valid_traceparent"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def valid_traceparent(value: Any) -> str | None:
    """``value`` when it is a W3C ``traceparent`` of version 00 with non-zero ids, else ``None``."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or set(match.group(1)) == {"0"} or set(match.group(2)) == {"0"}:
        return None
    return match.group(0)


def new_traceparent() -> str:
    """A fresh sampled trace context (a new trace)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


class Tracing:
    """The spans of one engine's executions, made by ``provider``'s tracer."""

    def __init__(self, provider: TracerProvider) -> None:
        self.tracer = provider.get_tracer("abi_engine")
        self._propagator = TraceContextTextMapPropagator()

    def context_for(self, traceparent: str | None) -> str:
        """The trace context a new execution carries: ``traceparent`` when valid, else new."""
        return valid_traceparent(traceparent) or new_traceparent()

    @contextmanager
    def execution(self, record: ExecutionRecord) -> Iterator[Span]:
        """The span of one run of ``record``, child of its stored trace context."""
        parent = None
        if record.trace_context:
            parent = self._propagator.extract({"traceparent": record.trace_context})
        with self.tracer.start_as_current_span(
            "abi.execution",
            context=parent,
            kind=SpanKind.INTERNAL,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "abi.execution_id": record.id,
                "abi.workflow_id": record.workflow_id,
                "abi.workflow_type": record.workflow_type,
            },
        ) as span:
            try:
                yield span
            finally:
                span.set_attribute("abi.status", record.status.value)
                if record.status.value in ("failed", "timed_out"):
                    span.set_status(Status(StatusCode.ERROR, str((record.error or {}).get("code"))))

    @contextmanager
    def step(self, record: ExecutionRecord, name: str, index: int) -> Iterator[Span]:
        """The span of one step run (inside the current execution span)."""
        with self.tracer.start_as_current_span(
            "abi.step",
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "abi.execution_id": record.id,
                "abi.workflow_id": record.workflow_id,
                "abi.workflow_type": record.workflow_type,
                "abi.step": name,
                "abi.step_index": index,
            },
        ) as span:
            yield span

    def outgoing(self) -> dict[str, str]:
        """The ``traceparent`` header of the current span (empty when there is none)."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier
