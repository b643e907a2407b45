"""Tokens from the file, from token_file and from the environment, and their redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvtunnel._config import (
    AdminConfig,
    Secret,
    admin_token_from_environment,
    generate_token,
    load_agent_config,
    load_server_config,
    with_agent_overrides,
    with_overrides,
)
from pvtunnel._errors import ConfigError
from tests.config.helpers import TOKEN, agent_problems, server_problems, write

# ------------------------------------------------------------------ secrets


def test_token_file_is_relative_to_the_config_file_and_stripped(here: Path) -> None:
    write(here, "etc/secrets/agent.token", f"\n  {TOKEN}\n\n")
    write(here, "etc/agent.toml", 'client_id = "a"\n[server]\ntoken_file = "secrets/agent.token"\n')
    config = load_agent_config(Path("etc/agent.toml"), environ={})
    assert config.server.token == Secret(TOKEN)


def test_token_file_may_be_absolute(here: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("secrets") / "token"
    elsewhere.write_text(TOKEN, encoding="utf-8")
    write(here, "server.toml", f'[external]\ntoken_file = "{elsewhere}"\n')
    assert load_server_config(Path("server.toml"), environ={}).external.token == Secret(TOKEN)


def test_every_server_token_accepts_token_file(here: Path) -> None:
    for name in ("internal", "external", "admin", "scoped"):
        write(here, f"{name}.token", f"{name}-{TOKEN}")
    write(
        here,
        "server.toml",
        """
        [internal]
        token_file = "internal.token"
        [[internal.tokens]]
        token_file = "scoped.token"
        routes = ["*"]
        [external]
        token_file = "external.token"
        [admin]
        port = 9100
        token_file = "admin.token"
        """,
    )
    config = load_server_config(Path("server.toml"), environ={})
    assert config.internal.token == Secret(f"internal-{TOKEN}")
    assert config.internal.tokens[0].token == Secret(f"scoped-{TOKEN}")
    assert config.external.token == Secret(f"external-{TOKEN}")
    assert config.admin is not None
    assert config.admin.token == Secret(f"admin-{TOKEN}")


def test_token_and_token_file_together_is_an_error(here: Path) -> None:
    write(here, "t", TOKEN)
    write(here, "server.toml", f'[internal]\ntoken = "{TOKEN}"\ntoken_file = "t"\n')
    assert server_problems(Path("server.toml")) == [
        "server.toml: internal.token_file: set either token or token_file, not both"
    ]


def test_a_missing_token_file_names_the_key(here: Path) -> None:
    write(here, "etc/agent.toml", 'client_id = "a"\n[server]\ntoken_file = "missing.token"\n')
    assert agent_problems(Path("etc/agent.toml")) == [
        f"etc/agent.toml: server.token_file: cannot read {(here / 'etc/missing.token').resolve()}: "
        "No such file or directory"
    ]


@pytest.mark.parametrize("kind", ["agent", "server"])
def test_a_token_given_as_its_file_is_not_echoed(here: Path, kind: str) -> None:
    """The token itself where its file's path goes names no file; echoed as a path,
    it would end up in terminals, CI logs and bug reports."""
    token = generate_token()
    if kind == "agent":
        write(here, "c.toml", f'client_id = "a"\n[server]\ntoken_file = "{token}"\n')
        problems = agent_problems(Path("c.toml"))
        key = "server.token_file"
    else:
        write(here, "c.toml", f'[internal]\ntoken_file = "{token}"\n')
        problems = server_problems(Path("c.toml"))
        key = "internal.token_file"
    assert problems == [
        f"c.toml: {key}: no such file, and the value looks like a token rather than a "
        "path (not shown): put a token in token, or in the file token_file names"
    ]
    assert token not in "".join(problems)


@pytest.mark.parametrize("name", ["missing.token", "secrets/agent-token-for-prod", "token"])
def test_a_missing_token_file_with_a_path_like_name_is_named(here: Path, name: str) -> None:
    write(here, "c.toml", f'client_id = "a"\n[server]\ntoken_file = "{name}"\n')
    assert agent_problems(Path("c.toml")) == [
        f"c.toml: server.token_file: cannot read {(here / name).resolve()}: "
        "No such file or directory"
    ]


def test_a_missing_scoped_token_file_is_reported_once(here: Path) -> None:
    write(here, "server.toml", '[[internal.tokens]]\ntoken_file = "none"\nroutes = ["*"]\n')
    assert server_problems(Path("server.toml")) == [
        f"server.toml: internal.tokens[0].token_file: cannot read {(here / 'none').resolve()}: "
        "No such file or directory"
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("  \n", "must not be empty"),
        ("two words", "must be printable ASCII without spaces (it is sent in an HTTP header)"),
        ("t" * 4097, "must be at most 4096 characters (it is sent in an HTTP header)"),
    ],
)
def test_a_token_file_must_hold_a_usable_token(here: Path, content: str, problem: str) -> None:
    write(here, "t", content)
    write(here, "server.toml", '[internal]\ntoken_file = "t"\n')
    assert server_problems(Path("server.toml")) == [
        f"server.toml: internal.token_file: the token in {(here / 't').resolve()} {problem}"
    ]


def test_a_token_file_that_is_not_utf8(here: Path) -> None:
    (here / "t").write_bytes(b"\xff\xfe")
    write(here, "server.toml", '[internal]\ntoken_file = "t"\n')
    assert server_problems(Path("server.toml")) == [
        f"server.toml: internal.token_file: {(here / 't').resolve()} is not UTF-8 text"
    ]


def test_a_token_file_past_any_token_is_not_read_to_its_end(here: Path) -> None:
    """Read whole, an endless one (``/dev/zero``) would take all memory first."""
    (here / "t").write_bytes(b"a" * ((64 << 10) + 1))
    write(here, "server.toml", '[internal]\ntoken_file = "t"\n')
    assert server_problems(Path("server.toml")) == [
        f"server.toml: internal.token_file: {(here / 't').resolve()} holds over 64 KiB, "
        "too much for a token"
    ]


def test_token_file_must_be_a_path(here: Path) -> None:
    write(here, "server.toml", "[internal]\ntoken_file = 5\n")
    assert server_problems(Path("server.toml")) == [
        "server.toml: internal.token_file: expected a file path, got 5"
    ]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ('""', "must not be empty"),
        ('"with space"', "must be printable ASCII without spaces (it is sent in an HTTP header)"),
        # Longer, no agent, client or admin request could carry it: it would not
        # fit in the request head the server reads.
        (f'"{"t" * 4097}"', "must be at most 4096 characters (it is sent in an HTTP header)"),
        ("12345", "expected a string"),
    ],
)
def test_inline_tokens_must_be_usable(here: Path, token: str, problem: str) -> None:
    write(here, "server.toml", f"[external]\ntoken = {token}\n")
    assert server_problems(Path("server.toml")) == [f"server.toml: external.token: {problem}"]


def test_environment_supplies_tokens_without_a_file() -> None:
    environ = {"PVTUNNEL_INTERNAL_TOKEN": "i-" + TOKEN, "PVTUNNEL_EXTERNAL_TOKEN": "e-" + TOKEN}
    config = load_server_config(None, environ=environ)
    assert config.internal.token == Secret("i-" + TOKEN)
    assert config.external.token == Secret("e-" + TOKEN)
    agent = load_agent_config(None, environ={"PVTUNNEL_TOKEN": f" {TOKEN}\n"})
    assert agent.server.token == Secret(TOKEN)


def test_environment_wins_over_token_and_token_file(here: Path) -> None:
    write(here, "t", "from-file")
    write(
        here,
        "server.toml",
        '[internal]\ntoken = "from-toml"\n[external]\ntoken_file = "t"\n',
    )
    environ = {"PVTUNNEL_INTERNAL_TOKEN": "from-env-i", "PVTUNNEL_EXTERNAL_TOKEN": "from-env-e"}
    config = load_server_config(Path("server.toml"), environ=environ)
    assert config.internal.token == Secret("from-env-i")
    assert config.external.token == Secret("from-env-e")
    write(here, "agent.toml", 'client_id = "a"\n[server]\ntoken = "from-toml"\n')
    agent = load_agent_config(Path("agent.toml"), environ={"PVTUNNEL_TOKEN": "from-env"})
    assert agent.server.token == Secret("from-env")


def test_file_tokens_are_used_when_the_environment_is_silent(here: Path) -> None:
    write(here, "agent.toml", f'client_id = "a"\n[server]\ntoken = "{TOKEN}"\n')
    environ = {"PVTUNNEL_INTERNAL_TOKEN": "for-the-server-only"}
    assert load_agent_config(Path("agent.toml"), environ=environ).server.token == Secret(TOKEN)


def test_environment_makes_an_unreadable_token_file_irrelevant(here: Path) -> None:
    write(here, "agent.toml", 'client_id = "a"\n[server]\ntoken_file = "/nonexistent/t"\n')
    agent = load_agent_config(Path("agent.toml"), environ={"PVTUNNEL_TOKEN": TOKEN})
    assert agent.server.token == Secret(TOKEN)


def test_an_environment_token_does_not_hide_a_malformed_table(here: Path) -> None:
    write(here, "agent.toml", 'client_id = "a"\nserver = "proxy:8081"\n')
    assert agent_problems(Path("agent.toml"), {"PVTUNNEL_TOKEN": TOKEN}) == [
        "agent.toml: server: expected a table, got a string"
    ]


def test_the_admin_token_comes_from_the_environment_too(here: Path) -> None:
    environ = {"PVTUNNEL_ADMIN_TOKEN": "from-env-a"}
    write(here, "server.toml", '[admin]\nport = 9000\nhost = "0.0.0.0"\ntoken = "from-toml"\n')
    server = load_server_config(Path("server.toml"), environ=environ)
    assert server.admin == AdminConfig(port=9000, host="0.0.0.0", token=Secret("from-env-a"))
    write(here, "t", "from-file")
    write(here, "agent.toml", 'client_id = "a"\n[admin]\nport = 9001\ntoken_file = "t"\n')
    agent = load_agent_config(Path("agent.toml"), environ=environ)
    assert agent.admin == AdminConfig(port=9001, token=Secret("from-env-a"))
    # It fills in what a non-loopback listener requires.
    write(here, "bare.toml", '[admin]\nport = 9002\nhost = "0.0.0.0"\n')
    bare = load_server_config(Path("bare.toml"), environ=environ)
    assert bare.admin is not None
    assert bare.admin.token == Secret("from-env-a")


def test_an_admin_token_file_that_cannot_be_read_is_said_once(here: Path) -> None:
    """Not also "required when host is not a loopback address": the file was given."""
    write(here, "server.toml", '[admin]\nport = 9000\nhost = "0.0.0.0"\ntoken_file = "gone"\n')
    (problem,) = server_problems(Path("server.toml"))
    assert problem.startswith("server.toml: admin.token_file: cannot read "), problem


def test_the_admin_token_alone_does_not_turn_the_listener_on() -> None:
    # `pvtunnel status` reads the same variable, so it may be set in a shell that
    # also starts servers without an admin listener.
    environ = {"PVTUNNEL_ADMIN_TOKEN": TOKEN}
    assert load_server_config(None, environ=environ).admin is None
    assert load_agent_config(None, environ=environ).admin is None


def test_admin_port_takes_the_environment_admin_token(here: Path) -> None:
    token = admin_token_from_environment({"PVTUNNEL_ADMIN_TOKEN": f" {TOKEN}\n"})
    assert token == Secret(TOKEN)
    assert admin_token_from_environment({}) is None
    server = with_overrides(load_server_config(None, environ={}), admin_port=0, admin_token=token)
    assert server.admin == AdminConfig(port=0, token=Secret(TOKEN))
    agent = with_agent_overrides(
        load_agent_config(None, environ={}), admin_port=9100, admin_token=token
    )
    assert agent.admin == AdminConfig(port=9100, token=Secret(TOKEN))
    # A listener from the file keeps its own (which the environment already replaced).
    write(here, "server.toml", '[admin]\nport = 9000\ntoken = "from-toml"\n')
    from_file = with_overrides(
        load_server_config(Path("server.toml"), environ={}), admin_port=9001, admin_token=token
    )
    assert from_file.admin == AdminConfig(port=9001, token=Secret("from-toml"))


def test_a_bad_admin_environment_token_is_reported() -> None:
    problem = "environment: PVTUNNEL_ADMIN_TOKEN: the token must not be empty"
    assert server_problems(None, {"PVTUNNEL_ADMIN_TOKEN": " "}) == [problem]
    assert agent_problems(None, {"PVTUNNEL_ADMIN_TOKEN": ""}) == [problem]
    with pytest.raises(ConfigError) as caught:
        admin_token_from_environment({"PVTUNNEL_ADMIN_TOKEN": ""})
    assert caught.value.problems == [problem]


def test_empty_environment_token_is_an_error() -> None:
    assert agent_problems(None, {"PVTUNNEL_TOKEN": "  "}) == [
        "environment: PVTUNNEL_TOKEN: the token must not be empty"
    ]
    assert server_problems(None, {"PVTUNNEL_EXTERNAL_TOKEN": ""}) == [
        "environment: PVTUNNEL_EXTERNAL_TOKEN: the token must not be empty"
    ]


def test_environment_problems_come_with_file_problems(here: Path) -> None:
    write(here, "server.toml", "[internal]\nport = -5\n")
    assert server_problems(Path("server.toml"), {"PVTUNNEL_INTERNAL_TOKEN": "a b"}) == [
        "server.toml: internal.port: expected an integer from 0 to 65535, got -5",
        "environment: PVTUNNEL_INTERNAL_TOKEN: the token must be printable ASCII without spaces "
        "(it is sent in an HTTP header)",
    ]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("server.toml", 'internal = "{t}"\n'),
        ("server.toml", '[internal]\ntokens = ["{t}"]\n'),
        ("server.toml", '[internal]\ntoken = ["{t}"]\n'),
        ("server.toml", '[internal]\ntoken = "{t} x"\n'),
        ("server.toml", '[internal]\ntoken = "{t}"\nport = -1\ntokne = "{t}"\n'),
        ("agent.toml", 'server = "{t}"\n'),
        ("agent.toml", '[server]\nurl = "ws://user:{t}@proxy:99999"\n'),
        ("agent.toml", '[server]\nurl = "{t}@proxy:8081"\n'),
        ("agent.toml", '[server]\ntoken = "{t}"\ntoken_file = "t"\nurl = 1\n'),
    ],
)
def test_problem_lines_never_quote_a_token(here: Path, name: str, text: str) -> None:
    write(here, "t", f"{TOKEN} and more")
    write(here, name, 'client_id = "a"\n' * (name == "agent.toml") + text.format(t=TOKEN))
    loader = load_server_config if name == "server.toml" else load_agent_config
    with pytest.raises(ConfigError) as caught:
        loader(Path(name), environ={"PVTUNNEL_TOKEN": f"{TOKEN}\x00"})
    assert caught.value.problems
    assert TOKEN not in str(caught.value)
    assert all(TOKEN not in line for line in caught.value.problems)


def test_loaded_configs_do_not_show_their_tokens(here: Path) -> None:
    write(here, "server.toml", f'[internal]\ntoken = "{TOKEN}"\n')
    config = load_server_config(Path("server.toml"), environ={"PVTUNNEL_EXTERNAL_TOKEN": TOKEN})
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config)


def test_the_environment_mapping_is_the_only_one_consulted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PVTUNNEL_TOKEN", TOKEN)
    assert load_agent_config(None, environ={}).server.token is None
