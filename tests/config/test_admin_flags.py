"""``--admin-port`` on ``serve`` and ``agent``: turns the admin listener on, or moves it."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from collections.abc import Callable


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


TAKEN = (
    'on overlapping addresses ({host} "0.0.0.0", admin.host "127.0.0.1"), so the second '
    "listener could not start; give each its own port (0: any free one)"
)


@pytest.mark.parametrize(
    ("apply", "problem"),
    [
        (
            lambda: with_overrides(ServerConfig(), admin_port=8080),
            "--admin-port: 8080 is external.port too, " + TAKEN.format(host="host"),
        ),
        (
            lambda: with_overrides(ServerConfig(), admin_port=9000, internal_port=9000),
            "--admin-port: 9000 is --internal-port too, " + TAKEN.format(host="host"),
        ),
        (
            lambda: with_overrides(ServerConfig(admin=AdminConfig(port=9100)), external_port=9100),
            "--external-port: 9100 is admin.port too, " + TAKEN.format(host="host"),
        ),
        (
            lambda: with_overrides(
                ServerConfig(host="127.0.0.2", admin=AdminConfig(port=8081)), host="0.0.0.0"
            ),
            "--host: admin.port 8081 is internal.port too, " + TAKEN.format(host="--host"),
        ),
    ],
)
def test_flags_that_put_the_admin_listener_on_another_ones_port_are_blamed(
    apply: Callable[[], ServerConfig], problem: str
) -> None:
    """Said of the flag that brought the clash: the file alone passed its check."""
    with pytest.raises(ConfigError) as caught:
        apply()
    assert caught.value.problems == [problem]


def test_the_admin_flag_may_share_a_port_number_on_another_address() -> None:
    assert with_overrides(ServerConfig(host="::"), admin_port=8080).admin == AdminConfig(port=8080)
    free = with_overrides(ServerConfig(), admin_port=0, internal_port=0)
    assert free.admin == AdminConfig(port=0)
