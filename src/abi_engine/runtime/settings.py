"""Tuning of the runtime and of webhook delivery (exported from :mod:`abi_engine`)."""

from __future__ import annotations

import attrs

__all__ = ["RuntimeSettings"]


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
    """

    workers: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    sync_workers: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    queue_size: int = attrs.field(default=100_000, validator=attrs.validators.ge(1))
    lease_seconds: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    poll_interval: float = 0.5
    shutdown_grace: float = 5.0
    default_sync_timeout: float = 30.0
