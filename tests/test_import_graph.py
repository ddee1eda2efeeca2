"""The package has no import cycles: modules import downwards only (DESIGN.md §2).

Only imports that run at import time count (not those under ``TYPE_CHECKING`` or inside
functions, which exist precisely to keep layers apart).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "proxy"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _top_level_imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in [node] if not isinstance(node, ast.Try) else node.body:
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("proxy"))
            elif isinstance(sub, ast.ImportFrom):
                if sub.level:
                    base = package.rsplit(".", sub.level - 1)[0] if sub.level > 1 else package
                    target = f"{base}.{sub.module}" if sub.module else base
                else:
                    target = sub.module or ""
                if target.startswith("proxy"):
                    found.add(target)
                    for alias in sub.names:
                        found.add(f"{target}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {t for t in _top_level_imports(path, name) if t in modules and t != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_relay_pieces_need_no_asyncio() -> None:
    """The sans-IO pieces import neither asyncio nor sockets."""
    for path in (ROOT / "relay").glob("*.py"):
        if path.name == "services.py":
            continue  # the interface of the server, for type checking
        imports = {n.split(".")[0] for n in _top_level_imports(path, _module_name(path))}
        text = path.read_text()
        assert "import asyncio" not in text and "import socket" not in text, path
        assert "proxy.session" not in imports, path
