"""The executions service: execute (sync and async), get, list, cancel, stats, idempotency,
parameters, events, and the same over REST through the ASGI adapter."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest
from abi_asgi import create_app
from runtime_plugins import PROBE
from runtime_plugins.helpers import (
    EngineFactory,
    fast,
    new_workflow,
    until,
    wait_status,
)

from abi_engine import Engine, ExecutionStatus, StepStatus, hookimpl
from abi_engine.converter import unstructure
from abi_engine.errors import (
    EngineNotRunning,
    ExecutionNotFound,
    ExecutionTimeout,
    IntegrationMissing,
    InvalidParameters,
    InvalidRequest,
    InvalidState,
    ParameterValidationError,
    WorkflowExecutionError,
    WorkflowNotFound,
)
from abi_engine.events import Event
from abi_engine.ids import format_time, parse_time

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SEED_KEYS = {
    "execution_id",
    "workflow_id",
    "workflow_name",
    "status",
    "started_at",
    "completed_at",
    "duration_ms",
    "parameters",
    "result",
    "steps",
}
SEED_STEP_KEYS = {"name", "status", "started_at", "completed_at", "duration_ms"}
#: What the engine shows beyond the seed's GET example (always: null when empty).
EXTRA_KEYS = {"created_at", "created_by", "error", "callback_url", "schedule_id"} | {
    "rerun_of",  # #16: flow control
    "queued_reason",
    "queued_since",
    "parent_execution_id",
    "scheduled_for",  # #17: the due time of a scheduled execution
    "concurrency_key",
    "rate_limit_key",  # #16: rate limits and debounce
    "debounce_key",
    "debounced_by",
}
EXTRA_STEP_KEYS = {"attempts", "error", "reused_from"}


class Recorder:
    """A test plugin keeping every event it observes."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    @hookimpl
    def abi_event(self, event: Event) -> None:
        self.events.append(event)

    def of(self, execution_id: str) -> list[str]:
        """The event types concerning one execution, in order."""
        return [e.type for e in self.events if _concerns(e, execution_id)]


def _concerns(event: Event, execution_id: str) -> bool:
    return execution_id in (event.data.get("execution_id"), event.data.get("id"))


# -- execute (sync) ---------------------------------------------------------------------------


async def test_sync_execute_completes_with_steps_in_order(eng: Engine) -> None:
    """A sync execution completes; its result is the last step's and its steps are timed in order."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(wf, {"x": 1})
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.result == {"done": 3}
    assert execution.parameters == {"x": 1}
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        ("first", StepStatus.COMPLETED),
        ("second", StepStatus.COMPLETED),
        ("third", StepStatus.COMPLETED),
    ]
    assert execution.started_at is not None
    assert execution.completed_at is not None
    previous_end = execution.started_at
    for s in execution.steps:
        assert s.started_at is not None
        assert s.completed_at is not None
        assert previous_end <= s.started_at <= s.completed_at
        assert isinstance(s.duration_ms, int)
        assert s.duration_ms >= 0
        previous_end = s.completed_at
    assert previous_end <= execution.completed_at
    assert execution.duration_ms == round(
        (execution.completed_at - execution.started_at).total_seconds() * 1000
    )
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1, "third": 1}
    assert await eng.executions.get(execution.execution_id) == execution


async def test_step_results_reach_later_steps(eng: Engine) -> None:
    """Each step sees the results of the steps before it (ctx.results)."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(
        wf, {"do": {"first": {"return": {"token": "t1"}}, "third": {"return": "end"}}}
    )
    assert execution.result == "end"
    stored = eng.store.get_steps(execution.execution_id)
    assert stored[1].result == {"n": 2, "prev": {"token": "t1"}}


async def test_checkpoint_is_stored_before_next_step(eng: Engine) -> None:
    """A finished step is in the database before the next step starts."""
    wf = await new_workflow(eng)
    do = {"second": {"see_steps": True}, "third": {"see_steps": True}}
    execution = await eng.executions.execute(wf, {"do": do})
    seen = {step: what[1] for _, step, what in PROBE.notes}
    assert seen == {
        "second": [("first", "completed")],
        "third": [("first", "completed"), ("second", "completed")],
    }
    assert execution.status is ExecutionStatus.COMPLETED


async def test_sync_timeout_ends_timed_out(eng: Engine) -> None:
    """A sync execution past its timeout raises ExecutionTimeout and ends timed_out;
    the running step is failed and the following step never runs."""
    wf = await new_workflow(eng)
    started = time.monotonic()
    with pytest.raises(ExecutionTimeout) as caught:
        await eng.executions.execute(wf, {"do": {"second": {"sleep": 30}}}, timeout_seconds=0.3)
    assert time.monotonic() - started < 3
    assert caught.value.code == "EXECUTION_TIMEOUT"
    assert caught.value.http_status == 504
    execution_id = caught.value.details["execution_id"]
    execution = await eng.executions.get(execution_id)
    assert execution.status is ExecutionStatus.TIMED_OUT
    assert execution.error is not None
    assert execution.error.code == "EXECUTION_TIMEOUT"
    assert execution.steps is not None
    assert [(s.name, s.status) for s in execution.steps] == [
        ("first", StepStatus.COMPLETED),
        ("second", StepStatus.FAILED),
        ("third", StepStatus.PENDING),
    ]
    assert execution.steps[1].error is not None
    assert execution.steps[2].error is None
    await anyio.sleep(0.3)
    assert PROBE.runs(execution_id) == {"first": 1, "second": 1}
    assert (execution_id, "second", "interrupted") in PROBE.notes


async def test_wait_false_returns_at_once(eng: Engine) -> None:
    """wait=False answers at once with a queued or running execution that then finishes."""
    wf = await new_workflow(eng)
    started = time.monotonic()
    execution = await eng.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False)
    assert time.monotonic() - started < 1
    assert execution.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    PROBE.gate("g").set()
    done = await eng.executions.wait(execution.execution_id, timeout=5)
    assert done.status is ExecutionStatus.COMPLETED


async def test_wait_false_answers_as_stored_when_the_run_finishes_first(
    eng: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer of an asynchronous start is the execution as stored (``queued``) even
    when the runtime has already run it to the end before the caller resumes: the
    record handed over at the commit is the runtime's, not the answer's."""
    wf = await new_workflow(eng)
    runtime = eng.executions._runtime
    submit = runtime.submit

    handed: list[tuple[Any, dict[str, Any]]] = []

    def finish_at_once(prepared: Any, **kwargs: Any) -> None:
        # As a run that ended before the caller resumed would leave the record.
        prepared.record.status = ExecutionStatus.COMPLETED
        handed.append((prepared, kwargs))

    monkeypatch.setattr(runtime, "submit", finish_at_once)
    execution = await eng.executions.execute(wf, wait=False)
    monkeypatch.undo()
    assert execution.status is ExecutionStatus.QUEUED
    assert execution.started_at is None
    ((prepared, kwargs),) = handed
    prepared.record.status = ExecutionStatus.QUEUED
    submit(prepared, **kwargs)
    done = await eng.executions.wait(execution.execution_id, timeout=10)
    assert done.status is ExecutionStatus.COMPLETED


async def test_async_timeout_ends_timed_out(eng: Engine) -> None:
    """An async execution's timeout_seconds ends it timed_out, interrupting the running step."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(
        wf, {"do": {"first": {"sleep": 30}}}, wait=False, timeout_seconds=0.2
    )
    final = await wait_status(eng, execution.execution_id, ExecutionStatus.TIMED_OUT)
    assert final.error is not None
    assert final.error.code == "EXECUTION_TIMEOUT"
    assert (execution.execution_id, "first", "interrupted") in PROBE.notes
    assert PROBE.runs(execution.execution_id) == {"first": 1}
    stats = (await eng.workflows.get(wf)).stats
    assert (stats.runs_total, stats.runs_failed) == (1, 1)


async def test_timeout_passing_while_stopped(make: EngineFactory) -> None:
    """An execution whose timeout passes while no engine runs ends timed_out when one starts."""
    first = make(settings=fast(shutdown_grace=0.05))
    async with first:
        wf = await new_workflow(first)
        execution = await first.executions.execute(
            wf, {"do": {"second": {"gate": "g"}}}, wait=False, timeout_seconds=0.3
        )
        await until(lambda: PROBE.calls[(execution.execution_id, "second")] == 1)
    await anyio.sleep(0.4)
    PROBE.gate("g").set()
    second = make()
    async with second:
        final = await wait_status(second, execution.execution_id, ExecutionStatus.TIMED_OUT)
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1}
    assert final.steps is not None
    assert final.steps[0].status is StepStatus.COMPLETED
    assert final.steps[2].status is StepStatus.PENDING


async def test_inactive_workflow_is_refused(eng: Engine) -> None:
    """Executing an inactive workflow raises InvalidState and creates no execution."""
    wf = await new_workflow(eng, active=False)
    with pytest.raises(InvalidState) as caught:
        await eng.executions.execute(wf)
    assert caught.value.details["workflow_id"] == wf
    assert (await eng.executions.list()).pagination.total_items == 0


async def test_unknown_workflow_is_refused(eng: Engine) -> None:
    """Executing an unknown workflow raises WorkflowNotFound."""
    with pytest.raises(WorkflowNotFound):
        await eng.executions.execute("wf_doesnotexist")


async def test_required_integration_must_be_connected(eng: Engine) -> None:
    """A missing required integration raises IntegrationMissing; once connected it runs."""
    wf = await new_workflow(
        eng,
        integrations=[
            {"id": "int_crm", "required": True},
            {"id": "int_optional", "required": False},
        ],
    )
    with pytest.raises(IntegrationMissing) as caught:
        await eng.executions.execute(wf)
    assert caught.value.details["integration_id"] == "int_crm"
    await eng.integrations.put("int_crm", "http", {"base_url": "https://crm.example.com"})
    execution = await eng.executions.execute(wf)
    assert execution.status is ExecutionStatus.COMPLETED


async def test_execute_needs_a_running_engine(make: EngineFactory) -> None:
    """Executing on an engine that is not started is refused with a clear error."""
    engine = make()
    wf = await new_workflow(engine)
    with pytest.raises(EngineNotRunning, match="async with engine") as refused:
        await engine.executions.execute(wf)
    assert refused.value.http_status == 503
    assert refused.value.details == {"engine": "not_running"}


@pytest.mark.parametrize("timeout", [0, -1, "5", float("inf"), 8 * 24 * 3600, True])
async def test_bad_timeout_is_refused(eng: Engine, timeout: Any) -> None:
    """A timeout that is not a positive number of seconds (up to a week) is an InvalidRequest."""
    wf = await new_workflow(eng)
    with pytest.raises(InvalidRequest) as caught:
        await eng.executions.execute(wf, timeout_seconds=timeout)
    assert caught.value.details["field"] == "execution_options.timeout_seconds"


# -- execute (async) --------------------------------------------------------------------------


async def test_async_execute_stores_callback(eng: Engine) -> None:
    """An async execution answers queued or running; its callback URL is shown, never its secret."""
    wf = await new_workflow(eng)
    url = "https://example.com/webhooks/done"
    execution = await eng.executions.execute(
        wf, {"do": {"first": {"gate": "g"}}}, wait=False, callback_url=url, callback_secret=SECRET
    )
    assert execution.status in (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)
    assert execution.callback_url == url
    shown = await eng.executions.get(execution.execution_id)
    assert shown.callback_url == url
    assert SECRET not in repr(unstructure(shown))
    assert SECRET not in repr(unstructure(execution))
    record = eng.store.get_execution(execution.execution_id)
    assert record is not None
    assert record.callback_secret == SECRET
    PROBE.gate("g").set()
    done = await eng.executions.wait(execution.execution_id, timeout=5)
    assert done.status is ExecutionStatus.COMPLETED
    assert SECRET not in repr(unstructure(done))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "not a url",
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest",
        "",
    ],
)
async def test_bad_callback_url_is_refused(eng: Engine, url: str) -> None:
    """A callback URL that is not http(s) or points at a private address is an InvalidRequest."""
    wf = await new_workflow(eng)
    with pytest.raises(InvalidRequest) as caught:
        await eng.executions.execute(wf, wait=False, callback_url=url)
    assert caught.value.details["field"] == "callback_url"
    assert "callback_url" in caught.value.message
    assert (await eng.executions.list()).pagination.total_items == 0


async def test_private_callback_allowed_when_engine_allows(make: EngineFactory) -> None:
    """Engine(allow_private_urls=True) accepts loopback and private callback URLs."""
    engine = make(allow_private_urls=True)
    async with engine:
        wf = await new_workflow(engine)
        for url in ("http://127.0.0.1:8080/hook", "http://10.1.2.3/hook"):
            execution = await engine.executions.execute(wf, wait=False, callback_url=url)
            assert (await engine.executions.get(execution.execution_id)).callback_url == url


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2", "whsec_", "whsec_abc", 42])
async def test_bad_callback_secret_is_refused(eng: Engine, secret: Any) -> None:
    """A callback secret that is not a whsec_ secret is an InvalidRequest naming callback_secret."""
    wf = await new_workflow(eng)
    with pytest.raises(InvalidRequest) as caught:
        await eng.executions.execute(
            wf, wait=False, callback_url="https://example.com/h", callback_secret=secret
        )
    assert caught.value.details["field"] == "callback_secret"


# -- get and list -------------------------------------------------------------------------------


async def test_get_has_the_seed_keys(eng: Engine) -> None:
    """A completed execution's JSON has the seed's keys plus the documented others (null
    when empty: error, callback_url, schedule_id), with RFC 3339 Z timestamps."""
    wf = await new_workflow(eng, name="Enhanced Customer Feedback Analysis")
    execution = await eng.executions.execute(wf, {"feedback_id": "f_12345"})
    data = unstructure(await eng.executions.get(execution.execution_id))
    assert set(data) == SEED_KEYS | EXTRA_KEYS
    assert (data["error"], data["callback_url"], data["schedule_id"]) == (None, None, None)
    assert data["workflow_name"] == "Enhanced Customer Feedback Analysis"
    assert data["status"] == "completed"
    assert data["parameters"] == {"feedback_id": "f_12345"}
    assert data["execution_id"].startswith("exec_")
    assert [s["name"] for s in data["steps"]] == ["first", "second", "third"]
    for step in data["steps"]:
        assert set(step) == SEED_STEP_KEYS | EXTRA_STEP_KEYS
        assert step["error"] is None
    for item in (data, *data["steps"]):
        for key in ("started_at", "completed_at"):
            assert item[key].endswith("Z")
            assert format_time(parse_time(item[key])) == item[key]


async def test_get_unknown_execution(eng: Engine) -> None:
    """An unknown execution id raises ExecutionNotFound (404)."""
    for bad in ("exec_nope", "", 42):
        with pytest.raises(ExecutionNotFound) as caught:
            await eng.executions.get(bad)  # type: ignore[arg-type]
        assert caught.value.http_status == 404


async def test_failed_step_error_is_shown(eng: Engine) -> None:
    """A failed execution shows the failing step with its error (type and message)."""
    wf = await new_workflow(eng)
    with pytest.raises(WorkflowExecutionError) as caught:
        await eng.executions.execute(wf, {"do": {"second": {"raise": "the CRM said no"}}})
    data = unstructure(await eng.executions.get(caught.value.details["execution_id"]))
    assert data["status"] == "failed"
    assert [s["status"] for s in data["steps"]] == ["completed", "failed", "pending"]
    assert data["steps"][1]["error"] == {"type": "RuntimeError", "message": "the CRM said no"}
    assert data["error"] == {
        "code": "WORKFLOW_EXECUTION_ERROR",
        "message": "the CRM said no",
        "step": "second",
        "type": "RuntimeError",
    }
    assert data["result"] is None


async def test_list_filters_paginates_newest_first(eng: Engine) -> None:
    """list filters by workflow, status and dates, paginates, and puts the newest first."""
    wf_a = await new_workflow(eng, name="A")
    wf_b = await new_workflow(eng, name="B")
    ids: list[str] = []
    for i in range(5):
        params = {"do": {"third": {"raise": "no"}}} if i == 3 else {}
        try:
            ids.append((await eng.executions.execute(wf_a, params)).execution_id)
        except WorkflowExecutionError as exc:
            ids.append(exc.details["execution_id"])
        await anyio.sleep(0.005)
    other = (await eng.executions.execute(wf_b)).execution_id

    everything = await eng.executions.list(page_size=100)
    assert [i.execution_id for i in everything.items] == [other, *reversed(ids)]
    assert everything.pagination.total_items == 6

    only_a = await eng.executions.list(workflow_id=wf_a)
    assert [i.execution_id for i in only_a.items] == list(reversed(ids))
    assert {i.workflow_name for i in only_a.items} == {"A"}

    failed = await eng.executions.list(status="failed")
    assert [i.execution_id for i in failed.items] == [ids[3]]
    completed_a = await eng.executions.list(workflow_id=wf_a, status="completed")
    assert completed_a.pagination.total_items == 4

    pages = [await eng.executions.list(workflow_id=wf_a, page=p, page_size=2) for p in (1, 2, 3)]
    assert [[i.execution_id for i in p.items] for p in pages] == [
        [ids[4], ids[3]],
        [ids[2], ids[1]],
        [ids[0]],
    ]
    assert pages[0].pagination.total_pages == 3
    assert unstructure(pages[2].pagination) == {
        "page": 3,
        "page_size": 2,
        "total_items": 5,
        "total_pages": 3,
    }

    created = {i: eng.store.get_execution(i).created_at for i in ids}  # type: ignore[union-attr]
    start = format_time(created[ids[1]])
    end = format_time(created[ids[3]])
    window = await eng.executions.list(workflow_id=wf_a, start_date=start, end_date=end)
    assert [i.execution_id for i in window.items] == [ids[3], ids[2], ids[1]]
    after = await eng.executions.list(start_date=created[ids[4]] + timedelta(milliseconds=1))
    assert [i.execution_id for i in after.items] == [other]
    summary = unstructure(window.items[0])
    assert set(summary) == {
        "execution_id",
        "workflow_id",
        "workflow_name",
        "status",
        "started_at",
        "completed_at",
        "duration_ms",
        "queued_reason",  # #16: why a queued one waits, and since when
        "queued_since",
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"end_date": "2023-13-01T00:00:00Z"}, "end_date"),
        ({"page": 0}, "page"),
        ({"page_size": 101}, "page_size"),
    ],
)
async def test_list_refuses_bad_filters(eng: Engine, query: dict[str, Any], field: str) -> None:
    """Bad list filters are an InvalidRequest naming the field."""
    with pytest.raises(InvalidRequest) as caught:
        await eng.executions.list(**query)
    assert caught.value.details["field"] == field


@pytest.mark.sqlite_only
async def test_list_query_uses_an_index(eng: Engine) -> None:
    """The store's list queries with a filter are served by an index (EXPLAIN QUERY PLAN)."""
    from abi_engine.storage.records import ExecutionQuery

    wf = await new_workflow(eng)
    await eng.executions.execute(wf)
    store: Any = eng.store
    statements: list[str] = []
    queries = [
        ExecutionQuery(workflow_id=wf),
        ExecutionQuery(status=ExecutionStatus.COMPLETED),
        ExecutionQuery(),
        ExecutionQuery(start=parse_time("2020-01-01T00:00:00Z")),
    ]
    with store._read() as conn:
        conn.set_trace_callback(statements.append)
        try:
            for query in queries:
                store.list_executions(query)
        finally:
            conn.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2 * len(queries)
    check = sqlite3.connect(store.path)
    try:
        for sql in selects:
            plan = " | ".join(row[3] for row in check.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, (sql, plan)
            assert "TEMP B-TREE" not in plan, (sql, plan)
            if " WHERE " in sql:
                assert "SEARCH e USING" in plan, (sql, plan)
    finally:
        check.close()


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_queued(make: EngineFactory) -> None:
    """A queued execution (the only worker busy) is cancelled and never runs."""
    engine = make(settings=fast(workers=1))
    async with engine:
        wf = await new_workflow(engine)
        busy = await engine.executions.execute(wf, {"do": {"first": {"gate": "g"}}}, wait=False)
        await until(lambda: PROBE.calls[(busy.execution_id, "first")] == 1, what="first runs")
        queued = await engine.executions.execute(wf, wait=False)
        assert (await engine.executions.get(queued.execution_id)).status is ExecutionStatus.QUEUED
        cancelled = await engine.executions.cancel(queued.execution_id)
        assert cancelled.status is ExecutionStatus.CANCELLED
        assert cancelled.completed_at is not None
        assert cancelled.error is not None
        assert cancelled.error.code == "CANCELLED"
        PROBE.gate("g").set()
        assert (await engine.executions.wait(busy.execution_id, 5)).status.value == "completed"
        await anyio.sleep(0.2)
        assert PROBE.runs(queued.execution_id) == {}
        final = await engine.executions.get(queued.execution_id)
        assert final.status is ExecutionStatus.CANCELLED


async def test_cancel_running_interrupts_the_step(eng: Engine) -> None:
    """Cancelling a running execution interrupts its step; later steps never run."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(wf, {"do": {"second": {"sleep": 30}}}, wait=False)
    await until(lambda: PROBE.calls[(execution.execution_id, "second")] == 1, what="second runs")
    started = time.monotonic()
    cancelled = await eng.executions.cancel(execution.execution_id)
    assert cancelled.status is ExecutionStatus.CANCELLED
    await until(
        lambda: (execution.execution_id, "second", "interrupted") in PROBE.notes,
        what="the step is interrupted",
    )
    assert time.monotonic() - started < 2
    await anyio.sleep(0.2)
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1}
    final = await eng.executions.get(execution.execution_id)
    assert final.status is ExecutionStatus.CANCELLED
    assert final.steps is not None
    assert [s.status for s in final.steps] == [
        StepStatus.COMPLETED,
        StepStatus.FAILED,
        StepStatus.PENDING,
    ]


async def test_cancel_releases_a_sync_caller(eng: Engine) -> None:
    """A sync caller waiting on an execution that gets cancelled is answered promptly."""
    wf = await new_workflow(eng)
    answers: list[Any] = []

    async def call() -> None:
        answers.append(await eng.executions.execute(wf, {"do": {"first": {"sleep": 30}}}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await until(lambda: PROBE.calls.total() == 1, what="the step runs")
        (listed,) = (await eng.executions.list()).items
        await eng.executions.cancel(listed.execution_id)
        with anyio.fail_after(3):
            await until(lambda: answers, what="the caller is answered")
    assert answers[0].status is ExecutionStatus.CANCELLED


async def test_cancel_waiting(eng: Engine) -> None:
    """A waiting (suspended) execution can be cancelled; a later signal is refused."""
    wf = await new_workflow(eng)
    execution = await eng.executions.execute(wf, {"do": {"second": {"signal": "go"}}}, wait=False)
    await wait_status(eng, execution.execution_id, ExecutionStatus.WAITING)
    cancelled = await eng.executions.cancel(execution.execution_id)
    assert cancelled.status is ExecutionStatus.CANCELLED
    with pytest.raises(InvalidState):
        await eng.executions.signal(execution.execution_id, "go", {})
    assert PROBE.runs(execution.execution_id) == {"first": 1, "second": 1}


async def test_cancel_finished_is_invalid_state(eng: Engine) -> None:
    """Cancelling a completed, failed or cancelled execution raises InvalidState."""
    wf = await new_workflow(eng)
    done = await eng.executions.execute(wf)
    with pytest.raises(WorkflowExecutionError) as caught:
        await eng.executions.execute(wf, {"do": {"first": {"raise": "x"}}})
    failed = caught.value.details["execution_id"]
    for execution_id in (done.execution_id, failed):
        with pytest.raises(InvalidState) as state:
            await eng.executions.cancel(execution_id)
        assert state.value.http_status == 409
    with pytest.raises(ExecutionNotFound):
        await eng.executions.cancel("exec_unknown")


# -- stats ------------------------------------------------------------------------------------


async def test_stats_follow_finished_executions(eng: Engine) -> None:
    """runs_total/success/failed and average_duration_ms follow successes, failures, timeouts."""
    wf = await new_workflow(eng)
    stats = (await eng.workflows.get(wf)).stats
    assert (stats.runs_total, stats.runs_success, stats.runs_failed) == (0, 0, 0)
    durations: list[int] = []

    ok = await eng.executions.execute(wf, {"do": {"first": {"sleep": 0.05}}})
    durations.append(ok.duration_ms or 0)
    stats = (await eng.workflows.get(wf)).stats
    assert (stats.runs_total, stats.runs_success, stats.runs_failed) == (1, 1, 0)
    assert stats.average_duration_ms == durations[0] >= 50

    with pytest.raises(WorkflowExecutionError) as failed:
        await eng.executions.execute(wf, {"do": {"second": {"raise": "no"}}})
    durations.append(
        (await eng.executions.get(failed.value.details["execution_id"])).duration_ms or 0
    )
    with pytest.raises(ExecutionTimeout) as timed_out:
        await eng.executions.execute(wf, {"do": {"first": {"sleep": 5}}}, timeout_seconds=0.2)
    durations.append(
        (await eng.executions.get(timed_out.value.details["execution_id"])).duration_ms or 0
    )
    stats = (await eng.workflows.get(wf)).stats
    assert (stats.runs_total, stats.runs_success, stats.runs_failed) == (3, 1, 2)
    assert stats.average_duration_ms == round(sum(durations) / 3)


# -- idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_returns_the_first_execution(eng: Engine) -> None:
    """The same idempotency key returns the same execution (sync and async); others are new."""
    wf = await new_workflow(eng)
    first = await eng.executions.execute(wf, {"n": 1}, idempotency_key="order-1")
    again = await eng.executions.execute(wf, {"n": 2}, idempotency_key="order-1")
    assert again.execution_id == first.execution_id
    assert again.parameters == {"n": 1}
    assert PROBE.runs(first.execution_id) == {"first": 1, "second": 1, "third": 1}
    other = await eng.executions.execute(wf, {"n": 1}, idempotency_key="order-2")
    assert other.execution_id != first.execution_id

    queued = await eng.executions.execute(
        wf, {"do": {"first": {"gate": "g"}}}, wait=False, idempotency_key="async-1"
    )
    repeat = await eng.executions.execute(wf, wait=False, idempotency_key="async-1")
    assert repeat.execution_id == queued.execution_id
    PROBE.gate("g").set()
    waited = await eng.executions.execute(wf, idempotency_key="async-1")
    assert waited.execution_id == queued.execution_id
    assert waited.status is ExecutionStatus.COMPLETED
    assert (await eng.executions.list()).pagination.total_items == 3


async def test_repeated_request_for_a_finished_execution_is_prompt(make: EngineFactory) -> None:
    """A repeated sync request for a finished execution answers at once, not after a poll."""
    engine = make(settings=fast(poll_interval=2.0))
    async with engine:
        wf = await new_workflow(engine)
        first = await engine.executions.execute(wf, idempotency_key="k")
        started = time.monotonic()
        again = await engine.executions.execute(wf, idempotency_key="k")
        assert time.monotonic() - started < 0.5
        assert again == first
        started = time.monotonic()
        waited = await engine.executions.wait(first.execution_id, timeout=5)
        assert time.monotonic() - started < 0.5
        assert waited == first


async def test_idempotency_keys_belong_to_one_workflow(eng: Engine) -> None:
    """The same idempotency key on two workflows makes two executions."""
    first = await eng.executions.execute(await new_workflow(eng), idempotency_key="k")
    second = await eng.executions.execute(await new_workflow(eng), idempotency_key="k")
    assert first.execution_id != second.execution_id
    assert first.workflow_id != second.workflow_id


async def test_concurrent_requests_with_one_key_make_one_execution(eng: Engine) -> None:
    """Many concurrent requests with one idempotency key all get the same execution."""
    wf = await new_workflow(eng)
    seen: list[str] = []

    async def one() -> None:
        execution = await eng.executions.execute(wf, wait=False, idempotency_key="same")
        seen.append(execution.execution_id)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert len(set(seen)) == 1
    assert (await eng.executions.list()).pagination.total_items == 1


@pytest.mark.parametrize("key", ["", "k" * 256, 7])
async def test_bad_idempotency_key(eng: Engine, key: Any) -> None:
    """An empty, too long or non-string idempotency key is an InvalidRequest."""
    wf = await new_workflow(eng)
    with pytest.raises(InvalidRequest) as caught:
        await eng.executions.execute(wf, idempotency_key=key)
    assert caught.value.details["field"] == "idempotency_key"


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"quantity": 1}, "parameters.customer_id"),
        ({"customer_id": "c1", "quantity": "many"}, "parameters.quantity"),
        ({"customer_id": "c1", "quantity": 1, "colour": "red"}, "parameters.colour"),
    ],
)
async def test_parameters_of_the_wrong_shape(
    eng: Engine, params: dict[str, Any], field: str
) -> None:
    """Missing, mistyped or unknown parameters raise InvalidParameters naming the field."""
    wf = await new_workflow(eng, "test_typed")
    with pytest.raises(InvalidParameters) as caught:
        await eng.executions.execute(wf, params)
    assert caught.value.http_status == 400
    fields = {caught.value.details.get("field")} | {
        e.get("field") for e in caught.value.details.get("errors", [])
    }
    assert field in fields, caught.value.details
    assert field in caught.value.message or field in str(caught.value.details)
    assert (await eng.executions.list()).pagination.total_items == 0


async def test_parameter_values_are_checked(eng: Engine) -> None:
    """check_parameters raising ParameterValidationError refuses the execution with that error."""
    wf = await new_workflow(eng, "test_typed")
    with pytest.raises(ParameterValidationError) as caught:
        await eng.executions.execute(wf, {"customer_id": "c1", "quantity": 0})
    assert caught.value.http_status == 422
    assert caught.value.details == {"field": "parameters.quantity"}
    execution = await eng.executions.execute(wf, {"customer_id": "c1", "quantity": 2})
    assert execution.result == {"customer": "c1", "quantity": 2}


async def test_parameters_must_be_an_object(eng: Engine) -> None:
    """Parameters that are not an object raise InvalidParameters."""
    wf = await new_workflow(eng)
    with pytest.raises(InvalidParameters):
        await eng.executions.execute(wf, ["a", "b"])  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, object()])
async def test_parameters_must_be_json(eng: Engine, value: Any) -> None:
    """Parameters JSON cannot hold (NaN, sets, objects) raise InvalidParameters, not a crash."""
    wf = await new_workflow(eng)
    with pytest.raises(InvalidParameters) as caught:
        await eng.executions.execute(wf, {"x": value})
    assert caught.value.details["field"] == "parameters"
    assert (await eng.executions.list()).pagination.total_items == 0
    assert (await eng.executions.execute(wf, {"x": 1})).status is ExecutionStatus.COMPLETED


# -- events ---------------------------------------------------------------------------------


async def test_events_of_a_completed_execution(make: EngineFactory) -> None:
    """The event hook sees workflow.executed, a step_completed per step, then execution.completed."""
    recorder = Recorder()
    engine = make(plugins=(recorder,))
    async with engine:
        wf = await new_workflow(engine)
        execution = await engine.executions.execute(wf)
    kinds = recorder.of(execution.execution_id)
    assert kinds == [
        "workflow.executed",
        "execution.step_completed",
        "execution.step_completed",
        "execution.step_completed",
        "execution.completed",
    ]
    events = [e for e in recorder.events if _concerns(e, execution.execution_id)]
    assert [e.data["step"]["name"] for e in events[1:4]] == ["first", "second", "third"]
    assert events[0].data["workflow_id"] == wf
    assert events[-1].data["status"] == "completed"
    assert events[-1].data["result"] == {"done": 3}


async def test_events_of_a_failed_execution(make: EngineFactory) -> None:
    """A failing execution emits execution.failed (with its error), not execution.completed."""
    recorder = Recorder()
    engine = make(plugins=(recorder,))
    async with engine:
        wf = await new_workflow(engine)
        with pytest.raises(WorkflowExecutionError) as caught:
            await engine.executions.execute(wf, {"do": {"second": {"raise": "bad"}}})
    execution_id = caught.value.details["execution_id"]
    assert recorder.of(execution_id) == [
        "workflow.executed",
        "execution.step_completed",
        "execution.failed",
    ]
    failed = recorder.events[-1]
    assert failed.data["status"] == "failed"
    assert failed.data["error"]["code"] == "WORKFLOW_EXECUTION_ERROR"


# -- REST through the ASGI adapter -------------------------------------------------------------


@pytest.fixture
async def rest(make: EngineFactory) -> AsyncIterator[tuple[Engine, httpx.AsyncClient]]:
    """A running engine and an httpx client speaking to its ASGI app with an all-scopes token."""
    engine = make()
    token = engine.tokens.create_token("usr_rest")
    app = create_app(engine, rate_limit=None)
    async with engine:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield engine, client


def _data(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status", "error"}
    assert body["status"] == "error"
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    details: dict[str, Any] = body["error"]["details"]
    return details


async def test_rest_execute_sync(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """POST /workflows/{id}/execute answers 200 with the completed execution in the seed's shape."""
    engine, client = rest
    wf = await new_workflow(engine)
    data = _data(
        await client.post(
            f"/workflows/{wf}/execute",
            json={
                "parameters": {"a": 1},
                "execution_options": {"timeout_seconds": 30, "wait_for_completion": True},
            },
        ),
        200,
    )
    assert set(data) == SEED_KEYS | EXTRA_KEYS
    assert data["created_by"] == "usr_rest"
    assert data["status"] == "completed"
    assert data["result"] == {"done": 3}
    assert data["parameters"] == {"a": 1}
    got = _data(await client.get(f"/workflow_executions/{data['execution_id']}"), 200)
    assert got == data


async def test_rest_execute_timeout(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """A sync execute past its timeout answers 504 EXECUTION_TIMEOUT; the execution is timed_out."""
    engine, client = rest
    wf = await new_workflow(engine)
    response = await client.post(
        f"/workflows/{wf}/execute",
        json={
            "parameters": {"do": {"first": {"sleep": 30}}},
            "execution_options": {"timeout_seconds": 0.2},
        },
    )
    details = _error(response, 504, "EXECUTION_TIMEOUT")
    got = _data(await client.get(f"/workflow_executions/{details['execution_id']}"), 200)
    assert got["status"] == "timed_out"


async def test_rest_execute_failure(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """A failing execution answers 500 WORKFLOW_EXECUTION_ERROR naming the execution and step."""
    engine, client = rest
    wf = await new_workflow(engine)
    response = await client.post(
        f"/workflows/{wf}/execute",
        json={"parameters": {"do": {"third": {"raise": "ledger closed"}}}},
    )
    details = _error(response, 500, "WORKFLOW_EXECUTION_ERROR")
    assert details["step"] == "third"
    assert details["error_message"] == "ledger closed"
    got = _data(await client.get(f"/workflow_executions/{details['execution_id']}"), 200)
    assert got["status"] == "failed"


async def test_rest_execute_without_waiting(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """wait_for_completion false answers 202 with the execution as it stands."""
    engine, client = rest
    wf = await new_workflow(engine)
    response = await client.post(
        f"/workflows/{wf}/execute",
        json={
            "parameters": {"do": {"first": {"gate": "g"}}},
            "execution_options": {"wait_for_completion": False},
        },
    )
    data = _data(response, 202)
    assert data["status"] in ("queued", "running")
    PROBE.gate("g").set()
    assert (await engine.executions.wait(data["execution_id"], 5)).status.value == "completed"


async def test_rest_async_get_list_cancel(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """execute_async answers 202; get, list and cancel work; a second cancel answers 409."""
    engine, client = rest
    wf = await new_workflow(engine)
    url = "https://example.com/webhooks/workflow_completed"
    response = await client.post(
        f"/workflows/{wf}/execute_async",
        json={
            "parameters": {"do": {"first": {"gate": "never"}}},
            "callback_url": url,
            "callback_secret": SECRET,
        },
    )
    data = _data(response, 202)
    assert data["status"] in ("queued", "running")
    assert data["callback_url"] == url
    assert SECRET not in response.text
    execution_id = data["execution_id"]

    got = _data(await client.get(f"/workflow_executions/{execution_id}"), 200)
    assert got["execution_id"] == execution_id
    assert SECRET not in str(got)
    listed = _data(
        await client.get("/workflow_executions", params={"workflow_id": wf, "page_size": 5}), 200
    )
    assert [i["execution_id"] for i in listed["items"]] == [execution_id]
    assert listed["pagination"] == {"page": 1, "page_size": 5, "total_items": 1, "total_pages": 1}

    cancelled = _data(await client.post(f"/workflow_executions/{execution_id}/cancel"), 200)
    assert cancelled["status"] == "cancelled"
    _error(await client.post(f"/workflow_executions/{execution_id}/cancel"), 409, "INVALID_STATE")
    _error(await client.get("/workflow_executions/exec_missing"), 404, "EXECUTION_NOT_FOUND")
    _error(
        await client.get("/workflow_executions", params={"status": "nope"}),
        400,
        "INVALID_REQUEST",
    )


async def test_rest_async_bad_callback(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """A private callback URL over REST answers 400 INVALID_REQUEST naming callback_url."""
    engine, client = rest
    wf = await new_workflow(engine)
    response = await client.post(
        f"/workflows/{wf}/execute_async", json={"callback_url": "http://127.0.0.1/x"}
    )
    assert _error(response, 400, "INVALID_REQUEST")["field"] == "callback_url"


async def test_rest_idempotency_key_header(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """The Idempotency-Key header returns the first execution again; another key a new one."""
    engine, client = rest
    wf = await new_workflow(engine)
    first = _data(
        await client.post(f"/workflows/{wf}/execute", json={}, headers={"Idempotency-Key": "k1"}),
        200,
    )
    again = _data(
        await client.post(f"/workflows/{wf}/execute", json={}, headers={"Idempotency-Key": "k1"}),
        200,
    )
    assert again["execution_id"] == first["execution_id"]
    queued = _data(
        await client.post(
            f"/workflows/{wf}/execute_async", json={}, headers={"Idempotency-Key": "k2"}
        ),
        202,
    )
    repeat = _data(
        await client.post(
            f"/workflows/{wf}/execute_async", json={}, headers={"Idempotency-Key": "k2"}
        ),
        202,
    )
    assert repeat["execution_id"] == queued["execution_id"] != first["execution_id"]
    listed = _data(await client.get("/workflow_executions"), 200)
    assert listed["pagination"]["total_items"] == 2


async def test_rest_needs_executions_write(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """A token without executions:write gets 403 FORBIDDEN on execute and cancel; reads work."""
    engine, client = rest
    wf = await new_workflow(engine)
    done = await engine.executions.execute(wf)
    reader = engine.tokens.create_token("usr_reader", ["executions:read", "workflows:read"])
    headers = {"Authorization": f"Bearer {reader}"}
    for path in (f"/workflows/{wf}/execute", f"/workflows/{wf}/execute_async"):
        _error(await client.post(path, json={}, headers=headers), 403, "FORBIDDEN")
    _error(
        await client.post(f"/workflow_executions/{done.execution_id}/cancel", headers=headers),
        403,
        "FORBIDDEN",
    )
    _data(await client.get(f"/workflow_executions/{done.execution_id}", headers=headers), 200)
    assert (await engine.executions.list()).pagination.total_items == 1


@pytest.mark.parametrize(
    "body",
    [
        {"parameters": "x"},
        {"execution_options": {"timeout_seconds": "soon"}},
        {"execution_options": {"wait_for_completion": "yes"}},
        {"execution_options": {"timeout_seconds": 0}},
        {"execution_options": {"retries": 1}},
        {"bogus": 1},
        {"idempotency_key": ""},
        [1, 2],
    ],
)
async def test_rest_bad_execute_bodies(rest: tuple[Engine, httpx.AsyncClient], body: Any) -> None:
    """Malformed execute bodies answer 400 with an error envelope, never a 500."""
    engine, client = rest
    wf = await new_workflow(engine)
    response = await client.post(f"/workflows/{wf}/execute", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("INVALID_REQUEST", "INVALID_PARAMETERS")
    assert (await engine.executions.list()).pagination.total_items == 0


async def test_rest_execute_unknown_workflow(rest: tuple[Engine, httpx.AsyncClient]) -> None:
    """Executing an unknown or inactive workflow over REST answers 404 / 409 envelopes."""
    engine, client = rest
    _error(await client.post("/workflows/wf_nope/execute", json={}), 404, "WORKFLOW_NOT_FOUND")
    inactive = await new_workflow(engine, active=False)
    _error(await client.post(f"/workflows/{inactive}/execute", json={}), 409, "INVALID_STATE")
    needs = await new_workflow(engine, integrations=[{"id": "int_crm", "required": True}])
    details = _error(
        await client.post(f"/workflows/{needs}/execute_async", json={}),
        409,
        "INTEGRATION_MISSING",
    )
    assert details["integration_id"] == "int_crm"
