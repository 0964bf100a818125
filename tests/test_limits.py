"""Limits a tenant cannot pass (``Engine(limits=Limits(...))``), on each engine backend.

What one user may hold (schedules, webhooks, queued executions; integrations
engine-wide), how large a step's result and saved progress may be, and how many
bytes one page of a list may carry. Over the operations (``abi_engine.api``,
which REST and ``abi.workflows`` both call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from abi_engine import Engine, ExecutionStatus, Limits, StepContext, hookimpl
from abi_engine.api import ApiRequest, bounded_page, call
from abi_engine.auth import Principal
from abi_engine.errors import InvalidState, WorkflowExecutionError
from abi_engine.models import Pagination
from abi_engine.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.anyio

ANN = Principal(user_id="usr_ann")
BOB = Principal(user_id="usr_bob")
BIG = 100 * 1024 * 1024
#: ``"open"``: the event the ``slow`` step waits for (a test sets it; none: it returns at once).
GATE: dict[str, anyio.Event] = {}


class Handlers:
    """Step handlers whose results and progress have the size their parameters ask for."""

    @hookimpl
    def abi_step_handlers(self, register: Callable[[str, Any], None]) -> None:
        async def sized(ctx: StepContext) -> Any:
            return "x" * int(ctx.parameters["n"])

        async def many(ctx: StepContext) -> Any:
            return list(range(int(ctx.parameters["n"])))

        async def progress(ctx: StepContext) -> Any:
            await ctx.save_progress({"pad": "p" * int(ctx.parameters["n"])})
            return "saved"

        async def slow(ctx: StepContext) -> Any:
            gate = GATE.get("open")
            if gate is not None:  # held until the test has seen what it waits for
                with anyio.fail_after(120):
                    await gate.wait()
            return None

        for name, fn in (("sized", sized), ("many", many), ("progress", progress), ("slow", slow)):
            register(name, fn)


@pytest.fixture
def make(databases: Callable[..., str | Path]) -> Iterator[Callable[..., Engine]]:
    """``make(**limits)``: an engine on this backend's database with those limits."""
    made: list[Engine] = []

    def build(runtime: RuntimeSettings | None = None, **limits: Any) -> Engine:
        engine = Engine(
            databases(), plugins=(Handlers(),), limits=Limits(**limits), runtime=runtime
        )
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.close()


async def op(engine: Engine, actor: Principal, name: str, **request: Any) -> Any:
    return await call(engine, actor, name, ApiRequest(**request))


async def workflow(engine: Engine, handler: str = "sized") -> str:
    body = {"name": "limits", "type": "custom", "configuration": {"handler": handler}}
    wf: str = (await op(engine, ANN, "create_workflow", body=body))["id"]
    await op(engine, ANN, "activate_workflow", path={"workflow_id": wf})
    return wf


def refused(caught: pytest.ExceptionInfo[InvalidState], limit: str, value: int) -> None:
    assert caught.value.http_status == 409
    assert caught.value.details == {"limit": limit, limit: value}
    assert limit in caught.value.message


# -- counts ------------------------------------------------------------------------------------


async def test_schedules_per_user(make: Callable[..., Engine]) -> None:
    """A user's third schedule is refused (409, naming the limit); another user's is not;
    deleting one frees a place."""
    engine = make(max_schedules_per_user=2)
    async with engine:
        wf = await workflow(engine)
        body = {"name": "s", "schedule_type": "cron", "cron_expression": "0 0 * * *"}
        path = {"workflow_id": wf}
        made = [await op(engine, ANN, "create_schedule", path=path, body=body) for _ in range(2)]
        with pytest.raises(InvalidState) as caught:
            await op(engine, ANN, "create_schedule", path=path, body=body)
        refused(caught, "max_schedules_per_user", 2)
        await op(engine, BOB, "create_schedule", path=path, body=body)
        await op(engine, ANN, "delete_schedule", path={"schedule_id": made[0]["id"]})
        await op(engine, ANN, "create_schedule", path=path, body=body)


async def test_webhooks_per_user(make: Callable[..., Engine]) -> None:
    """A user's second webhook is refused when the limit is one; another user's is not."""
    engine = make(max_webhooks_per_user=1)
    body = {"url": "https://example.com/h", "events": ["workflow.created"]}
    await op(engine, ANN, "create_webhook", body=body)
    with pytest.raises(InvalidState) as caught:
        await op(engine, ANN, "create_webhook", body=body)
    refused(caught, "max_webhooks_per_user", 1)
    await op(engine, BOB, "create_webhook", body=body)


async def test_integrations_engine_wide(make: Callable[..., Engine]) -> None:
    """A third connection is refused when the limit is two; replacing one still works."""
    engine = make(max_integrations=2)
    body = {"provider": "http", "config": {"base_url": "https://example.com"}}
    for name in ("int_a", "int_b"):
        await op(engine, ANN, "put_integration", path={"integration_id": name}, body=body)
    with pytest.raises(InvalidState) as caught:
        await op(engine, BOB, "put_integration", path={"integration_id": "int_c"}, body=body)
    refused(caught, "max_integrations", 2)
    await op(engine, BOB, "put_integration", path={"integration_id": "int_a"}, body=body)


async def test_queued_executions_per_user(make: Callable[..., Engine]) -> None:
    """With one worker busy, a user's asynchronous executions stop being taken once two wait
    in the queue; another user's still are; cancelling queued ones frees places."""
    engine = make(runtime=RuntimeSettings(workers=1), max_queued_executions_per_user=2)
    GATE["open"] = gate = anyio.Event()  # the first execution holds the one worker
    try:
        await _queued_executions_per_user(engine)
    finally:
        gate.set()
        GATE.clear()


async def _queued_executions_per_user(engine: Engine) -> None:
    async with engine:
        wf = await workflow(engine, "slow")
        path = {"workflow_id": wf}
        taken: list[str] = []
        refusal: InvalidState | None = None
        for _ in range(4):  # one running at most, two queued: the fourth at the latest
            try:
                answer = await op(engine, ANN, "execute_workflow_async", path=path, body={})
            except InvalidState as exc:
                refusal = exc
                break
            taken.append(answer["execution_id"])
        assert refusal is not None
        assert refusal.details == {
            "limit": "max_queued_executions_per_user",
            "max_queued_executions_per_user": 2,
        }
        assert 2 <= len(taken) <= 3
        await op(engine, BOB, "execute_workflow_async", path=path, body={})
        for execution_id in taken:
            state = await engine.executions.get(execution_id)
            if not state.status.finished:
                await engine.executions.cancel(execution_id)
        await op(engine, ANN, "execute_workflow_async", path=path, body={})
        GATE["open"].set()  # the rest run to their end before the engine stops


# -- sizes ---------------------------------------------------------------------------------------


async def test_a_100_mb_result_fails_its_step(make: Callable[..., Engine]) -> None:
    """A step returning 100 MB fails at once (no retry) with ResultTooLarge naming the limit;
    nothing of it is stored, and the engine goes on."""
    engine = make()
    async with engine:
        wf = await workflow(engine)
        with pytest.raises(WorkflowExecutionError) as caught:
            await engine.executions.execute(wf, {"n": BIG})
        execution = await engine.executions.get(caught.value.details["execution_id"])
        assert execution.status is ExecutionStatus.FAILED
        assert execution.error is not None
        assert execution.error.type == "ResultTooLarge"
        assert "1048576" in execution.error.message
        assert execution.result is None
        assert execution.steps is not None
        assert execution.steps[0].attempts == 1
        ok = await engine.executions.execute(wf, {"n": 10})
        assert ok.result == "x" * 10


async def test_a_large_structured_result_fails_its_step(make: Callable[..., Engine]) -> None:
    """The limit counts the JSON's bytes whatever its shape: a list over it fails too, a
    result just under it completes."""
    engine = make(max_result_bytes=10_000)
    async with engine:
        wf = await workflow(engine, "many")
        with pytest.raises(WorkflowExecutionError) as caught:
            await engine.executions.execute(wf, {"n": 5_000})
        assert caught.value.details["error_type"] == "ResultTooLarge"
        done = await engine.executions.execute(wf, {"n": 100})
        assert done.result == list(range(100))


async def test_saved_progress_is_bounded(make: Callable[..., Engine]) -> None:
    """save_progress of more than max_progress_bytes raises ProgressTooLarge in the step,
    which fails without retrying; a smaller one is saved."""
    engine = make(max_progress_bytes=1_000)
    async with engine:
        wf = await workflow(engine, "progress")
        with pytest.raises(WorkflowExecutionError) as caught:
            await engine.executions.execute(wf, {"n": 2_000})
        assert caught.value.details["error_type"] == "ProgressTooLarge"
        execution = await engine.executions.get(caught.value.details["execution_id"])
        assert execution.steps is not None
        assert execution.steps[0].attempts == 1
        assert (await engine.executions.execute(wf, {"n": 10})).result == "saved"


# -- pages ----------------------------------------------------------------------------------------


async def test_a_page_too_large_comes_at_a_smaller_page_size(make: Callable[..., Engine]) -> None:
    """Ten workflows of ~3 KB of metadata under a 10 KB page bound: the answer's page_size
    divides the requested one, and following pagination visits each workflow once."""
    engine = make(max_page_bytes=10_000)
    made = set()
    for index in range(10):
        body = {
            "name": f"w{index}",
            "type": "custom",
            "configuration": {"handler": "sized"},
            "metadata": {"pad": "m" * 3_000},
        }
        made.add((await op(engine, ANN, "create_workflow", body=body))["id"])
    first = await op(engine, ANN, "list_workflows", query={"page_size": "10"})
    size = first["pagination"]["page_size"]
    assert size < 10
    assert 10 % size == 0
    assert first["pagination"]["total_pages"] == -(-10 // size)
    seen: list[str] = []
    page = first
    while True:
        seen += [w["id"] for w in page["items"]]
        pagination = page["pagination"]
        if pagination["page"] >= pagination["total_pages"]:
            break
        query = {"page": str(pagination["page"] + 1), "page_size": str(pagination["page_size"])}
        page = await op(engine, ANN, "list_workflows", query=query)
    assert sorted(seen) == sorted(made)


@pytest.mark.parametrize(
    ("page", "page_size", "sizes", "expected"),
    [
        (1, 10, [90] * 10, (1, 10, 10)),  # fits
        (1, 10, [400] * 10, (1, 2, 2)),  # 1000 bytes: two of 400 fit, five do not
        (3, 10, [400] * 10, (11, 2, 2)),  # items 20.. are page 11 of size 2
        (2, 6, [300] * 6, (3, 3, 3)),  # items 6.. are page 3 of size 3
        (1, 7, [600] * 7, (1, 1, 1)),  # 7 is prime: one at a time
        (1, 10, [5000] * 10, (1, 1, 1)),  # one item over the bound still comes alone
    ],
)
def test_bounded_page_arithmetic(
    page: int, page_size: int, sizes: list[int], expected: tuple[int, int, int]
) -> None:
    """The page keeps the largest divisor of page_size that fits, renumbered to start at the
    same item (a bound of 1000 bytes)."""
    items = ["x" * (size - 3) for size in sizes]  # each "..." plus its comma: size bytes
    total = 100
    pages = -(-total // page_size)
    pagination = Pagination(page=page, page_size=page_size, total_items=total, total_pages=pages)
    data = bounded_page(items, pagination, 1_000)
    got = data["pagination"]
    assert (got["page"], got["page_size"], len(data["items"])) == expected
    assert (got["page"] - 1) * got["page_size"] == (page - 1) * page_size
    assert got["total_pages"] == -(-total // got["page_size"])


def test_key_lengths_are_bounded_at_the_top_level_as_the_schema_says() -> None:
    """``propertyNames`` reaches the top-level keys only; the check bounds exactly those
    (the bytes bound the keys below), and refuses U+0000 at any depth."""
    from abi_engine.limits import METADATA

    METADATA.check({"outer": {"k" * 200: 1}})
    with pytest.raises(ValueError, match="keys are at most 128"):
        METADATA.check({"k" * 129: 1})
    assert METADATA.json_schema()["propertyNames"] == {"maxLength": 128}
    for nul in ({"a": {"b\x00": 1}}, {"a": ["x", {"b": "c\x00"}]}):
        with pytest.raises(ValueError, match="NUL"):
            METADATA.check(nul)


def test_a_nul_inside_free_form_json_is_named_exactly() -> None:
    """The error names the field down to the value inside the JSON (``metadata.a[1].b``)."""
    from abi_engine.converter import structure
    from abi_engine.errors import InvalidRequest
    from abi_engine.workflows import WorkflowRequest

    body = {"name": "n", "type": "custom", "metadata": {"a": ["x", {"b": "c\x00"}]}}
    with pytest.raises(InvalidRequest) as refused:
        structure(body, WorkflowRequest)
    assert refused.value.details["field"] == "metadata.a[1].b"
    assert "NUL" in refused.value.message
