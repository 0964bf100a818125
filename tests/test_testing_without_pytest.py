"""abi_engine.testing without pytest: engine_for and run_workflow work in a process where
pytest cannot be imported, as the module's documentation promises (#12)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
    import sys

    sys.modules["pytest"] = None  # from here on, `import pytest` raises ImportError

    import anyio

    import abi_engine.testing as testing
    from abi_engine.testing import engine_for, run_workflow

    STEPS = [{"name": "total", "action": "transform",
              "expressions": {"sum": "parameters['a'] + parameters['b']"}}]


    async def main() -> None:
        async with engine_for() as engine:
            execution = await run_workflow(
                engine, "custom", configuration={"steps": STEPS}, parameters={"a": 2, "b": 3}
            )
        print("result:", execution.status.value, execution.result)


    anyio.run(main)
    print("pytest imported:", sys.modules["pytest"] is not None)
    try:
        from abi_engine.testing import abi_engine  # noqa: F401 - a fixture needs pytest
    except ImportError as exc:
        print("fixture:", exc)
"""


@pytest.mark.slow
def test_engine_for_and_run_workflow_work_without_pytest(tmp_path: Path) -> None:
    """With pytest not importable, importing abi_engine.testing and running a workflow through
    engine_for and run_workflow works; only the fixtures refuse, saying why."""
    script = tmp_path / "no_pytest.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert "result: completed {'sum': 5}" in lines, run.stdout
    assert "pytest imported: False" in lines, run.stdout
    refused = [line for line in lines if line.startswith("fixture: ")]
    assert len(refused) == 1, run.stdout
    assert "abi_engine.testing.abi_engine is a pytest fixture" in refused[0]
    assert "engine_for and run_workflow work without it" in refused[0]
