"""The layers of abi-engine's core and its import graph, computed from the code.

Used by ``tests/test_layering.py`` (no cycle, no upward import) and by
``scripts/gen_docs.py`` (the picture in docs/architecture.md).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "abi_engine"


def _py_files(base: Path) -> Iterator[Path]:
    yield from sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def _module_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Statements run at import time (``if TYPE_CHECKING:`` blocks excluded)."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                todo.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            todo.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                todo.extend(handler.body)
        else:
            yield node


def _imports(path: Path, *, module_level: bool = False) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) for every absolute import in the file (or only module-level ones)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = _module_level(tree) if module_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                continue  # relative: inside the same package
            yield node.lineno, node.module or "", names


# -- The import graph of the core ---------------------------------------------------------
#
# Every import of every module under src/abi_engine counts, type-only ones
# (``if TYPE_CHECKING:``) and those inside functions included: a cycle hidden
# behind either is still a cycle for a reader. Modules are named relative to
# the package (``storage.sqlite``; the package itself is ``abi_engine``).

# The layers, from the bottom up; a module may import only its own layer and those below.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "foundation",
        frozenset(
            {
                "errors",
                "ids",
                "coalesce",
                "limits",
                "json_schema",
                "expressions",
                "schedule_dst",
                "schedule_math",
                "schedule_cron",
                "schedule_rules",
                "schedule_rrule",
                "schedule_exclusions",
            }
            | {"webhook_signing", "netguard", "logs", "trigger_signing"}
        ),
    ),
    (
        "model",
        frozenset(
            {
                "models",
                "models_webhooks",
                "models_audit",
                "models_triggers",
                "models_backfills",
                "models_schedules",
                "models_status",
                "converter",
                "events",
                "host",
            }
        ),
    ),
    ("storage", frozenset({"storage"})),  # every storage.* module but the hook below
    ("authoring and views", frozenset({"types", "step_signals", "execution_views"})),
    ("runtime", frozenset({"runtime"})),  # the runtime package
    (
        "services",
        frozenset(
            {"services", "workflows", "executions", "schedules", "webhooks", "integrations"}
            | {"notification_templates", "auth", "execution_signals", "execution_batches"}
            | {"execution_flow", "audit", "retention", "triggers", "schedule_lifecycle"}
            | {"schedule_views", "schedule_backfill", "execution_reading"}
            | {"execution_requests", "schedule_requests", "execution_threads"}
        ),
    ),
    ("extension", frozenset({"hookspecs", "plugins", "_builtin", "storage.postgres_hook"})),
    ("composition", frozenset({"engine", "abi_engine", "testing"})),
    ("operations", frozenset({"api"})),  # the api package: the table and its resources
    ("front ends", frozenset({"cli", "__main__"})),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "abi_engine"


def _resolve(module: str, known: set[str]) -> str | None:
    """The core module an absolute import names (``abi_engine.storage.base`` -> ``storage.base``)."""
    if module == "abi_engine":
        return "abi_engine"
    if not module.startswith("abi_engine."):
        return None
    name = module.removeprefix("abi_engine.")
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or "abi_engine"


def import_graph() -> dict[str, set[str]]:
    """Each core module and the core modules it imports (every import statement)."""
    paths = {_module_name(p): p for p in _py_files(CORE)}
    known = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets: set[str] = set()
        for _, module, names in _imports(path):
            # ``from abi_engine import hookspecs`` names a module; a name that is no
            # module (``from abi_engine import __version__``) comes from the package.
            submodules = [f"{module}.{n}" for n in names if _resolve(f"{module}.{n}", known)]
            exact = [m for m in submodules if m.removeprefix("abi_engine.") in known]
            candidates = exact if exact and len(exact) == len(names) else [module, *exact]
            for candidate in candidates:
                target = _resolve(candidate, known)
                if target is not None and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def edges_on_cycles(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """The edges whose two ends lie in one strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    component: dict[str, int] = {}

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component[member] = index[node]
                if member == node:
                    break

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return {(a, b) for a, targets in graph.items() for b in targets if component[a] == component[b]}


def _layer(module: str) -> int:
    for rank, (_, members) in enumerate(LAYERS):
        if module in members:
            return rank
    if "." in module:  # a package's module sits in its package's layer
        return _layer(module.rpartition(".")[0])
    raise KeyError(module)


def layer_of(module: str) -> str:
    """The name of the layer ``module`` belongs to."""
    return LAYERS[_layer(module)][0]


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)}


# -- The picture ---------------------------------------------------------------------------

_OUTSIDE = "abi.workflows (the seed's Python API), abi_asgi (REST adapter and dashboard), plugins"
_WIDTH, _LABEL, _BOX_W, _BOX_H, _GAP, _PER_ROW = 1000, 180, 150, 38, 8, 5


def _units() -> dict[str, tuple[str, int, int]]:
    """Each drawn unit (a flat module, or a package as one) -> (layer, modules, lines)."""
    units: dict[str, tuple[str, int, int]] = {}
    _members.clear()
    for path in _py_files(CORE):
        name = _module_name(path)
        parts = path.relative_to(CORE).parts
        unit = f"{parts[0]}/" if len(parts) > 1 else name
        if name == "storage.postgres_hook":
            unit = name  # the storage plugin hook sits in the extension layer
        layer = layer_of(name)
        if unit.endswith("/") and path.stem != "__init__":
            _members.setdefault(unit, []).append(name.partition(".")[2])
        _, count, lines = units.get(unit, (layer, 0, 0))
        units[unit] = (layer, count + 1, lines + len(path.read_text().splitlines()))
    return units


_members: dict[str, list[str]] = {}


def _first_line(unit: str) -> str:
    """The first words of a module's docstring (what it holds), for its box."""
    path = CORE / "__init__.py" if unit == "abi_engine" else CORE / (unit.replace(".", "/") + ".py")
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    words = doc.split("\n\n")[0].replace("``", "").replace(":class:", "").replace("`", "")
    words = " ".join(words.split())
    return words if len(words) <= 26 else words[:24].rstrip() + "..."


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_svg() -> str:
    """The layers of the core as an SVG picture: one band a layer, top to bottom, each
    module (or package) a box with its size, and how many imports leave each band."""
    graph = import_graph()
    units = _units()
    bands: list[tuple[str, list[tuple[str, int, int]]]] = []
    for name, _ in reversed(LAYERS):
        members = sorted(
            (
                (unit, count, lines)
                for unit, (layer, count, lines) in units.items()
                if layer == name
            ),
            key=lambda m: (not m[0].endswith("/"), m[0].lstrip("_")),
        )
        bands.append((name, members))
    up = upward_imports(graph)
    upward = {name: sum(1 for a, _ in up if layer_of(a) == name) for name, _ in LAYERS}
    out: list[str] = []
    y = 60
    out.append(
        f'<rect x="10" y="{y}" width="{_WIDTH - 20}" height="30" rx="4" fill="#f4f4f4"'
        ' stroke="#999" stroke-dasharray="4 3"/>'
        f'<text x="20" y="{y + 20}" font-size="13">outside the core: {_esc(_OUTSIDE)}</text>'
    )
    y += 42
    for name, members in bands:
        # Packages come first, a row each; then the modules, five a row.
        slots = sum(_PER_ROW if unit.endswith("/") else 1 for unit, _, _ in members)
        rows = max(1, -(-slots // _PER_ROW))
        height = rows * (_BOX_H + _GAP) + _GAP
        out.append(
            f'<rect x="10" y="{y}" width="{_WIDTH - 20}" height="{height}" rx="4"'
            ' fill="#eef3f8" stroke="#6a8bad"/>'
            f'<text x="20" y="{y + 22}" font-size="13" font-weight="bold">{_esc(name)}</text>'
            f'<text x="20" y="{y + 40}" font-size="11" fill="#555">'
            f"{upward[name] or 'no'} import upward</text>"
        )
        slot = 0
        for unit, modules, _lines in members:
            wide = unit.endswith("/")
            bx = _LABEL + (slot % _PER_ROW) * (_BOX_W + _GAP)
            by = y + _GAP + (slot // _PER_ROW) * (_BOX_H + _GAP)
            width = _PER_ROW * (_BOX_W + _GAP) - _GAP if wide else _BOX_W
            slot += _PER_ROW if wide else 1
            if not wide:
                detail = _first_line(unit)
            else:
                listed = sorted(_members.get(unit, []), key=lambda n: (n.startswith("_"), n))
                names = ", ".join(listed)
                names = names if len(names) <= 96 else names[:93].rpartition(",")[0] + ", ..."
                detail = f"{modules} modules: {names}"
            out.append(
                f'<rect x="{bx}" y="{by}" width="{width}" height="{_BOX_H}" rx="3"'
                ' fill="#ffffff" stroke="#8aa"/>'
                f'<text x="{bx + 6}" y="{by + 16}" font-size="12">{_esc(unit)}</text>'
                f'<text x="{bx + 6}" y="{by + 31}" font-size="10" fill="#666">{_esc(detail)}</text>'
            )
        y += height + 6
    title = (
        '<text x="10" y="24" font-size="18" font-weight="bold">abi-engine: the layers of the'
        " core</text>"
        '<text x="10" y="44" font-size="12" fill="#555">Drawn by scripts/gen_docs.py from the'
        " import graph (scripts/layers.py); imports only point down; tests/test_layering.py"
        " checks it.</text>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{y + 10}"'
        f' viewBox="0 0 {_WIDTH} {y + 10}" font-family="sans-serif">\n'
        f'<rect width="100%" height="100%" fill="white"/>\n{title}\n'
        + "\n".join(out)
        + "\n</svg>\n"
    )
