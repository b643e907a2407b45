"""How the `pvtunnel` command starts: ``python -m pvtunnel`` and the console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the console script runs, "module:function", as pip writes it.
CONSOLE_SCRIPT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
MODULE, _, FUNCTION = CONSOLE_SCRIPT["pvtunnel"].partition(":")
COMMANDS = {
    "python -m pvtunnel": [sys.executable, "-m", "pvtunnel"],
    "console script": [
        sys.executable,
        "-c",
        f"import sys; from {MODULE} import {FUNCTION}; sys.exit({FUNCTION}())",
    ],
}
# Stands in for trio: says that the import has begun, and holds it there, reading
# a pipe the test keeps open and never writes to, until the signal comes.
SLOW_TRIO = "import sys\nprint('importing trio', flush=True)\nsys.stdin.read()\n"
LIMIT_S = 20


@pytest.mark.parametrize("how", COMMANDS)
def test_ctrl_c_while_the_command_still_imports_exits_130_quietly(tmp_path: Path, how: str) -> None:
    """The SIGINT is sent while trio is being imported, before the CLI module has
    loaded: the stand-in holds the import until then, so it lands there every time."""
    (tmp_path / "trio").mkdir()
    (tmp_path / "trio" / "__init__.py").write_text(SLOW_TRIO)
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    with subprocess.Popen(
        [*COMMANDS[how], "--version"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    ) as command:
        try:
            assert command.stdout is not None
            assert command.stdout.readline() == "importing trio\n"
            command.send_signal(signal.SIGINT)
            # Its stdin stays open: only the signal can end the stand-in's read.
            command.wait(timeout=LIMIT_S)
            assert command.stderr is not None
            stderr = command.stderr.read()
        finally:
            command.kill()
    assert command.returncode == 130, stderr
    assert stderr == ""
