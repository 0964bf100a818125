"""Prometheus metrics of an engine (#15, point 1): what moves, on every engine backend,
with labels that never carry ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from runtime_plugins.helpers import (
    EngineFactory,
    new_workflow,
    wait_status,
)
from webhook_testing import Receiver, fast, receiver_fixture  # noqa: F401 - a fixture

from abi_engine import Engine, ExecutionStatus, api
from abi_engine.errors import InvalidState, WorkflowExecutionError
from abi_engine.ids import new_id, utcnow
from abi_engine.runtime.metrics import STEP_BUCKETS, Histogram
from abi_engine.storage.records import ExecutionRecord, InsertExecution

#: Every metric the issue names, as exposed (counters with their ``_total``).
NAMES = {
    "abi_executions_started_total",
    "abi_executions_finished_total",
    "abi_step_duration_seconds",
    "abi_execution_queue_depth",
    "abi_execution_oldest_queued_seconds",
    "abi_schedule_lateness_seconds",
    "abi_schedule_firings_total",
    "abi_webhook_deliveries_total",
    "abi_webhook_delivery_lag_seconds",
    "abi_lease_takeovers_total",
    "abi_store_commit_seconds",
    "abi_store_commit_batch_size",
}

Samples = list[tuple[str, dict[str, str], float]]


async def scrape(engine: Engine) -> Samples:
    body, media_type = await engine.render_metrics()
    assert media_type.startswith("text/plain")
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


@pytest.fixture
async def engine(make: EngineFactory) -> AsyncIterator[Engine]:
    async with make() as running:
        yield running


@pytest.mark.anyio
async def test_every_named_metric_is_exposed(engine: Engine) -> None:
    """A fresh engine exposes each metric of the issue, counters at zero."""
    body, _ = await engine.render_metrics()
    families = list(text_string_to_metric_families(body.decode()))
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    samples = await scrape(engine)
    assert exposed >= NAMES
    assert value(samples, "abi_executions_started_total") == 0
    assert value(samples, "abi_execution_queue_depth") == 0


@pytest.mark.anyio
async def test_executions_and_steps_move_labels_stay_bounded(engine: Engine) -> None:
    """After many executions with distinct ids (completed and failed), the counters
    say how many by type and status, the step histogram counts each step run, and
    no label value is an id: the label sets do not grow with the executions."""
    wf = await new_workflow(engine, "test_three")
    for n in range(12):
        await engine.executions.execute(wf, {"n": n})
    for n in range(5):
        with pytest.raises(WorkflowExecutionError):
            await engine.executions.execute(wf, {"n": n, "do": {"second": {"raise": "boom"}}})
    samples = await scrape(engine)
    assert value(samples, "abi_executions_started_total", type="test_three") == 17
    assert value(samples, "abi_executions_finished_total", status="completed") == 12
    assert value(samples, "abi_executions_finished_total", status="failed") == 5
    first = {"type": "test_three", "step": "first"}
    assert value(samples, "abi_step_duration_seconds_count", **first) == 17
    assert value(samples, "abi_step_duration_seconds_count", type="test_three", step="second") == 17
    assert value(samples, "abi_step_duration_seconds_count", type="test_three", step="third") == 12
    assert value(samples, "abi_store_commit_seconds_count") > 0
    assert value(samples, "abi_store_commit_batch_size_sum") >= value(
        samples, "abi_store_commit_batch_size_count"
    )
    label_sets = {(n, tuple(sorted(lab.items()))) for n, lab, _ in samples if "le" not in lab}
    values = {v for _, lab, _ in samples for k, v in lab.items() if k != "le"}
    assert not any(v.startswith(("exec_", "wf_", "sch_", "dlv_", "wh_")) for v in values)
    assert values <= {"test_three", "first", "second", "third", "completed", "failed"}
    for n in range(12, 20):
        await engine.executions.execute(wf, {"n": n})
    again = await scrape(engine)
    assert {(n, tuple(sorted(lab.items()))) for n, lab, _ in again if "le" not in lab} == label_sets


@pytest.mark.anyio
async def test_cancelled_counts_as_finished(engine: Engine) -> None:
    """A cancelled execution counts as finished with status cancelled (and once)."""
    wf = await new_workflow(engine, "test_three")
    held = await engine.executions.execute(
        wf, {"do": {"first": {"gate": new_id("gate_")}}}, wait=False
    )
    await wait_status(engine, held.execution_id, ExecutionStatus.RUNNING)
    await engine.executions.cancel(held.execution_id)
    await wait_status(engine, held.execution_id, ExecutionStatus.CANCELLED)
    samples = await scrape(engine)
    assert value(samples, "abi_executions_finished_total", type="test_three") == 1
    assert value(samples, "abi_executions_finished_total", status="cancelled") == 1


@pytest.mark.anyio
async def test_queue_gauges_read_the_database(engine: Engine) -> None:
    """Queue depth and the oldest queued execution's age come from the database (what
    every process shares), read at each scrape."""
    old = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id="wf_none",
        workflow_type="not_installed_here",  # recovery leaves it queued
        status=ExecutionStatus.QUEUED,
        created_at=utcnow() - timedelta(seconds=90),
    )
    assert engine.store.apply([InsertExecution(record=old)]) == [True]
    samples = await scrape(engine)
    assert value(samples, "abi_execution_queue_depth") == 1
    assert 90 <= value(samples, "abi_execution_oldest_queued_seconds") < 600


@pytest.mark.anyio
async def test_lease_takeover_is_counted(engine: Engine) -> None:
    """A running execution whose owner's lease ran out is taken over (and run to its end):
    abi_lease_takeovers_total counts it; a queued one taken from the queue is no takeover."""
    wf = await new_workflow(engine, "test_three")
    workflow = await engine.workflows.get(wf)
    orphan = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=wf,
        workflow_type="test_three",
        workflow_name=workflow.name,
        status=ExecutionStatus.RUNNING,
        plan=["first", "second", "third"],
        created_at=utcnow() - timedelta(seconds=120),
        started_at=utcnow() - timedelta(seconds=119),
        owner="gone-host:1:dead",
        lease_until=utcnow() - timedelta(seconds=60),
        claim=7,
        priority=1,
    )
    queued = ExecutionRecord(
        id=new_id("exec_"),
        workflow_id=wf,
        workflow_type="test_three",
        workflow_name=workflow.name,
        status=ExecutionStatus.QUEUED,
        plan=["first", "second", "third"],
        created_at=utcnow(),
        priority=1,
    )
    assert engine.store.apply([InsertExecution(record=orphan), InsertExecution(record=queued)]) == [
        True,
        True,
    ]
    await wait_status(engine, orphan.id, ExecutionStatus.COMPLETED, timeout=30)
    await wait_status(engine, queued.id, ExecutionStatus.COMPLETED, timeout=30)
    samples = await scrape(engine)
    assert value(samples, "abi_lease_takeovers_total") == 1
    assert value(samples, "abi_executions_started_total") == 1  # the queued one; the other resumed
    assert value(samples, "abi_executions_finished_total", status="completed") == 2


@pytest.mark.anyio
async def test_processes_on_one_database_count_their_own(make: EngineFactory) -> None:
    """Two engines on one database (two processes, as far as counting goes): each exposes
    what it ran itself, and both the database's queue."""
    async with make("shared.db") as a, make("shared.db") as b:
        wf = await new_workflow(a, "test_three")
        for _ in range(3):
            await a.executions.execute(wf, {})
        await b.executions.execute(wf, {})
        old = ExecutionRecord(
            id=new_id("exec_"),
            workflow_id="wf_none",
            workflow_type="not_installed_here",
            status=ExecutionStatus.QUEUED,
            created_at=utcnow(),
        )
        assert a.store.apply([InsertExecution(record=old)]) == [True]
        sa, sb = await scrape(a), await scrape(b)
    assert value(sa, "abi_executions_started_total") == 3
    assert value(sb, "abi_executions_started_total") == 1
    assert value(sa, "abi_execution_queue_depth") == value(sb, "abi_execution_queue_depth") == 1


@pytest.mark.anyio
async def test_schedule_firings_by_outcome(engine: Engine) -> None:
    """A firing that cannot start an execution counts as failed; once it can, as
    started, with its lateness observed."""
    workflow_id = await new_workflow(
        engine,
        "custom",
        configuration={"steps": [{"name": "wait", "action": "delay", "seconds": 0}]},
        integrations=[{"id": "int_crm", "required": True}],
    )
    schedule = await engine.schedules.create(
        workflow_id,
        {
            "name": "m",
            "schedule_type": "interval",
            "interval_value": 60,
            "interval_unit": "seconds",
        },
    )
    assert schedule.next_execution is not None
    await engine.scheduler.tick(schedule.next_execution)
    samples = await scrape(engine)
    assert value(samples, "abi_schedule_firings_total", outcome="failed") == 1
    assert value(samples, "abi_schedule_lateness_seconds_count") == 0
    await engine.integrations.put("int_crm", "http", {"base_url": "https://crm.example.com"})
    again = await engine.schedules.get(schedule.id)
    assert again.next_execution is not None
    await engine.scheduler.tick(again.next_execution)
    samples = await scrape(engine)
    assert value(samples, "abi_schedule_firings_total", outcome="started") == 1
    assert value(samples, "abi_schedule_lateness_seconds_count") == 1


@pytest.mark.anyio
async def test_webhook_deliveries_by_outcome(make: EngineFactory, receiver: Receiver) -> None:
    """Delivery attempts count by outcome (a failed attempt with retries left is
    retrying), and their lag from the event is observed."""
    receiver.plan("/hook", [500, 200])
    async with make(allow_private_urls=True, webhook_settings=fast()) as engine:
        await engine.webhooks.create({"url": receiver.url("/hook"), "events": ["workflow.created"]})
        await new_workflow(engine, "test_three", active=False)

        async def counted() -> Samples:
            with anyio.fail_after(30):
                while True:
                    samples = await scrape(engine)
                    if value(samples, "abi_webhook_deliveries_total", outcome="succeeded"):
                        return samples
                    await anyio.sleep(0.05)

        samples = await counted()
    assert value(samples, "abi_webhook_deliveries_total", outcome="retrying") == 1
    assert value(samples, "abi_webhook_deliveries_total", outcome="succeeded") == 1
    assert value(samples, "abi_webhook_delivery_lag_seconds_count") == 2


@pytest.mark.anyio
async def test_metrics_off(make: EngineFactory) -> None:
    """``Engine(metrics=False)`` counts nothing and has nothing to render."""
    async with make(metrics=False) as engine:
        wf = await new_workflow(engine, "test_three")
        await engine.executions.execute(wf, {})
        assert engine.metrics is None
        assert engine.runtime.committer._metrics is None
        with pytest.raises(RuntimeError):
            await engine.render_metrics()
        admin = engine.tokens.authenticate(engine.tokens.create_token("usr_ops"))
        with pytest.raises(InvalidState):  # GET /api/v1/metrics: 409, not a 500
            await api.call(engine, admin, "get_metrics", api.ApiRequest())


@pytest.mark.anyio
async def test_engines_in_one_process_count_apart(make: EngineFactory) -> None:
    """Each engine has its own registry: two engines in one process never mix counts."""
    async with make("a.db") as a, make("b.db") as b:
        wf = await new_workflow(a, "test_three")
        await a.executions.execute(wf, {})
        assert value(await scrape(a), "abi_executions_started_total") == 1
        assert value(await scrape(b), "abi_executions_started_total") == 0


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=50))
def test_histogram_buckets_are_cumulative(values: list[Any]) -> None:
    """Each bucket counts the values not above its bound; +Inf counts them all."""
    histogram = Histogram(STEP_BUCKETS)
    for v in values:
        histogram.observe(v)
    pairs = histogram.cumulative()
    assert pairs[-1] == ("+Inf", len(values))
    for le, count in pairs[:-1]:
        assert count == sum(1 for v in values if v <= float(le))
    assert histogram.sum == pytest.approx(sum(values))
