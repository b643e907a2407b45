"""``pvtunnel init`` files and ``pvtunnel check``."""

from __future__ import annotations

import os
import socket
import stat
from typing import TYPE_CHECKING

import pytest

from pvtunnel._config import (
    RouteType,
    check_file,
    load_agent_config,
    load_server_config,
    write_init_files,
)
from pvtunnel._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------ init


def test_init_files_load_back_and_share_the_agent_token(tmp_path: Path) -> None:
    server_path, agent_path = write_init_files(tmp_path, force=False)
    assert (server_path, agent_path) == (tmp_path / "server.toml", tmp_path / "agent.toml")
    server = load_server_config(server_path, environ={})
    agent = load_agent_config(agent_path, environ={})
    assert server.internal.token is not None
    assert agent.server.token == server.internal.token
    assert len(server.internal.token.reveal()) >= 32
    assert (server.internal.port, server.external.port) == (8081, 8080)
    assert agent.server.urls == ("ws://127.0.0.1:8081",)
    assert len(agent.routes) == 1
    assert agent.routes[0].type is RouteType.IP
    assert agent.validate_runnable() == []
    assert check_file(server_path, environ={}) == ("server", [])
    assert check_file(agent_path, environ={}) == ("agent", [])


def test_init_files_are_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)  # the most permissive: the mode must not depend on it
    try:
        paths = write_init_files(tmp_path, force=False)
    finally:
        os.umask(old_umask)
    assert [mode(path) for path in paths] == [0o600, 0o600]


def test_init_makes_fresh_tokens_each_time(tmp_path: Path) -> None:
    first = load_server_config(write_init_files(tmp_path / "a", force=False)[0], environ={})
    second = load_server_config(write_init_files(tmp_path / "b", force=False)[0], environ={})
    assert first.internal.token != second.internal.token


def test_init_creates_the_directory(tmp_path: Path) -> None:
    server_path, _ = write_init_files(tmp_path / "new" / "dir", force=False)
    assert server_path.is_file()


@pytest.mark.parametrize("existing", ["server.toml", "agent.toml"])
def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        write_init_files(tmp_path, force=False)
    assert caught.value.problems == [
        f"{tmp_path / existing}: already exists; pass --force to overwrite it"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text(encoding="utf-8") == "mine"


def test_init_with_force_overwrites_and_tightens_the_mode(tmp_path: Path) -> None:
    write_init_files(tmp_path, force=False)
    before = (tmp_path / "server.toml").read_text(encoding="utf-8")
    (tmp_path / "agent.toml").chmod(0o644)
    server_path, agent_path = write_init_files(tmp_path, force=True)
    assert server_path.read_text(encoding="utf-8") != before
    assert mode(agent_path) == 0o600
    server = load_server_config(server_path, environ={})
    assert load_agent_config(agent_path, environ={}).server.token == server.internal.token


def test_init_counts_a_dangling_symlink_as_existing(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"agent\.toml: already exists"):
        write_init_files(tmp_path, force=False)
    assert not (tmp_path / "server.toml").exists()
    assert not (tmp_path / "nowhere").exists()


def test_init_with_force_never_writes_through_a_symlink(tmp_path: Path) -> None:
    """A symbolic link where agent.toml goes must not lead the token elsewhere."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    victim.chmod(0o644)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "agent.toml").symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link"):
        write_init_files(tmp_path / "conf", force=True)
    assert victim.read_text() == "keep me\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not (tmp_path / "conf" / "server.toml").exists()  # nothing written


def test_init_reports_a_file_it_cannot_write(tmp_path: Path) -> None:
    (tmp_path / "server.toml").mkdir()
    with pytest.raises(ConfigError) as caught:
        write_init_files(tmp_path, force=True)
    assert caught.value.problems == [f"{tmp_path / 'server.toml'}: cannot write: Is a directory"]


def test_init_with_force_keeps_the_old_pair_when_agent_toml_is_a_directory(
    tmp_path: Path,
) -> None:
    """A new server token beside the old agent's would leave neither able to work."""
    write_init_files(tmp_path, force=False)
    before = (tmp_path / "server.toml").read_text(encoding="utf-8")
    (tmp_path / "agent.toml").unlink()
    (tmp_path / "agent.toml").mkdir()
    with pytest.raises(ConfigError) as caught:
        write_init_files(tmp_path, force=True)
    assert caught.value.problems == [f"{tmp_path / 'agent.toml'}: cannot write: Is a directory"]
    assert (tmp_path / "server.toml").read_text(encoding="utf-8") == before


def test_init_without_force_does_not_advise_it_for_a_directory(tmp_path: Path) -> None:
    """--force cannot turn a directory into a file: advising it would only fail again."""
    (tmp_path / "agent.toml").mkdir()
    with pytest.raises(ConfigError) as caught:
        write_init_files(tmp_path, force=False)
    assert caught.value.problems == [f"{tmp_path / 'agent.toml'}: cannot write: Is a directory"]
    assert not (tmp_path / "server.toml").exists()


@pytest.mark.parametrize("server_exists", [True, False])
def test_init_with_force_writes_neither_when_agent_toml_cannot_be_opened(
    here: Path, server_exists: bool
) -> None:
    """A socket where agent.toml goes passes every check by name (no directory, no
    link) and fails only when opened, even for root: server.toml must be as it was."""
    if server_exists:
        (here / "server.toml").write_text("old\n", encoding="utf-8")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind("agent.toml")  # relative: a socket's path has a short length limit
        with pytest.raises(ConfigError, match=r"agent\.toml: cannot write: "):
            write_init_files(here, force=True)
    assert sorted(path.name for path in here.iterdir()) == [
        "agent.toml",
        *(["server.toml"] if server_exists else []),
    ]
    if server_exists:
        assert (here / "server.toml").read_text(encoding="utf-8") == "old\n"


def test_init_reports_an_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot create the directory"):
        write_init_files(blocker / "sub", force=False)


# ------------------------------------------------------------------ check


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("[internal]\nport = 1\n", "server"),
        ("[external]\nport = 1\n", "server"),
        ('host = "::"\n', "server"),
        ('client_id = "a"\n', "agent"),
        ('[server]\nurl = "p:1"\n', "agent"),
        ('[[routes]]\nname = "r"\nvalue = "h"\nport = 1\n', "agent"),
        ("max_streams = 5\n", "agent"),
        # Tables both kinds have: their keys say it.
        ("[timeouts]\nidle_s = 5.0\n", "server"),
        ("[timeouts]\nupstream_idle_s = 5.0\ngrace_s = 1.0\n", "agent"),
    ],
)
def test_check_tells_the_kinds_apart(tmp_path: Path, text: str, kind: str) -> None:
    assert check_file(write(tmp_path / "x.toml", text), environ={}) == (kind, [])


def test_check_reports_every_problem_of_a_server_file(tmp_path: Path) -> None:
    path = write(tmp_path / "s.toml", "[internal]\nport = 70000\n[external]\nprot = 1\n")
    assert check_file(path, environ={}) == (
        "server",
        [
            f"{path}: internal.port: expected an integer from 0 to 65535, got 70000",
            f'{path}: external.prot: unknown key (did you mean "port"?)',
        ],
    )


def test_check_reports_every_problem_of_an_agent_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", '[server]\nurl = "http://x"\n[[routes]]\nname = "r"\n')
    assert check_file(path, environ={}) == (
        "agent",
        [
            f'{path}: server.url: expected a ws:// or wss:// URL, got "http://x"',
            f"{path}: routes[0].value: missing required key",
            f"{path}: routes[0].port: missing required key",
        ],
    )


def test_check_uses_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", 'client_id = "a"\n')
    assert check_file(path, environ={"PVTUNNEL_TOKEN": ""}) == (
        "agent",
        ["environment: PVTUNNEL_TOKEN: the token must not be empty"],
    )


def test_check_a_broken_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "[internal\nport = 1\n")
    kind, problems = check_file(path, environ={})
    assert kind == "unknown"
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: invalid TOML: ")
    assert "line 1" in problems[0]


def test_check_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    assert check_file(path, environ={}) == (
        "unknown",
        [f"{path}: cannot read the file: No such file or directory"],
    )


@pytest.mark.parametrize(
    "text", ["", "[timeouts]\n", "[timeouts]\ngrace_s = 1.0\n", "[admin]\nport = 9000\n"]
)
def test_check_a_file_good_for_either_kind(tmp_path: Path, text: str) -> None:
    """A file of nothing but what both kinds share is good for both."""
    assert check_file(write(tmp_path / "x.toml", text), environ={}) == ("unknown", [])


@pytest.mark.parametrize(
    ("text", "as_server", "as_agent"),
    [
        (
            '[internal]\nport = 1\n[server]\nurl = "p:1"\n',
            ["server: unknown key"],
            ["internal: unknown key"],
        ),
    ],
)
def test_check_a_file_of_no_clear_kind(
    tmp_path: Path, text: str, as_server: list[str], as_agent: list[str]
) -> None:
    """Neither kind loads it: both kinds' problems, after the reason it has no kind."""
    path = write(tmp_path / "x.toml", text)
    kind, problems = check_file(path, environ={})
    assert kind == "unknown"
    assert problems == [
        f"{path}: cannot tell a server config from an agent config: expected "
        "[internal]/[external] (server) or client_id, [server], [[routes]] (agent)",
        *(f"as a server: {path}: {problem}" for problem in as_server),
        *(f"as an agent: {path}: {problem}" for problem in as_agent),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[timeouts]\nbogus = 1\n", "timeouts.bogus: unknown key"),
        ("[timeouts]\ngrace_s = 0\n", "timeouts.grace_s: expected a finite number of seconds"),
    ],
)
def test_check_a_file_wrong_alike_for_either_kind_says_it_once(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Whichever kind it is, the same thing is wrong: that alone is said."""
    path = write(tmp_path / "x.toml", text)
    kind, problems = check_file(path, environ={})
    assert kind == "unknown"
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: {problem}"), problems


@pytest.mark.parametrize(
    ("text", "load", "said", "command"),
    [
        ('client_id = "a"\n[[routes]]\nname = "x"\n', load_server_config, "an agent", "agent"),
        ("[internal]\nport = 1\n", load_agent_config, "a server", "serve"),
    ],
)
def test_a_file_of_the_other_kind_says_which_command_it_is_for(
    tmp_path: Path, text: str, load: Callable[..., object], said: str, command: str
) -> None:
    """Not a list of "unknown key" for each of its tables: which command it is for."""
    path = write(tmp_path / "x.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: this is {said} config (")
    assert problem.endswith(f": start it with pvtunnel {command} --config {path}")
