"""abi_engine.testing: engine_for, run_workflow and the pytest fixtures, used as a plugin
author would, on a third-party workflow type of about twenty lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from abi_engine import Engine, ExecutionStatus, StepContext, WorkflowType, hookimpl, step
from abi_engine.errors import InvalidParameters, WorkflowExecutionError
from abi_engine.testing import (  # noqa: F401 - fixtures
    abi_engine,
    abi_engine_options,
    engine_for,
    run_workflow,
)

pytestmark = pytest.mark.anyio


# -- the third-party type: what a plugin author writes --------------------------------------------


class Greeting(WorkflowType):
    """Greets someone, then shouts it."""

    name = "greeting"
    description = "Greets someone"

    @attrs.define(kw_only=True)
    class Parameters:
        who: str
        fail: bool = False

    @step
    async def greet(self, ctx: StepContext) -> dict[str, Any]:
        if ctx.params.fail:
            raise ValueError(f"cannot greet {ctx.params.who}")
        return {"text": f"Hello, {ctx.params.who}!"}

    @step
    async def shout(self, ctx: StepContext) -> dict[str, Any]:
        return {"text": ctx.results["greet"]["text"].upper()}


class GreetingPlugin:
    @hookimpl
    def abi_workflow_types(self, register: Callable[[type[WorkflowType]], None]) -> None:
        register(Greeting)


# -- engine_for and run_workflow ---------------------------------------------------------------


async def test_engine_for_and_run_workflow() -> None:
    """engine_for gives a started in-memory engine with the plugin; run_workflow executes it."""
    async with engine_for(GreetingPlugin()) as engine:
        assert engine.running
        assert "greeting" in engine.workflow_types
        assert "custom" in engine.workflow_types  # entry-point plugins are loaded too
        execution = await run_workflow(engine, "greeting", parameters={"who": "Ada"})
    assert execution.status is ExecutionStatus.COMPLETED
    assert execution.result == {"text": "HELLO, ADA!"}
    assert execution.steps is not None
    assert [s.name for s in execution.steps] == ["greet", "shout"]
    assert not engine.running


async def test_engine_for_on_a_file(tmp_path: Path) -> None:
    """engine_for(db=...) keeps the executions in that SQLite file after it closes."""
    db = tmp_path / "plugin.db"
    async with engine_for(GreetingPlugin(), db=str(db), load_entry_points=False) as engine:
        assert set(engine.workflow_types) == {"greeting"}
        execution = await run_workflow(engine, "greeting", parameters={"who": "Bob"})
    reopened = Engine(db, plugins=[GreetingPlugin()], load_entry_points=False)
    try:
        stored = await reopened.executions.get(execution.execution_id)
    finally:
        reopened.close()
    assert stored.result == {"text": "HELLO, BOB!"}


async def test_run_workflow_raises_what_the_api_raises() -> None:
    """run_workflow raises WorkflowExecutionError for a failing step and InvalidParameters
    for parameters of the wrong shape, like any caller of the API."""
    async with engine_for(GreetingPlugin(), load_entry_points=False) as engine:
        with pytest.raises(WorkflowExecutionError) as failed:
            await run_workflow(engine, "greeting", parameters={"who": "Eve", "fail": True})
        assert failed.value.details["step"] == "greet"
        assert failed.value.details["error_message"] == "cannot greet Eve"
        with pytest.raises(InvalidParameters) as invalid:
            await run_workflow(engine, "greeting", parameters={})
        assert "parameters.who" in str(invalid.value.details)


# -- the fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def abi_plugins() -> list[object]:
    """The plugins the abi_engine fixture registers (overriding abi_engine.testing's)."""
    return [GreetingPlugin()]


async def test_abi_engine_fixture(abi_engine: Engine) -> None:  # noqa: F811 - the fixture
    """The abi_engine fixture is a running engine with the plugins abi_plugins lists."""
    assert abi_engine.running
    execution = await run_workflow(abi_engine, "greeting", parameters={"who": "Cy"})
    assert execution.result == {"text": "HELLO, CY!"}


PLUGIN_PROJECT = {
    "greeting_plugin.py": """
        import attrs
        from abi_engine import WorkflowType, hookimpl, step

        class Greeting(WorkflowType):
            name = "greeting"

            @attrs.define(kw_only=True)
            class Parameters:
                who: str

            @step
            async def greet(self, ctx):
                return {"text": f"Hello, {ctx.params.who}!"}

        @hookimpl
        def abi_workflow_types(register):
            register(Greeting)
    """,
    "conftest.py": """
        pytest_plugins = ["abi_engine.testing"]
    """,
    "test_greeting.py": """
        import pytest
        import greeting_plugin
        from abi_engine.testing import run_workflow

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def abi_plugins():
            return [greeting_plugin]

        async def test_greets(abi_engine):
            execution = await run_workflow(abi_engine, "greeting", parameters={"who": "Ada"})
            assert execution.result == {"text": "Hello, Ada!"}

        async def test_refuses_a_missing_name(abi_engine):
            from abi_engine.errors import InvalidParameters
            with pytest.raises(InvalidParameters):
                await run_workflow(abi_engine, "greeting", parameters={})
    """,
}


@pytest.mark.slow
def test_fixtures_in_a_plugin_project(tmp_path: Path) -> None:
    """A plugin project using pytest_plugins = ["abi_engine.testing"] as the module docs say
    runs its tests green (in a separate pytest run)."""
    for name, text in PLUGIN_PROJECT.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
