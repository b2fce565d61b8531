"""DESIGN.md's layers, checked on the source: who may import whom, no import cycles, modules of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("glm_core", "evaluation", "export", "training", "glm_optimum")
# layer -> packages it must never import (glm_core <- evaluation <- export, glm_core <- evaluation <- training).
# glm_optimum (the optimum extra: torch, transformers, optimum) sits on top and nothing imports it.
FORBIDDEN = {
    "glm_core": {"evaluation", "export", "training", "glm_optimum"},
    "evaluation": {"export", "training", "glm_optimum"},
    "export": {"training", "glm_optimum"},
    "training": {"export", "glm_optimum"},
    "glm_optimum": {"training"},
}
MAX_TRAINING_MODULE_LINES = 600
MAX_MODULE_LINES = 1000


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "assets" not in p.parts}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported by ``path`` (module-level and function-level alike)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(layer):
    offenders = sorted(
        f"{mod} -> {dep}"
        for mod, deps in _graph().items()
        if mod.split(".")[0] == layer
        for dep in deps
        if dep.split(".")[0] in FORBIDDEN[layer]
    )
    assert offenders == []


def _find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [mod])
    return cycles


def test_no_import_cycles_between_modules():
    # a package's __init__ loading its own submodules is not a cycle (DESIGN.md)
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in _graph().items()}
    assert _find_cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_modules_stay_readable():
    too_long = {}
    for name, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        limit = MAX_TRAINING_MODULE_LINES if name.startswith("training") else MAX_MODULE_LINES
        if lines > limit:
            too_long[name] = lines
    assert too_long == {}


def test_the_graph_sees_function_level_imports():
    """The graph builder is not vacuous: a real function-level import across layers is found."""
    graph = _graph()
    assert "evaluation.backends.torch" in graph["training.evaluation_hook"]
    assert "training.distributed" in graph["training.finetune"]
