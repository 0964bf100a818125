"""A blocking store (``blocking = True``, as PostgreSQL's) is never called on the event loop.

The runtime (workers, poller, heartbeat, waits) and the webhook delivery
worker call the store through :func:`abi_engine.storage.aio.call_store`, which
runs a blocking store's calls in worker threads. The store here is a real
SQLite store that declares itself blocking and notes the thread of every
call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from webhook_testing import (  # noqa: F401 - the *_fixture names register fixtures
    Receiver,
    all_finished,
    fast,
    receiver_fixture,
    until_deliveries,
)

from abi_engine import Engine
from abi_engine.runtime.settings import RuntimeSettings
from abi_engine.storage import SQLiteStore
from abi_engine.storage.aio import call_store

pytestmark = pytest.mark.anyio

#: Store methods the background loops call while the engine runs.
WATCHED = (
    "apply",
    "claim_recoverable",
    "claim_freed",
    "renew_leases",
    "get_execution",
    "get_steps",
    "get_signals",
    "get_workflow",
    "get_integration",
    "fan_out_pending",
    "fan_out",
    "deliveries_due",
    "claim_deliveries",
    "next_delivery_due",
    "record_attempts",
    "subscribed_event_types",
)


class ThreadNotingStore(SQLiteStore):
    """A SQLite store that says it blocks, and records which thread made each call."""

    blocking = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: list[tuple[str, int]] = []

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in WATCHED:

            def noted(*args: Any, **kwargs: Any) -> Any:
                self.calls.append((name, threading.get_ident()))
                return value(*args, **kwargs)

            return noted
        return value


async def test_call_store_runs_blocking_stores_in_a_thread(tmp_path: Path) -> None:
    """call_store: inline for a non-blocking store, in another thread for a blocking one."""
    loop_thread = threading.get_ident()
    fast_store = SQLiteStore(tmp_path / "a.db")
    slow_store = ThreadNotingStore(tmp_path / "b.db")
    try:
        here: Callable[[], int] = threading.get_ident
        assert await call_store(fast_store, here) == loop_thread
        assert await call_store(slow_store, here) != loop_thread
    finally:
        fast_store.close()
        slow_store.close()


async def test_runtime_and_delivery_never_block_the_loop(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Executions (sync and async, with integrations) and webhook deliveries on a blocking
    store: none of the loops' store calls runs on the event loop's thread."""
    store = ThreadNotingStore(tmp_path / "abi.db")
    engine = Engine(
        store,
        allow_private_urls=True,
        runtime=RuntimeSettings(poll_interval=0.05, shutdown_grace=0.5, lease_seconds=0.3),
        webhook_settings=fast(),
    )
    try:
        hook = await engine.webhooks.create(
            {"url": receiver.url(), "events": ["execution.completed"]}
        )
        steps = {
            "steps": [
                {"name": "wait", "action": "delay", "seconds": 0.2},
                {"name": "sum", "action": "transform", "expressions": {"s": "1 + 1"}},
            ]
        }
        wf = await engine.workflows.create(
            {"name": "blocking", "type": "custom", "configuration": steps}
        )
        await engine.workflows.activate(wf.id)
        async with engine:
            loop_thread = threading.get_ident()
            store.calls.clear()
            done = await engine.executions.execute(wf.id, {})
            queued = await engine.executions.execute(wf.id, {}, wait=False)
            waited = await engine.executions.wait(queued.execution_id, timeout=10)
            await receiver.wait_for(2)
            await until_deliveries(engine, hook.id, all_finished)
            await anyio.sleep(0.3)  # a heartbeat and a few polls
            during = list(store.calls)
        assert done.status.value == "completed"
        assert waited.status.value == "completed"
        called = {name for name, _ in during}
        # (renew_leases runs in the heartbeat's own thread, whenever it is called.)
        assert {"apply", "claim_recoverable", "claim_deliveries"} <= called
        assert {"record_attempts", "fan_out"} <= called
        on_loop = sorted({name for name, thread in during if thread == loop_thread})
        assert on_loop == []
    finally:
        engine.close()
