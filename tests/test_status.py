"""`pvtunnel status`'s tables, from status documents (the shapes in `pvtunnel._status`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pvtunnel._status import (
    AgentServerEntry,
    AgentStatusDocument,
    ServerStatusDocument,
    _duration,
    admin_url,
    format_status,
)

OPERATIONS = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()

SERVER = ServerStatusDocument(
    kind="server",
    ready=True,
    draining=False,
    in_flight=0,
    agents=[
        {
            "client_id": "billing-ec2",
            "address": "10.0.3.17",
            "connected_since": "2025-03-02T09:14:05Z",
            "connected_for_s": 7391.0,
            "routes": ["billing", "grafana"],
            "in_flight": 0,
            "requests": 918,
        }
    ],
    routes=[
        {"name": "billing", "agents": ["billing-ec2"]},
        {"name": "grafana", "agents": ["billing-ec2"]},
    ],
)


def agent_document(**changes: object) -> AgentStatusDocument:
    document = AgentStatusDocument(
        kind="agent",
        client_id="k8s-agent-7f9c",
        server="wss://agents.example.com",
        ready=True,
        connected=True,
        draining=False,
        connected_since="2025-03-02T09:14:05Z",
        connected_for_s=65.2,
        reconnects=1,
        in_flight=2,
        routes=[
            {
                "name": "hello",
                "target": "hello.pvtunnel.svc.cluster.local:80",
                "streams": 1200,
                "idle_connections": 3,
                "connect_errors": 0,
                "refused_by": {},
            },
            {
                "name": "v6",
                "target": "[::1]:3000",
                "streams": 5,
                "idle_connections": 0,
                "connect_errors": 17,
                "refused_by": {},
            },
        ],
    )
    # Keys and types vary per test; TypedDict.update cannot check a **kwargs mapping.
    document.update(changes)  # type: ignore[typeddict-item]
    return document


def test_the_docs_show_what_the_command_prints() -> None:
    block = re.search(r"\$ pvtunnel status --admin 127\.0\.0\.1:8082\n(.*?)```", OPERATIONS, re.S)
    assert block is not None
    assert format_status(SERVER, "http://127.0.0.1:8082") + "\n" == block.group(1)


def test_agent_table() -> None:
    text = format_status(agent_document(), "http://127.0.0.1:8083")
    assert text.splitlines() == [
        "pvtunnel agent k8s-agent-7f9c at http://127.0.0.1:8083: ready, connected to "
        "wss://agents.example.com since 2025-03-02T09:14:05Z (1m05s), 1 reconnect, "
        "2 streams in flight",
        "",
        "ROUTE  TARGET                               STREAMS  IDLE CONNECTIONS  CONNECT ERRORS",
        "hello  hello.pvtunnel.svc.cluster.local:80     1200                 3               0",
        "v6     [::1]:3000                                 5                 0              17",
    ]


def test_a_route_a_server_refused_is_marked_with_the_reason() -> None:
    document = agent_document()
    document["routes"][1]["refused_by"] = {
        "wss://agents.example.com": "this agent's token does not cover that name"
    }
    lines = format_status(document, "http://127.0.0.1:8083").splitlines()
    assert lines[3].startswith("hello         ")
    assert lines[4].startswith("v6 (refused)  ")
    assert lines[5:] == [
        "",
        "v6: refused by wss://agents.example.com: this agent's token does not cover that name",
    ]


def test_a_refusing_servers_url_cannot_drive_the_terminal() -> None:
    # The URLs are keys of refused_by, and a hostile listener chooses them.
    document = agent_document()
    document["routes"][1]["refused_by"] = {"wss://a\x1b[2J\x07\nforged line": "no"}
    shown = format_status(document, "http://127.0.0.1:8083")
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "\nforged line" not in shown
    assert "refused by wss://a" in shown


def test_a_disconnected_or_draining_agent_says_so() -> None:
    down = agent_document(ready=False, connected=False, connected_since=None, connected_for_s=None)
    assert "not ready, not connected to wss://agents.example.com" in format_status(down, "x")
    leaving = agent_document(ready=False, draining=True)
    assert ": draining, connected to" in format_status(leaving, "x")


def test_a_server_without_agents() -> None:
    empty = ServerStatusDocument(
        kind="server", ready=False, draining=False, in_flight=0, agents=[], routes=[]
    )
    assert format_status(empty, "x").splitlines() == [
        "pvtunnel server at x: not ready, 0 agents, 0 streams in flight",
        "",
        "no agents connected",
        "",
        "no routes served",
    ]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (65, "1m05s"), (3600, "1h00m"), (90061, "1d01h"), (-3, "0s")],
)
def test_durations(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown


def test_admin_urls() -> None:
    assert admin_url("127.0.0.1:8082") == "http://127.0.0.1:8082/status"
    assert admin_url("http://[::1]:8082/") == "http://[::1]:8082/status"
    assert admin_url("https://admin.example.com") == "https://admin.example.com/status"
    assert admin_url("HTTP://127.0.0.1:8082") == "HTTP://127.0.0.1:8082/status"
    for other in ("ftp://127.0.0.1:8082", "file:///etc/passwd", "ws://127.0.0.1:8082"):
        with pytest.raises(ValueError, match="expected an http:// or https:// URL"):
            admin_url(other)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "127.0.0.1:+80",
        "127.0.0.1:\uff18\uff10",
        "127.0.0.1:",
        "http://127.0.0.1:http",
        "http://[::1",
        "http://[::1]x:8082",
        "http://[not-v6]:8082",
        "::1:8082",
        "http://user@127.0.0.1:8082",
        "http://",
        "127.0.0.1:8082\n",
        "http://127.0.0.1:80 82",
    ],
)
def test_an_admin_address_that_names_no_one_listener_is_refused(text: str) -> None:
    """urllib would take each of these somewhere: a port of 99999 wraps round, ``+80``
    is 80, an unclosed bracket is a traceback; and the token goes with it."""
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        admin_url(text)


def test_an_admin_url_may_name_status_itself() -> None:
    assert admin_url("http://127.0.0.1:8082/status") == "http://127.0.0.1:8082/status"
    assert admin_url("127.0.0.1:8082/status") == "http://127.0.0.1:8082/status"


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8082?x",
        "http://127.0.0.1:8082/?x",
        "http://127.0.0.1:8082/status?x",
        "http://127.0.0.1:8082#frag",
        "http://127.0.0.1:8082/status#frag",
        "http://127.0.0.1:8082/?",
        "http://127.0.0.1:8082/metrics",
        "http://127.0.0.1:8082/status/",
        "http://127.0.0.1:8082//",
        "127.0.0.1:8082/admin",
    ],
)
def test_an_admin_url_with_another_path_a_query_or_a_fragment_is_refused(text: str) -> None:
    """Appending ``/status`` to these named another page, or put it inside the query
    or the fragment; which page was meant is not for the command to guess."""
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        admin_url(text)


def test_an_ipv6_admin_address_keeps_its_port() -> None:
    assert admin_url("[::1]:8082") == "http://[::1]:8082/status"
    assert admin_url("https://[::1]") == "https://[::1]/status"


def server_entry(url: str, **changes: object) -> AgentServerEntry:
    entry = AgentServerEntry(
        url=url,
        address=None,
        connected=True,
        connected_since="2025-03-02T09:14:05Z",
        connected_for_s=65.2,
        reconnects=0,
        in_flight=1,
        refused=None,
    )
    entry.update(changes)  # type: ignore[typeddict-item]
    return entry


def test_an_agent_with_several_servers_shows_a_row_for_each() -> None:
    servers = [
        server_entry("wss://a.example.com"),
        server_entry(
            "wss://b.example.com",
            connected=False,
            connected_since=None,
            connected_for_s=None,
            reconnects=1,
            in_flight=0,
        ),
        server_entry(
            "wss://c.example.com",
            connected=False,
            connected_since=None,
            connected_for_s=None,
            in_flight=0,
            refused="the server at wss://c.example.com refused this agent's token (HTTP 401)",
        ),
    ]
    document = agent_document(
        server="wss://a.example.com, wss://b.example.com, wss://c.example.com", servers=servers
    )
    lines = format_status(document, "x").splitlines()
    assert lines[:7] == [
        "pvtunnel agent k8s-agent-7f9c at x: ready, connected to 1 of 3 servers, "
        "1 reconnect, 2 streams in flight",
        "",
        "SERVER               STATE       CONNECTED SINCE       FOR    RECONNECTS  IN FLIGHT",
        "wss://a.example.com  connected   2025-03-02T09:14:05Z  1m05s           0          1",
        "wss://b.example.com  connecting  -                     -               1          0",
        "wss://c.example.com  refused     -                     -               0          0",
        "",
    ]
    assert lines[7].startswith("ROUTE  TARGET")


def test_one_server_needs_no_server_table() -> None:
    """With one server the summary line says it all, as before the list existed."""
    one = agent_document(servers=[server_entry("wss://agents.example.com")])
    assert format_status(one, "x") == format_status(agent_document(), "x")


def test_discovered_links_show_their_addresses_even_when_there_is_one() -> None:
    url = "wss://pvtunnel-internal.tunnel.svc.cluster.local:8081"
    servers = [
        server_entry(url, address="10.42.0.17"),
        server_entry(url, address="10.42.1.9", reconnects=2, in_flight=0),
    ]
    lines = format_status(agent_document(server=url, servers=servers), "x").splitlines()
    assert lines[2:5] == [
        "SERVER                                                 ADDRESS     STATE      "
        "CONNECTED SINCE       FOR    RECONNECTS  IN FLIGHT",
        f"{url}  10.42.0.17  connected  2025-03-02T09:14:05Z  1m05s           0          1",
        f"{url}  10.42.1.9   connected  2025-03-02T09:14:05Z  1m05s           2          0",
    ]
    one = format_status(agent_document(server=url, servers=servers[:1]), "x").splitlines()
    assert one[2].startswith("SERVER ")
    assert "10.42.0.17" in one[3]
