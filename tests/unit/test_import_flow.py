"""Imports run one way: config -> platform -> workloads -> plan -> measure -> evidence -> decide -> explain ->
sinks -> run. Every import of every module is walked (module level and inside functions); a circle or an import
of a higher stage fails, naming the edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "trainer_tune"

LAYERS = ["config", "platform", "workloads", "examples", "plan", "measure", "evidence", "decide", "explain", "sinks",
          "run"]
"""Bottom to top: a module may import its own layer and the layers below it."""

ENTRY_POINTS = {"trainer_tune.__main__", "trainer_tune.decide.__main__"}
"""Orchestration that sits in a stage's folder so users can type `python -m`: may import upward."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """trainer_tune modules that `name` imports anywhere in its file (also under TYPE_CHECKING and in functions)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("trainer_tune"):
                found.add(target)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # trainer_tune itself
        return -1
    return LAYERS.index(parts[1])


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_is_in_a_layer() -> None:
    strays = [m for m in _modules() if m.count(".") >= 1 and m.split(".")[1] not in LAYERS
              and m not in ENTRY_POINTS]
    assert not strays, f"modules outside the stage packages: {strays}"


def test_no_import_runs_upward() -> None:
    upward = []
    for module, targets in _graph().items():
        if module in ENTRY_POINTS:
            continue
        for target in targets:
            if target.count(".") >= 1 and _layer(target) > _layer(module):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the flow:\n" + "\n".join(sorted(upward))


def test_no_import_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == "trainer_tune":
                continue
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


@pytest.mark.parametrize("module", ["trainer_tune.measure.window", "trainer_tune.decide.verdict"])
def test_the_walk_sees_imports(module: str) -> None:
    """The walker itself: a module known to import others is seen to (a walker that finds nothing passes all)."""
    assert _graph()[module]
