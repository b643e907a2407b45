"""The config objects themselves: rules on construction, whitelist, routes, Host headers."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    ExternalConfig,
    InspectConfig,
    InternalConfig,
    Route,
    RouteType,
    ScopedToken,
    Secret,
    ServerConfig,
    ServerEndpoint,
    TimeoutsConfig,
)
from pvtunnel._errors import ConfigError
from pvtunnel._wire import frames as fr
from pvtunnel._wire.mux import Multiplexer, Role

# ------------------------------------------------------------------ whitelist

WHITELIST = ("203.0.113.7", "10.0.0.0/8", "2001:db8::/32", "::1")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("203.0.113.7", True),
        ("203.0.113.8", False),
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::1", True),
        ("::2", False),
        # IPv4 clients on a dual-stack socket look like this.
        ("::ffff:10.1.2.3", True),
        ("::ffff:203.0.113.7", True),
        ("::ffff:192.168.0.1", False),
        ("fe80::1%eth0", False),
        ("not an address", False),
        ("", False),
    ],
)
def test_whitelist_allows(address: str, allowed: bool) -> None:
    assert ExternalConfig(whitelisted_ips=WHITELIST).allows(address) is allowed


@pytest.mark.parametrize("address", ["1.2.3.4", "2001:db8::1", "garbage"])
def test_an_empty_whitelist_allows_everyone(address: str) -> None:
    assert ExternalConfig().allows(address)


def test_an_ipv4_only_whitelist_refuses_ipv6_clients() -> None:
    config = ExternalConfig(whitelisted_ips=("0.0.0.0/0",))
    assert config.allows("198.51.100.1")
    assert not config.allows("2001:db8::1")


def test_an_ipv6_catch_all_does_not_let_ipv4_in() -> None:
    config = ExternalConfig(whitelisted_ips=("::/0",))
    assert config.allows("2001:db8::1")
    assert not config.allows("198.51.100.1")


def test_whitelist_survives_evolve() -> None:
    config = attrs.evolve(ExternalConfig(whitelisted_ips=("10.0.0.0/8",)), port=1)
    assert config.allows("10.0.0.1")
    assert not config.allows("11.0.0.1")
    changed = attrs.evolve(config, whitelisted_ips=("11.0.0.0/8",))
    assert changed.allows("11.0.0.1")
    assert not changed.allows("10.0.0.1")


def test_whitelist_entries_are_checked_on_construction() -> None:
    with pytest.raises(ConfigError) as caught:
        ExternalConfig(whitelisted_ips=("10.0.0.0/8", "nope", "10.0.0.1/8"))
    assert caught.value.problems == [
        'ExternalConfig.whitelisted_ips[1]: expected an IP address or CIDR range, got "nope"',
        'ExternalConfig.whitelisted_ips[2]: "10.0.0.1/8" has host bits set; '
        'write the network, "10.0.0.0/8"',
    ]


# ------------------------------------------------------------------ routes


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("App", "app"),
        ("API.Example.COM", "api.example.com"),
        ("app:8080", "app:8080"),
        ("Route-1.internal:65535", "route-1.internal:65535"),
        ("10.0.0.5", "10.0.0.5"),
    ],
)
def test_route_names_are_lower_cased(name: str, stored: str) -> None:
    assert Route(name=name, value="localhost", port=80).name == stored


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a b",
        "under_score",
        "-leading",
        "trailing-",
        "a..b",
        ".a",
        "a.",
        "app:0",
        "app:65536",
        "app:",
        "app:x",
        "[::1]",
        "::1",
        "a" * 64,
        "\u212a",  # Kelvin sign: folds to "k" under Unicode case-insensitive matching
        "\u017f",  # long s: folds to "s" the same way
        ".".join(["a" * 60] * 5),
    ],
)
def test_invalid_route_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^Route\.name: expected a route name"):
        Route(name=name, value="localhost", port=80)


@pytest.mark.parametrize(
    "value", ["localhost", "my_service.default.svc", "10.0.0.1", "::1", "fe80::1%eth0"]
)
def test_cname_route_targets(value: str) -> None:
    assert Route(name="r", value=value, port=80).value == value


def test_bracketed_ipv6_targets_lose_their_brackets() -> None:
    assert Route(name="r", value="[::1]", port=80, type=RouteType.IP).value == "::1"


@pytest.mark.parametrize(
    "value", ["", "a b", "http://x", "x/y", "host:80", "[not-ip]", "\u212aube", "bücher.de"]
)
def test_invalid_route_targets(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^Route\.value: expected a host name or IP address"):
        Route(name="r", value=value, port=80)


def test_ip_routes_need_ip_literals() -> None:
    assert Route(name="r", value="192.0.2.1", port=80, type=RouteType.IP).type is RouteType.IP
    with pytest.raises(ConfigError) as caught:
        Route(name="r", value="example.com", port=80, type=RouteType.IP)
    assert caught.value.problems == [
        'Route.value: expected an IP literal for a route of type "ip", got "example.com"'
    ]


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_route_ports(port: int) -> None:
    with pytest.raises(ConfigError) as caught:
        Route(name="r", value="h", port=port)
    assert caught.value.problems == [f"Route.port: expected an integer from 1 to 65535, got {port}"]


@pytest.mark.parametrize(
    ("value", "port", "kind", "expected"),
    [
        ("localhost", 8083, RouteType.CNAME, b"localhost:8083"),
        ("10.0.0.1", 80, RouteType.IP, b"10.0.0.1:80"),
        ("::1", 3000, RouteType.IP, b"[::1]:3000"),
    ],
)
def test_rewrite_sends_value_and_port(
    value: str, port: int, kind: RouteType, expected: bytes
) -> None:
    route = Route(name="r", value=value, port=port, type=kind, host_header="rewrite")
    assert route.upstream_host_header(b"r.example.com") == expected
    assert route.upstream_host_header(None) == expected


def test_preserve_passes_the_client_host_through() -> None:
    route = Route(name="r", value="localhost", port=80)
    assert route.host_header == "preserve"
    assert route.upstream_host_header(b"R.example.com:8080") == b"R.example.com:8080"
    assert route.upstream_host_header(None) is None


def test_a_fixed_host_header_is_sent_as_written() -> None:
    route = Route(name="r", value="localhost", port=80, host_header="Internal.Example.com:8443")
    assert route.upstream_host_header(b"r") == b"Internal.Example.com:8443"
    assert route.upstream_host_header(None) == b"Internal.Example.com:8443"


@pytest.mark.parametrize("value", ["", "two words", "a\r\nX-Injected: 1", "tab\there", "ünï"])
def test_fixed_host_headers_cannot_break_the_request_head(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^Route\.host_header: expected"):
        Route(name="r", value="localhost", port=80, host_header=value)


def test_route_equality_ignores_the_cached_header() -> None:
    route = Route(name="r", value="h", port=1, host_header="rewrite")
    assert route == attrs.evolve(route)
    assert route != attrs.evolve(route, port=2)
    assert attrs.evolve(route, port=2).upstream_host_header(None) == b"h:2"


def test_duplicate_route_names_on_construction() -> None:
    routes = (
        Route(name="a", value="h", port=1),
        Route(name="B", value="h", port=1),
        Route(name="b", value="h", port=2),
    )
    with pytest.raises(ConfigError) as caught:
        AgentConfig(client_id="x", routes=routes)
    assert caught.value.problems == [
        'AgentConfig.routes[2].name: duplicate route name "b" (also routes[1])'
    ]


def routes_for_a_hello_of(size: int) -> tuple[Route, ...]:
    """Routes whose names make the HELLO of ``AgentConfig(client_id="x", routes=...)``
    exactly ``size`` bytes long."""
    defaults = AgentConfig(client_id="x")

    def hello_size(names: list[str]) -> int:
        hello = fr.our_hello(
            client_id="x",
            routes=tuple(names),
            window=defaults.stream_window_bytes,
            connection_window=defaults.connection_window_bytes,
        )
        return len(fr.hello_payload(hello))

    # Names of 40 characters, each 43 bytes in the JSON list, then the last one
    # lengthened to the size (a label holds 63).
    names = [f"r{index:04d}-" + "a" * 34 for index in range((size - hello_size([])) // 43)]
    names[-1] += "b" * (size - hello_size(names))
    assert hello_size(names) == size, hello_size(names)
    return tuple(Route(name=name, value="h", port=1) for name in names)


def test_the_routes_must_fit_in_the_agents_hello() -> None:
    # The largest HELLO one frame holds is taken, and the agent can send it.
    fits = AgentConfig(client_id="x", routes=routes_for_a_hello_of(fr.MAX_FRAME_PAYLOAD))
    mux = Multiplexer(
        Role.AGENT,
        window=fits.stream_window_bytes,
        connection_window=fits.connection_window_bytes,
    )
    mux.send_hello(client_id=fits.client_id, routes=tuple(route.name for route in fits.routes))
    # One byte more could never be sent: refused with the configuration.
    routes = routes_for_a_hello_of(fr.MAX_FRAME_PAYLOAD + 1)
    with pytest.raises(ConfigError) as caught:
        AgentConfig(client_id="x", routes=routes)
    assert caught.value.problems == [
        f"AgentConfig.routes: {len(routes)} routes take 65537 bytes in the agent's HELLO "
        "frame, which holds 65536: serve some from another agent (its own client_id), "
        "or shorten their names"
    ]
    with pytest.raises(ValueError, match="HELLO payload of 65537 bytes"):
        Multiplexer(Role.AGENT).send_hello(
            client_id="x", routes=tuple(route.name for route in routes)
        )


# ------------------------------------------------------------------ server endpoint


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("proxy:8081", "ws://proxy:8081"),
        ("ws://proxy:8081", "ws://proxy:8081"),
        ("wss://proxy.example.com", "wss://proxy.example.com"),
        ("Wss://proxy.example.com/tunnel", "wss://proxy.example.com/tunnel"),
        ("[2001:db8::1]:8081", "ws://[2001:db8::1]:8081"),
        ("localhost", "ws://localhost"),
    ],
)
def test_server_urls_are_normalised(given: str, stored: str) -> None:
    assert ServerEndpoint(urls=(given,)).urls == (stored,)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("http://proxy:8081", 'expected a ws:// or wss:// URL, got "http://proxy:8081"'),
        ("ws://proxy:0", 'the port must be a number from 1 to 65535, got "ws://proxy:0"'),
        ("ws://proxy:http", 'the port must be a number from 1 to 65535, got "ws://proxy:http"'),
        ("ws://proxy:99999", 'the port must be a number from 1 to 65535, got "ws://proxy:99999"'),
        ("proxy:65536", 'the port must be a number from 1 to 65535, got "proxy:65536"'),
        ("ws://proxy:+80", 'the port must be a number from 1 to 65535, got "ws://proxy:+80"'),
        ("ws://[::1]:99999", 'the port must be a number from 1 to 65535, got "ws://[::1]:99999"'),
        ("ws://[::1]x", 'expected a URL with a host name or IP address, got "ws://[::1]x"'),
        ("ws://proxy#frag", 'expected a ws:// or wss:// URL, got "ws://proxy#frag"'),
        ("ws://pro xy", 'expected a URL with a host name or IP address, got "ws://pro xy"'),
        ("ws://", 'expected a URL with a host name or IP address, got "ws://"'),
        ("ws://[::1", 'expected a ws:// or wss:// URL, got "ws://[::1"'),
        ("ws://me:pw@proxy", "credentials in the URL are not allowed: set token or token_file"),
        ("me@proxy:1", "credentials in the URL are not allowed: set token or token_file"),
    ],
)
def test_invalid_server_urls(given: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerEndpoint(urls=("ws://ok:1", given))
    assert caught.value.problems == [f"ServerEndpoint.urls[1]: {message}"]


# ------------------------------------------------------------------ admin, TLS, timeouts


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LocalHost", "::ffff:127.0.0.1"]
)
def test_admin_on_loopback_needs_no_token(host: str) -> None:
    assert AdminConfig(port=9100, host=host).token is None


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "admin.example.com", "::ffff:10.0.0.1"]
)
def test_admin_elsewhere_needs_a_token(host: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AdminConfig(port=9100, host=host)
    assert caught.value.problems == [
        f'AdminConfig.token: required when host is not a loopback address (got "{host}")'
    ]
    assert AdminConfig(port=9100, host=host, token=Secret("t")).host == host


@pytest.mark.parametrize(
    ("host", "admin_host", "clash"),
    [
        ("0.0.0.0", "127.0.0.1", True),  # a wildcard holds the port on every address
        ("10.0.0.1", "0.0.0.0", True),
        ("0.0.0.0", "localhost", True),
        ("::", "::1", True),
        ("::1", "0:0::1", True),  # one address, spelt two ways
        ("proxy.example", "PROXY.example", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("::", "127.0.0.1", False),  # IPv6 listeners are IPv6-only
        ("0.0.0.0", "::1", False),
        ("proxy.example", "127.0.0.1", False),  # not looked up: told at start, if at all
    ],
)
def test_the_admin_listener_may_share_a_port_only_on_another_address(
    host: str, admin_host: str, clash: bool
) -> None:
    admin = AdminConfig(port=9100, host=admin_host, token=Secret("t"))
    internal = InternalConfig(port=9100)
    if not clash:
        assert ServerConfig(host=host, internal=internal, admin=admin).admin == admin
        return
    with pytest.raises(ConfigError) as caught:
        ServerConfig(host=host, internal=internal, admin=admin)
    assert caught.value.problems == [
        "ServerConfig.admin.port: 9100 is internal.port too, on overlapping addresses "
        f'(host "{host}", admin.host "{admin_host}"), so the second listener could not start; '
        "give each its own port (0: any free one)"
    ]


def test_tls_files_go_in_pairs() -> None:
    with pytest.raises(ConfigError) as caught:
        InternalConfig(tls_key=Path("/k"))
    assert caught.value.problems == [
        "InternalConfig.tls_cert: required when tls_key is set: "
        "TLS needs the certificate and its key"
    ]
    assert InternalConfig(tls_cert=Path("/c"), tls_key=Path("/k")).tls_cert == Path("/c")


@pytest.mark.parametrize("seconds", [0, -1.0, float("inf"), float("nan")])
def test_timeouts_must_be_positive_and_finite(seconds: float) -> None:
    with pytest.raises(ConfigError, match=r"^TimeoutsConfig\.idle_s: expected a finite number"):
        TimeoutsConfig(idle_s=seconds)


def test_the_shutdown_grace_period_is_10_seconds_for_server_and_agent() -> None:
    assert ServerConfig().timeouts.grace_s == 10.0
    assert AgentConfig(client_id="a").timeouts.grace_s == 10.0


def test_evolve_cannot_bypass_the_rules() -> None:
    with pytest.raises(ConfigError) as caught:
        attrs.evolve(ServerConfig(), host="bad host")
    assert caught.value.problems == [
        'ServerConfig.host: expected a host name or IP address, got "bad host"'
    ]


def test_empty_secrets_are_refused_on_construction() -> None:
    with pytest.raises(ConfigError) as caught:
        InternalConfig(token=Secret(""))
    assert caught.value.problems == ["InternalConfig.token: must not be empty"]


def test_scoped_token_patterns_must_be_ascii() -> None:
    with pytest.raises(ConfigError, match=r"^ScopedToken\.routes\[0\]: expected a route name"):
        ScopedToken(token=Secret("t"), routes=("\u212a.example.com",))


def test_scoped_token_patterns_are_lower_cased() -> None:
    scoped = ScopedToken(token=Secret("t"), routes=("*.Team-A.Example.com", "Billing", "*"))
    assert scoped.routes == ("*.team-a.example.com", "billing", "*")


def test_the_domain_is_lower_cased() -> None:
    assert ExternalConfig(domain="Tunnel.Example.COM").domain == "tunnel.example.com"


# ------------------------------------------------------------------ runnable agent


def test_validate_runnable_lists_what_is_missing() -> None:
    assert AgentConfig(client_id="a").validate_runnable() == [
        "server.url: no server to connect to; set it or pass --server URL",
        "server.token: no token; set token or token_file in [server], "
        "or the PVTUNNEL_TOKEN environment variable",
        "routes: no routes to serve; add a [[routes]] table or pass --route NAME=HOST:PORT",
    ]


def test_validate_runnable_passes_a_complete_agent() -> None:
    config = AgentConfig(
        client_id="a",
        server=ServerEndpoint(urls=("proxy:8081",), token=Secret("t")),
        routes=(Route(name="r", value="h", port=1),),
    )
    assert config.validate_runnable() == []


def test_inspect_previews_must_leave_room_for_several_exchanges() -> None:
    """Two previews near max_bytes: each new exchange would push out all others.
    Unset, the preview's size follows a small max_bytes; with the inspector off,
    neither is used, and a file that sets them as it likes still loads."""
    assert InspectConfig(enabled=True, max_bytes=65536, max_body_bytes=8192).max_body_bytes == 8192
    assert InspectConfig(enabled=True, max_bytes=262144).max_body_bytes == 32768
    assert InspectConfig(enabled=True).max_body_bytes == 65536
    assert InspectConfig(max_bytes=65536, max_body_bytes=65536).enabled is False
    with pytest.raises(ConfigError) as caught:
        InspectConfig(enabled=True, max_bytes=65536, max_body_bytes=8193)
    assert caught.value.problems == [
        "InspectConfig.max_body_bytes: at most max_bytes / 8, so that max_bytes holds "
        "4 exchanges with both previews whole (got 8193 with max_bytes 65536)"
    ]
