"""``--admin-port`` on ``serve`` and ``agent``: turns the admin listener on, or moves it."""

from __future__ import annotations

import pytest

from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    Secret,
    ServerConfig,
    with_agent_overrides,
    with_overrides,
)
from pvtunnel._errors import ConfigError


def test_the_flag_turns_a_loopback_listener_on() -> None:
    assert with_overrides(ServerConfig()).admin is None
    assert with_overrides(ServerConfig(), admin_port=0).admin == AdminConfig(port=0)
    agent = with_agent_overrides(AgentConfig(client_id="a"), admin_port=9100)
    assert agent.admin == AdminConfig(port=9100, host="127.0.0.1")


def test_the_flag_keeps_the_files_host_and_token() -> None:
    admin = AdminConfig(port=8082, host="0.0.0.0", token=Secret("admin-token"))
    server = with_overrides(ServerConfig(admin=admin), admin_port=9000)
    assert server.admin == AdminConfig(port=9000, host="0.0.0.0", token=Secret("admin-token"))
    agent = with_agent_overrides(AgentConfig(client_id="a", admin=admin), admin_port=9001)
    assert agent.admin is not None
    assert (agent.admin.host, agent.admin.port) == ("0.0.0.0", 9001)
    assert with_overrides(ServerConfig(admin=admin)).admin == admin


@pytest.mark.parametrize("port", [-1, 65536])
def test_a_bad_port_is_reported_as_the_flag(port: int) -> None:
    for apply in (
        lambda: with_overrides(ServerConfig(), admin_port=port),
        lambda: with_agent_overrides(AgentConfig(client_id="a"), admin_port=port),
    ):
        with pytest.raises(ConfigError) as caught:
            apply()
        assert caught.value.problems == [
            f"--admin-port: expected an integer from 0 to 65535, got {port}"
        ]
