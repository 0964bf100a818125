"""Helpers for testing workflow types and plugins against a real, in-memory engine.

Use it from pytest with ``pytest_plugins = ["abi_engine.testing"]`` in your
``conftest.py`` (the anyio pytest plugin runs the async tests)::

    import pytest
    from abi_engine.testing import run_workflow

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def abi_plugins():
        return [MyPlugin()]          # the plugins under test

    async def test_greets(abi_engine):
        execution = await run_workflow(abi_engine, "greeting", parameters={"who": "Ada"})
        assert execution.result == {"text": "Hello, Ada!"}

Or without pytest: ``async with engine_for(MyPlugin()) as engine: ...``. This
module imports pytest only when its fixtures are first looked up (by pytest
itself, or ``from abi_engine.testing import abi_engine``), so ``engine_for`` and
``run_workflow`` need no pytest installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi_engine.testing._engines import engine_for, run_workflow

if TYPE_CHECKING:  # at run time, __getattr__ below imports them on first use
    from abi_engine.testing._fixtures import abi_engine, abi_engine_options, abi_plugins

__all__ = ["abi_engine", "abi_engine_options", "abi_plugins", "engine_for", "run_workflow"]

#: The pytest fixtures, defined in :mod:`abi_engine.testing._fixtures` (which imports pytest).
_FIXTURES = ("abi_engine", "abi_engine_options", "abi_plugins")


def __getattr__(name: str) -> Any:
    """The pytest fixtures, imported on first use (pytest looks them up when it loads us)."""
    if name in _FIXTURES:
        try:
            from abi_engine.testing import _fixtures
        except ImportError as exc:
            raise ImportError(
                f"abi_engine.testing.{name} is a pytest fixture and pytest cannot be imported"
                f" ({exc}); engine_for and run_workflow work without it",
                name=__name__,
            ) from exc
        return getattr(_fixtures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FIXTURES})
