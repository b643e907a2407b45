"""What the pure layers may not import, and how a module's imports are read.

The wire layer (``tests/wire/test_imports.py``) and the HTTP rules and metrics
(``tests/http/test_imports.py``) share one list of banned modules, so a module
that brings I/O, time or threads in is caught by both checks alike.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

# Standard-library modules that would bring I/O, time or threads into pure code.
BANNED = frozenset(
    {
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
)


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
