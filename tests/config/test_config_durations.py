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


# ------------------------------------------------------------------ the ceilings

SERVER_KEYS = (
    "request_head_s",
    "idle_s",
    "upstream_response_s",
    "grace_s",
    "handshake_s",
    "heartbeat_s",
    "heartbeat_timeout_s",
    "route_memory_s",
    "startup_hold_s",
    "drain_delay_s",
)
AGENT_KEYS = (
    "connect_s",
    "upstream_connect_s",
    "reconnect_max_s",
    "upstream_idle_s",
    "heartbeat_s",
    "heartbeat_timeout_s",
    "grace_s",
)
A_YEAR = "expected at most 31536000 seconds (a year)"
AN_HOUR = (
    "expected at most 3600 seconds (an hour: a held client waits as long, "
    "and is told to come back after as long)"
)


@pytest.mark.parametrize("key", SERVER_KEYS)
def test_no_server_duration_is_over_a_year(here: Path, key: str) -> None:
    """1e308 is valid TOML: a drain_delay_s of it logged a 309-digit number."""
    write(here, "server.toml", SERVER_HEAD + f"[timeouts]\n{key} = 1e308\n")
    expected = [f"server.toml: timeouts.{key}: {A_YEAR}, got 1e+308"]
    assert check_file(Path("server.toml"), environ={}) == ("server", expected)


@pytest.mark.parametrize("key", [f"timeouts.{key}" for key in AGENT_KEYS])
def test_no_agent_duration_is_over_a_year(here: Path, key: str) -> None:
    table, name = key.split(".")
    write(here, "agent.toml", AGENT_HEAD + f"[{table}]\n{name} = 1e308\n")
    expected = [f"agent.toml: {key}: {A_YEAR}, got 1e+308"]
    assert check_file(Path("agent.toml"), environ={}) == ("agent", expected)


def test_no_discover_interval_is_over_a_year(here: Path) -> None:
    write(here, "agent.toml", AGENT_HEAD + "discover_interval_s = 1e308\n")
    expected = [f"agent.toml: server.discover_interval_s: {A_YEAR}, got 1e+308"]
    assert check_file(Path("agent.toml"), environ={}) == ("agent", expected)


def test_a_year_itself_is_taken(here: Path) -> None:
    """Every key but heartbeat_s, which its timeout must double, at a year (hold_s,
    at most an hour, has its own test)."""
    server = "".join(f"{key} = 31536000\n" for key in SERVER_KEYS if key != "heartbeat_s")
    write(
        here,
        "server.toml",
        SERVER_HEAD + "[timeouts]\nheartbeat_s = 15768000\n" + server,
    )
    agent = "".join(f"{key} = 31536000\n" for key in AGENT_KEYS if key != "heartbeat_s")
    write(
        here,
        "agent.toml",
        AGENT_HEAD + "discover_interval_s = 31536000\n[timeouts]\nheartbeat_s = 15768000\n" + agent,
    )
    assert check_file(Path("server.toml"), environ={}) == ("server", [])
    assert check_file(Path("agent.toml"), environ={}) == ("agent", [])


def test_hold_s_is_at_most_an_hour_as_retry_after_is(here: Path) -> None:
    """The 503 after a hold asks the client back after hold_s (Retry-After): at
    1e308 the header was 309 digits long."""
    write(here, "server.toml", SERVER_HEAD + "[timeouts]\nhold_s = 1e308\n")
    expected = [f"server.toml: timeouts.hold_s: {AN_HOUR}, got 1e+308"]
    assert check_file(Path("server.toml"), environ={}) == ("server", expected)
    write(here, "server.toml", SERVER_HEAD + "[timeouts]\nhold_s = 3600.5\n")
    expected = [f"server.toml: timeouts.hold_s: {AN_HOUR}, got 3600.5"]
    assert check_file(Path("server.toml"), environ={}) == ("server", expected)
    write(here, "server.toml", SERVER_HEAD + "[timeouts]\nhold_s = 3600\n")
    assert check_file(Path("server.toml"), environ={}) == ("server", [])
    with pytest.raises(ConfigError) as caught:
        TimeoutsConfig(hold_s=1e308)
    assert caught.value.problems == [f"TimeoutsConfig.hold_s: {AN_HOUR}, got 1e+308"]


def test_an_integer_too_large_for_a_float_is_one_line_with_its_value_cut_short(
    here: Path,
) -> None:
    """TOML integers have any number of digits; math.isfinite raised OverflowError
    on this one, reported as "invalid value (OverflowError)"."""
    write(here, "server.toml", SERVER_HEAD + "[timeouts]\nidle_s = 1" + "0" * 400 + "\n")
    expected = [f"server.toml: timeouts.idle_s: {A_YEAR}, got 1{'0' * 79}... (401 digits)"]
    assert check_file(Path("server.toml"), environ={}) == ("server", expected)
