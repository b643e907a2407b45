"""The bounds of the ``*_s`` keys: the floors of those that pace a loop.

A key that sets the pause of a loop (a heartbeat, a DNS re-resolution, the cap
of the reconnect backoff) cannot be near zero: the loop would spin, at full CPU
and, for reconnects, thousands of log lines a second. Each is refused below its
floor, in a file (``pvtunnel check``, ``serve``, ``agent``) and in code alike.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from pvtunnel._config import (
    AgentConfig,
    AgentTimeouts,
    ServerConfig,
    ServerEndpoint,
    TimeoutsConfig,
)
from pvtunnel._config.check import check_file
from pvtunnel._errors import ConfigError
from tests.config.helpers import TOKEN, agent_problems, server_problems, write

AGENT_HEAD = f'client_id = "a"\n[server]\nurl = "ws://127.0.0.1:1"\ntoken = "{TOKEN}"\n'
SERVER_HEAD = f'[internal]\ntoken = "{TOKEN}"\n'

HEARTBEAT_FLOOR = "expected at least 0.01 seconds (a PING goes out each time), got 1e-09"
DISCOVER_FLOOR = "expected at least 0.05 seconds (the name is looked up in DNS each time), got 0.01"
RECONNECT_FLOOR = (
    "expected at least 0.2 seconds (the longest pause between attempts to dial a server), got 1e-09"
)


def test_an_agent_file_with_intervals_below_their_floors_is_refused_naming_each(
    here: Path,
) -> None:
    write(
        here,
        "agent.toml",
        AGENT_HEAD + "discover_interval_s = 0.01\n"
        "[timeouts]\nreconnect_max_s = 1e-9\nheartbeat_s = 1e-9\nheartbeat_timeout_s = 15\n",
    )
    expected = [
        f"agent.toml: server.discover_interval_s: {DISCOVER_FLOOR}",
        f"agent.toml: timeouts.reconnect_max_s: {RECONNECT_FLOOR}",
        f"agent.toml: timeouts.heartbeat_s: {HEARTBEAT_FLOOR}",
    ]
    assert agent_problems(Path("agent.toml")) == expected
    assert check_file(Path("agent.toml"), environ={}) == ("agent", expected)


def test_a_server_file_with_a_heartbeat_below_its_floor_is_refused(here: Path) -> None:
    write(here, "server.toml", SERVER_HEAD + "[timeouts]\nheartbeat_s = 1e-9\n")
    expected = [f"server.toml: timeouts.heartbeat_s: {HEARTBEAT_FLOOR}"]
    assert server_problems(Path("server.toml")) == expected
    assert check_file(Path("server.toml"), environ={}) == ("server", expected)


def test_each_floor_itself_is_taken(here: Path) -> None:
    write(
        here,
        "agent.toml",
        AGENT_HEAD + "discover_interval_s = 0.05\n"
        "[timeouts]\nreconnect_max_s = 0.2\nheartbeat_s = 0.01\nheartbeat_timeout_s = 1\n",
    )
    write(here, "server.toml", SERVER_HEAD + "[timeouts]\nheartbeat_s = 0.01\n")
    assert check_file(Path("agent.toml"), environ={}) == ("agent", [])
    assert check_file(Path("server.toml"), environ={}) == ("server", [])


def test_objects_built_in_code_keep_to_the_floors_too() -> None:
    with pytest.raises(ConfigError) as caught:
        AgentTimeouts(reconnect_max_s=1e-9)
    assert caught.value.problems == [f"AgentTimeouts.reconnect_max_s: {RECONNECT_FLOOR}"]
    with pytest.raises(ConfigError) as caught:
        attrs.evolve(ServerConfig().timeouts, heartbeat_s=1e-9)
    assert caught.value.problems == [f"TimeoutsConfig.heartbeat_s: {HEARTBEAT_FLOOR}"]
    with pytest.raises(ConfigError) as caught:
        AgentTimeouts(heartbeat_s=1e-9)
    assert caught.value.problems == [f"AgentTimeouts.heartbeat_s: {HEARTBEAT_FLOOR}"]
    with pytest.raises(ConfigError) as caught:
        ServerEndpoint(discover_interval_s=0.01)
    assert caught.value.problems == [f"ServerEndpoint.discover_interval_s: {DISCOVER_FLOOR}"]


def test_the_defaults_are_above_every_floor() -> None:
    agent = AgentConfig(client_id="a")
    assert agent.server.discover_interval_s == 30.0
    assert (agent.timeouts.reconnect_max_s, agent.timeouts.heartbeat_s) == (30.0, 5.0)
    assert TimeoutsConfig().heartbeat_s == 5.0
