"""Tuning of the runtime and of webhook delivery (exported from :mod:`abi_engine`)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["STANDARD_RETRY_SCHEDULE", "RetentionSettings", "RuntimeSettings", "WebhookSettings"]


@attrs.define(kw_only=True)
class RuntimeSettings:
    """Tuning of the runtime.

    ``workers``: the asynchronous pool; ``sync_workers``: how many synchronous
    executions run at once; ``queue_size``: the bound of the asynchronous
    queue (``QueueFull`` beyond); ``lease_seconds``: how long a node holds an
    execution without renewing (a heartbeat thread renews every third of it;
    after a crash, the node's work is taken over once it expires);
    ``poll_interval``: how often the node looks for work to recover and
    timers that are due; ``shutdown_grace``: how long stopping waits for
    running steps before interrupting them; ``default_sync_timeout``: the
    timeout of a synchronous execution that gives none.
    ``queued_in_memory``: how many accepted asynchronous executions keep their
    prepared run (record, parsed parameters, steps) in memory while queued;
    beyond, the queue holds only the id and claim and a worker reads the
    execution from the store when it takes it (memory stays flat with a deep
    queue: about 0.5 KB per queued execution instead of 1.3 KB).
    ``priority_aging_seconds``: how much waiting one level of an execution's
    ``priority`` is worth when the store hands out queued work: higher
    priority goes first, but work queued this long before work one level
    higher goes before it (nothing waits more than 9 times this for priority).
    """

    workers: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    sync_workers: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    queue_size: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))
    lease_seconds: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    poll_interval: float = 0.5
    shutdown_grace: float = 5.0
    default_sync_timeout: float = 30.0
    queued_in_memory: int = attrs.field(default=4096, validator=attrs.validators.ge(0))
    priority_aging_seconds: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))


#: Delays (seconds) before each retry, after an immediate first attempt: Svix's schedule,
#: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (Standard Webhooks' example goes on for days).
STANDARD_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0")


def _schedule(value: Iterable[float]) -> tuple[float, ...]:
    delays = tuple(float(v) for v in value)
    if any(not d >= 0 for d in delays):
        raise ValueError("retry delays must be >= 0")
    return delays


@attrs.define(kw_only=True)
class WebhookSettings:
    """Tuning of webhook and callback delivery (``Engine(webhook_settings=...)``).

    ``retry_schedule``: the delays in seconds before each retry; the first
    attempt is made at once, so a delivery gets ``1 + len(retry_schedule)``
    attempts before it is marked ``failed`` (default: Svix's schedule,
    :data:`STANDARD_RETRY_SCHEDULE`). ``jitter``: each delay
    is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
    ``timeout_seconds``: the most one attempt may take (connecting, sending,
    reading the answer). ``concurrency``: attempts in flight at once per
    engine. ``poll_interval``: how often the outbox and due retries are
    checked when nothing wakes the worker (events of this process wake it at
    once). ``lease_seconds``: how long a claimed delivery is held before
    another process may take it over (default ``timeout_seconds + 30``).
    ``response_body_limit``: characters of an answer's body kept per attempt.
    ``subscription_refresh_seconds``: how often subscriptions changed by
    another process are noticed. ``secret_rotation_grace_seconds``: how long
    the previous secret still signs (next to the new one) after a change.
    ``retention_days``: finished deliveries not changed for this long are
    pruned (``None`` keeps them). ``batch_size``: events fanned out per
    transaction. While at least ``busy_threshold`` executions run in this
    process and the process spends at least ``busy_cpu_share`` of its time on
    the CPU (so executions that mostly wait on I/O do not count), the worker
    yields the CPU to them: at most ``busy_concurrency`` attempts in flight,
    rounds at most every ``busy_interval`` seconds, and one outbox row fanned
    out at a time, only when no delivery waits; deliveries catch up once the
    burst is over (a ``busy_threshold`` above the runtime's workers turns this
    off; a ``busy_cpu_share`` of 0 counts executions alone).
    """

    retry_schedule: tuple[float, ...] = attrs.field(
        default=STANDARD_RETRY_SCHEDULE, converter=_schedule
    )
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    timeout_seconds: float = attrs.field(default=15.0, validator=_positive)
    concurrency: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    poll_interval: float = attrs.field(default=0.5, validator=_positive)
    lease_seconds: float | None = None
    response_body_limit: int = attrs.field(default=1024, validator=attrs.validators.ge(0))
    subscription_refresh_seconds: float = attrs.field(default=5.0, validator=_positive)
    secret_rotation_grace_seconds: float = attrs.field(
        default=86_400.0, validator=attrs.validators.ge(0.0)
    )
    retention_days: float | None = 30.0
    batch_size: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    busy_concurrency: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    busy_threshold: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    busy_interval: float = attrs.field(default=0.25, validator=_positive)
    busy_cpu_share: float = attrs.field(
        default=0.6, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )

    @property
    def lease(self) -> float:
        """How long a claimed delivery is held, in seconds."""
        return self.lease_seconds if self.lease_seconds is not None else self.timeout_seconds + 30

    @property
    def max_attempts(self) -> int:
        """Attempts a delivery gets before it is ``failed`` (per start or redelivery)."""
        return 1 + len(self.retry_schedule)

    def delay_after(self, tries: int) -> float | None:
        """Seconds before the next attempt after ``tries`` failed ones; ``None``: give up."""
        if tries > len(self.retry_schedule):
            return None
        delay = self.retry_schedule[tries - 1]
        if self.jitter:
            delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
        return delay


def _days(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{attribute.name} must be a whole number of days (1 or more) or None")


@attrs.define(kw_only=True)
class RetentionSettings:
    """How long the engine keeps finished executions and audit entries.

    ``execution_retention_days``: the ``retention_days`` a workflow created
    without one gets (``None``: keep all). ``audit_retention_days``: audit
    entries older than this are pruned (``None``: keep all).
    ``batch_size``: rows deleted per transaction. ``interval_seconds``: how
    often the background pruner runs. ``vacuum_pages``: free pages SQLite gives
    back to the file system after each batch (incremental ``auto_vacuum``).
    """

    execution_retention_days: int | None = attrs.field(default=30, validator=_days)
    audit_retention_days: int | None = attrs.field(default=365, validator=_days)
    batch_size: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    interval_seconds: float = attrs.field(default=3600.0, validator=_positive)
    vacuum_pages: int = attrs.field(default=1000, validator=attrs.validators.ge(0))
