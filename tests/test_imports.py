"""The import graph: no cycles, and generating never imports training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import sdlab

PACKAGE = Path(sdlab.__file__).parent


def module_name(path: Path) -> str:
    parts = ["sdlab", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports() -> dict[str, set[str]]:
    """Module -> the sdlab modules it imports when it is imported (not inside functions or TYPE_CHECKING)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_there_is_no_import_cycle():
    graph = top_level_imports()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in graph:
        if start not in done:
            visit(start, [start])
    assert cycles == [], cycles[:3]


def test_generating_imports_no_training_code():
    code = (
        "import sys, sdlab, sdlab.sampling.loop, sdlab.service, sdlab.server.app;"
        "print(sorted(m for m in sys.modules if m.startswith('sdlab.training')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    graph = top_level_imports()
    generation = [m for m in graph if not m.startswith(("sdlab.training", "sdlab.cli", "sdlab.evaluation"))]
    assert not [m for m in generation if any(t.startswith("sdlab.training") for t in graph[m])]
