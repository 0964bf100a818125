"""Layering: imports only point down, plugins use only the public API, SQL stays in storage."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import abi_engine

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "abi_engine"
STORAGE = CORE / "storage"
PLUGIN_DIRS = [*sorted((ROOT / "plugins").glob("abi_plugin_*")), ROOT / "tests" / "plugins_fixture"]

# What a plugin may import from abi_engine: the public API, nothing else.
# ``abi_engine.netguard`` (the outbound URL rules) is public so that plugins making
# HTTP calls refuse the same private addresses as the engine does.
PLUGIN_ALLOWED = frozenset(
    {
        "abi_engine",
        "abi_engine.errors",
        "abi_engine.converter",
        "abi_engine.types",
        "abi_engine.netguard",
        "abi_engine.expressions",
        "abi_engine.integrations",
    }
)
# A plugin's own tests may also use the plugin authors' test helpers.
PLUGIN_TESTS_ALLOWED = PLUGIN_ALLOWED | {"abi_engine.testing"}

# Optional parts the core never imports (they have their own packages and extras).
CORE_FORBIDDEN_ROOTS = ("abi", "abi_asgi", "starlette", "uvicorn")
# The command line sits in the top layer beside abi_asgi (see docs/architecture.md):
# it may start the adapter under uvicorn, but only lazily, inside functions, so
# that importing the core never pulls them in.
TOP_LAYER = {CORE / "cli" / "serve.py": ("abi_asgi", "uvicorn")}
SQL_MARKERS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE TABLE", "CREATE INDEX")


# -- The import graph of the core (scripts/layers.py) ------------------------------------


def _load_layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers", ROOT / "scripts" / "layers.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["layers"] = module
    spec.loader.exec_module(module)
    return module


layers = _load_layers()
import_graph = layers.import_graph
edges_on_cycles = layers.edges_on_cycles
upward_imports = layers.upward_imports


_py_files = layers._py_files
_imports = layers._imports


def _root(module: str) -> str:
    return module.split(".", 1)[0]


def test_layering_scans_real_files() -> None:
    """The scans below see the core, the storage package and at least the bundled plugin."""
    assert len(list(_py_files(CORE))) >= 10
    assert (STORAGE / "sqlite.py").exists()
    assert any(p.name == "abi_plugin_custom" for p in PLUGIN_DIRS)


@pytest.mark.parametrize("path", list(_py_files(CORE)), ids=lambda p: str(p.relative_to(CORE)))
def test_core_imports_point_down(path: Path) -> None:
    """No core module imports a plugin package, the ASGI adapter, the abi facade or web servers."""
    bad = []
    lazy_ok = TOP_LAYER.get(path, ())
    eager = {(line, module) for line, module, _ in _imports(path, module_level=True)}
    for line, module, _ in _imports(path):
        root = _root(module)
        if root in lazy_ok and (line, module) not in eager:
            continue
        if root.startswith("abi_plugin_") or root in CORE_FORBIDDEN_ROOTS:
            bad.append(f"{path.name}:{line} imports {module}")
        if root == "psycopg" and STORAGE not in path.parents:
            bad.append(f"{path.name}:{line} imports psycopg outside storage/")
    assert bad == []


def _plugin_files() -> list[Path]:
    return [p for d in PLUGIN_DIRS for p in _py_files(d)]


@pytest.mark.parametrize("path", _plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_use_only_the_public_api(path: Path) -> None:
    """Plugins import abi_engine only through its public modules and names in __all__."""
    in_tests = "tests" in path.relative_to(ROOT).parts[2:] or path.name.startswith("test_")
    allowed = PLUGIN_TESTS_ALLOWED if in_tests else PLUGIN_ALLOWED
    bad = []
    for line, module, names in _imports(path):
        if _root(module) != "abi_engine":
            continue
        if module not in allowed:
            bad.append(f"{line}: {module} is not public API")
        elif module == "abi_engine":
            bad.extend(
                f"{line}: abi_engine.{n} is not in abi_engine.__all__"
                for n in names
                if n not in abi_engine.__all__
            )
    assert bad == []


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    """String constants of a module, docstrings excluded."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def test_sql_lives_in_storage() -> None:
    """No SQL statement text appears in src/ outside src/abi_engine/storage."""
    offenders = []
    for path in _py_files(ROOT / "src"):
        if STORAGE in path.parents:
            continue
        for line, text in _strings(path):
            if any(marker in text for marker in SQL_MARKERS):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}")
    assert offenders == []


def test_sql_scan_finds_sql_in_storage() -> None:
    """The SQL scan is not vacuous: it does find statements in the storage package."""
    found = [t for p in _py_files(STORAGE) for _, t in _strings(p) if "SELECT " in t]
    assert found


def test_importing_the_core_pulls_no_optional_parts() -> None:
    """`import abi_engine` imports neither the adapter, web servers, PostgreSQL nor plugins."""
    code = (
        "import sys, abi_engine\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('abi', 'abi_asgi', 'starlette', 'uvicorn', 'psycopg')"
        " or m.startswith('abi_plugin_'))\n"
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_cycle_finder_finds_a_cycle() -> None:
    """The cycle and layer checks are not vacuous."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert edges_on_cycles(graph) == {("a", "b"), ("b", "c"), ("c", "a")}
    real = import_graph()
    assert "executions" in real["engine"]
    assert "storage.sqlite" in real
    assert ("errors", "engine") in upward_imports({"errors": {"engine"}, "engine": set()})


def test_every_core_module_has_a_layer() -> None:
    missing = []
    for module in import_graph():
        try:
            layers.layer_of(module)
        except KeyError:
            missing.append(module)
    assert missing == []


def test_no_import_cycle_in_the_core() -> None:
    """No import cycle among the core's modules (type-only and lazy imports count)."""
    assert sorted(edges_on_cycles(import_graph())) == []


def test_no_upward_import_in_the_core() -> None:
    """No import points up the layers."""
    assert sorted(upward_imports(import_graph())) == []
