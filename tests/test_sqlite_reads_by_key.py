"""Statements that read executions by a list of ids read them by primary key on SQLite
(#18, noticed at the last stop).

SQLite plans ``id IN (a, b, c, d, e) AND status = 'queued'`` through the status index
once there are five ids or more, walking every queued execution: the rate limit's
grant did so for each claim batch of a rate-limited workflow. Every statement the
engine runs while rate-limited executions are queued and granted is explained here:
none that names ids walks a status index."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from runtime_plugins.helpers import TERMINAL, engines, fast, new_workflow, wait_status

pytestmark = pytest.mark.anyio

BY_IDS = re.compile(r"\bid IN \(", re.IGNORECASE)


async def test_statements_naming_ids_use_the_primary_key(tmp_path: Path) -> None:
    seen: set[str] = set()
    with engines(tmp_path) as make:
        engine = make(settings=fast(workers=8))
        async with engine:
            rule = {"limit": 30, "period_seconds": 60}
            wf = await new_workflow(engine, rate_limit=rule)
            await engine.executions.pause_workflow(wf, True)
            writer = engine.store._writer  # type: ignore[attr-defined]
            writer.set_trace_callback(lambda sql: seen.add(sql) if BY_IDS.search(sql) else None)
            accepted = await engine.executions.execute_many(wf, [{}] * 40)
            await engine.executions.pause_workflow(
                wf, False
            )  # released together: claimed in batches
            for execution in accepted[:30]:
                await wait_status(engine, execution.execution_id, *TERMINAL, timeout=60)
            writer.set_trace_callback(None)
        path = engine.store.path  # type: ignore[attr-defined]
    assert seen, "no statement read executions by id"
    conn = sqlite3.connect(path)
    try:
        walked = []
        for sql in seen:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
            if any("idx_executions_status" in str(row) for row in plan):
                walked.append((sql[:200], plan))
    finally:
        conn.close()
    assert not walked, walked
