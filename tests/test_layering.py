"""Dependencies point one way: worldmodels (model and data layer) never imports agents, and the repo's
modules import each other without a cycle.

Read from the source with `ast`, so imports inside functions count too: the old cycle
recipes -> agents.sac -> agents.core.entry -> recipes was made entirely of lazy imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worldmodels", "agents", "benchmarks", "scripts", "tests")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the repo's packages (a package is its __init__)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _entry_points(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a function named `main`: an entry point runs after every import is done, and the
    agents' `main()` calls the hydra entry helper, which may import agents in turn (SAC as the behaviour learner)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main":
            inside |= {id(n) for n in ast.walk(node)}
    return inside


def imported_names(path: Path, module: str, skip_entry_points: bool) -> set[str]:
    """Every absolute dotted name `module` imports, at any depth (relative imports made absolute)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _entry_points(tree) if skip_entry_points else set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return names


def import_graph(skip_entry_points: bool = True) -> dict[str, set[str]]:
    """Repo module -> the repo modules it imports (a name resolves to its longest module prefix)."""
    files = module_files()

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        targets = {resolve(n) for n in imported_names(path, module, skip_entry_points)}
        # a package's own __init__ is reached on the way to any of its modules: not a dependency edge
        graph[module] = {t for t in targets if t and t != module and not module.startswith(f"{t}.")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for root in graph:
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = GREY
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
            elif colour.get(child, BLACK) == GREY:
                return path[path.index(child):] + [child]
            elif colour.get(child) == WHITE:
                colour[child] = GREY
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


# ------------------------------------------------------------------------------------------ the detector


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is not a cycle
    cycle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}


def test_lazy_and_relative_imports_are_seen(tmp_path):
    """An import inside a function or a relative import is an edge; one inside `main()` is not."""
    pkg = tmp_path / "worldmodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from agents.x import y\n\n\ndef main():\n    import agents.z\n")
    (pkg / "b.py").write_text("from . import a\n")
    assert "agents.x.y" in imported_names(pkg / "a.py", "worldmodels.a", skip_entry_points=True)
    assert "agents.z" not in imported_names(pkg / "a.py", "worldmodels.a", skip_entry_points=True)
    assert "agents.z" in imported_names(pkg / "a.py", "worldmodels.a", skip_entry_points=False)
    assert "worldmodels.a" in imported_names(pkg / "b.py", "worldmodels.b", skip_entry_points=True)


# ------------------------------------------------------------------------------------------ the repo


def test_worldmodels_never_imports_agents():
    files = module_files()
    offenders = {
        module: sorted(n for n in imported_names(path, module, skip_entry_points=False)
                       if n == "agents" or n.startswith("agents."))
        for module, path in files.items()
        if module == "worldmodels" or module.startswith("worldmodels.")
    }
    offenders = {m: names for m, names in offenders.items() if names}
    assert not offenders, f"worldmodels must not import agents (inject what it needs instead): {offenders}"


def test_no_import_cycle_between_repo_modules():
    graph = import_graph()
    assert len(graph) > 40 and "worldmodels.data.recipes" in graph  # the repo was actually read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer, below", [("worldmodels", ()), ("agents", ("worldmodels",))])
def test_layers_import_only_downwards(layer, below):
    """Collapsed to the packages: worldmodels imports none of the others, agents only worldmodels."""
    graph = import_graph(skip_entry_points=False)
    reached = {t.split(".")[0] for m, targets in graph.items() if m.split(".")[0] == layer for t in targets}
    assert reached - {layer} <= set(below), f"{layer} imports {sorted(reached - {layer} - set(below))}"
