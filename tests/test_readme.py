"""README.md and docs/ promise things; these tests hold them to them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import types
import typing
from pathlib import Path

import attrs
import pytest

import pvtunnel
from pvtunnel._config.model import TOML_KEY
from pvtunnel._http.framing import refused_head_status

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
# h11's README is about 7 k characters, trio's too: a README serves a newcomer's
# first minutes, and the details live under docs/.
README_MAX_CHARS = 10_000


def test_readme_starts_with_the_install_and_test_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    lines = first_block.group(1).strip().splitlines()
    assert lines[0].endswith("pvtunnel demo")
    assert lines[1].endswith("python -bb -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -bb -m pytest" in ci
    # The system programs the tests drive come from the same script in both.
    assert lines[1].startswith("bash tests/system-packages.sh && ")
    assert "bash tests/system-packages.sh" in ci


def test_readme_is_of_readme_size() -> None:
    assert len(README) < README_MAX_CHARS


@pytest.mark.parametrize("page", ["configuration.md", "operations.md", "embedding.md"])
def test_readme_links_the_pages_under_docs(page: str) -> None:
    assert (DOCS / page).is_file()
    assert f"(docs/{page}" in README


def test_the_error_table_tells_a_long_request_line_from_a_long_head() -> None:
    """Both statuses the head limit brings, as the server chooses them."""
    table = README[README.index("| situation | status |") :].partition("\n\n")[0]
    statuses = {row.rsplit("|", 2)[1].strip() for row in table.splitlines()[2:]}
    limit = 1024
    line_alone, _ = refused_head_status(431, b"GET /" + b"a" * limit, limit)
    whole_head, _ = refused_head_status(431, b"GET / HTTP/1.1\r\nX: " + b"a" * limit, limit)
    assert {str(line_alone), str(whole_head)} <= statuses


def test_library_example_runs() -> None:
    embedding = (DOCS / "embedding.md").read_text()
    code = re.search(r"```python\n(.*?)```", embedding, re.S)
    assert code is not None
    # An example is copied as it is: one that leaves a socket open teaches leaks
    # (an unclosed socket is only reported, so stderr must be empty too).
    result = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", code.group(1)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == ["agent serves ('app',)", "HTTP/1.1 200 OK"]


@pytest.mark.parametrize("page", [ROOT / "README.md", DOCS / "configuration.md"], ids=str)
def test_config_examples_parse_with_known_keys(page: Path, tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", page.read_text(), re.S)
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
    # dir(), not vars(): a name is only in vars() once it has been used.
    exported = {name for name in dir(pvtunnel) if not name.startswith("_")}
    # Submodules appear as attributes once imported; they are not API.
    exported -= {"_config", "_errors", "_trio"}
    modules = {name for name in exported if type(getattr(pvtunnel, name)).__name__ == "module"}
    assert exported - modules == set(pvtunnel.__all__) - {"__version__"}
    for name in pvtunnel.__all__:
        assert hasattr(pvtunnel, name)
    assert not hasattr(pvtunnel, "TunnelClient")


def _toml_keys(cls: type) -> list[tuple[str, str]]:
    """``(table, key)`` for every key of a config class, nested tables included.

    The table is the TOML table path ("" at the top level, "internal.tokens" for
    an array of tables); the key is the TOML spelling of the field.
    """
    keys: list[tuple[str, str]] = []

    def walk(owner: type, table: str) -> None:
        hints = typing.get_type_hints(owner)
        for field in attrs.fields(owner):
            if not field.init:
                continue
            key = field.metadata.get(TOML_KEY, field.name)
            keys.append((table, key))
            inner = hints[field.name]
            while typing.get_origin(inner) in (tuple, types.UnionType, typing.Union):
                inner = typing.get_args(inner)[0]
            if isinstance(inner, type) and attrs.has(inner):
                walk(inner, f"{table}.{key}".lstrip("."))

    walk(cls, "")
    return keys


def _sections(text: str) -> dict[str, str]:
    """The ``### `[table]` `` sections of one file's part of configuration.md."""
    parts = re.split(r"^### (.+)$", text, flags=re.M)
    return {
        heading.strip("`[]"): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@pytest.mark.parametrize(
    ("file", "cls"), [("server.toml", pvtunnel.ServerConfig), ("agent.toml", pvtunnel.AgentConfig)]
)
def test_configuration_page_describes_every_key(file: str, cls: type) -> None:
    text = (DOCS / "configuration.md").read_text()
    start = text.index(f"## {file}\n")
    end = text.find("\n## ", start + 1)
    sections = _sections(text[start:end])
    keys = _toml_keys(cls)
    tables = {table for table, _ in keys}
    missing = []
    for table, key in keys:
        path = f"{table}.{key}".lstrip(".")
        if path in sections:
            continue  # a table of its own, with its own section
        # A nested table (internal.tokens) is described in its parent's section.
        heading = table.partition(".")[0] or "Top level"
        if f"`{key}`" not in sections.get(heading, ""):
            missing.append(path)
    assert tables - {""} <= {*sections, *(table for table in tables if "." in table)}
    assert not missing, f"docs/configuration.md ({file}) does not describe {missing}"


# Flags about the command itself, not about a key of its file.
_NOT_KEY_FLAGS = frozenset({"--help", "--config", "--log-level", "--log-format"})


@pytest.mark.parametrize("command", ["serve", "agent"])
def test_configuration_page_lists_every_flag_that_replaces_a_key(command: str) -> None:
    """The Flags table is where a user learns what a one-liner can say: a flag
    added to the command and left out of it is one they would not find."""
    text = (DOCS / "configuration.md").read_text()
    table = text[text.index("## Flags\n") :].partition("\n\n## ")[0]
    listed = {
        flag
        for row in table.splitlines()[4:]
        for cell in [row.split(" | ")[0]]
        for flag in re.findall(rf"`{command} (--[a-z-]+)", cell)
    }
    shown = subprocess.run(
        [sys.executable, "-m", "pvtunnel", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = set(re.findall(r"^  (--[a-z-]+)", shown, flags=re.M)) - _NOT_KEY_FLAGS
    assert options, shown
    assert options == listed


def security_table_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) for each test SECURITY.md's rules table names ("" for a whole module).

    A cell names ``tests/dir/test_x.py::name`` in full the first time; after that
    ``test_x.py::name`` is in the directory last named, and ``::name`` in the file.
    """
    found: list[tuple[str, str]] = []
    directory = file = ""
    table = text[text.index("## Rules and the tests that hold them") :]
    for row in re.findall(r"^\|.*\|\s*$", table, re.M)[2:]:
        for ref in re.findall(r"`([^`]*(?:::|\.py)[^`]*)`", row.rsplit("|", 2)[1]):
            path, _, name = ref.partition("::")
            if not name:  # a whole module, named in full; the next short name reads as before
                found.append((path, ""))
                continue
            if "/" in path:
                directory, _, file = path.rpartition("/")
            elif path:
                file = path
            found.append((f"{directory}/{file}", name.partition("[")[0]))
    return found


def test_security_md_names_tests_that_exist() -> None:
    named = security_table_tests((ROOT / "SECURITY.md").read_text())
    assert len(named) > 20
    missing = [
        f"{path}::{name}"
        for path, name in named
        if not (ROOT / path).is_file()
        or (name and not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M))
    ]
    assert missing == []


def test_the_security_table_reader_follows_short_references() -> None:
    text = (
        "## Rules and the tests that hold them\n\n| rule | test |\n|---|---|\n"
        "| a | `tests/x/test_a.py::one`, `::two` |\n"
        "| b | `test_b.py::three[param]`, `tests/z/test_d.py`, `tests/y/test_c.py::four` |\n"
        "| c | `test_e.py::five` |\n"
    )
    assert security_table_tests(text) == [
        ("tests/x/test_a.py", "one"),
        ("tests/x/test_a.py", "two"),
        ("tests/x/test_b.py", "three"),
        ("tests/z/test_d.py", ""),
        ("tests/y/test_c.py", "four"),
        ("tests/y/test_e.py", "five"),
    ]
