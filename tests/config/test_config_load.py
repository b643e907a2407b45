"""Loading server.toml and agent.toml: values, and every kind of error line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    AgentTimeouts,
    Discovery,
    ExternalConfig,
    InternalConfig,
    LimitsConfig,
    Route,
    RouteType,
    ScopedToken,
    Secret,
    ServerConfig,
    ServerEndpoint,
    TimeoutsConfig,
    load_agent_config,
    load_server_config,
)
from tests.config.helpers import TOKEN, write, write_tls_files

# ------------------------------------------------------------------ good files


def test_server_defaults_without_a_file() -> None:
    config = load_server_config(None, environ={})
    assert config == ServerConfig()
    assert config.host == "0.0.0.0"
    assert (config.internal.port, config.external.port) == (8081, 8080)
    assert config.internal.token is None
    assert config.admin is None


def test_agent_defaults_without_a_file() -> None:
    config = load_agent_config(None, environ={})
    assert config.client_id == socket.gethostname()
    assert config.server == ServerEndpoint(urls=())
    assert config.routes == ()
    assert config.timeouts == AgentTimeouts()


def test_server_file_with_every_key(here: Path) -> None:
    write_tls_files(here, "cert.pem", "key.pem")
    write(
        here,
        "server.toml",
        f"""
        host = "::"

        [internal]
        port = 9081
        token = "{TOKEN}"
        tls_cert = "cert.pem"
        tls_key = "key.pem"

        [[internal.tokens]]
        token = "team-a-token"
        routes = ["*.Team-A.example.com", "billing"]

        [external]
        port = 0
        token = "outside-token"
        whitelisted_ips = ["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"]
        domain = "Tunnel.Example.com"
        tls_cert = "cert.pem"
        tls_key = "key.pem"

        [timeouts]
        request_head_s = 5
        idle_s = 6.5
        upstream_response_s = 7
        grace_s = 8
        handshake_s = 9
        route_memory_s = 120
        hold_s = 2.5

        [limits]
        max_streams_per_agent = 10
        max_request_head_bytes = 1024
        max_client_connections = 12
        stream_window_bytes = 16384
        max_held_requests = 0

        [admin]
        port = 9100
        host = "0.0.0.0"
        token = "admin-token"
        """,
    )
    config = load_server_config(Path("server.toml"), environ={})
    cert, key = (here / "cert.pem").resolve(), (here / "key.pem").resolve()
    assert config == ServerConfig(
        host="::",
        internal=InternalConfig(
            port=9081,
            token=Secret(TOKEN),
            tokens=(
                ScopedToken(
                    token=Secret("team-a-token"), routes=("*.team-a.example.com", "billing")
                ),
            ),
            tls_cert=cert,
            tls_key=key,
        ),
        external=ExternalConfig(
            port=0,
            token=Secret("outside-token"),
            whitelisted_ips=("203.0.113.7", "10.0.0.0/8", "2001:db8::/32"),
            domain="tunnel.example.com",
            tls_cert=cert,
            tls_key=key,
        ),
        timeouts=TimeoutsConfig(
            request_head_s=5.0,
            idle_s=6.5,
            upstream_response_s=7.0,
            grace_s=8.0,
            handshake_s=9.0,
            route_memory_s=120.0,
            hold_s=2.5,
        ),
        limits=LimitsConfig(
            max_streams_per_agent=10,
            max_request_head_bytes=1024,
            max_client_connections=12,
            stream_window_bytes=16384,
            max_held_requests=0,
        ),
        admin=AdminConfig(port=9100, host="0.0.0.0", token=Secret("admin-token")),
    )
    assert isinstance(config.timeouts.request_head_s, float)


def test_agent_file_with_every_key(here: Path) -> None:
    write_tls_files(here, "cert.pem", "key.pem", "ca.pem")
    write(
        here,
        "agent.toml",
        f"""
        client_id = "agent-1"
        max_streams = 100
        stream_window_bytes = 65536
        upstream_pool_size = 0

        [server]
        url = ["proxy-a:8081", "wss://proxy-b.example.com/tunnel"]
        token = "{TOKEN}"
        ca_file = "ca.pem"
        discover = "dns"
        discover_interval_s = 5

        [[routes]]
        name = "Route1"
        value = "localhost"
        port = 8083
        type = "cname"

        [[routes]]
        name = "api.example.com:8080"
        value = "10.1.2.3"
        port = 80
        type = "ip"
        host_header = "rewrite"

        [[routes]]
        name = "v6"
        value = "::1"
        port = 443
        type = "ip"
        host_header = "internal.example.com"

        [timeouts]
        connect_s = 1
        upstream_connect_s = 2
        reconnect_max_s = 3
        upstream_idle_s = 4

        [admin]
        port = 9101
        """,
    )
    config = load_agent_config(Path("agent.toml"), environ={})
    assert config == AgentConfig(
        client_id="agent-1",
        server=ServerEndpoint(
            urls=("ws://proxy-a:8081", "wss://proxy-b.example.com/tunnel"),
            token=Secret(TOKEN),
            ca_file=(here / "ca.pem").resolve(),
            discover=Discovery.DNS,
            discover_interval_s=5.0,
        ),
        routes=(
            Route(name="route1", value="localhost", port=8083),
            Route(
                name="api.example.com:8080",
                value="10.1.2.3",
                port=80,
                type=RouteType.IP,
                host_header="rewrite",
            ),
            Route(
                name="v6",
                value="::1",
                port=443,
                type=RouteType.IP,
                host_header="internal.example.com",
            ),
        ),
        timeouts=AgentTimeouts(
            connect_s=1.0, upstream_connect_s=2.0, reconnect_max_s=3.0, upstream_idle_s=4.0
        ),
        admin=AdminConfig(port=9101),
        max_streams=100,
        stream_window_bytes=65536,
        upstream_pool_size=0,
    )


def test_agent_client_id_defaults_to_the_host_name_in_a_file_too(here: Path) -> None:
    write(here, "agent.toml", '[server]\nurl = "proxy:8081"\n')
    assert load_agent_config(Path("agent.toml"), environ={}).client_id == socket.gethostname()


def test_files_as_windows_editors_write_them_load(here: Path) -> None:
    """A byte order mark and CRLF line ends, in the config file and its token file:
    Notepad and PowerShell write both."""
    (here / "agent.token").write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    text = 'client_id = "a"\r\n[server]\r\ntoken_file = "agent.token"\r\n'
    (here / "agent.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    config = load_agent_config(Path("agent.toml"), environ={})
    assert (config.client_id, config.server.token) == ("a", Secret(TOKEN))


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ('"proxy.example.com:8081"', ("ws://proxy.example.com:8081",)),
        ('"127.0.0.1:8081"', ("ws://127.0.0.1:8081",)),
        ('"[::1]:8081"', ("ws://[::1]:8081",)),
        ('"WSS://proxy.example.com"', ("wss://proxy.example.com",)),
        ('"ws://proxy/path?x=1"', ("ws://proxy/path?x=1",)),
        ('["a:1", "wss://b:2"]', ("ws://a:1", "wss://b:2")),
        ("[]", ()),
    ],
)
def test_server_url_is_a_string_or_a_list_and_is_normalised(
    here: Path, written: str, normalised: tuple[str, ...]
) -> None:
    write(here, "agent.toml", f'client_id = "a"\n[server]\nurl = {written}\n')
    assert load_agent_config(Path("agent.toml"), environ={}).server.urls == normalised
