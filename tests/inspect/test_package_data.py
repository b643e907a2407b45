"""The inspector's page ships inside the package: installed wheels must carry it."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pvtunnel

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(pvtunnel.__file__).resolve().parent


def test_every_static_file_is_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pvtunnel"]
    static = sorted(
        path.relative_to(PACKAGE).as_posix() for path in (PACKAGE / "_inspect" / "static").iterdir()
    )
    assert static == [
        "_inspect/static/index.html",
        "_inspect/static/inspect.css",
        "_inspect/static/inspect.js",
    ]
    for name in static:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
