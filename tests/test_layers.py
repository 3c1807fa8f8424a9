"""The layering the imports must show: core -> data -> families -> commands, no circles, nothing hidden.

Every module of the installed namespace is parsed (imports inside functions included) and its
imports are checked against the layer rules of docs/architecture.md. ``../shared/tools/import_cycles.py``
reads the repository's folder names; this test reads the namespace the package installs under.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as (pyproject.toml's package-dir)
FOLDERS = {"medlatent": "medlatent", "transforms": "medlatent.transforms", "vqvae3d": "medlatent.vqvae3d",
           "attrivae": "medlatent.attrivae"}
RANKS = {"core": 0, "data": 1, "family": 2, "commands": 3}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    if module.startswith("medlatent.commands"):
        return "commands"
    if module.startswith("medlatent.transforms"):
        return "data"
    if module.startswith(("medlatent.vqvae3d", "medlatent.attrivae")):
        return "family"
    return "core"


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                out.add(name)
    return out


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_the_namespace_is_found():
    assert {"medlatent.engine", "medlatent.transforms.pipeline", "medlatent.vqvae3d.model", "medlatent.attrivae.model",
            "medlatent.commands.cli"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_those_below(module):
    layer = _layer(module)
    above = sorted(m for m in GRAPH[module] if RANKS[_layer(m)] > RANKS[layer])
    assert not above, f"{module} ({layer}) imports {above} from a layer above it"
    if layer == "family":
        own = module.split(".")[1]
        other = sorted(m for m in GRAPH[module] if _layer(m) == "family" and m.split(".")[1] != own)
        assert not other, f"{module} imports the other family: {other}"


def test_no_import_circles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, f"modules that import each other: {circles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_hides_behind_importlib(module):
    tree = ast.parse(MODULES[module].read_text())
    hidden = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
        or (isinstance(node.func, ast.Name) and node.func.id == "__import__"))]
    assert not hidden, f"{module}: dynamic imports at lines {hidden}"
