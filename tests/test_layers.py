"""The package's import graph: no cycle and no private name across modules, counting every import
(those inside functions too), and every module in a layer that imports only layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "plaintune"

# The layers, lowest first: the top-level base modules, then the packages. A package imports only the
# base modules, its own modules and the packages below it (function-level imports count too); the
# application packages at the top import anything and are imported by nothing. Which module sits in
# which layer is read off the tree (its package); this list is the one declared order, and
# docs/code-map.md shows the same.
LAYERS = [
    ("errors", ["errors"]),  # top-level: the one exception type, how errors print
    ("base", ["paths", "names", "commands"]),  # top-level: path checks; every file name; every printed command
    ("runtime", ["runtime"]),  # the process and device: torchrun, allocator, precision
    ("recipe", ["recipe"]),  # the choice tables: losses, optimizers, schedulers, metrics
    ("weights", ["weights"]),  # any checkpoint file -> a state dict; key rules, strict load
    ("config", ["config"]),  # the schema; YAML + overrides -> a validated config
    ("rundir", ["rundir"]),  # the run directory plaintune owns
    ("data", ["data"]),  # pairs, tokens, batches
    ("model", ["model"]),  # the model, what it is fed, what its outputs mean
    ("inference", ["inference"]),  # predicting with saved models; submissions, reports
    ("training", ["training"]),  # the loop and one run
    ("kfold", ["kfold"]),  # k-fold, fitted ensembles, the leaderboard
    ("apps", ["api", "__init__", "checkpoint"]),  # the entry points: plaintune.train/predict, checkpoint CLI
]
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """The layer unit of a module: its package, or the module itself at the top level."""
    return module.split(".")[0]


LAYER_OF = {}  # filled below from the tree: module -> rank


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
LAYER_OF.update({m: RANK[unit_of(m)] for m in MODULES if unit_of(m) in RANK})
PACKAGES = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def imports(path: Path, here: str = "") -> list[tuple[str, list[str], int]]:
    """(imported project module, names taken from it, line) for every import in the file, at any depth
    (inside functions too). `from plaintune.pkg import mod` counts as importing the module pkg.mod."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = (here or module_name(path)).split(".")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level]
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
            found += [
                (a.name.removeprefix("plaintune").lstrip("."), [], node.lineno)
                for a in node.names
                if a.name.startswith("plaintune.")
            ]
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent == PACKAGE}
    edges = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _ in imports(path):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def package_graph() -> dict[str, set[str]]:
    """Units (packages and top-level modules) and the units each imports, function-level imports included."""
    edges: dict[str, set[str]] = {}
    for name, targets in graph().items():
        edges.setdefault(unit_of(name), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(name))
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
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
    source.write_text(
        "def f():\n    from plaintune.training.run import train_run\n"
        "    from plaintune.kfold import folds\n    from .. import api\n"
        "class C:\n    def g(self):\n        import plaintune.rundir.lock\n"
    )
    found = {(target, tuple(names)) for target, names, _ in imports(source, here="model.loading")}
    assert found == {("training.run", ("train_run",)), ("kfold.folds", ()), ("api", ()), ("rundir.lock", ())}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert find_cycle(graph()) == []


def test_no_package_import_cycle():
    """Counted between packages as well as between modules: checkpoint -> config -> model -> checkpoint
    is a cycle even when no two modules import each other."""
    assert find_cycle(package_graph()) == []


def test_every_package_imports_only_lower_layers():
    """One list of offenders: every import of a unit at the same rank or above (apps are exempt)."""
    offenders = [
        f"{module_name(path)}:{line} imports {target} ({LAYERS[RANK[unit_of(target)]][0]})"
        for path in PACKAGE.rglob("*.py")
        for target, _, line in imports(path)
        if target in MODULES
        and unit_of(target) != unit_of(module_name(path))
        and RANK[unit_of(target)] >= RANK[unit_of(module_name(path))]
        and LAYERS[RANK[unit_of(module_name(path))]][0] != "apps"
    ]
    assert offenders == []


def test_no_private_name_crosses_modules():
    offenders = [
        f"{module_name(path)}:{line} imports {name} from {target}"
        for path in PACKAGE.rglob("*.py")
        for target, names, line in imports(path)
        for name in names
        if name.startswith("_")
    ]
    assert offenders == []


def test_every_module_has_a_layer():
    assert sorted(m for m in MODULES if unit_of(m) not in RANK) == []
    assert PACKAGES <= set(RANK), "a package without a layer"


def test_package_inits_hold_no_code():
    """A package's __init__ is empty, so importing one module never drags in its siblings."""
    assert [p for p in PACKAGE.glob("*/__init__.py") if p.read_text().strip()] == []


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
            is_project = (
                isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("plaintune"))
            ) or (isinstance(node, ast.Import) and any(a.name.startswith("plaintune") for a in node.names))
            if is_project and id(node) not in top:
                offenders.append(f"{module_name(path)}:{node.lineno}")
    assert offenders == []
