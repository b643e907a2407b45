"""pvtunnel runs on its design's stack: these six runtime dependencies, and nothing else.

trio, trio-websocket (the tunnel's WebSocket, both ends), h11 (HTTP/1.1 both ends),
attrs, cattrs and tomli-w. A seventh, or a module of `src/` importing a third-party
package outside them, would change what every user installs and audits.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pvtunnel

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(pvtunnel.__file__).parent
RUNTIME = {"trio", "trio-websocket", "h11", "attrs", "cattrs", "tomli-w"}
# The import names of those distributions.
IMPORTABLE = {"trio", "trio_websocket", "h11", "attrs", "cattrs", "tomli_w"}


def test_the_runtime_dependencies_are_the_designs_six() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {
        re.split(r"[<>=!~; \[]", spec, maxsplit=1)[0].lower() for spec in project["dependencies"]
    }
    assert names == RUNTIME


def test_src_imports_no_other_third_party_package() -> None:
    foreign: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top == "pvtunnel" or top in sys.stdlib_module_names or top in IMPORTABLE:
                    continue
                foreign.setdefault(str(path.relative_to(SRC)), set()).add(top)
    assert foreign == {}


def test_the_tunnels_websocket_is_trio_websocket() -> None:
    source = (SRC / "_trio" / "websocket.py").read_text(encoding="utf-8")
    assert "import trio_websocket" in source
