"""``--admin-port`` and ``--admin-host`` on ``serve`` and ``agent``: the port turns the
admin listener on, or moves it; the host moves a listener something else turned on."""

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


# ------------------------------------------------------------------ --admin-host

ADMIN_TOKEN = Secret("admin-token-0123456789")


def test_the_host_flag_overrides_the_files_host_and_keeps_its_port_and_token() -> None:
    admin = AdminConfig(port=8082, host="127.0.0.1", token=ADMIN_TOKEN)
    server = with_overrides(ServerConfig(admin=admin), admin_host="0.0.0.0")
    assert server.admin == AdminConfig(port=8082, host="0.0.0.0", token=ADMIN_TOKEN)
    agent = with_agent_overrides(AgentConfig(client_id="a", admin=admin), admin_host="::")
    assert agent.admin == AdminConfig(port=8082, host="::", token=ADMIN_TOKEN)
    # Back to loopback from a file's wildcard: the token stays, needed or not.
    wide = AdminConfig(port=8082, host="0.0.0.0", token=ADMIN_TOKEN)
    narrowed = with_overrides(ServerConfig(admin=wide), admin_host="localhost")
    assert narrowed.admin == AdminConfig(port=8082, host="localhost", token=ADMIN_TOKEN)


def test_the_host_flag_goes_with_the_port_flag() -> None:
    server = with_overrides(
        ServerConfig(), admin_port=9000, admin_host="0.0.0.0", admin_token=ADMIN_TOKEN
    )
    assert server.admin == AdminConfig(port=9000, host="0.0.0.0", token=ADMIN_TOKEN)
    agent = with_agent_overrides(AgentConfig(client_id="a"), admin_port=0, admin_host="127.0.0.2")
    assert agent.admin == AdminConfig(port=0, host="127.0.0.2")


def test_the_host_flag_moves_the_listener_inspect_opens() -> None:
    """``--inspect`` opens the admin listener on 127.0.0.1:4040 where nothing names
    one: ``--admin-host`` changes the address, the port stays 4040."""
    agent = with_agent_overrides(AgentConfig(client_id="a"), inspect=True, admin_host="::1")
    assert agent.admin == AdminConfig(port=4040, host="::1")


@pytest.mark.parametrize(
    ("apply", "flags"),
    [
        (lambda: with_overrides(ServerConfig(), admin_host="0.0.0.0"), "--admin-port N"),
        (
            lambda: with_agent_overrides(AgentConfig(client_id="a"), admin_host="127.0.0.1"),
            "--admin-port N or --inspect",
        ),
    ],
    ids=["serve", "agent"],
)
def test_the_host_flag_alone_turns_no_listener_on_and_says_so(
    apply: Callable[[], object], flags: str
) -> None:
    """Not silently ignored: the user asked for a listener somewhere."""
    with pytest.raises(ConfigError) as caught:
        apply()
    assert caught.value.problems == [
        f"--admin-host: no admin listener to bind it to; give {flags} too, "
        "or [admin] port in the file"
    ]


NEEDS_TOKEN = (
    '--admin-host: admin.token: required when host is not a loopback address (got "{host}"); '
    "set token or token_file in [admin], or the PVTUNNEL_ADMIN_TOKEN environment variable"
)


@pytest.mark.parametrize(
    ("apply", "host"),
    [
        (lambda: with_overrides(ServerConfig(), admin_port=9000, admin_host="0.0.0.0"), "0.0.0.0"),
        (
            lambda: with_overrides(ServerConfig(admin=AdminConfig(port=9000)), admin_host="::"),
            "::",
        ),
        (
            lambda: with_agent_overrides(
                AgentConfig(client_id="a"), admin_port=9100, admin_host="10.0.0.1"
            ),
            "10.0.0.1",
        ),
        (
            lambda: with_agent_overrides(
                AgentConfig(client_id="a"), inspect=True, admin_host="example.com"
            ),
            "example.com",
        ),
    ],
    ids=["serve-port-flag", "serve-file-port", "agent-port-flag", "agent-inspect"],
)
def test_a_host_flag_off_loopback_without_a_token_is_refused_naming_the_flag(
    apply: Callable[[], object], host: str
) -> None:
    """The file's rule, said of the flag that took the listener off loopback."""
    with pytest.raises(ConfigError) as caught:
        apply()
    assert caught.value.problems == [NEEDS_TOKEN.format(host=host)]


def test_a_bad_host_flag_is_reported_as_the_flag_with_the_others() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(), admin_port=65536, admin_host="a b")
    assert caught.value.problems == [
        "--admin-port: expected an integer from 0 to 65535, got 65536",
        '--admin-host: expected a host name or IP address, got "a b"',
    ]
    with pytest.raises(ConfigError) as caught:
        with_agent_overrides(AgentConfig(client_id="a"), client_id="a b", admin_host="[::1]")
    assert caught.value.problems == [
        '--client-id: expected at most 255 printable characters without spaces, got "a b"',
        '--admin-host: expected a host name or IP address, got "[::1]"',
    ]


TAKEN = (
    'on overlapping addresses ({host} "0.0.0.0", admin.host "127.0.0.1"), so the second '
    "listener could not start; give each its own port (0: any free one)"
)


BY_HOST_FLAG = TAKEN.format(host="host").replace('admin.host "', '--admin-host "')


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
        (
            lambda: with_overrides(
                ServerConfig(host="0.0.0.0", admin=AdminConfig(port=8081, host="::1")),
                admin_host="127.0.0.1",
            ),
            "--admin-host: admin.port 8081 is internal.port too, " + BY_HOST_FLAG,
        ),
        (
            lambda: with_overrides(ServerConfig(), admin_port=8080, admin_host="127.0.0.1"),
            "--admin-port: 8080 is external.port too, " + BY_HOST_FLAG,
        ),
        (
            lambda: with_overrides(
                ServerConfig(host="127.0.0.2", admin=AdminConfig(port=8081)),
                host="0.0.0.0",
                admin_host="127.0.0.1",
            ),
            "--admin-host: admin.port 8081 is internal.port too, "
            + BY_HOST_FLAG.replace("(host ", "(--host "),
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


LISTENERS_CLASH = (
    "both listeners bind one host, so the second could not start; "
    "give each its own port (0: any free one)"
)


def test_a_bad_host_flag_leaves_out_the_admin_clash_and_nothing_else() -> None:
    """Where --admin-host would put the listener is unknown, so the clash its port
    makes at the file's admin.host is not looked for; the clash of the port flags,
    which does not involve it, is said in the same run."""
    with pytest.raises(ConfigError) as caught:
        with_overrides(
            ServerConfig(admin=AdminConfig(port=9000)),
            internal_port=9000,
            external_port=9000,
            admin_host="a b",
        )
    assert caught.value.problems == [
        '--admin-host: expected a host name or IP address, got "a b"',
        f"--external-port: 9000 is --internal-port too: {LISTENERS_CLASH}",
    ]


def test_a_clash_the_host_flag_makes_is_reported_beside_the_listeners_clash() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(
            ServerConfig(admin=AdminConfig(port=8081, host="::1")),
            external_port=8081,
            admin_host="127.0.0.1",
        )
    assert caught.value.problems == [
        f"--external-port: 8081 is internal.port too: {LISTENERS_CLASH}",
        "--admin-host: admin.port 8081 is internal.port too, " + BY_HOST_FLAG,
    ]


def test_a_host_flag_without_its_token_is_refused_beside_the_clash_it_makes() -> None:
    """As for a file's [admin] with that host and no token: both in one run."""
    with pytest.raises(ConfigError) as caught:
        with_overrides(ServerConfig(admin=AdminConfig(port=8081, host="::1")), admin_host="0.0.0.0")
    assert caught.value.problems == [
        NEEDS_TOKEN.format(host="0.0.0.0"),
        "--admin-host: admin.port 8081 is internal.port too, on overlapping addresses (host "
        '"0.0.0.0", --admin-host "0.0.0.0"), so the second listener could not start; give each '
        "its own port (0: any free one)",
    ]


BAD_DOMAIN = '--domain: expected a domain name such as tunnel.example.com, got "a b"'


def test_a_bad_host_flag_and_a_bad_flag_beside_it_are_both_reported() -> None:
    """--domain relates to no port: only --admin-host leaves out the clash the
    file's admin port would make with --internal-port."""
    with pytest.raises(ConfigError) as caught:
        with_overrides(
            ServerConfig(admin=AdminConfig(port=9000)),
            internal_port=9000,
            domain="a b",
            admin_host="a b",
        )
    assert caught.value.problems == [
        BAD_DOMAIN,
        '--admin-host: expected a host name or IP address, got "a b"',
    ]


def test_a_clash_the_host_flag_makes_is_reported_beside_a_bad_flag() -> None:
    with pytest.raises(ConfigError) as caught:
        with_overrides(
            ServerConfig(host="0.0.0.0", admin=AdminConfig(port=8081, host="::1")),
            domain="a b",
            admin_host="127.0.0.1",
        )
    assert caught.value.problems == [
        BAD_DOMAIN,
        "--admin-host: admin.port 8081 is internal.port too, " + BY_HOST_FLAG,
    ]


def test_the_admin_flag_may_share_a_port_number_on_another_address() -> None:
    assert with_overrides(ServerConfig(host="::"), admin_port=8080).admin == AdminConfig(port=8080)
    free = with_overrides(ServerConfig(), admin_port=0, internal_port=0)
    assert free.admin == AdminConfig(port=0)


def test_the_host_flag_may_share_a_port_number_on_another_address() -> None:
    """Where the admin host and the tunnel's do not overlap, one port number is two
    listeners: the flag moves it off the wildcard's family, or to another address."""
    admin = AdminConfig(port=8080, host="::1", token=ADMIN_TOKEN)
    config = ServerConfig(host="0.0.0.0", admin=admin)
    assert with_overrides(config, admin_host="::").admin == AdminConfig(
        port=8080, host="::", token=ADMIN_TOKEN
    )
    on_loopback = ServerConfig(host="127.0.0.1", admin=AdminConfig(port=8081, host="::1"))
    moved = with_overrides(on_loopback, admin_host="127.0.0.2")
    assert moved.admin == AdminConfig(port=8081, host="127.0.0.2")
