"""The package's import graph: no cycle and no private name across modules, counting every import
(those inside functions too), and every module in a layer that imports only layers below it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "plaintune"

# Lowest first. A module may import its own layer and the layers below, never one above. The packages
# group modules by topic (config/, checkpoint/, rundir/, data/, model/, training/, inference/, kfold/);
# the ranks here say which way their imports point.
LAYERS = [
    ("base", {"errors", "schema", "paths", "rundir.names"}),
    ("config", {"config.yamlfile", "model.optim", "config.choices", "config.validation", "config.load"}),
    ("files", {"rundir.atomic", "checkpoint.formats", "checkpoint.weights", "rundir.modelcard", "rundir.lock",
               "rundir.ownership", "rundir.layout", "rundir.guard", "rundir.diskuse", "model.hub",
               "model.precision", "training.distributed", "training.memory"}),
    ("components", {"data.tables", "data.checks", "data.tokenized", "inference.outputs", "data.batching",
                    "model.architecture", "model.biencoder", "model.loading", "model.objective", "training.metrics", "inference.report",
                    "training.tracking"}),
    ("loop", {"training.state", "training.selection", "training.stopping", "training.trainer"}),
    ("run", {"training.build", "training.resume", "kfold.ensemble", "inference.predicting", "training.run"}),
    ("multi", {"kfold.folds", "kfold.leaderboard"}),
    ("api", {"api", "__init__", "checkpoint.command", "checkpoint.__main__", "config.__main__"}),
]
PACKAGES = {"config", "checkpoint", "rundir", "data", "model", "training", "inference", "kfold"}
LAYER_OF = {module: rank for rank, (_, modules) in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports(path: Path, here: str = "") -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file, at any depth
    (inside functions too). `from plaintune.pkg import mod` counts as importing the module pkg.mod."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = (here or module_name(path)).split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module == "plaintune" or (node.module or "").startswith("plaintune."):
                target = node.module.removeprefix("plaintune").lstrip(".")
            else:
                continue
            for alias in node.names:
                module = f"{target}.{alias.name}".lstrip(".")
                if module in MODULES:
                    found.append((module, [], node.lineno))
                else:
                    found.append((target, [alias.name], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.removeprefix("plaintune").lstrip("."), [], node.lineno) for a in node.names
                      if a.name.startswith("plaintune.")]
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent == PACKAGE}
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


def test_the_checker_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from plaintune.training.run import train_run\n"
                      "    from plaintune.kfold import folds\n    from .. import api\n"
                      "class C:\n    def g(self):\n        import plaintune.rundir.lock\n")
    found = {(target, tuple(names)) for target, names, _ in imports(source, here="model.loading")}
    assert found == {("training.run", ("train_run",)), ("kfold.folds", ()), ("api", ()), ("rundir.lock", ())}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert find_cycle(graph()) == []


def test_no_private_name_crosses_modules():
    offenders = [f"{module_name(path)}:{line} imports {name} from {target}"
                 for path in PACKAGE.rglob("*.py") for target, names, line in imports(path)
                 for name in names if name.startswith("_")]
    assert offenders == []


def test_every_module_has_a_layer():
    assert sorted(set(graph()) - set(LAYER_OF)) == []


def test_package_inits_hold_no_code():
    """A package's __init__ is empty, so importing one module never drags in its siblings."""
    assert {p.parent.name for p in PACKAGE.glob("*/__init__.py")} == PACKAGES
    assert [p for p in PACKAGE.glob("*/__init__.py") if p.read_text().strip()] == []


@pytest.mark.parametrize("name", sorted(LAYER_OF))
def test_no_module_imports_a_higher_layer(name):
    path = PACKAGE / (name.replace(".", "/") + ".py")
    if not path.is_file():
        pytest.skip("no such module")
    upward = [f"line {line}: {target} ({LAYERS[LAYER_OF[target]][0]})" for target, _, line in imports(path)
              if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[name]]
    assert upward == [], f"{name} ({LAYERS[LAYER_OF[name]][0]}) imports a higher layer"


def test_the_project_is_imported_at_the_top_of_each_module():
    """Imports inside functions are for heavy optional third-party libraries only; a project module
    imported lazily would hide a cycle or a layer violation until that line runs. (The package's
    __init__ imports api lazily, so that `import plaintune` stays light.)"""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            is_project = (isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("plaintune"))) \
                or (isinstance(node, ast.Import) and any(a.name.startswith("plaintune") for a in node.names))
            if is_project and id(node) not in top:
                offenders.append(f"{module_name(path)}:{node.lineno}")
    assert offenders == []
