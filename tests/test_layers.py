"""The package's import graph: no cycle and no private name across modules, counting every import
(those inside functions too), and every module in a layer that imports only layers below it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "plaintune"

# Lowest first. A module may import its own layer and the layers below, never one above.
LAYERS = [
    ("base", {"errors", "schema", "paths"}),
    ("config", {"yamlfile", "optim", "choices", "validation", "config"}),
    ("files", {"atomic", "formats", "weights", "modelcard", "ownership", "rundir", "runlock", "guard", "hub", "precision",
               "distributed", "diskuse"}),
    ("components", {"data", "datacheck", "datasets", "evaluate", "batching", "biencoder", "model", "objective", "metrics",
                    "forward", "report", "tracking"}),
    ("loop", {"train_state", "selection", "stopping", "trainer"}),
    ("run", {"build", "resume", "ensemble", "predicting", "run"}),
    ("multi", {"folds", "leaderboard"}),
    ("api", {"api", "__init__", "checkpoint"}),
]
LAYER_OF = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("plaintune"):
                target = node.module.removeprefix("plaintune").lstrip(".")
            else:
                continue
            names = [alias.name for alias in node.names]
            if not node.module or target == "":  # `from . import x, y`: modules
                found += [(f"{target}.{n}".lstrip("."), [], node.lineno) for n in names]
            else:
                found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("plaintune").lstrip("."), [], node.lineno) for a in node.names
                      if a.name.startswith("plaintune.")]
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports(path):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from .run import train\n    from . import folds\n")
    PACKAGE_SAVED = module_name  # noqa: F841 - the parser needs only the file
    tree = ast.parse(source.read_text())
    assert sum(isinstance(n, ast.ImportFrom) for n in ast.walk(tree)) == 2


def test_no_import_cycle():
    assert find_cycle(graph()) == []


def test_no_private_name_crosses_modules():
    offenders = [f"{module_name(path)}:{line} imports {name} from {target}"
                 for path in PACKAGE.rglob("*.py") for target, names, line in imports(path)
                 for name in names if name.startswith("_")]
    assert offenders == []


def test_every_module_has_a_layer():
    assert sorted(set(graph()) - set(LAYER_OF)) == []


@pytest.mark.parametrize("name", sorted(LAYER_OF))
def test_no_module_imports_a_higher_layer(name):
    path = PACKAGE / f"{name}.py"
    if not path.is_file():
        pytest.skip("no such module")
    upward = [f"line {line}: {target} ({LAYERS[LAYER_OF[target]][0]})" for target, _, line in imports(path)
              if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[name]]
    assert upward == [], f"{name} ({LAYERS[LAYER_OF[name]][0]}) imports a higher layer"
