"""The package's structure: imports flow one way, and each heavy dependency has one home.

The import graph is read from the source (``ast``), so it sees every import: module level, inside
functions and under ``TYPE_CHECKING``. An import inside a function is still a dependency; hiding one
there to dodge a cycle is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "detune"

# Each heavy dependency and the only modules allowed to import it (module names, packages end in a dot).
HOMES = {
    "ultralytics": ("detune.adapters.ultralytics",),
    "torch": ("detune.adapters.ultralytics", "detune.adapters._optim"),  # _optim: the adapter's optimizers
    "schedulefree": ("detune.adapters._optim",),
    "prodigyopt": ("detune.adapters._optim",),
    "ray": ("detune.tuning", "detune._searchers"),  # _searchers: the study's own searchers, run by tuning
    "optuna": ("detune.tuning", "detune._searchers"),
    "mlflow": ("detune.tracking.",),
    "matplotlib": ("detune._plotting",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str) -> list[tuple[str, int]]:
    """Every module ``name`` imports, as (dotted name, line); relative imports made absolute."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            # `from detune import tracking` imports the submodule detune.tracking
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _graph() -> dict[str, dict[str, int]]:
    """detune's modules -> the detune modules each imports (with the first line of the import)."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in _imports(path, name):
            # `detune` itself is the lazy facade (its imports sit under TYPE_CHECKING and `__getattr__`);
            # a module reading `detune.__version__` depends on nothing behind it, so `detune` is no node.
            if target in modules and target not in (name, "detune"):
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b} (line {line})" for a in component for b, line in graph[a].items() if b in members]
    return "; ".join(edges)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "detune" / "pkg"
    source.mkdir(parents=True)
    (source / "__init__.py").write_text("")
    (source / "mod.py").write_text("def f():\n    from . import other\n    import detune.errors\n")
    found = {target for target, _ in _imports(source / "mod.py", "detune.pkg.mod")}
    assert {"detune.pkg.other", "detune.errors"} <= found


def test_cycle_finder_reports_a_two_module_cycle():
    graph = {"a": {"b": 1}, "b": {"a": 2, "c": 3}, "c": {}}
    assert _cycles(graph) == [["a", "b"]]


def test_detune_imports_have_no_cycle():
    graph = _graph()
    assert len(graph) > 20, sorted(graph)  # the scan found the package
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(_describe(c, graph) for c in cycles)


def _home_ok(module: str, homes: tuple[str, ...]) -> bool:
    return any(module == home.rstrip(".") or (home.endswith(".") and module.startswith(home)) for home in homes)


def test_each_heavy_dependency_has_one_home():
    strays = []
    for name, path in _modules().items():
        for target, line in _imports(path, name):
            top = target.partition(".")[0]
            if top in HOMES and not _home_ok(name, HOMES[top]):
                strays.append(f"{name} imports {top} (line {line}); its home is {' or '.join(HOMES[top])}")
    assert not strays, "\n".join(sorted(set(strays)))


def test_only_the_entry_points_run_a_training():
    """training is the engine under detune.train and the study's trials: only tuning and the CLI import it
    (others take a trainer as an argument); ``detune`` itself is the lazy facade that exports ``train``."""
    importers = sorted(name for name, edges in _graph().items() if "detune.training" in edges and name != "detune")
    assert importers == ["detune.cli", "detune.tuning"], importers


def test_every_name_imported_from_detune_exists():
    """``from detune.x import y`` inside a function fails only when it runs: check every such name here (a
    merge that moved a function once left a study path importing it from its old module)."""
    import importlib

    missing = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("detune"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and f"{node.module}.{alias.name}" not in _modules():
                        missing.append(f"{name} (line {node.lineno}): {node.module} has no {alias.name}")
    assert not missing, "\n".join(missing)
