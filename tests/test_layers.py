"""The package's import graph has no cycle, lazy imports included (TYPE_CHECKING-only ones aside)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "trainformers"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The package modules an import statement loads (the closest known module of each name)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] if node.level else [])
        stem = ".".join(filter(None, [base, node.module or ""]))
        names = [f"{stem}.{alias.name}" for alias in node.names]
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for statement in node.body
            for inner in ast.walk(statement)
        }
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_only:
                graph[module] |= _targets(module, path, node, known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that returns to its start, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "trainformers.trainer" in graph and "trainformers.optim" in graph["trainformers.trainer"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_trainer_reaches_hub_report_and_card_only_through_callbacks():
    """trainer.py imports none of the HF-facing extras nor the cycle or command layers: the Hub uploads
    and the model card hang off `HubCallback`, the report off `ReportCallback`. The two drivers it
    starts itself (`hyperparameter_search`, `learning_rate='auto'`) run a Trainer and sit below it."""
    graph = import_graph()
    direct = graph["trainformers.trainer"]
    extras = {
        "trainformers.report",
        "trainformers.hub",
        "trainformers.modelcard",
        "trainformers.run",
        "trainformers.cli",
    }
    assert not direct & extras, sorted(direct & extras)
    assert not [m for m in direct if m.startswith("trainformers.cycle")]
    for driver in ("trainformers.search", "trainformers.lr_finder"):
        above = {m for m in _reachable(graph, driver) if m in {"trainformers.trainer", "trainformers.run"}}
        assert not above, f"{driver} imports {sorted(above)}"


def test_no_class_borrows_another_class_methods():
    """`log = Trainer.log` in a class body hides a dependency that mypy and readers can't follow."""
    borrowed = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            for statement in node.body:
                value = getattr(statement, "value", None)
                if isinstance(statement, (ast.Assign, ast.AnnAssign)) and isinstance(value, ast.Attribute):
                    owner = value.value
                    if isinstance(owner, ast.Name) and owner.id[:1].isupper():
                        borrowed.append(f"{path.name}: {node.name}.{ast.unparse(statement)}")
    assert not borrowed, borrowed


def test_no_private_name_is_imported_across_modules():
    imported = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("trainformers")):
                imported += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not imported, imported


def test_no_source_file_is_much_over_800_lines():
    # by path: trainer.py and cycle/trainer.py are two files (keyed by name, one hid the other)
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert max(sizes.values()) <= 820, sorted(sizes.items(), key=lambda item: -item[1])[:3]
