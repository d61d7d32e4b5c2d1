"""The package's shape, as the redesign left it: small modules, thin node classes, a pure core.

Read as text (no import), so a regression fails here with the module and the line count, not in
review: no module over 400 lines, ``ServerNode`` and ``ClientNode`` under 250 lines each, and nothing
in ``core/`` that imports asyncio, torch, aiomqtt or psutil (its tests need no broker, no clock).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "koala_async"
IMPURE = {"asyncio", "torch", "aiomqtt", "paho", "psutil", "amqtt", "uvloop"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_the_node_classes_are_under_250_lines() -> None:
    sizes = {}
    for path, name in (("nodes/server.py", "ServerNode"), ("nodes/client.py", "ClientNode")):
        tree = ast.parse((PACKAGE / path).read_text())
        (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
        assert node.end_lineno is not None
        sizes[name] = node.end_lineno - node.lineno + 1
    assert all(size < 250 for size in sizes.values()), sizes


def test_core_imports_no_io_and_no_torch() -> None:
    found = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in IMPURE]
    assert found == []
