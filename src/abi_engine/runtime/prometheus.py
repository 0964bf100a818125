"""The engine's metrics in the Prometheus text format (needs ``prometheus-client``).

One :class:`MetricsExporter` per engine, with a registry of its own (never
the process-wide default one: several engines may share a process). Its
collector reads the runtime's plain counters
(:class:`~abi_engine.runtime.metrics.RuntimeMetrics`) at scrape time, and
the queue gauges from the store, which every process shares: the queue is
the database's, the counters are this process's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from abi_engine.ids import utcnow
from abi_engine.runtime.metrics import Histogram, RuntimeMetrics
from abi_engine.storage.aio import AsyncStore

__all__ = ["CONTENT_TYPE", "MetricsExporter"]

#: The media type of the exposition (text format 0.0.4).
CONTENT_TYPE: str = CONTENT_TYPE_LATEST


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], histogram.cumulative(), histogram.sum)
    return family


class _Collector:
    """Builds the metric families from the counters and the last queue reading."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics
        self.queued: tuple[int, datetime | None] = (0, None)

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        started = CounterMetricFamily(
            "abi_executions_started", "Executions that started running", labels=["type"]
        )
        for wtype, count in sorted(m.started.items()):
            started.add_metric([wtype], count)
        yield started
        finished = CounterMetricFamily(
            "abi_executions_finished",
            "Executions that ended, by workflow type and final status",
            labels=["type", "status"],
        )
        for (wtype, status), count in sorted(m.finished.items()):
            finished.add_metric([wtype, status], count)
        yield finished
        steps = HistogramMetricFamily(
            "abi_step_duration_seconds",
            "How long steps ran (completed or failed), by workflow type and step",
            labels=["type", "step"],
        )
        for (wtype, step), histogram in sorted(m.steps.items()):
            steps.add_metric([wtype, step], histogram.cumulative(), histogram.sum)
        yield steps
        yield from self._queue()
        yield from self._schedules_and_deliveries()
        yield from self._store()

    def _queue(self) -> Iterator[Metric]:
        depth, oldest = self.queued
        yield GaugeMetricFamily(
            "abi_execution_queue_depth", "Executions queued in the database", value=depth
        )
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        yield GaugeMetricFamily(
            "abi_execution_oldest_queued_seconds",
            "Age of the oldest queued execution (0 when none is queued)",
            value=age,
        )

    def _schedules_and_deliveries(self) -> Iterator[Metric]:
        m = self.metrics
        yield _histogram(
            "abi_schedule_lateness_seconds",
            "How long after its due time a schedule's execution was started",
            m.schedule_lateness,
        )
        firings = CounterMetricFamily(
            "abi_schedule_firings",
            "Schedule due times by outcome (started, skipped, missed, failed, queued)",
            labels=["outcome"],
        )
        for outcome, count in sorted(m.firings.items()):
            firings.add_metric([outcome], count)
        yield firings
        deliveries = CounterMetricFamily(
            "abi_webhook_deliveries",
            "Webhook and callback delivery attempts by outcome (succeeded, retrying, failed)",
            labels=["outcome"],
        )
        for outcome, count in sorted(m.deliveries.items()):
            deliveries.add_metric([outcome], count)
        yield deliveries
        yield _histogram(
            "abi_webhook_delivery_lag_seconds",
            "Seconds from an event to the end of a delivery attempt of it",
            m.delivery_lag,
        )

    def _store(self) -> Iterator[Metric]:
        m = self.metrics
        yield CounterMetricFamily(
            "abi_lease_takeovers",
            "Running executions this process took over after their owner's lease ended",
            value=m.lease_takeovers,
        )
        yield _histogram(
            "abi_store_commit_seconds", "Seconds each group commit took", m.commit_seconds
        )
        yield _histogram(
            "abi_store_commit_batch_size",
            "Write operations per group commit",
            m.commit_batch,
        )


class MetricsExporter:
    """The Prometheus exposition of one engine's metrics.

    :param metrics: the runtime's counters.
    :param store: where the queue gauges are read at each scrape.
    """

    def __init__(self, metrics: RuntimeMetrics, store: AsyncStore) -> None:
        self._store = store
        self._collector = _Collector(metrics)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)

    async def render(self) -> bytes:
        """The metrics, in the Prometheus text format, with the queue read now."""
        self._collector.queued = await self._store.queued_stats()
        return generate_latest(self.registry)
