"""README.md promises things; these tests hold it to them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pvtunnel

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_install_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    lines = first_block.group(1).strip().splitlines()
    assert lines[0].endswith("pvtunnel demo")
    assert lines[1].endswith("python -bb -m pytest")
    assert "python -bb -m pytest" in (ROOT / ".ci" / "run").read_text()


def test_library_example_runs() -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    result = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["agent serves ('app',)", "HTTP/1.1 200 OK"]


def test_readme_config_examples_parse_with_known_keys(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", README, re.S)
    assert len(blocks) == 2
    for name, block in zip(("server.toml", "agent.toml"), blocks, strict=True):
        text = block.replace("…", "example-token")
        tomllib.loads(text)
        path = tmp_path / name
        path.write_text(text)
        kind, problems = pvtunnel._config.check_file(path, environ={})
        assert problems == [], problems
        assert kind == name.removesuffix(".toml")


def test_public_api_is_exactly_all() -> None:
    exported = {name for name in vars(pvtunnel) if not name.startswith("_")}
    # Submodules appear as attributes once imported; they are not API.
    exported -= {"_config", "_errors", "_trio"}
    modules = {name for name in exported if type(getattr(pvtunnel, name)).__name__ == "module"}
    assert exported - modules == set(pvtunnel.__all__) - {"__version__"}
    for name in pvtunnel.__all__:
        assert hasattr(pvtunnel, name)
