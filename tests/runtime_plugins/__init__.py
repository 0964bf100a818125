"""Test-only workflow types for the runtime tests, registered as an ordinary plugin module.

``Engine(path, plugins=[runtime_plugins])`` registers every type below. Their
steps report to :data:`PROBE` (step invocations, what they observed) and take
their behaviour from the execution's parameters, key ``"do"``::

    {"do": {"second": {"gate": "g1", "sleep": 0.2, "raise": "boom"}}}

so one workflow can run executions that behave differently. Behaviours, in
the order they apply: ``block`` (``time.sleep``: blocks the event loop), ``gate`` (wait on ``PROBE.gate(name)``), ``sleep``
(``anyio.sleep``; an interruption of either is noted as ``"interrupted"``), ``durable_sleep`` (``ctx.sleep``), ``signal`` (return
``ctx.wait_for_signal(name, timeout)``, with ``signal_timeout``; ``signals``: wait for each name in turn), ``raise``
(``RuntimeError`` with that message; ``raise_joined``: the message in parts, so
that the parameters never hold it whole), ``return`` (this value as the result),
``see_steps`` (note the steps the store holds for the execution right now).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs

from abi_engine import RetryPolicy, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import ParameterValidationError
from abi_engine.storage.records import ReleaseExecutions
from abi_engine.types import SignalTimeout

__all__ = ["PROBE", "Probe"]


class Probe:
    """What the test types' steps did: invocations per (execution, step), notes, gates."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        #: (execution, step, time.monotonic()) of each step start.
        self.starts: list[tuple[str, str, float]] = []
        self.notes: list[tuple[str, str, Any]] = []
        self.gates: dict[str, anyio.Event] = {}
        self.started: dict[str, anyio.Event] = {}

    def reset(self) -> None:
        """Forget everything (called before each test)."""
        self.__init__()  # type: ignore[misc]

    def gate(self, name: str) -> anyio.Event:
        """The event a step with ``{"gate": name}`` waits on."""
        return self.gates.setdefault(name, anyio.Event())

    def step_started(self, name: str) -> anyio.Event:
        """Set when a step of that name starts (in any execution)."""
        return self.started.setdefault(name, anyio.Event())

    def note(self, ctx: StepContext, what: Any) -> None:
        self.notes.append((ctx.execution_id, ctx.step_name, what))

    def notes_of(self, kind: str) -> list[Any]:
        """The notes ``(kind, ...)``, in order."""
        return [what for _, _, what in self.notes if isinstance(what, tuple) and what[0] == kind]

    def runs(self, execution_id: str) -> dict[str, int]:
        """Invocations per step name of one execution."""
        return {s: n for (e, s), n in self.calls.items() if e == execution_id}


PROBE = Probe()


async def behave(ctx: StepContext, default: Any) -> Any:
    """Run the behaviour the parameters ask of this step; return its result."""
    PROBE.calls[(ctx.execution_id, ctx.step_name)] += 1
    PROBE.step_started(ctx.step_name).set()
    todo: Mapping[str, Any] = {}
    plan = ctx.parameters.get("do")
    if isinstance(plan, Mapping):
        todo = plan.get(ctx.step_name) or {}
    PROBE.starts.append((ctx.execution_id, ctx.step_name, time.monotonic()))
    if "block" in todo:
        # A step that blocks the event loop (what steps must not do).
        time.sleep(todo["block"])  # noqa: ASYNC251
    try:
        if "gate" in todo:
            await PROBE.gate(todo["gate"]).wait()
        if "sleep" in todo:
            await anyio.sleep(todo["sleep"])
    except anyio.get_cancelled_exc_class():
        PROBE.note(ctx, "interrupted")
        raise
    if "durable_sleep" in todo:
        await ctx.sleep(todo["durable_sleep"])
    if "signals" in todo:
        got = [ctx.wait_for_signal(name) for name in todo["signals"]]
        PROBE.note(ctx, ("signals", got))
        return {"payloads": got}
    if "signal" in todo:
        try:
            payload = ctx.wait_for_signal(todo["signal"], todo.get("signal_timeout"))
        except SignalTimeout as exc:
            PROBE.note(ctx, ("timeout", exc.name))
            raise
        PROBE.note(ctx, ("signal", payload))
        return {"payload": payload}
    if "raise" in todo:
        raise RuntimeError(todo["raise"])
    if "raise_joined" in todo:
        raise RuntimeError("".join(todo["raise_joined"]))
    if "return" in todo:
        return todo["return"]
    if todo.get("see_steps"):
        engine = ctx.services["engine"]
        seen = [(s.name, s.status.value) for s in engine.store.get_steps(ctx.execution_id)]
        PROBE.note(ctx, ("steps", seen))
    return default


class ThreeSteps(WorkflowType):
    """``first`` -> ``second`` -> ``third``; the result is ``{"done": 3}``."""

    name = "test_three"
    description = "Three scripted steps"

    @step
    async def first(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"n": 1})

    @step
    async def second(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"n": 2, "prev": ctx.results.get("first")})

    @step
    async def third(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"done": 3})


_RETRY = RetryPolicy(attempts=3, backoff_seconds=0.01)


class Flaky(WorkflowType):
    """``flaky`` fails until its attempt number reaches ``parameters.succeed_on``."""

    name = "test_flaky"

    @step(retry=_RETRY)
    async def flaky(self, ctx: StepContext) -> Any:
        PROBE.calls[(ctx.execution_id, ctx.step_name)] += 1
        PROBE.note(ctx, ("attempt", ctx.attempt))
        if ctx.attempt < ctx.parameters.get("succeed_on", 99):
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return {"attempt": ctx.attempt}

    @step
    async def after(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"after": True})


class SlowStep(WorkflowType):
    """``slow`` has a 0.2 s step timeout and sleeps ``parameters.sleep`` seconds."""

    name = "test_step_timeout"

    @step(timeout_seconds=0.2)
    async def slow(self, ctx: StepContext) -> Any:
        PROBE.calls[(ctx.execution_id, ctx.step_name)] += 1
        await anyio.sleep(ctx.parameters.get("sleep", 0))
        return {"slept": ctx.parameters.get("sleep", 0)}

    @step
    async def after(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"after": True})


def _skip_middle(configuration: Mapping[str, Any], parameters: Mapping[str, Any]) -> bool:
    return bool(parameters.get("skip"))


class Skipping(WorkflowType):
    """``middle`` is skipped when ``parameters.skip`` is true."""

    name = "test_skip"

    @step
    async def start(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"start": True})

    @step(skip_if=_skip_middle)
    async def middle(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"middle": True})

    @step
    async def end(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"end": True, "middle": ctx.results.get("middle")})


class Odd(WorkflowType):
    """A step returning a value that is not JSON (``parameters.kind``: set, nan, object)."""

    name = "test_odd"

    @step
    async def odd(self, ctx: StepContext) -> Any:
        PROBE.calls[(ctx.execution_id, ctx.step_name)] += 1
        kind = ctx.parameters.get("kind")
        if kind == "set":
            return {1, 2}
        if kind == "nan":
            return {"x": float("nan")}
        return object()

    @step
    async def after(self, ctx: StepContext) -> Any:
        return await behave(ctx, {"after": True})


@attrs.define(kw_only=True)
class OrderParameters:
    """The parameters of :class:`Typed`."""

    customer_id: str
    quantity: int
    note: str | None = None


class Typed(WorkflowType):
    """Parameters with a schema; ``quantity`` must be positive (a value rule)."""

    name = "test_typed"
    Parameters = OrderParameters

    def check_parameters(self, params: Any, config: Any) -> None:
        if params.quantity <= 0:
            raise ParameterValidationError(
                "'parameters.quantity' must be positive", {"field": "parameters.quantity"}
            )

    @step
    async def total(self, ctx: StepContext) -> Any:
        return {"customer": ctx.params.customer_id, "quantity": ctx.params.quantity}


class Progressing(WorkflowType):
    """``items`` works through ``parameters.items`` units, keeping its progress after each;
    it fails once after ``parameters.fail_after`` units on its first attempt; after
    ``parameters.release_after`` units of its first run it loses the execution (as when
    another engine takes it over); ``parameters.tagged`` keeps its progress by unit number."""

    name = "test_progress"

    @step(retry=_RETRY)
    async def items(self, ctx: StepContext) -> Any:
        PROBE.note(ctx, ("attempt", ctx.attempt, ctx.progress, dict(ctx.signals)))
        done: list[int] = list((ctx.progress or {}).get("done", []))
        for item in range(ctx.parameters.get("items", 4)):
            if item in done:
                continue
            if ctx.attempt == 1 and len(done) == ctx.parameters.get("fail_after", -1):
                raise ConnectionError("the target went away")
            PROBE.note(ctx, ("work", item))
            done.append(item)
            if len(done) == ctx.parameters.get("release_after", -1) and not PROBE.notes_of("lost"):
                PROBE.note(ctx, ("lost", item))
                engine = ctx.services["engine"]
                held = engine.runtime.claims.snapshot()
                engine.store.apply([ReleaseExecutions(claims=tuple(held.items()))])
            if ctx.parameters.get("tagged"):
                await ctx.save_progress({"done": done, "tags": {n: f"unit {n}" for n in done}})
                PROBE.note(ctx, ("after save", ctx.progress, dict(ctx.signals)))
            else:
                await ctx.save_progress({"done": done})
        if ctx.parameters.get("save_bad"):
            await ctx.save_progress({"bad": {1, 2}})
        return {"done": done}


TYPES: tuple[type[WorkflowType], ...] = (
    ThreeSteps,
    Flaky,
    SlowStep,
    Skipping,
    Odd,
    Typed,
    Progressing,
)


@hookimpl
def abi_workflow_types(register: Callable[[type[WorkflowType]], None]) -> None:
    for workflow_type in TYPES:
        register(workflow_type)
