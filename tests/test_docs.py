"""Docs: hook docstrings complete, generated pages fresh, every hook tested, examples run."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import itertools
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from abi_engine import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_MARK = "<!-- runs in tests/test_docs.py -->"
PAGES = sorted(DOCS.glob("*.md"))


def _load_gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_gen_docs()
HOOKS = [function for _, _, function in gen_docs.hookspecs()]


def test_hooks_are_found() -> None:
    """The generator sees every hook specification of abi_engine.hookspecs."""
    declared = {
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, "abi_engine_spec")
    }
    assert declared
    assert {h.__name__ for h in HOOKS} == declared


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.__name__)
def test_hook_docstring_documents_every_parameter(hook: object) -> None:
    """Each hook's docstring has a summary and a ':param name:' for each of its arguments."""
    doc = inspect.getdoc(hook) or ""
    assert doc.splitlines()[0].strip(), "a hook needs a one-line summary"
    for name in inspect.signature(hook).parameters:  # type: ignore[arg-type]
        assert f":param {name}:" in doc, f"{hook.__name__}: ':param {name}:' missing"  # type: ignore[attr-defined]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.__name__)
def test_hook_has_a_test(hook: object) -> None:
    """Each hook has a test_hook_<name> somewhere under tests/."""
    name = f"test_hook_{hook.__name__}"  # type: ignore[attr-defined]
    pattern = re.compile(rf"^\s*(async\s+)?def {name}\(", re.M)
    found = [p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text())]
    assert found, f"no {name} in tests/"


def test_plugin_hooks_page_is_fresh() -> None:
    """docs/plugin-hooks.md is exactly what scripts/gen_docs.py renders from the hookspecs."""
    assert (DOCS / "plugin-hooks.md").read_text() == gen_docs.render_plugin_hooks(), (
        "docs/plugin-hooks.md is stale: run python scripts/gen_docs.py"
    )


def test_plugin_hooks_page_shows_exact_signatures() -> None:
    """Every hook has its own section with its exact typed signature."""
    page = (DOCS / "plugin-hooks.md").read_text()
    source = ast.parse((ROOT / "src" / "abi_engine" / "hookspecs.py").read_text())
    for node in source.body:
        if isinstance(node, ast.FunctionDef) and node.name in {h.__name__ for h in HOOKS}:
            assert f"### {node.name}\n" in page
            assert f"{node.name}({ast.unparse(node.args)})" in page


def test_rest_api_page_is_fresh() -> None:
    """docs/rest-api.md is exactly what gen_docs renders from the served OpenAPI document."""
    assert (DOCS / "rest-api.md").read_text() == gen_docs.render_rest_api(), (
        "docs/rest-api.md is stale: run python scripts/gen_docs.py"
    )


def test_rest_api_page_covers_every_operation() -> None:
    """Every operation of the operations table has a section in docs/rest-api.md."""
    from abi_engine.api import OPERATIONS

    page = (DOCS / "rest-api.md").read_text()
    for op in OPERATIONS.values():
        assert f"### {op.method} /api/v1{op.path}\n" in page
        assert f"`{op.name}`" in page


def test_storage_schema_is_fresh() -> None:
    """The schema block of docs/storage.md matches what the migrations produce now."""
    current = (DOCS / "storage.md").read_text()
    assert current == gen_docs.render_storage(current), (
        "docs/storage.md's schema is stale: run python scripts/gen_docs.py"
    )


def test_gen_docs_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check reports a stale page and exits 1; a fresh tree exits 0."""
    assert gen_docs.main(["--check"]) == 0
    copy = tmp_path / "docs"
    copy.mkdir()
    for page in PAGES:
        (copy / page.name).write_text(page.read_text())
    (copy / "plugin-hooks.md").write_text("# stale\n")
    monkeypatch.setattr(gen_docs, "DOCS", copy)
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    assert gen_docs.main(["--check"]) == 1
    assert gen_docs.main([]) == 0
    assert gen_docs.main(["--check"]) == 0


def test_parse_docstring() -> None:
    """reST fields, roles, literals and '::' blocks become Markdown."""
    body, params = gen_docs.parse_docstring(
        """Summary with ``code`` and :class:`~abi_engine.Engine`.

        :param url: the URL,
            continued.

        Example::

            do(thing)
        """
    )
    assert body[0] == "Summary with `code` and `Engine`."
    assert params == {"url": "the URL, continued."}
    assert body[-3:] == ["```python", "do(thing)", "```"]
    assert "" in body
    assert not any(line == "" and nxt == "" for line, nxt in itertools.pairwise(body))


# -- the pages themselves ---------------------------------------------------------------


def _blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line, code, marked to run) of each ```python block."""
    lines = page.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            i += 1
            code = []
            while lines[i].strip() != "```":
                code.append(lines[i])
                i += 1
            marked = start > 0 and lines[start - 1].strip() == RUN_MARK
            out.append((start + 1, "\n".join(code), marked))
        i += 1
    return out


BLOCKS = [(page, line, code, run) for page in PAGES for line, code, run in _blocks(page)]
RUNNABLE = [(page, line, code) for page, line, code, run in BLOCKS if run]


def test_expected_pages_exist() -> None:
    """The documentation set is complete and the index links every page."""
    names = {p.name for p in PAGES}
    expected = {
        "index.md",
        "quickstart.md",
        "concepts.md",
        "architecture.md",
        "plugin-hooks.md",
        "writing-plugins.md",
        "storage.md",
        "python-api.md",
        "rest-api.md",
        "changelog.md",
    }
    assert expected <= names
    index = (DOCS / "index.md").read_text()
    for name in names - {"index.md"}:
        assert f"({name})" in index, f"index.md does not link {name}"


@pytest.mark.parametrize(
    ("page", "line", "code"),
    [(p, ln, c) for p, ln, c, _ in BLOCKS],
    ids=[f"{p.name}:{ln}" for p, ln, _, _ in BLOCKS],
)
def test_python_blocks_compile(page: Path, line: int, code: str) -> None:
    """Every Python block in the docs is valid Python."""
    compile(code, f"{page.name}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_some_examples_run() -> None:
    """The pages that promise runnable examples have them marked."""
    pages = {page.name for page, _, _ in RUNNABLE}
    assert {"quickstart.md", "python-api.md", "writing-plugins.md"} <= pages


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "line", "code"),
    RUNNABLE,
    ids=[f"{p.name}:{ln}" for p, ln, _ in RUNNABLE],
)
def test_marked_examples_run(page: Path, line: int, code: str, tmp_path: Path) -> None:
    """Examples marked to run do run, unchanged, in a fresh directory."""
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{page.name}:{line}\n{result.stderr}"


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {
        gen_docs._anchor(m.group(1).strip()) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_internal_links_resolve(page: Path) -> None:
    """Links between pages point at existing pages and headings."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = DOCS / file if file else page
        assert linked.exists(), f"{page.name}: broken link {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: no heading for {target}"
