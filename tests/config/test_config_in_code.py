"""Config objects built in code, as a program that embeds pvtunnel builds them.

They must hold what the loader would hold for the same values (a token as a
`Secret`, a name as its enum member, an array as a tuple), and refuse a value of
the wrong kind at once, as a `ConfigError`, not deep inside the server later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pvtunnel
from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    AgentTimeouts,
    Discovery,
    ExternalConfig,
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

TOKEN = "a-token-that-must-never-show-0123456789"


@pytest.mark.parametrize(
    "build",
    [
        lambda: InternalConfig(token=TOKEN),
        lambda: ExternalConfig(token=TOKEN),
        lambda: AdminConfig(port=0, token=TOKEN),
        lambda: ServerEndpoint(urls=("ws://127.0.0.1:1",), token=TOKEN),
        lambda: ScopedToken(token=TOKEN, routes=("app",)),
    ],
    ids=["internal", "external", "admin", "server-endpoint", "scoped"],
)
def test_a_token_given_as_text_is_held_as_a_secret(build: Any) -> None:
    config = build()
    assert isinstance(config.token, Secret)
    assert config.token.reveal() == TOKEN
    assert TOKEN not in repr(config)
    assert config.token.matches(TOKEN)


def test_names_and_arrays_are_held_as_the_loader_holds_them() -> None:
    endpoint = ServerEndpoint(urls=("ws://127.0.0.1:1",), discover="dns", ca_file="ca.pem")
    assert endpoint.discover is Discovery.DNS
    assert endpoint.ca_file == Path("ca.pem")
    route = Route(name="app", value="127.0.0.1", port=80, type="ip")
    assert route.type is RouteType.IP
    external = ExternalConfig(whitelisted_ips=["127.0.0.1", "::1"])
    assert external.whitelisted_ips == ("127.0.0.1", "::1")
    assert external.allows("::1")
    internal = InternalConfig(
        token="another-token-0123456789", tokens=[ScopedToken(token=TOKEN, routes=("app",))]
    )
    agent = AgentConfig(client_id="a", routes=[route])
    # Frozen configs are values: a list left inside would make them unhashable.
    for config in (ServerConfig(external=external, internal=internal), agent):
        hash(config)
    assert agent.routes == (route,)


def test_a_name_that_is_no_member_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError, match=r"Route\.type.*cname.*ip"):
        Route(name="app", value="127.0.0.1", port=80, type="IPv4")
    # Read as an address, the value must be one.
    with pytest.raises(ConfigError, match="value"):
        Route(name="app", value="not-an-ip.example", port=80, type="ip")
    with pytest.raises(ConfigError, match="discover"):
        ServerEndpoint(urls=("ws://127.0.0.1:1",), discover="mdns")


@pytest.mark.parametrize(
    ("kind", "fields", "key"),
    [
        (ServerConfig, {"timeouts": None}, "timeouts"),
        (ServerConfig, {"admin": 8082}, "admin"),
        (ServerConfig, {"internal": ExternalConfig()}, "internal"),
        (ServerConfig, {"limits": {"max_client_connections": 5}}, "limits"),
        (AgentConfig, {"timeouts": TimeoutsConfig()}, "timeouts"),
        (AgentConfig, {"server": None}, "server"),
        (AgentConfig, {"inspect": True}, "inspect"),
        (AgentConfig, {"routes": ({"name": "app"},)}, r"routes\[0\]"),
        (AgentConfig, {"routes": "app=80"}, "routes"),
        (InternalConfig, {"tokens": (Secret(TOKEN),)}, r"tokens\[0\]"),
        # One string is no array: not its letters ("app" would be "a" and "p").
        (ScopedToken, {"token": TOKEN, "routes": "app"}, "routes"),
    ],
    ids=[
        "no-timeouts",
        "admin-port",
        "swapped-table",
        "dict",
        "server-timeouts-on-agent",
        "no-server",
        "inspect-flag",
        "route-dict",
        "route-text",
        "token-not-scoped",
        "scope-text",
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_at_once(
    kind: type, fields: dict[str, Any], key: str
) -> None:
    if kind is AgentConfig:
        fields = {"client_id": "a", **fields}
    with pytest.raises(ConfigError, match=rf"\.{key}: expected "):
        kind(**fields)


def test_server_and_agent_refuse_an_unusable_config_as_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"internal\.token"):
        pvtunnel.TunnelServer(ServerConfig())
    with pytest.raises(ConfigError, match=r"server\.url"):
        pvtunnel.TunnelAgent(AgentConfig(client_id="a"))


def test_every_config_class_is_public() -> None:
    # AgentConfig.inspect takes one: an embedder must not need a private module.
    for name in ("InspectConfig", "AgentTimeouts", "AdminConfig"):
        assert name in pvtunnel.__all__
    assert pvtunnel.InspectConfig is type(AgentConfig(client_id="a").inspect)
    assert pvtunnel.AgentTimeouts is AgentTimeouts


def test_every_problem_relating_keys_is_raised_at_once_in_key_order() -> None:
    with pytest.raises(ConfigError) as caught:
        InternalConfig(
            token=TOKEN, tokens=[ScopedToken(token=TOKEN, routes=("app",))], tls_cert="cert.pem"
        )
    assert caught.value.problems == [
        "InternalConfig.tokens[0].token: the same token as internal.token: "
        "give each agent token once",
        "InternalConfig.tls_key: required when tls_cert is set: "
        "TLS needs the certificate and its key",
    ]
