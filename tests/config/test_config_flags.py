"""Command-line flags on top of a loaded config."""

from __future__ import annotations

import attrs
import pytest

from pvtunnel._config import (
    AgentConfig,
    Discovery,
    ExternalConfig,
    InspectConfig,
    InternalConfig,
    Route,
    RouteType,
    Secret,
    ServerConfig,
    ServerEndpoint,
    parse_route_flag,
    with_agent_overrides,
    with_overrides,
)
from pvtunnel._errors import ConfigError

# ------------------------------------------------------------------ serve


def test_server_flags_override_the_file() -> None:
    config = ServerConfig(internal=InternalConfig(port=9000, token=Secret("t")))
    changed = with_overrides(config, host="127.0.0.1", internal_port=0, external_port=18080)
    assert changed.host == "127.0.0.1"
    assert changed.internal == InternalConfig(port=0, token=Secret("t"))
    assert changed.external.port == 18080
    assert config.internal.port == 9000  # the original is untouched


def test_absent_server_flags_change_nothing() -> None:
    config = ServerConfig(host="::")
    assert with_overrides(config) == config
    assert with_overrides(config, external_port=1).internal == config.internal


def test_bad_server_flags_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(), host="a b", internal_port=-1, external_port=65536)
    assert caught.value.problems == [
        '--host: expected a host name or IP address, got "a b"',
        "--internal-port: expected an integer from 0 to 65535, got -1",
        "--external-port: expected an integer from 0 to 65535, got 65536",
    ]


def test_domain_flag_overrides_the_files_domain() -> None:
    config = ServerConfig(external=ExternalConfig(port=9000, domain="file.example"))
    changed = with_overrides(config, domain="Tunnel.Example.COM")
    assert changed.external == ExternalConfig(port=9000, domain="tunnel.example.com")
    assert with_overrides(ServerConfig(), domain="t.example").external.domain == "t.example"
    assert with_overrides(config).external.domain == "file.example"


@pytest.mark.parametrize("domain", ["", "1.2.3.4", "a b.example", "*.example.com"])
def test_a_bad_domain_flag_is_reported_as_the_flag(domain: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(), domain=domain, external_port=-1)
    assert caught.value.problems == [
        "--external-port: expected an integer from 0 to 65535, got -1",
        f'--domain: expected a domain name such as tunnel.example.com, got "{domain}"',
    ]


@pytest.mark.parametrize(
    ("internal_port", "external_port", "problem"),
    [
        (8080, None, "--internal-port: 8080 is external.port too"),
        (None, 9000, "--external-port: 9000 is internal.port too"),
        (1, 1, "--external-port: 1 is --internal-port too"),
    ],
)
def test_a_port_flag_on_the_other_listeners_port_is_blamed_on_the_flag(
    internal_port: int | None, external_port: int | None, problem: str
) -> None:
    config = ServerConfig(internal=InternalConfig(port=9000))
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, internal_port=internal_port, external_port=external_port)
    assert caught.value.problems == [
        f"{problem}: both listeners bind one host, so the second could not start; "
        "give each its own port (0: any free one)"
    ]
    # 0 is any free port: two of them are two ports.
    zeroed = with_overrides(config, internal_port=0, external_port=0)
    assert (zeroed.internal.port, zeroed.external.port) == (0, 0)


CLASH = (
    "both listeners bind one host, so the second could not start; "
    "give each its own port (0: any free one)"
)


def test_a_clash_between_valid_flags_is_reported_beside_a_bad_one() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(), host="a b", internal_port=9000, external_port=9000)
    assert caught.value.problems == [
        '--host: expected a host name or IP address, got "a b"',
        f"--external-port: 9000 is --internal-port too: {CLASH}",
    ]


def test_port_flags_clashing_with_each_other_and_the_admin_flag_are_each_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(), internal_port=9000, external_port=9000, admin_port=9000)
    assert caught.value.problems == [
        f"--external-port: 9000 is --internal-port too: {CLASH}",
        "--admin-port: 9000 is --internal-port too, on overlapping addresses "
        '(host "0.0.0.0", admin.host "127.0.0.1"), so the second listener could not start; '
        "give each its own port (0: any free one)",
    ]


def test_a_clash_with_a_bad_flag_is_left_out() -> None:
    """-1 is no port, so it is nobody's: 8081 (internal.port's default, and now
    --external-port's) meets nothing, nor does --admin-port 8081."""
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(), internal_port=-1, external_port=8081, admin_port=8081)
    assert caught.value.problems == [
        "--internal-port: expected an integer from 0 to 65535, got -1",
    ]


# ------------------------------------------------------------------ --route


@pytest.mark.parametrize(
    ("flag", "route"),
    [
        ("app=127.0.0.1:3000", Route(name="app", value="127.0.0.1", port=3000, type=RouteType.IP)),
        ("App=localhost:80", Route(name="app", value="localhost", port=80)),
        ("v6=[::1]:8080", Route(name="v6", value="::1", port=8080, type=RouteType.IP)),
        (
            "api.example.com:8443=[2001:db8::5]:443",
            Route(name="api.example.com:8443", value="2001:db8::5", port=443, type=RouteType.IP),
        ),
        (
            "svc=my_service.default.svc:9000",
            Route(name="svc", value="my_service.default.svc", port=9000),
        ),
        (
            "app=127.0.0.1:3000,host_header=rewrite",
            Route(
                name="app", value="127.0.0.1", port=3000, type=RouteType.IP, host_header="rewrite"
            ),
        ),
        (
            "app=localhost:3000,host_header=app.internal:8443",
            Route(name="app", value="localhost", port=3000, host_header="app.internal:8443"),
        ),
        (
            "v6=[::1]:8080,host_header=[::1]:8080,type=ip",
            Route(name="v6", value="::1", port=8080, type=RouteType.IP, host_header="[::1]:8080"),
        ),
        (
            # An address read as a name (resolved, which gives it back): the file allows it.
            "app=10.0.0.1:80,type=cname",
            Route(name="app", value="10.0.0.1", port=80, type=RouteType.CNAME),
        ),
        (
            "app=h:80,host_header=preserve,type=cname",
            Route(name="app", value="h", port=80, host_header="preserve"),
        ),
    ],
)
def test_route_flags(flag: str, route: Route) -> None:
    assert parse_route_flag(flag) == route


def test_a_route_flags_options_are_its_tables_keys_with_their_values() -> None:
    """``host_header`` and ``type`` say on the command line what they say in a
    ``[[routes]]`` table: the Host the upstream receives is the file's."""
    rewrite = parse_route_flag("app=[::1]:8080,host_header=rewrite")
    assert rewrite.upstream_host_header(b"app") == b"[::1]:8080"
    fixed = parse_route_flag("app=127.0.0.1:8080,host_header=backend.internal")
    assert fixed.upstream_host_header(b"app") == b"backend.internal"
    assert parse_route_flag("app=127.0.0.1:8080").upstream_host_header(b"app") == b"app"


@pytest.mark.parametrize(
    ("flag", "problem"),
    [
        ("app", "expected NAME=HOST:PORT"),
        ("app=", "expected NAME=HOST:PORT"),
        ("=h:1", "expected NAME=HOST:PORT"),
        ("app=x", "expected NAME=HOST:PORT"),
        ("app=:80", "expected NAME=HOST:PORT"),
        (
            "app=::1:80",
            "expected NAME=HOST:PORT (put an IPv6 address in brackets: NAME=[::1]:PORT)",
        ),
        ("app=[::1]", "expected NAME=HOST:PORT (an IPv6 address as [ADDRESS]:PORT)"),
        ("app=[::1:80", "expected NAME=HOST:PORT (an IPv6 address as [ADDRESS]:PORT)"),
        ("app=h:0", "port: expected an integer from 1 to 65535, got 0"),
        ("app=h:65536", "port: expected an integer from 1 to 65535, got 65536"),
        ("app=h:80a", 'port: expected an integer from 1 to 65535, got "80a"'),
        ("app=h:", 'port: expected an integer from 1 to 65535, got ""'),
        ("app=h:٣", 'port: expected an integer from 1 to 65535, got "٣"'),
        (
            "a b=h:1",
            "name: expected a route name (letters, digits, '-' and '.', optionally ':port'), "
            'got "a b"',
        ),
        ("app=bad host:1", 'value: expected a host name or IP address, got "bad host"'),
        ("app=[nope]:1", 'value: expected an IP address in brackets, got "nope"'),
        (
            "app=h:1,host_header=a b",
            'host_header: expected "preserve", "rewrite" or a fixed host[:port], got "a b"',
        ),
        (
            # No Host value holds a "=" either: the rule says so, not the splitting.
            "app=h:1,host_header=a=b",
            'host_header: expected "preserve", "rewrite" or a fixed host[:port], got "a=b"',
        ),
        (
            "app=h:1,host_header=",
            'host_header: expected "preserve", "rewrite" or a fixed host[:port], got ""',
        ),
        ("app=h:1,type=IP", 'type: expected "cname" or "ip", got "IP"'),
        (
            "app=localhost:1,type=ip",
            'value: expected an IP literal for a route of type "ip", got "localhost"',
        ),
        (
            # A "," ends the option: a Host value cannot hold one.
            "app=h:1,host_header=a,b",
            'expected type=VALUE or host_header=VALUE after NAME=HOST:PORT, got "b"',
        ),
        ("app=h:1,", 'expected type=VALUE or host_header=VALUE after NAME=HOST:PORT, got ""'),
        ("app=h:1,type=ip,type=cname", "type: given twice"),
        (
            "app=h:1,host-header=rewrite",
            'host-header: unknown option (did you mean "host_header"?)',
        ),
        (
            "app=h:1,host header=x",
            '"host header": unknown option (did you mean "host_header"?)',
        ),
        ("app=h:1,port=2", "port: unknown option (expected type or host_header)"),
        (
            "app=::1:80,type=ip",
            "expected NAME=HOST:PORT (put an IPv6 address in brackets: NAME=[::1]:PORT)",
        ),
    ],
)
def test_bad_route_flags(flag: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_route_flag(flag)
    assert caught.value.problems == [f"--route {flag}: {problem}"]


# ------------------------------------------------------------------ agent


FILE_AGENT = AgentConfig(
    client_id="from-file",
    server=ServerEndpoint(urls=("ws://a:1", "ws://b:2"), token=Secret("t")),
    routes=(
        Route(name="one", value="localhost", port=1),
        Route(name="two", value="localhost", port=2),
    ),
)


def test_agent_flags_override_the_file() -> None:
    changed = with_agent_overrides(
        FILE_AGENT,
        server_urls=["proxy.example.com:8081"],
        client_id="from-flag",
        routes=["TWO=10.0.0.2:22", "three=h:3"],
    )
    assert changed.client_id == "from-flag"
    assert changed.server == ServerEndpoint(
        urls=("ws://proxy.example.com:8081",), token=Secret("t")
    )
    assert changed.routes == (
        Route(name="one", value="localhost", port=1),
        Route(name="two", value="10.0.0.2", port=22, type=RouteType.IP),
        Route(name="three", value="h", port=3),
    )
    assert FILE_AGENT.routes[1].port == 2


def test_a_route_flag_replaces_the_files_route_whole() -> None:
    """Options it leaves out take their defaults, not the file's values: the
    flag says the whole route, and the command line shows what the agent does."""
    config = attrs.evolve(
        FILE_AGENT,
        routes=(
            Route(name="one", value="localhost", port=1, host_header="rewrite"),
            Route(name="two", value="10.0.0.2", port=2, type=RouteType.IP, host_header="fixed"),
        ),
    )
    changed = with_agent_overrides(
        config, routes=["one=localhost:11", "two=10.0.0.2:2,type=cname,host_header=rewrite"]
    )
    assert changed.routes == (
        Route(name="one", value="localhost", port=11),
        Route(name="two", value="10.0.0.2", port=2, type=RouteType.CNAME, host_header="rewrite"),
    )


def test_bad_route_options_are_reported_with_the_other_flags() -> None:
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(
            FILE_AGENT,
            client_id="has space",
            routes=["ok=h:1,host_header=rewrite", "x=h:1,host_header=a b", "y=h:1,kind=ip"],
        )
    assert caught.value.problems == [
        '--client-id: expected at most 255 printable characters without spaces, got "has space"',
        '--route x=h:1,host_header=a b: host_header: expected "preserve", "rewrite" or a fixed '
        'host[:port], got "a b"',
        "--route y=h:1,kind=ip: kind: unknown option (expected type or host_header)",
    ]


def test_route_flags_past_the_room_in_the_agents_hello_are_blamed_on_the_flag() -> None:
    flags = [f"r{index:04d}-{'a' * 50}=h:1" for index in range(1200)]
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(FILE_AGENT, routes=flags)
    (problem,) = caught.value.problems
    assert problem.startswith("--route: 1202 routes take ")
    assert problem.endswith(
        " bytes in the agent's HELLO frame, which holds 65536: serve some from another "
        "agent (its own client_id), or shorten their names"
    )


def test_absent_agent_flags_change_nothing() -> None:
    assert with_agent_overrides(FILE_AGENT) == FILE_AGENT


def test_flags_alone_make_a_runnable_agent() -> None:
    config = AgentConfig(client_id="x", server=ServerEndpoint(token=Secret("t")))
    assert config.validate_runnable() != []
    changed = with_agent_overrides(
        config, server_urls=["ws://proxy:8081"], routes=["app=127.0.0.1:3000"]
    )
    assert changed.validate_runnable() == []


def test_bad_agent_flags_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(
            FILE_AGENT,
            server_urls=["http://proxy"],
            client_id="has space",
            routes=["ok=h:1", "bad", "OK=h:2", "x=h:0"],
        )
    assert caught.value.problems == [
        '--server: expected a ws:// or wss:// URL, got "http://proxy"',
        '--client-id: expected at most 255 printable characters without spaces, got "has space"',
        "--route bad: expected NAME=HOST:PORT",
        '--route OK=h:2: route name "ok" given twice',
        "--route x=h:0: port: expected an integer from 1 to 65535, got 0",
    ]


def test_discover_flag_applies_to_every_server_url() -> None:
    changed = with_agent_overrides(FILE_AGENT, discover="dns")
    assert changed.server.discover is Discovery.DNS
    assert changed.server.urls == FILE_AGENT.server.urls
    assert with_agent_overrides(changed, discover="none").server.discover is Discovery.NONE
    assert with_agent_overrides(changed).server.discover is Discovery.DNS
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(FILE_AGENT, discover="srv")
    assert caught.value.problems == ['--discover: expected "none" or "dns", got "srv"']


def test_a_server_url_with_credentials_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(FILE_AGENT, server_urls=["ws://user:hunter2@proxy:8081"])
    assert "hunter2" not in str(caught.value)


def test_server_flag_given_several_times_sets_one_url_per_server() -> None:
    changed = with_agent_overrides(
        FILE_AGENT, server_urls=["proxy-a:8081", "wss://proxy-b.example.com"]
    )
    assert changed.server.urls == ("ws://proxy-a:8081", "wss://proxy-b.example.com")
    assert changed.server.token == Secret("t")
    # --server replaces the file's list whole, even when given once.
    assert with_agent_overrides(FILE_AGENT, server_urls=["ws://c:3"]).server.urls == ("ws://c:3",)


def test_bad_or_repeated_server_flags_are_all_reported() -> None:
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(
            FILE_AGENT, server_urls=["ws://a:1", "http://proxy", "a:1", "ws://b:2"]
        )
    assert caught.value.problems == [
        '--server: expected a ws:// or wss:// URL, got "http://proxy"',
        '--server: server URL "ws://a:1" given twice',
    ]


@pytest.mark.parametrize("url", ["ws://proxy:99999", "proxy:65536", "wss://proxy:https"])
def test_a_server_flag_with_a_bad_port_says_the_port_is_wrong(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(FILE_AGENT, server_urls=[url])
    assert caught.value.problems == [
        f'--server: the port must be a number from 1 to 65535, got "{url}"'
    ]


def test_one_server_written_two_ways_is_blamed_on_the_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(FILE_AGENT, server_urls=["ws://h:1", "ws://H:1/"])
    assert caught.value.problems == ['--server: server URL "ws://H:1/" given twice (as "ws://h:1")']


def test_inspect_flag_blames_the_files_keys_it_brings_into_play() -> None:
    """Off, the inspector's sizes go unchecked; --inspect turns it on, and the
    problem is said as the file's key, with the flag that made it matter."""
    config = attrs.evolve(FILE_AGENT, inspect=InspectConfig(max_bytes=65536, max_body_bytes=65536))
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(config, inspect=True, source="a.toml")
    assert caught.value.problems == [
        "--inspect: a.toml: inspect.max_body_bytes: at most max_bytes / 8, so that max_bytes "
        "holds 4 exchanges with both previews whole (got 65536 with max_bytes 65536)"
    ]
