"""Docs: hook docstrings complete, generated pages fresh, every hook tested, examples run."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import itertools
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from abi_engine import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_MARK = "<!-- runs in tests/test_docs.py -->"
#: Put before a fenced block: the block is a file of the page's example project, written
#: (with its package installed when it is a pyproject.toml) where the page's examples run.
FILE_MARK = re.compile(r"^<!-- file: (\S+) -->$")
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


def _fences(page: Path) -> list[tuple[int, str, str, str]]:
    """(line, language, code, the line before the fence) of each fenced block."""
    lines = page.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i].strip() != "```":
            start = i
            i += 1
            code = []
            while lines[i].strip() != "```":
                code.append(lines[i])
                i += 1
            before = lines[start - 1].strip() if start > 0 else ""
            out.append((start + 1, lines[start].strip()[3:], "\n".join(code), before))
        i += 1
    return out


def _blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line, code, marked to run) of each ```python block."""
    return [
        (line, code, before == RUN_MARK)
        for line, language, code, before in _fences(page)
        if language == "python"
    ]


def _files(page: Path) -> dict[str, str]:
    """The example project of a page: {relative path: content} of its file-marked blocks."""
    files = {}
    for _, _, code, before in _fences(page):
        mark = FILE_MARK.match(before)
        if mark:
            files[mark.group(1)] = code + "\n"
    return files


def _install(files: dict[str, str], where: Path) -> None:
    """Write a page's files under ``where``; "install" its pyproject.toml there.

    The project is installed as an installer would, minus the copying: a
    ``*.dist-info`` with its entry points next to the sources, on ``sys.path``
    of whatever runs in ``where`` (a script's directory, or pytest's rootdir).
    """
    for name, text in files.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if "pyproject.toml" not in files:
        return
    project = tomllib.loads(files["pyproject.toml"])["project"]
    dist = where / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project.get("entry-points", {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {target}" for name, target in entries.items())
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


BLOCKS = [(page, line, code, run) for page in PAGES for line, code, run in _blocks(page)]
RUNNABLE = [(page, line, code) for page, line, code, run in BLOCKS if run]
#: Pages whose example project has tests of its own (``test_*.py`` files).
TESTED = [p for p in PAGES if any(Path(n).name.startswith("test_") for n in _files(p))]


def test_expected_pages_exist() -> None:
    """The documentation set is complete and the index links every page."""
    names = {p.name for p in PAGES}
    expected = {
        "index.md",
        "quickstart.md",
        "concepts.md",
        "architecture.md",
        "plugin-hooks.md",
        "plugins.md",
        "writing-plugins.md",
        "deployment.md",
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
    assert {"quickstart.md", "python-api.md", "plugins.md", "deployment.md"} <= pages
    assert "plugins.md" in {page.name for page in TESTED}
    assert {"acme_refund/__init__.py", "pyproject.toml", "conftest.py"} <= set(
        _files(DOCS / "plugins.md")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "line", "code"),
    RUNNABLE,
    ids=[f"{p.name}:{ln}" for p, ln, _ in RUNNABLE],
)
def test_marked_examples_run(page: Path, line: int, code: str, tmp_path: Path) -> None:
    """Examples marked to run do run, unchanged, in a fresh directory (with the page's files)."""
    _install(_files(page), tmp_path)
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


@pytest.mark.slow
@pytest.mark.parametrize("page", TESTED, ids=lambda p: p.name)
def test_example_project_tests_pass(page: Path, tmp_path: Path) -> None:
    """A page's example project, installed in a fresh directory, passes its own tests."""
    _install(_files(page), tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{page.name}\n{result.stdout}\n{result.stderr}"
    assert re.search(r"\b\d+ passed\b", result.stdout), result.stdout
    assert not re.search(r"\b(failed|skipped|error)", result.stdout), result.stdout


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
