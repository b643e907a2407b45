"""Every kind of problem line the loaders report: format, key paths, all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvtunnel._config import (
    AdminConfig,
    InspectConfig,
    load_agent_config,
    load_server_config,
    with_agent_overrides,
)
from pvtunnel._config.check import check_file
from pvtunnel._config.converter import flatten
from pvtunnel._tls import ENCRYPTED_KEY
from tests.config.helpers import (
    TOKEN,
    agent_problems,
    encrypt_key,
    server_problems,
    write,
    write_tls_files,
)

# ------------------------------------------------------------------ error lines


def test_the_spec_example_line(here: Path) -> None:
    write(
        here,
        "agent.toml",
        """
        client_id = "a"
        [[routes]]
        name = "one"
        value = "localhost"
        port = 1
        [[routes]]
        name = "two"
        value = "localhost"
        port = "80a"
        """,
    )
    assert agent_problems(Path("agent.toml")) == [
        'agent.toml: routes[1].port: expected an integer from 1 to 65535, got "80a"'
    ]


def test_the_file_is_named_as_given(here: Path) -> None:
    write(here, "conf/my agent.toml", "client_id = 5\n")
    assert agent_problems(Path("conf/my agent.toml")) == [
        "conf/my agent.toml: client_id: expected a string, got 5"
    ]


def test_all_problems_are_reported_together(here: Path) -> None:
    write(
        here,
        "server.toml",
        """
        host = "not a host"
        surplus = 1
        [internal]
        port = 70000
        [external]
        port = -1
        whitelisted_ips = ["10.0.0.1/8", "nonsense", "10.1.0.0/16"]
        domain = "10.0.0.1"
        [timeouts]
        idle_s = 0
        grace_s = nan
        [limits]
        max_request_head_bytes = 100
        stream_window_bytes = 1
        """,
    )
    assert server_problems(Path("server.toml")) == [
        'server.toml: host: expected a host name or IP address, got "not a host"',
        "server.toml: internal.port: expected an integer from 0 to 65535, got 70000",
        "server.toml: external.port: expected an integer from 0 to 65535, got -1",
        'server.toml: external.whitelisted_ips[0]: "10.0.0.1/8" has host bits set; '
        'write the network, "10.0.0.0/8"',
        "server.toml: external.whitelisted_ips[1]: expected an IP address or CIDR range, "
        'got "nonsense"',
        "server.toml: external.domain: expected a domain name such as tunnel.example.com, "
        'got "10.0.0.1"',
        "server.toml: timeouts.idle_s: expected a finite number of seconds greater than 0, got 0",
        "server.toml: timeouts.grace_s: expected a finite number of seconds greater than 0, "
        "got nan",
        "server.toml: limits.max_request_head_bytes: expected an integer from 1024 to 60000, "
        "got 100",
        "server.toml: limits.stream_window_bytes: expected an integer from 16384 to 2147483647, "
        "got 1",
        "server.toml: surplus: unknown key",
    ]


def test_agent_problems_across_tables_are_reported_together(here: Path) -> None:
    write(
        here,
        "agent.toml",
        """
        client_id = ""
        max_streams = 0
        [server]
        url = ["ftp://proxy", "proxy:99999", "ws://:80"]
        discover = "srv"
        [[routes]]
        name = "Bad_Name"
        value = "bad host!"
        port = 0
        type = "dns"
        host_header = "evil\\r\\nX: 1"
        [timeouts]
        connect_s = "10"
        """,
    )
    assert agent_problems(Path("agent.toml")) == [
        "agent.toml: client_id: must not be empty",
        'agent.toml: server.url[0]: expected a ws:// or wss:// URL, got "ftp://proxy"',
        'agent.toml: server.url[1]: the port must be a number from 1 to 65535, got "proxy:99999"',
        'agent.toml: server.url[2]: expected a URL with a host name or IP address, got "ws://:80"',
        'agent.toml: server.discover: expected "none" or "dns", got "srv"',
        "agent.toml: routes[0].name: expected a route name (letters, digits, '-' and '.', "
        "optionally ':port'), got \"Bad_Name\"",
        'agent.toml: routes[0].value: expected a host name or IP address, got "bad host!"',
        "agent.toml: routes[0].port: expected an integer from 1 to 65535, got 0",
        'agent.toml: routes[0].type: expected "cname" or "ip", got "dns"',
        'agent.toml: routes[0].host_header: expected "preserve", "rewrite" or a fixed '
        'host[:port], got "evil\\r\\nX: 1"',
        "agent.toml: timeouts.connect_s: expected a finite number of seconds greater than 0, "
        'got "10"',
        "agent.toml: max_streams: expected an integer from 1 to 2147483647, got 0",
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [("true", "true"), ("80.5", "80.5"), ('"80"', '"80"'), ("[80]", "an array")],
)
def test_ports_must_be_integers(here: Path, value: str, shown: str) -> None:
    write(here, "server.toml", f"[internal]\nport = {value}\n")
    assert server_problems(Path("server.toml")) == [
        f"server.toml: internal.port: expected an integer from 0 to 65535, got {shown}"
    ]


@pytest.mark.parametrize(("port", "valid"), [(0, False), (1, True), (65535, True), (65536, False)])
def test_route_ports_are_1_to_65535(here: Path, port: int, valid: bool) -> None:
    write(
        here,
        "agent.toml",
        f'client_id = "a"\n[[routes]]\nname = "r"\nvalue = "localhost"\nport = {port}\n',
    )
    if valid:
        assert load_agent_config(Path("agent.toml"), environ={}).routes[0].port == port
    else:
        assert agent_problems(Path("agent.toml")) == [
            f"agent.toml: routes[0].port: expected an integer from 1 to 65535, got {port}"
        ]


@pytest.mark.parametrize(("port", "valid"), [(-1, False), (0, True), (65535, True), (65536, False)])
def test_server_ports_are_0_to_65535(here: Path, port: int, valid: bool) -> None:
    # On "::" (IPv6 only), beside the admin listener's 127.0.0.1: one port may serve both.
    write(here, "server.toml", f'host = "::"\n[external]\nport = {port}\n[admin]\nport = {port}\n')
    if valid:
        config = load_server_config(Path("server.toml"), environ={})
        assert config.external.port == port
        assert config.admin == AdminConfig(port=port)
    else:
        message = f"expected an integer from 0 to 65535, got {port}"
        assert server_problems(Path("server.toml")) == [
            f"server.toml: external.port: {message}",
            f"server.toml: admin.port: {message}",
        ]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("bogus = 1\n", "bogus: unknown key"),
        ("[internal]\nprot = 1\n", 'internal.prot: unknown key (did you mean "port"?)'),
        (
            "[external]\nwhitelist = []\n",
            'external.whitelist: unknown key (did you mean "whitelisted_ips"?)',
        ),
        ("[timeouts]\nidle = 1\n", 'timeouts.idle: unknown key (did you mean "idle_s"?)'),
        ("[limits]\nx = 1\n", "limits.x: unknown key"),
        ("[admin]\nport = 1\nx = 1\n", "admin.x: unknown key"),
        (
            '[[internal.tokens]]\ntoken = "t"\nroutes = ["*"]\nx = 1\n',
            "internal.tokens[0].x: unknown key",
        ),
        ('[internal]\n"odd key" = 1\n', 'internal."odd key": unknown key'),
    ],
)
def test_unknown_keys_at_every_server_level(here: Path, text: str, line: str) -> None:
    write(here, "server.toml", text)
    assert server_problems(Path("server.toml")) == [f"server.toml: {line}"]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('client_id = "a"\nbogus = 1\n', "bogus: unknown key"),
        (
            'client_id = "a"\n[server]\nurls = "x:1"\n',
            'server.urls: unknown key (did you mean "url"?)',
        ),
        (
            'client_id = "a"\n[[routes]]\nname = "r"\nvalue = "h"\nport = 1\nhost = "x"\n',
            "routes[0].host: unknown key",
        ),
        ('client_id = "a"\n[timeouts]\nidle_s = 1\n', "timeouts.idle_s: unknown key"),
        ('client_id = "a"\n[admin]\nport = 1\nx = 1\n', "admin.x: unknown key"),
    ],
)
def test_unknown_keys_at_every_agent_level(here: Path, text: str, line: str) -> None:
    write(here, "agent.toml", text)
    assert agent_problems(Path("agent.toml")) == [f"agent.toml: {line}"]


def test_a_top_level_key_after_a_table_is_said_to_belong_at_the_top(here: Path) -> None:
    """TOML puts a key written after [server] in that table: the usual slip of a
    key appended at the end of a file."""
    write(here, "agent.toml", '[server]\nurl = "ws://h:1"\ntoken = "t"\nclient_id = "x"\n')
    write(here, "server.toml", '[internal]\nport = 0\nhost = "0.0.0.0"\n')
    above = "goes at the top of the file, above the first [table]"
    assert agent_problems(Path("agent.toml")) == [
        f"agent.toml: server.client_id: unknown key here: client_id {above}"
    ]
    assert server_problems(Path("server.toml")) == [
        f"server.toml: internal.host: unknown key here: host {above}"
    ]


def test_agent_keys_are_unknown_in_a_server_file_and_vice_versa(here: Path) -> None:
    # Each file is its own kind by its other keys ([internal]; client_id), so the
    # stray key is what is said; a file that is the other kind says so instead.
    write(here, "server.toml", 'client_id = "a"\n[internal]\nport = 0\n')
    write(here, "agent.toml", 'client_id = "a"\nhost = "0.0.0.0"\n')
    assert server_problems(Path("server.toml")) == ["server.toml: client_id: unknown key"]
    assert agent_problems(Path("agent.toml")) == ["agent.toml: host: unknown key"]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('internal = "x"', "internal: expected a table, got a string"),
        ("external = 5", "external: expected a table, got an integer"),
        ("timeouts = []", "timeouts: expected a table, got an array"),
        ("[internal]\ntokens = {}", "internal.tokens: expected an array of tables, got a table"),
        ("[internal]\ntokens = [1]", "internal.tokens[0]: expected a table, got an integer"),
        (
            '[external]\nwhitelisted_ips = "10.0.0.0/8"',
            "external.whitelisted_ips: expected an array of IP addresses or CIDR ranges, "
            'got "10.0.0.0/8"',
        ),
        ("[internal]\ntls_cert = 5\ntls_key = 6", "internal.tls_cert: expected a file path, got 5"),
        ("[admin]\nhost = 1", "admin.port: missing required key"),
        (
            '[internal]\ntls_cert = ""\ntls_key = ""',
            "internal.tls_cert: expected a file path, got an empty string",
        ),
        (
            "[internal]\nport = 1979-05-27",
            "internal.port: expected an integer from 0 to 65535, got a date",
        ),
        ("[external]\ntoken = true", "external.token: expected a string"),
        ("internal = 1.5", "internal: expected a table, got a float"),
        ("internal = false", "internal: expected a table, got a boolean"),
    ],
)
def test_wrong_types_in_a_server_file(here: Path, text: str, line: str) -> None:
    write(here, "server.toml", text + "\n")
    assert server_problems(Path("server.toml"))[0] == f"server.toml: {line}"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('server = "ws://x:1"', "server: expected a table, got a string"),
        ("routes = 1", "routes: expected an array of tables, got an integer"),
        ('routes = ["a=b:1"]', "routes[0]: expected a table, got a string"),
        (
            "[server]\nurl = 8081",
            "server.url: expected a ws:// or wss:// URL or an array of them, got 8081",
        ),
        ("[server]\nurl = [1]", "server.url[0]: expected a ws:// or wss:// URL, got 1"),
        ('[[routes]]\nname = "r"\nvalue = "h"', "routes[0].port: missing required key"),
        ('[[routes]]\nvalue = "h"\nport = 1', "routes[0].name: missing required key"),
        (
            '[[routes]]\nname = "r"\nvalue = "h"\nport = 1\ntype = 1',
            'routes[0].type: expected "cname" or "ip", got 1',
        ),
    ],
)
def test_wrong_types_in_an_agent_file(here: Path, text: str, line: str) -> None:
    write(here, "agent.toml", 'client_id = "a"\n' + text + "\n")
    assert agent_problems(Path("agent.toml")) == [f"agent.toml: {line}"]


def test_an_ip_route_needs_an_ip_literal(here: Path) -> None:
    write(
        here,
        "agent.toml",
        'client_id = "a"\n[[routes]]\nname = "r"\nvalue = "localhost"\nport = 80\ntype = "ip"\n',
    )
    assert agent_problems(Path("agent.toml")) == [
        'agent.toml: routes[0].value: expected an IP literal for a route of type "ip", '
        'got "localhost"'
    ]


def test_a_bracketed_ipv6_route_value_loses_its_brackets(here: Path) -> None:
    write(
        here,
        "agent.toml",
        'client_id = "a"\n[[routes]]\nname = "r"\nvalue = "[::1]"\nport = 80\ntype = "ip"\n',
    )
    assert load_agent_config(Path("agent.toml"), environ={}).routes[0].value == "::1"


def test_an_unexpected_failure_is_named_but_never_quoted() -> None:
    assert list(flatten(ValueError(TOKEN), "internal.token")) == [
        ("internal.token", "invalid value (ValueError)")
    ]


def test_duplicate_route_names_even_when_other_routes_are_broken(here: Path) -> None:
    write(
        here,
        "agent.toml",
        """
        client_id = "a"
        [[routes]]
        name = "App"
        value = "h"
        port = 1
        [[routes]]
        name = "other"
        value = "h"
        port = 0
        [[routes]]
        name = "app"
        value = "h2"
        port = 2
        """,
    )
    assert agent_problems(Path("agent.toml")) == [
        "agent.toml: routes[1].port: expected an integer from 1 to 65535, got 0",
        'agent.toml: routes[2].name: duplicate route name "app" (also routes[0])',
    ]


def test_duplicate_server_urls(here: Path) -> None:
    write(here, "agent.toml", 'client_id = "a"\n[server]\nurl = ["p:1", "ws://p:1"]\n')
    assert agent_problems(Path("agent.toml")) == [
        'agent.toml: server.url[1]: duplicate server URL "ws://p:1"'
    ]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("ws://proxy:8081", "ws://proxy:8081/"),
        ("ws://proxy:8081/", "ws://PROXY:8081/"),
        ("wss://proxy", "wss://proxy:443/"),
        ("ws://proxy", "ws://proxy:80"),
    ],
)
def test_one_server_written_two_ways_is_a_duplicate(here: Path, first: str, second: str) -> None:
    """Two links to one server, with one client id, would replace each other forever."""
    write(here, "agent.toml", f'client_id = "a"\n[server]\nurl = ["{first}", "{second}"]\n')
    (problem,) = agent_problems(Path("agent.toml"))
    assert problem.startswith("agent.toml: server.url[1]: duplicate server URL ")


def test_scoped_tokens_need_patterns(here: Path) -> None:
    write(
        here,
        "server.toml",
        """
        [[internal.tokens]]
        token = "a-token"
        routes = []
        [[internal.tokens]]
        routes = ["*", "*.ok.example.com", "bad pattern"]
        """,
    )
    assert server_problems(Path("server.toml")) == [
        "server.toml: internal.tokens[0].routes: expected at least one route name pattern, "
        'such as "*.example.com"',
        "server.toml: internal.tokens[1].token: missing required key",
        'server.toml: internal.tokens[1].routes[2]: expected a route name, "*.domain" or "*", '
        'got "bad pattern"',
    ]


def test_each_agent_token_is_given_once(here: Path) -> None:
    # The scoped copy of the unscoped token would claim any name; the later
    # scoped copy would have its routes ignored. Lines name places, not values.
    write(
        here,
        "server.toml",
        f"""
        [internal]
        token = "{TOKEN}"
        [[internal.tokens]]
        token = "team-a-{TOKEN}"
        routes = ["*.a.example.com"]
        [[internal.tokens]]
        token = "{TOKEN}"
        routes = ["billing"]
        [[internal.tokens]]
        token = "team-a-{TOKEN}"
        routes = ["*.b.example.com"]
        """,
    )
    problems = server_problems(Path("server.toml"))
    assert problems == [
        "server.toml: internal.tokens[1].token: the same token as internal.token: "
        "give each agent token once",
        "server.toml: internal.tokens[2].token: the same token as internal.tokens[0]: "
        "give each agent token once",
    ]
    assert not any(TOKEN in line for line in problems)


@pytest.mark.parametrize("in_file", ["", '[internal]\ntoken = "file-token"\n'])
def test_the_environment_token_counts_as_the_unscoped_token(here: Path, in_file: str) -> None:
    """Named by its variable: internal.token may not be in the file, or not be the
    token that clashes (the environment wins over it)."""
    write(
        here,
        "server.toml",
        f'{in_file}[[internal.tokens]]\ntoken = "{TOKEN}"\nroutes = ["billing"]\n',
    )
    environ = {"PVTUNNEL_INTERNAL_TOKEN": TOKEN}
    expected = [
        "server.toml: internal.tokens[0].token: the same token as PVTUNNEL_INTERNAL_TOKEN: "
        "give each agent token once",
    ]
    assert server_problems(Path("server.toml"), environ) == expected
    assert check_file(Path("server.toml"), environ=environ) == ("server", expected)


def test_tls_needs_both_files(here: Path) -> None:
    write(here, "cert.pem", "cert")
    write(here, "server.toml", '[external]\ntls_cert = "cert.pem"\n')
    assert server_problems(Path("server.toml")) == [
        "server.toml: external.tls_key: required when tls_cert is set: "
        "TLS needs the certificate and its key"
    ]


def test_tls_and_ca_paths_are_relative_to_the_file_and_must_exist(here: Path) -> None:
    write_tls_files(here, "etc/cert.pem", "etc/tls-key.pem")
    write(here, "etc/server.toml", '[internal]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n')
    write(here, "etc/agent.toml", 'client_id = "a"\n[server]\nca_file = "../ca.pem"\n')
    assert server_problems(Path("etc/server.toml")) == [
        f"etc/server.toml: internal.tls_key: no such file: {(here / 'etc/key.pem').resolve()}"
    ]
    assert agent_problems(Path("etc/agent.toml")) == [
        f"etc/agent.toml: server.ca_file: no such file: {(here / 'ca.pem').resolve()}"
    ]
    (here / "etc/tls-key.pem").rename(here / "etc/key.pem")
    config = load_server_config(Path("etc/server.toml"), environ={})
    assert config.internal.tls_cert == (here / "etc/cert.pem").resolve()
    assert config.internal.tls_key == (here / "etc/key.pem").resolve()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "~no-such-user-at-all/x.pem",
            "cannot read ~no-such-user-at-all/x.pem: ~no-such-user-at-all names no home directory",
        ),
        ("x\\u0000.pem", 'expected a file path, got "x\\u0000.pem"'),
    ],
)
@pytest.mark.parametrize("key", ["token_file", "ca_file", "tls_cert"])
def test_a_path_no_file_can_have_is_one_line(
    here: Path, key: str, value: str, problem: str
) -> None:
    """pathlib raises for these (``~user`` of no user, a NUL) where ``open`` would
    have said why: a traceback, and `pvtunnel check` with it."""
    if key == "tls_cert":
        write_tls_files(here, "cert.pem", "key.pem")
        write(here, "c.toml", f'[internal]\ntls_cert = "{value}"\ntls_key = "key.pem"\n')
        assert server_problems(Path("c.toml")) == [f"c.toml: internal.{key}: {problem}"]
    else:
        write(here, "c.toml", f'client_id = "a"\n[server]\nurl = "wss://x:1"\n{key} = "{value}"\n')
        assert agent_problems(Path("c.toml")) == [f"c.toml: server.{key}: {problem}"]


def test_a_token_file_in_a_loop_of_links_is_one_line(here: Path) -> None:
    (here / "loop").symlink_to("loop")
    write(here, "c.toml", '[internal]\ntoken_file = "loop"\n')
    assert server_problems(Path("c.toml")) == [
        f"c.toml: internal.token_file: cannot read {Path.cwd() / 'loop'}: "
        "Too many levels of symbolic links"
    ]


def test_admin_off_loopback_needs_a_token(here: Path) -> None:
    write(here, "server.toml", '[admin]\nport = 9100\nhost = "10.0.0.1"\n')
    assert server_problems(Path("server.toml")) == [
        'server.toml: admin.token: required when host is not a loopback address (got "10.0.0.1")'
    ]


# ------------------------------------------------------------------ the file itself


def test_toml_syntax_error_is_one_line_with_its_position(here: Path) -> None:
    write(here, "agent.toml", 'client_id = "a"\n[server\n')
    (line,) = agent_problems(Path("agent.toml"))
    assert line.startswith("agent.toml: invalid TOML: ")
    assert "line 2" in line
    assert "column" in line


@pytest.mark.parametrize(
    "nested", ["[" * 100_000 + "]" * 100_000, "{a=" * 100_000 + "1" + "}" * 100_000]
)
def test_values_nested_past_the_parsers_stack_are_one_line(here: Path, nested: str) -> None:
    """tomllib recurses once per level, and overruns the stack in a few hundred."""
    write(here, "server.toml", f"host = {nested}\n")
    assert server_problems(Path("server.toml")) == [
        "server.toml: invalid TOML: values nested too deep"
    ]


def test_missing_file(here: Path) -> None:
    assert server_problems(Path("nope.toml")) == [
        "nope.toml: cannot read the file: No such file or directory"
    ]


def test_a_directory_is_not_a_file(here: Path) -> None:
    (here / "conf.toml").mkdir()
    assert agent_problems(Path("conf.toml")) == ["conf.toml: cannot read the file: Is a directory"]


def test_a_file_past_any_configuration_is_not_read_to_its_end(here: Path) -> None:
    """Read whole, an endless one (``/dev/zero``) would take all memory first."""
    (here / "server.toml").write_bytes(b"#" * (16 << 20) + b"\n")
    assert server_problems(Path("server.toml")) == [
        "server.toml: over 16 MiB, too big for a configuration"
    ]


def test_a_file_that_is_not_utf8(here: Path) -> None:
    (here / "server.toml").write_bytes(b'host = "\xff"\n')
    assert server_problems(Path("server.toml")) == [
        "server.toml: invalid TOML: the file is not UTF-8 text"
    ]


@pytest.mark.parametrize("kind", ["server", "agent"])
@pytest.mark.parametrize(
    ("interval", "timeout", "least"),
    [("2.0", "2.0", "4.0"), ("0.2", "0.2001", "0.4"), ("5", "9.99", "10.0")],
)
def test_a_heartbeat_timeout_under_twice_the_interval_is_refused(
    here: Path, kind: str, interval: str, timeout: str, least: str
) -> None:
    """A quiet peer is heard once per heartbeat (its PONG), and its silence is read
    when the heartbeat's timer fires: at 0.2 and 0.2001, a timer a fraction of a
    millisecond late dropped idle connections about once a second."""
    body = f"[timeouts]\nheartbeat_s = {interval}\nheartbeat_timeout_s = {timeout}\n"
    if kind == "server":
        write(here, "s.toml", f'[internal]\ntoken = "{TOKEN}"\n' + body)
        problems = server_problems(Path("s.toml"))
    else:
        write(here, "s.toml", 'client_id = "a"\n' + body)
        problems = agent_problems(Path("s.toml"))
    assert problems == [
        f"s.toml: timeouts.heartbeat_timeout_s: must be at least twice heartbeat_s "
        f"(2 x {float(interval)!r} = {least}), so that a PONG that comes late is not taken "
        f"for silence; got {float(timeout)!r}"
    ]
    assert check_file(Path("s.toml"), environ={}) == (kind, problems)


@pytest.mark.parametrize("kind", ["server", "agent"])
def test_a_heartbeat_timeout_of_twice_the_interval_and_the_defaults_are_taken(
    here: Path, kind: str
) -> None:
    head = f'[internal]\ntoken = "{TOKEN}"\n' if kind == "server" else 'client_id = "a"\n'
    for body in ("[timeouts]\nheartbeat_s = 0.2\nheartbeat_timeout_s = 0.4\n", "[timeouts]\n"):
        write(here, "s.toml", head + body)
        assert check_file(Path("s.toml"), environ={}) == (kind, [])


def test_one_port_for_both_listeners_is_refused_naming_both_keys(here: Path) -> None:
    """Both bind ``host``: the second listener could not start."""
    write(here, "s.toml", "[internal]\nport = 9000\n[external]\nport = 9000\n")
    assert server_problems(Path("s.toml")) == [
        "s.toml: external.port: 9000 is internal.port too: both listeners bind one host, "
        "so the second could not start; give each its own port (0: any free one)"
    ]
    # 0 is any free port: two of them are two ports.
    write(here, "s.toml", "[internal]\nport = 0\n[external]\nport = 0\n")
    config = load_server_config(Path("s.toml"), environ={})
    assert (config.internal.port, config.external.port) == (0, 0)


def test_an_admin_port_on_a_tunnel_listeners_port_and_address_is_refused(here: Path) -> None:
    """The admin listener binds admin.host, the others host: where those overlap
    (the same address, or a wildcard of its family), one port for both could
    not start. `pvtunnel check` says so too."""
    write(here, "s.toml", "[external]\nport = 9000\n[admin]\nport = 9000\n")
    expected = [
        's.toml: admin.port: 9000 is external.port too, on overlapping addresses (host "0.0.0.0", '
        'admin.host "127.0.0.1"), so the second listener could not start; '
        "give each its own port (0: any free one)"
    ]
    assert server_problems(Path("s.toml")) == expected
    assert check_file(Path("s.toml"), environ={}) == ("server", expected)
    write(
        here,
        "s.toml",
        """
        host = "::1"
        [internal]
        port = 9000
        [admin]
        port = 9000
        host = "::1"
        """,
    )
    assert server_problems(Path("s.toml")) == [
        's.toml: admin.port: 9000 is internal.port too, on overlapping addresses (host "::1", '
        'admin.host "::1"), so the second listener could not start; '
        "give each its own port (0: any free one)"
    ]


@pytest.mark.parametrize(
    ("host", "admin_host"),
    [("localhost", "::1"), ("localhost", "::"), ("::1", "localhost"), ("0.0.0.0", "localhost")],
)
def test_localhost_overlaps_both_loopback_addresses(here: Path, host: str, admin_host: str) -> None:
    """A host name is bound on every address it resolves to, and localhost resolves
    to ::1 as well as 127.0.0.1 on most systems: a clash there must not pass the
    check, whether or not this machine's localhost has ::1."""
    write(
        here,
        "s.toml",
        f'host = "{host}"\n[internal]\nport = 9000\n[admin]\nport = 9000\nhost = "{admin_host}"\n'
        f'token = "{TOKEN}"\n',
    )
    expected = [
        f"s.toml: admin.port: 9000 is internal.port too, on overlapping addresses "
        f'(host "{host}", admin.host "{admin_host}"), so the second listener could not '
        "start; give each its own port (0: any free one)"
    ]
    assert check_file(Path("s.toml"), environ={}) == ("server", expected)


@pytest.mark.parametrize(
    ("host", "admin"),
    [
        ('host = "127.0.0.2"', "port = 9000"),  # two loopback addresses
        ('host = "::"', "port = 9000"),  # IPv6 listeners are IPv6-only
        ("", "port = 0"),  # two free ports
    ],
)
def test_an_admin_port_that_meets_no_other_listener_is_taken(
    here: Path, host: str, admin: str
) -> None:
    write(here, "s.toml", f"{host}\n[external]\nport = 9000\n[admin]\n{admin}\n")
    assert check_file(Path("s.toml"), environ={}) == ("server", [])


def test_tls_files_that_do_not_load_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files that exist but hold no PEM certificate or key: one line each, as for
    any other bad value (and `pvtunnel check` finds them), not a traceback when the
    listener starts or an endless retry when the agent dials."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "junk.pem", "not a certificate\n")
    write(
        tmp_path,
        "server.toml",
        f"""
        [internal]
        token = "{TOKEN}"
        [external]
        tls_cert = "junk.pem"
        tls_key = "junk.pem"
        """,
    )
    (problem,) = server_problems(Path("server.toml"))
    assert problem.startswith(
        "server.toml: external.tls_cert: cannot load it with external.tls_key "
    )
    write(tmp_path, "agent.toml", '[server]\nurl = "wss://proxy:8081"\nca_file = "junk.pem"\n')
    (problem,) = agent_problems(Path("agent.toml"))
    assert problem.startswith("agent.toml: server.ca_file: cannot load it (PEM CA certificates)")


def test_an_encrypted_key_is_refused_in_one_line_without_a_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL asks for a passphrase on the terminal (blocking a process started by
    hand) or fails with a bare "Invalid argument" without one."""
    monkeypatch.chdir(tmp_path)
    write_tls_files(tmp_path, "cert.pem", "key.pem")
    encrypt_key(tmp_path / "key.pem")
    write(
        tmp_path,
        "server.toml",
        f"""
        [internal]
        token = "{TOKEN}"
        [external]
        tls_cert = "cert.pem"
        tls_key = "key.pem"
        """,
    )
    (problem,) = server_problems(Path("server.toml"))
    assert problem.startswith(
        "server.toml: external.tls_cert: cannot load it with external.tls_key"
    )
    assert problem.endswith(ENCRYPTED_KEY)


def test_a_ca_file_without_a_wss_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CA file beside only ws:// URLs suggests a verified, encrypted link that
    is neither: refused by `check`, and by the agent once its --server flags,
    which replace the file's URLs, are applied."""
    monkeypatch.chdir(tmp_path)
    write_tls_files(tmp_path, "cert.pem", "key.pem", ca="ca.pem")
    routes = '[[routes]]\nname = "app"\nvalue = "127.0.0.1"\nport = 80\n'
    head = f'client_id = "a"\n[server]\ntoken = "{TOKEN}"\nca_file = "ca.pem"\n'
    write(tmp_path, "plain.toml", head + 'url = "ws://proxy:8081"\n' + routes)
    unused = (
        "server.ca_file: set, but no server URL is wss://: it verifies TLS servers only, "
        "and a ws:// link is neither verified nor encrypted"
    )
    assert check_file(Path("plain.toml"), environ={}) == ("agent", [f"plain.toml: {unused}"])
    plain = load_agent_config(Path("plain.toml"), environ={})
    assert plain.validate_runnable() == [unused]
    assert with_agent_overrides(plain, server_urls=["wss://proxy:8081"]).validate_runnable() == []
    urls = 'url = ["wss://proxy:8081", "ws://127.0.0.1:8081"]\n'
    write(tmp_path, "mixed.toml", head + urls + routes)
    assert check_file(Path("mixed.toml"), environ={}) == ("agent", [])  # wss:// uses it
    mixed = load_agent_config(Path("mixed.toml"), environ={})
    flagged = with_agent_overrides(mixed, server_urls=["ws://127.0.0.1:8081"])
    assert flagged.validate_runnable() == [unused]


def test_inspect_previews_too_big_for_the_ring_name_the_key(here: Path) -> None:
    write(
        here,
        "agent.toml",
        'client_id = "a"\n[inspect]\nenabled = true\nmax_bytes = 65536\nmax_body_bytes = 65536\n',
    )
    assert agent_problems(Path("agent.toml")) == [
        "agent.toml: inspect.max_body_bytes: at most max_bytes / 8, so that max_bytes holds "
        "4 exchanges with both previews whole (got 65536 with max_bytes 65536)"
    ]


def test_inspect_max_replays_is_a_positive_bounded_count(here: Path) -> None:
    write(here, "agent.toml", 'client_id = "a"\n[inspect]\nmax_replays = 0\n')
    assert agent_problems(Path("agent.toml")) == [
        "agent.toml: inspect.max_replays: expected an integer from 1 to 1024, got 0"
    ]
    write(here, "agent.toml", 'client_id = "a"\n[inspect]\nmax_replays = 3\n')
    assert load_agent_config(Path("agent.toml"), environ={}).inspect.max_replays == 3
    assert InspectConfig().max_replays == 8


# ------------------------------------------------------------------ keys that go together


def checked(path: Path, kind: str) -> list[str]:
    """What `pvtunnel check` reports for the file: what the loader (serve, agent)
    reports too, each line once."""
    found, problems = check_file(path, environ={})
    assert found == kind
    load = server_problems if kind == "server" else agent_problems
    assert load(path) == problems
    assert len(set(problems)) == len(problems), problems
    return problems


def test_an_ip_route_is_checked_for_an_address_beside_its_bad_port(here: Path) -> None:
    write(
        here,
        "agent.toml",
        """
        client_id = "a"
        [[routes]]
        name = "app"
        type = "ip"
        value = "notip"
        port = "80a"
        """,
    )
    assert checked(Path("agent.toml"), "agent") == [
        'agent.toml: routes[0].value: expected an IP literal for a route of type "ip", got "notip"',
        'agent.toml: routes[0].port: expected an integer from 1 to 65535, got "80a"',
    ]


def test_routes_past_the_room_in_the_agents_hello_are_reported(here: Path) -> None:
    routes = "".join(
        f'  {{ name = "r{index:04d}-{"a" * 50}", value = "h", port = 1 }},\n'
        for index in range(1200)
    )
    write(here, "agent.toml", f'client_id = "a"\nroutes = [\n{routes}]\n')
    (problem,) = checked(Path("agent.toml"), "agent")
    assert problem.startswith("agent.toml: routes: 1200 routes take ")
    assert "bytes in the agent's HELLO frame, which holds 65536: serve some" in problem


def test_an_external_token_past_half_the_request_head_limit_is_reported(here: Path) -> None:
    """Every request would carry it: at 1024 bytes a head holds no Basic header of a
    token much longer, and then every client got 431."""
    limits = "[limits]\nmax_request_head_bytes = 1024\n"
    write(here, "s.toml", f'[external]\ntoken = "{"e" * 360}"\n{limits}')
    assert server_problems(Path("s.toml")) == [
        "s.toml: external.token: a token of 360 characters takes 513 bytes in a client's "
        "Proxy-Authorization header (as Basic), more than half of "
        "limits.max_request_head_bytes (1024), a whole request head: shorten the token, "
        "or raise the limit"
    ]
    write(here, "s.toml", f'[external]\ntoken = "{"e" * 359}"\n{limits}')
    assert load_server_config(Path("s.toml"), environ={}).limits.max_request_head_bytes == 1024


def test_a_tls_cert_without_its_key_is_reported_beside_a_bad_port(here: Path) -> None:
    write(here, "cert.pem", "cert")
    write(here, "server.toml", '[internal]\nport = "x"\ntls_cert = "cert.pem"\n')
    assert checked(Path("server.toml"), "server") == [
        'server.toml: internal.port: expected an integer from 0 to 65535, got "x"',
        "server.toml: internal.tls_key: required when tls_cert is set: "
        "TLS needs the certificate and its key",
    ]


def test_one_port_for_both_listeners_is_reported_beside_a_bad_host(here: Path) -> None:
    write(
        here, "server.toml", 'host = "bad host"\n[internal]\nport = 9000\n[external]\nport = 9000\n'
    )
    assert checked(Path("server.toml"), "server") == [
        'server.toml: host: expected a host name or IP address, got "bad host"',
        "server.toml: external.port: 9000 is internal.port too: both listeners bind one host, "
        "so the second could not start; give each its own port (0: any free one)",
    ]


def test_every_problem_relating_keys_is_reported_when_nothing_else_is_wrong(here: Path) -> None:
    """Two in [internal], which keeps it from loading, and two its port makes with
    the other listeners' ports: each once, in key order."""
    write(here, "cert.pem", "cert")
    write(
        here,
        "server.toml",
        f"""
        [internal]
        port = 9000
        token = "{TOKEN}"
        tls_cert = "cert.pem"
        [[internal.tokens]]
        token = "{TOKEN}"
        routes = ["billing"]
        [external]
        port = 9000
        [admin]
        port = 9000
        """,
    )
    assert checked(Path("server.toml"), "server") == [
        "server.toml: internal.tokens[0].token: the same token as internal.token: "
        "give each agent token once",
        "server.toml: internal.tls_key: required when tls_cert is set: "
        "TLS needs the certificate and its key",
        "server.toml: external.port: 9000 is internal.port too: both listeners bind one host, "
        "so the second could not start; give each its own port (0: any free one)",
        "server.toml: admin.port: 9000 is internal.port too, on overlapping addresses "
        '(host "0.0.0.0", admin.host "127.0.0.1"), so the second listener could not start; '
        "give each its own port (0: any free one)",
    ]


def test_an_unknown_key_does_not_hide_a_problem_relating_keys(here: Path) -> None:
    write(here, "cert.pem", "cert")
    write(here, "server.toml", '[internal]\ntls_cert = "cert.pem"\nsurplus = 1\n')
    assert checked(Path("server.toml"), "server") == [
        "server.toml: internal.tls_key: required when tls_cert is set: "
        "TLS needs the certificate and its key",
        "server.toml: internal.surplus: unknown key",
    ]


@pytest.mark.parametrize(
    ("kind", "text", "line"),
    [
        # 8081 is internal.port's default: "x" does not become it.
        (
            "server",
            '[internal]\nport = "x"\n[external]\nport = 8081\n',
            'internal.port: expected an integer from 0 to 65535, got "x"',
        ),
        (
            "server",
            '[internal]\n[admin]\nport = 9100\nhost = "bad host"\n',
            'admin.host: expected a host name or IP address, got "bad host"',
        ),
        (
            "agent",
            '[[routes]]\nname = "r"\nvalue = "bad host!"\nport = 80\ntype = "ip"\n',
            'routes[0].value: expected a host name or IP address, got "bad host!"',
        ),
        (
            "agent",
            '[timeouts]\nheartbeat_s = "5"\nheartbeat_timeout_s = 1\n',
            'timeouts.heartbeat_s: expected a finite number of seconds greater than 0, got "5"',
        ),
        # max_body_bytes' default is worked out from max_bytes: unknown too.
        (
            "agent",
            "[inspect]\nenabled = true\nmax_bytes = 100\n",
            "inspect.max_bytes: expected an integer from 65536 to 2147483647, got 100",
        ),
    ],
)
def test_a_check_relating_an_invalid_key_is_left_out(
    here: Path, kind: str, text: str, line: str
) -> None:
    """Beside the key's own line, what it said would be noise."""
    write(here, "x.toml", ('client_id = "a"\n' if kind == "agent" else "") + text)
    assert checked(Path("x.toml"), kind) == [f"x.toml: {line}"]
