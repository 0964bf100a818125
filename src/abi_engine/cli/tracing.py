"""``serve --otlp-endpoint URL``: traces of executions sent to an OpenTelemetry collector.

An operator running the server (rather than embedding the engine, where the host
builds its own ``TracerProvider``) names a collector's OTLP/HTTP address; the spans
of executions and steps (docs/operations.md#traces) are batched and posted to
``URL/v1/traces`` in OTLP's protobuf encoding, and flushed when the server stops.
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` describe the process as for any
OpenTelemetry SDK (the service name is ``abi-engine`` without them).
"""

from __future__ import annotations

import argparse
import os
from typing import Any
from urllib.parse import urlsplit

from abi_engine.cli._common import CliError

__all__ = ["SERVICE_NAME", "otlp_endpoint", "tracer_provider"]

#: The ``service.name`` of the spans unless ``OTEL_SERVICE_NAME`` says otherwise.
SERVICE_NAME = "abi-engine"


def otlp_endpoint(value: str) -> str:
    """``--otlp-endpoint``'s argument: an ``http(s)://host[:port][/path]`` URL."""
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an http:// or https:// URL of an OTLP/HTTP collector"
            " (e.g. http://127.0.0.1:4318)"
        )
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{value!r}: a collector URL takes no query or fragment")
    return value.rstrip("/")


def tracer_provider(endpoint: str) -> Any:
    """A ``TracerProvider`` batching spans to ``endpoint``/v1/traces (OTLP/HTTP)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise CliError(
            f"--otlp-endpoint needs OpenTelemetry's SDK and OTLP exporter ({exc});"
            " install them with: pip install 'abi-engine[otel]'"
        ) from None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{endpoint}/v1/traces")))
    return provider
