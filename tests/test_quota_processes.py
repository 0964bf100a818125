"""The queued-executions quota of two server processes on one database (#18, the
adversary): each counts now and then (``abi_engine.api._quota``), so neither sees the
places the other may still take without counting. Together they may go over
``max_queued_executions_per_user`` by at most ``UNCOUNTED_MAX`` per other process
(plus the requests in flight), as docs/deployment.md says; one alone never does.

Two engines on one database, each behind real uvicorn (``served``). The clock of both
budgets is frozen, so a count is trusted however slow the machine: the interleaving
is aimed, not timed. The requests are sequential: none is ever in flight while
another is answered, so the documented slack is the budgets' alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from served_engines import Served, served

from abi_engine import Limits
from abi_engine.api import _quota
from abi_engine.api._quota import UNCOUNTED_MAX, QueuedBudget

DatabaseFactory = Callable[..., str | Path]
LIMIT = 100
STEPS = {"steps": [{"name": "v", "action": "transform", "expressions": {"v": "1"}}]}


def _frozen(server: Served) -> QueuedBudget:
    budget = QueuedBudget(server.engine, clock=lambda: 0.0)
    _quota._BUDGETS[server.engine] = budget
    return budget


def _post(client: httpx.Client, wf: str, i: int) -> int:
    answer = client.post(f"/api/v1/workflows/{wf}/execute_async", json={"parameters": {"i": i}})
    assert answer.status_code in (202, 409), answer.text
    if answer.status_code == 409:
        assert answer.json()["error"]["details"]["limit"] == "max_queued_executions_per_user"
    return answer.status_code


def _queued(server: Served, wf: str) -> int:
    page = server.engine.call(
        server.engine.executions.list, workflow_id=wf, status="queued", page_size=1
    )
    return int(page.pagination.total_items)


def test_two_processes_go_over_the_limit_by_at_most_their_uncounted_places(
    databases: DatabaseFactory,
) -> None:
    """B counts first (an empty queue: it may take up to ``UNCOUNTED_MAX`` more without
    counting), A then fills the queue to the limit, B takes what its count left it:
    the queue ends over the limit by no more than ``UNCOUNTED_MAX``, and both refuse
    from then on."""
    db = databases()
    options: dict[str, Any] = {"limits": Limits(max_queued_executions_per_user=LIMIT)}
    with served(db, **options) as a, served(db, **options) as b:
        budgets = _frozen(a), _frozen(b)
        ca, cb = a.client(), b.client()
        wf = ca.post(
            "/api/v1/workflows",
            json={"name": "quota", "type": "custom", "configuration": STEPS},
        ).json()["data"]["id"]
        assert ca.post(f"/api/v1/workflows/{wf}/activate").status_code == 200
        a.engine.call(a.engine.executions.pause_workflow, wf)  # everything stays queued
        assert _post(cb, wf, 0) == 202  # B's count: the queue empty
        i = 1
        while _post(ca, wf, i) == 202:  # A fills the queue up to its counts' limit
            i += 1
            assert i < 10 * LIMIT
        assert _queued(a, wf) == LIMIT
        late = sum(_post(cb, wf, LIMIT + j) == 202 for j in range(LIMIT))
        assert late <= UNCOUNTED_MAX
        assert _queued(a, wf) <= LIMIT + UNCOUNTED_MAX
        assert _post(cb, wf, 0) == 409
        assert _post(ca, wf, 0) == 409
        assert all(budget.counts > 0 for budget in budgets)
