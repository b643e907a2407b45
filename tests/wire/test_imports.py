"""The wire layer is pure: standard library and attrs only.

So the codec and the multiplexer can be fed bytes from any event loop, a fuzzer
or a test, and never block, sleep, log or read the clock themselves.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import pvtunnel._wire

if TYPE_CHECKING:
    from collections.abc import Iterable

WIRE = Path(pvtunnel._wire.__file__).parent
# Standard-library modules that would bring I/O, time or threads into the codec.
BANNED = {
    "trio",
    "socket",
    "time",
    "random",
    "threading",
    "logging",
    "asyncio",
    "select",
    "selectors",
    "os",
    "subprocess",
    "datetime",
}
OURS = ("pvtunnel._wire", "pvtunnel._errors")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return modules_named(ast.walk(tree), path)


def modules_named(nodes: Iterable[ast.AST], path: Path) -> set[str]:
    """The modules the import statements among ``nodes`` name (absolute imports only)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            assert node.module is not None
            names.add(node.module)
    return names


def is_allowed(module: str) -> bool:
    top = module.partition(".")[0]
    if module in OURS or module.startswith(tuple(f"{ours}." for ours in OURS)):
        return True
    if top in BANNED:
        return False
    return top == "attrs" or top in sys.stdlib_module_names


def test_the_checker_tells_allowed_from_banned() -> None:
    assert all(
        map(
            is_allowed,
            [
                "enum",
                "json",
                "attrs",
                "pvtunnel._errors",
                "pvtunnel._wire.frames",
                "collections.abc",
            ],
        )
    )
    assert not any(
        map(
            is_allowed,
            [
                "trio",
                "socket",
                "time",
                "logging",
                "asyncio",
                "h11",
                "pvtunnel._trio.tunnel",
                "pvtunnel",
                "cattrs",
            ],
        )
    )


@pytest.mark.parametrize("path", sorted(WIRE.glob("*.py")), ids=lambda p: p.name)
def test_wire_module_imports_only_pure_modules(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path) if not is_allowed(m))
    assert not bad, f"{path.name} imports {bad}"


def test_errors_module_is_pure_too() -> None:
    errors = WIRE.parent / "_errors.py"
    assert all(map(is_allowed, imported_modules(errors)))
