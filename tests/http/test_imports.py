"""The HTTP rules and the metrics are pure too: no trio, sockets, clock or logging.

`_http` decides (routing, admission, headers, framing, error answers) and
`_metrics` counts and renders; `_trio` does the I/O and hands them values. So
both run under any event loop, in a fuzzer or a plain test, and never block. The
wire layer has the same rule (``tests/wire/test_imports.py``, the same banned list); here, imports
under ``if TYPE_CHECKING:`` are exempt, since they never run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pvtunnel
from tests.import_rules import BANNED, modules_named

PACKAGE = Path(pvtunnel.__file__).parent
CHECKED = sorted([*(PACKAGE / "_http").glob("*.py"), PACKAGE / "_metrics.py"])
# Third-party modules that do no I/O of their own: attrs, and h11 (sans-I/O).
PURE_LIBRARIES = {"attrs", "h11"}
TYPE_CHECKING_TESTS = ("TYPE_CHECKING", "typing.TYPE_CHECKING")
PURE_OURS = ("pvtunnel._errors", "pvtunnel._wire", "pvtunnel._http", "pvtunnel._metrics")


def runtime_imports(path: Path) -> set[str]:
    """The modules ``path`` imports when it runs (type-checking blocks left out)."""
    nodes: list[ast.AST] = []

    def collect(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING_TESTS:
            for statement in node.orelse:
                collect(statement)
            return
        nodes.append(node)
        for child in ast.iter_child_nodes(node):
            collect(child)

    collect(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules_named(nodes, path)


def is_pure(module: str) -> bool:
    top = module.partition(".")[0]
    if module.startswith(PURE_OURS):
        return True
    if top in BANNED:
        return False
    return top in PURE_LIBRARIES or top in sys.stdlib_module_names


@pytest.mark.parametrize("path", CHECKED, ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_module_imports_only_pure_modules(path: Path) -> None:
    impure = sorted(module for module in runtime_imports(path) if not is_pure(module))
    assert not impure, f"{path.name} imports {impure}"


def test_the_checker_skips_only_type_checking_blocks(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import h11\n"
        "if TYPE_CHECKING:\n"
        "    import trio\n"
        "else:\n"
        "    import socket\n"
        "def f() -> None:\n"
        "    import logging\n"
    )
    assert runtime_imports(module) == {"typing", "h11", "socket", "logging"}
    assert [is_pure(name) for name in ("typing", "h11", "socket", "logging")] == [
        True,
        True,
        False,
        False,
    ]
    assert not is_pure("pvtunnel._trio.front")
    assert not is_pure("pvtunnel._config")
    assert not is_pure("cattrs")
