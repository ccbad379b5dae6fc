"""No import cycle in difflab.eval: the extractor registry (features) loads effnet and inception
lazily, and they take their helpers from below it (eval.images, difflab.io), not from it."""

from __future__ import annotations

import ast
from pathlib import Path

import difflab

SRC = Path(difflab.__file__).parent.parent


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def imported(path: Path, known: set[str]) -> set[str]:
    """The difflab modules a file imports anywhere (top level or inside functions); for
    ``from package import name`` the submodule ``package.name`` when there is one."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out & known


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle reachable by depth-first search, as the module path that closes it."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node):], node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return found


def eval_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (SRC / "difflab" / "eval").glob("*.py")}
    files["difflab.io"] = SRC / "difflab" / "io.py"
    known = set(files) - {"difflab.eval"}  # importing a submodule imports its package anyway
    return {name: imported(path, known) - {name} for name, path in files.items() if name in known}


def test_the_eval_modules_import_no_cycle():
    graph = eval_graph()
    assert {"difflab.eval.effnet", "difflab.eval.inception"} <= graph["difflab.eval.features"]
    assert "difflab.eval.images" in graph["difflab.eval.effnet"]
    assert cycles(graph) == []


def test_cycles_finds_a_lazy_import_circle():
    graph = {"features": {"effnet"}, "effnet": {"features", "images"}, "images": set()}
    assert cycles(graph) == [["effnet", "features", "effnet"]]
