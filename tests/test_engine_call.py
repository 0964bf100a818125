"""Engine.call: a synchronous host runs the engine's coroutines, keyword arguments included."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from abi_engine import Engine, ExecutionStatus


def test_call_passes_keyword_arguments(tmp_path: Path) -> None:
    """engine.call(fn, *args, **kwargs) from a plain thread: wait=False starts an execution
    without waiting for it; the call starts the engine in the background on first use."""
    engine = Engine(tmp_path / "abi.db")
    try:
        workflow = engine.call(
            engine.workflows.create,
            {
                "name": "sync host",
                "type": "custom",
                "configuration": {
                    "steps": [{"name": "v", "action": "transform", "expressions": {"v": "1 + 1"}}]
                },
            },
        )
        engine.call(engine.workflows.activate, workflow.id)
        started = engine.call(engine.executions.execute, workflow.id, {}, wait=False)
        assert started.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
        done = engine.call(engine.executions.wait, started.execution_id, timeout=30)
        assert done.status is ExecutionStatus.COMPLETED
        page = engine.call(engine.executions.list, workflow_id=workflow.id, page_size=5)
        assert [e.execution_id for e in page.items] == [started.execution_id]
        assert threading.get_ident() != engine._loop_thread
    finally:
        engine.close()


def test_call_from_the_loop_is_refused(tmp_path: Path) -> None:
    """Called on the engine's own loop (where it would deadlock), call raises instead."""
    engine = Engine(tmp_path / "abi.db")
    try:

        async def nested() -> None:
            engine.call(engine.workflows.list)

        with pytest.raises(RuntimeError, match="own event loop"):
            engine.call(nested)
    finally:
        engine.close()
