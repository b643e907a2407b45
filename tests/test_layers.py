"""pvtunnel's modules import downwards only: no cycle, not even through type hints.

Imports under ``if TYPE_CHECKING:`` count too: a cycle there still means two
modules that each need the other to be understood, which is what the layering
(`_wire` and `_http` below `_trio`, listeners below what they serve) rules out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pvtunnel

PACKAGE = Path(pvtunnel.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the pvtunnel modules it imports, wherever in the file the import is."""
    paths = {_module_name(path, root): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in paths else base)
        deps = set()
        for target in targets:
            # `import pvtunnel._wire.frames` names the module; `from x import y` may
            # name a class in x: walk up to the nearest module we have.
            while target and target not in paths:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_pvtunnel_modules() -> None:
    assert _cycles(_import_graph(PACKAGE)) == []


def test_the_graph_sees_type_checking_and_relative_imports() -> None:
    graph = _import_graph(PACKAGE)
    # front.py names ServerState only under TYPE_CHECKING.
    assert "pvtunnel._trio.state" in graph["pvtunnel._trio.front"]
    # _config/model.py imports `from . import rules`.
    assert "pvtunnel._config.rules" in graph["pvtunnel._config.model"]


def test_a_cycle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import B\nA = 1\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\nB = 2\n"
    )
    (package / "c.py").write_text("from pkg import a\n")
    assert _cycles(_import_graph(package)) == [["pkg.a", "pkg.b"]]


def test_test_modules_take_helpers_from_helper_modules() -> None:
    # Importing a test module from another one runs (and collects) it twice over,
    # and ties the two together: what both need lives in a module of helpers.
    graph = _import_graph(Path(__file__).parent)
    borrowed = sorted(
        f"{name} imports {dep}"
        for name, deps in graph.items()
        for dep in deps
        if dep.rpartition(".")[2].startswith("test_")
    )
    assert borrowed == []
