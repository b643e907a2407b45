"""The wire layer is pure: standard library and attrs only.

So the codec and the multiplexer can be fed bytes from any event loop, a fuzzer
or a test, and never block, sleep, log or read the clock themselves.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pvtunnel._wire
from tests.import_rules import BANNED, modules_named

WIRE = Path(pvtunnel._wire.__file__).parent
OURS = ("pvtunnel._wire", "pvtunnel._errors")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return modules_named(ast.walk(tree), path)


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
