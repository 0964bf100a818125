"""Every module of the core, the ASGI adapter and the bundled plugins stays readable:
at most 600 lines, and no function over 60 lines (issue #13).

Tests and the historic migrations (``m0NN_*`` functions, written once and never
edited) are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = (
    ROOT / "src" / "abi_engine",
    ROOT / "contrib" / "asgi_adapter" / "abi_asgi",
    ROOT / "plugins",
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
#: Modules holding the historic migrations, exempt from the function limit.
MIGRATIONS = frozenset({"migrations.py", "postgres_migrations.py", "schema.py"})


def _modules() -> list[Path]:
    found = []
    for tree in TREES:
        for path in sorted(tree.rglob("*.py")):
            parts = path.relative_to(tree).parts
            if "__pycache__" in parts or any(p in ("tests", "test") for p in parts):
                continue
            if path.name.startswith("test_"):
                continue
            found.append(path)
    return found


def _historic(path: Path, node: ast.AST) -> bool:
    name = getattr(node, "name", "")
    return path.name in MIGRATIONS and name[:1] == "m" and name[1:4].isdigit()


def test_the_trees_are_found() -> None:
    modules = _modules()
    assert len(modules) > 100
    assert ROOT / "src" / "abi_engine" / "engine.py" in modules


def test_no_module_over_600_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these modules along a seam a reader would name: {long}"


def test_no_function_over_60_lines() -> None:
    long = {}
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > MAX_FUNCTION_LINES and not _historic(path, node):
                long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = size
    assert long == {}, f"break these functions into named steps: {long}"
