"""What the runtime counts as it runs, in plain numbers: read when metrics are scraped.

The hot path only adds to ints and floats it already holds (a dict lookup, a
bisection into a dozen bucket bounds); nothing is formatted, locked or
allocated per event. :mod:`abi_engine.runtime.prometheus` turns a
:class:`RuntimeMetrics` into Prometheus metric families at scrape time.

Labels are bounded: workflow types and step names come from the installed
types and the workflows' configurations, statuses and outcomes from fixed
sets; an id (execution, workflow, schedule, delivery) is never a label.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable, Sequence
from typing import TypeVar

__all__ = [
    "BATCH_BUCKETS",
    "COMMIT_BUCKETS",
    "FIRING_OUTCOMES",
    "LATENESS_BUCKETS",
    "STEP_BUCKETS",
    "Histogram",
    "RuntimeMetrics",
]

#: Upper bounds (seconds) of the buckets of step durations.
STEP_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Upper bounds (seconds) of schedule lateness and webhook delivery lag.
LATENESS_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
)
#: Upper bounds (seconds) of one group commit.
COMMIT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
#: Upper bounds of the number of write operations in one group commit.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

K = TypeVar("K", bound=Hashable)


class Histogram:
    """Counts per bucket (non-cumulative; the last one is ``+Inf``), their sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound it does not pass."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus exposes them, ``+Inf`` last."""
        pairs: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            pairs.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return pairs


class RuntimeMetrics:
    """The counters of one engine (one process): executions, steps, schedules,
    deliveries, leases and the group commit.

    Each part of the runtime adds to it where it already knows what happened;
    an engine built with ``metrics=False`` holds none and the parts skip it.
    """

    def __init__(self) -> None:
        #: Executions that started running, by workflow type.
        self.started: dict[str, int] = {}
        #: Executions that ended, by (workflow type, final status).
        self.finished: dict[tuple[str, str], int] = {}
        #: Step durations, by (workflow type, step name).
        self.steps: dict[tuple[str, str], Histogram] = {}
        #: Schedule due times by outcome: started, skipped, missed, failed, queued.
        self.firings: dict[str, int] = {}
        #: How late schedule firings started (seconds after their due time).
        self.schedule_lateness = Histogram(LATENESS_BUCKETS)
        #: Webhook and callback delivery attempts by outcome: succeeded, retrying, failed.
        self.deliveries: dict[str, int] = {}
        #: Seconds from an event to the end of a delivery attempt of it.
        self.delivery_lag = Histogram(LATENESS_BUCKETS)
        #: Executions this process took over from a process whose lease expired or ended.
        self.lease_takeovers = 0
        #: Seconds each group commit took, and how many write operations each carried.
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.commit_batch = Histogram(BATCH_BUCKETS)

    def execution_started(self, workflow_type: str) -> None:
        _add(self.started, workflow_type)

    def execution_finished(self, workflow_type: str, status: str) -> None:
        _add(self.finished, (workflow_type, status))

    def step_ended(self, workflow_type: str, step: str, seconds: float) -> None:
        key = (workflow_type, step)
        histogram = self.steps.get(key)
        if histogram is None:
            histogram = self.steps[key] = Histogram(STEP_BUCKETS)
        histogram.observe(seconds)

    def firing(self, outcome: str, count: int = 1) -> None:
        _add(self.firings, outcome, count)

    def delivery(self, outcome: str, lag_seconds: float) -> None:
        _add(self.deliveries, outcome)
        self.delivery_lag.observe(max(0.0, lag_seconds))

    def committed(self, seconds: float, ops: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(ops)


def _add(counts: dict[K, int], key: K, by: int = 1) -> None:
    """Count ``by`` more under ``key``."""
    counts[key] = counts.get(key, 0) + by


#: The firing outcome of each schedule history outcome (``None``: not a firing).
FIRING_OUTCOMES: dict[str, str] = {
    "fired": "started",
    "failed": "failed",
    "skipped_misfire": "missed",
    "skipped_overlap": "skipped",
    "skipped_inactive": "skipped",
    "skipped_disabled": "skipped",
    "workflow_deleted": "skipped",
    "queued": "queued",
}
