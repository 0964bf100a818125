"""The queued-executions quota counts now and then, never admitting more than a count
per request would (``abi_engine.api._quota``, issue #18)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abi_engine import Engine, ExecutionStatus, Limits, StepContext, hookimpl
from abi_engine.api import ApiRequest, call
from abi_engine.api._quota import RECOUNT_SECONDS, QueuedBudget, queued_budget
from abi_engine.auth import Principal
from abi_engine.errors import InvalidState
from abi_engine.runtime.settings import RuntimeSettings

pytestmark = pytest.mark.anyio

ANN = Principal(user_id="usr_ann")
GATE: dict[str, anyio.Event] = {}


class Held:
    """A ``held`` step that waits for ``GATE["open"]``: one worker, the rest stay queued."""

    @hookimpl
    def abi_step_handlers(self, register: Callable[[str, Any], None]) -> None:
        async def held(ctx: StepContext) -> Any:
            with anyio.fail_after(120):
                await GATE["open"].wait()
            return None

        register("held", held)


@pytest.fixture
def engine(databases: Callable[..., str | Path]) -> Iterator[Engine]:
    made = Engine(
        databases(),
        plugins=(Held(),),
        limits=Limits(max_queued_executions_per_user=20),
        runtime=RuntimeSettings(workers=1),
    )
    GATE["open"] = anyio.Event()
    yield made
    GATE["open"].set()
    GATE.clear()
    made.close()


async def _execute_async(engine: Engine, wf: str) -> str:
    request = ApiRequest(path={"workflow_id": wf}, body={})
    answer = await call(engine, ANN, "execute_workflow_async", request)
    return str(answer["execution_id"])


async def test_counts_rarely_and_refuses_at_the_limit(engine: Engine) -> None:
    """20 places: a first count grants half the free places, later counts half of what is
    left, so about log2(20) counts fill the queue, and the 21st queued request is refused
    (one runs, 20 wait), as when every request counted; cancelling frees a place at once."""
    async with engine:
        wf = await engine.workflows.create(
            {"name": "held", "type": "custom", "configuration": {"handler": "held"}}
        )
        await engine.workflows.activate(wf.id)
        taken: list[str] = []
        refused: InvalidState | None = None
        for _ in range(40):
            try:
                taken.append(await _execute_async(engine, wf.id))
            except InvalidState as exc:
                refused = exc
                break
        assert refused is not None
        assert refused.details == {
            "limit": "max_queued_executions_per_user",
            "max_queued_executions_per_user": 20,
        }
        assert 20 <= len(taken) <= 21  # the first may have started before the others
        counts = queued_budget(engine).counts
        assert counts < len(taken) // 2, counts
        queued = [
            e for e in taken if (await engine.executions.get(e)).status is ExecutionStatus.QUEUED
        ]
        await engine.executions.cancel(queued[-1])
        taken.append(await _execute_async(engine, wf.id))  # the freed place, counted again
        with pytest.raises(InvalidState):
            await _execute_async(engine, wf.id)
        GATE["open"].set()


async def test_a_count_is_trusted_one_second(engine: Engine) -> None:
    """Within RECOUNT_SECONDS places are taken without counting; after it, counted again."""
    now = [100.0]
    budget = QueuedBudget(engine, clock=lambda: now[0])
    async with engine:
        assert await budget.take("usr_ann", 20) is None
        assert await budget.take("usr_ann", 20) is None
        assert budget.counts == 1
        now[0] += RECOUNT_SECONDS
        assert await budget.take("usr_ann", 20) is None
        assert budget.counts == 2
        assert await budget.take("usr_bob", 20) is None  # per user
        assert budget.counts == 3


# -- the rule, against a queue the test keeps -------------------------------------------------


class _Queue:
    """A store whose ``count_owned`` counts a list the test fills and drains."""

    blocking = False

    def __init__(self) -> None:
        self.queued = 0

    def count_owned(self, kind: str, user_id: str, limit: int) -> int:
        return min(self.queued, limit)


_STEPS = st.lists(
    st.one_of(
        st.just(("take", 0)),
        st.tuples(st.just("start"), st.integers(1, 5)),
        st.tuples(st.just("tick"), st.floats(0, 1.5)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 50), steps=_STEPS)
def test_never_over_the_limit_and_refused_only_when_full(
    limit: int, steps: list[tuple[str, float]]
) -> None:
    """Whatever the order of requests, started executions and time passing, one process's
    acceptances never take the queue past the limit, and a refusal means it is full."""
    queue = _Queue()
    now = [0.0]
    budget = QueuedBudget(SimpleNamespace(store=queue), clock=lambda: now[0])  # type: ignore[arg-type]

    async def play() -> None:
        for kind, amount in steps:
            if kind == "take":
                refused = await budget.take("usr_ann", limit)
                if refused is None:
                    queue.queued += 1
                    budget.done("usr_ann")  # stored: counts see it
                    assert queue.queued <= limit
                else:
                    assert queue.queued >= limit
            elif kind == "start":
                queue.queued = max(0, queue.queued - int(amount))
            else:
                now[0] += amount

    anyio.run(play)


async def test_concurrent_requests_never_pass_the_limit(engine: Engine) -> None:
    """Requests arriving at once, each counting while the others' counts are still out,
    never take one user past the limit (found by the breaker: 30 at once were all
    admitted past a limit of 20)."""
    async with engine:
        wf = await engine.workflows.create(
            {"name": "held", "type": "custom", "configuration": {"handler": "held"}}
        )
        await engine.workflows.activate(wf.id)
        taken: list[str] = []
        refused: list[InvalidState] = []

        async def one() -> None:
            try:
                taken.append(await _execute_async(engine, wf.id))
            except InvalidState as exc:
                refused.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(one)
        assert len(taken) <= 21, len(taken)  # 20 queued, and one that may have started
        assert len(taken) >= 20  # and refused only when full
        assert len(refused) == 30 - len(taken)
        GATE["open"].set()
