"""One agent, several servers: a connection to each, each on its own.

Every server here is a real `TunnelServer` on 127.0.0.1 (port 0), and the agent is
given all their internal URLs. Link state is awaited through
`TunnelAgent.wait_links_changed` and the servers' own session tables, never by
sleeping: reconnect attempts are counted, not timed.
"""

from __future__ import annotations

import logging
import re
import signal
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
import trio.testing

from pvtunnel import ServerCertificateError
from pvtunnel._config import (
    AdminConfig,
    AgentConfig,
    AgentTimeouts,
    ScopedToken,
    Secret,
    ServerConfig,
    ServerEndpoint,
)
from pvtunnel._errors import HandshakeRefusedError
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.server import ServerAdmin
from tests.integration.admin_probe import admin_get, scrape, status_of as admin_status_of
from tests.integration.client import fetch
from tests.integration.harness import (
    TOKEN,
    Running,
    agent_config,
    server_config,
    start_server,
    start_server_in_scope,
    start_upstream,
    wait_for,
    wait_for_sessions,
)
from tests.integration.pki import issue, tls_server_config
from tests.integration.processes import Process, pvtunnel

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pvtunnel._trio.links import AgentStatus, ServerLink
    from pvtunnel._trio.state import AgentSession

LIMIT_S = 20
# Reconnect attempts every 0.25-0.5 s, so a test that counts a few stays short.
QUICK_RETRY = AgentTimeouts(reconnect_max_s=0.5)
OTHER_TOKEN = "a-token-this-agent-does-not-have"


def multi_agent_config(
    servers: list[Running], routes: dict[str, int], **changes: Any
) -> AgentConfig:
    """One agent config naming every server in ``servers``, in order."""
    config = agent_config(servers[0].addresses, routes, **changes)
    endpoint = ServerEndpoint(urls=tuple(s.url for s in servers), token=Secret(TOKEN))
    return attrs.evolve(config, server=endpoint)


def refusing_token() -> ServerConfig:
    """A server whose agent token is not the agent's: HTTP 401 at the upgrade."""
    return server_config(internal={"token": Secret(OTHER_TOKEN)})


def refusing_routes() -> ServerConfig:
    """A server that takes the agent's token but lets it claim none of its routes."""
    scoped = ScopedToken(token=Secret(TOKEN), routes=("*.elsewhere.example.com",))
    return server_config(internal={"token": None, "tokens": (scoped,)})


async def revive(
    nursery: trio.Nursery, gone: Running, timeouts: dict[str, Any] | None = None
) -> Running:
    """A new server on the ports of one that was stopped, once an agent is back on it."""
    back = server_config(
        internal={"port": gone.addresses.internal[1]},
        external={"port": gone.port},
        timeouts=timeouts,
    )
    revived = await start_server(nursery, back)
    await wait_for_sessions(revived, 1)
    return revived


def link_to(agent: TunnelAgent, running: Running) -> ServerLink:
    (link,) = (link for link in agent.links if link.url == running.url)
    return link


async def test_agent_registers_with_every_server_and_serves_through_each() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            first = await start_server(nursery)
            second = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(multi_agent_config([first, second], {"app": port}))
            status: AgentStatus = await nursery.start(agent.serve)
            assert status.server_url in (first.url, second.url)
            assert status.routes == ("app",)
            for running in (first, second):
                await wait_for_sessions(running, 1)
                (session,) = running.server.sessions
                assert (session.client_id, session.routes) == ("agent-1", ("app",))
            await wait_for(agent, lambda: all(link.connected for link in agent.links))

            for running, target in ((first, b"/via-first"), (second, b"/via-second")):
                reply = await fetch(running.port, b"GET", target)
                assert reply.status == 200
                assert reply.body == b"svc saw GET " + target
                while agent.pool.idle_count("app") == 0:  # released after the answer
                    await trio.testing.wait_all_tasks_blocked()
            assert [r.target for r in upstream.requests] == [b"/via-first", b"/via-second"]
            # One pool for both links: the second server's request reused the
            # upstream connection the first one's left idle.
            assert upstream.connections == 1
            nursery.cancel_scope.cancel()


async def test_a_server_going_away_leaves_the_other_serving_and_is_reconnected() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, port = await start_upstream(nursery, "svc")
            doomed, doomed_scope = await start_server_in_scope(nursery, server_config())
            survivor = await start_server(nursery)
            agent = TunnelAgent(
                multi_agent_config([doomed, survivor], {"app": port}, timeouts=QUICK_RETRY)
            )
            await nursery.start(agent.serve)
            await wait_for_sessions(survivor, 1)
            (survivor_session,) = survivor.server.sessions
            doomed_link, survivor_link = link_to(agent, doomed), link_to(agent, survivor)
            await wait_for(agent, lambda: doomed_link.connected)

            # A request in flight through the survivor while the other server dies.
            held: list[int] = []
            held_done = trio.Event()

            async def hold() -> None:
                held.append((await fetch(survivor.port, b"GET", b"/hold")).status)
                held_done.set()

            nursery.start_soon(hold)
            await upstream.hold_started.wait()
            doomed_scope.cancel()
            await wait_for(agent, lambda: not doomed_link.connected)
            # Still serving through the survivor, on the very same connection.
            assert agent.connected
            assert (await fetch(survivor.port, b"GET", b"/meanwhile")).status == 200
            upstream.release.set()
            await held_done.wait()
            assert held == [200]
            # The dead server is retried, again and again (each attempt is counted
            # before it is made, so 2 means the first retry failed and it went on).
            await wait_for(agent, lambda: doomed_link.reconnects >= 2)
            assert survivor.server.sessions == frozenset({survivor_session})
            assert survivor_link.reconnects == 0

            # Back on the same ports: the agent registers there again by itself.
            revived = await revive(nursery, doomed)
            assert (await fetch(revived.port, b"GET", b"/back")).status == 200
            await wait_for(agent, lambda: doomed_link.connected)
            assert survivor.server.sessions == frozenset({survivor_session})
            assert upstream.requests[-1].target == b"/back"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("refusing", "reason"),
    [
        (refusing_token, r"refused this agent's token \(HTTP 401\)"),
        (refusing_routes, "refused every route"),
    ],
)
async def test_a_server_that_refuses_the_agent_is_given_up_while_the_other_serves(
    refusing: Callable[[], ServerConfig], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            accepting = await start_server(nursery)
            refuser = await start_server(nursery, refusing())
            upstream, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(
                multi_agent_config([refuser, accepting], {"app": port}, timeouts=QUICK_RETRY)
            )
            status: AgentStatus = await nursery.start(agent.serve)
            assert status.server_url == accepting.url
            refused_link = link_to(agent, refuser)
            await wait_for(agent, lambda: refused_link.refusal is not None)
            assert re.search(reason, str(refused_link.refusal))
            assert not refused_link.connected
            assert refused_link.reconnects == 0  # final: never retried

            assert (await fetch(accepting.port, b"GET", b"/ok")).status == 200
            assert agent.connected
            assert refuser.server.sessions == frozenset()
            assert refused_link.reconnects == 0
            assert [r.target for r in upstream.requests] == [b"/ok"]
            assert any(
                record.levelno == logging.ERROR
                and record.getMessage().startswith(f"giving up on {refuser.url}: ")
                for record in caplog.records
            )
            nursery.cancel_scope.cancel()


async def test_an_agent_refused_by_every_server_raises() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            by_token = await start_server(nursery, refusing_token())
            by_routes = await start_server(nursery, refusing_routes())
            _, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(
                multi_agent_config([by_token, by_routes], {"app": port}, timeouts=QUICK_RETRY)
            )
            with pytest.raises(HandshakeRefusedError) as refused:
                await agent.serve()
            message = str(refused.value)
            assert message.startswith("every server refused this agent: ")
            assert f"the server at {by_token.url} refused this agent's token" in message
            assert f"{by_routes.url}: the server refused every route" in message
            assert not isinstance(refused.value, ServerCertificateError)
            assert TOKEN not in message
            assert [link.reconnects for link in agent.links] == [0, 0]
            nursery.cancel_scope.cancel()


async def test_an_unverifiable_certificate_ends_only_that_servers_link(tmp_path: Path) -> None:
    """Before a server ever registered the agent, a bad certificate is final for it alone."""
    stranger = issue(tmp_path, "stranger", "127.0.0.1")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            plain = await start_server(nursery)
            tls_config = tls_server_config(stranger)
            tls = await start_server(nursery, tls_config)
            _, port = await start_upstream(nursery, "svc")
            host, tls_port = tls.addresses.internal
            wss_url = f"wss://{host}:{tls_port}"
            config = multi_agent_config([plain], {"app": port}, timeouts=QUICK_RETRY)
            config = attrs.evolve(
                config, server=attrs.evolve(config.server, urls=(wss_url, plain.url))
            )
            agent = TunnelAgent(config)
            await nursery.start(agent.serve)
            tls_link = agent.links[0]
            await wait_for(agent, lambda: tls_link.refusal is not None)
            assert isinstance(tls_link.refusal, ServerCertificateError)
            assert tls_link.reconnects == 0
            assert (await fetch(plain.port, b"GET", b"/")).status == 200

            # Every link ended that way: the agent gives up, with a certificate error.
            other_host, other_port = (await start_server(nursery, tls_config)).addresses.internal
            both = attrs.evolve(
                config,
                server=attrs.evolve(
                    config.server, urls=(wss_url, f"wss://{other_host}:{other_port}")
                ),
            )
            with pytest.raises(ServerCertificateError, match=r"^every server refused this agent"):
                await TunnelAgent(both).serve()
            nursery.cancel_scope.cancel()


async def test_drain_says_goaway_to_every_server_and_waits_for_both() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            first = await start_server(nursery)
            second = await start_server(nursery)
            one, port_one = await start_upstream(nursery, "one")
            two, port_two = await start_upstream(nursery, "two")
            agent = TunnelAgent(
                multi_agent_config([first, second], {"one": port_one, "two": port_two})
            )
            await nursery.start(agent.serve)
            sessions: list[AgentSession] = []
            for running in (first, second):
                await wait_for_sessions(running, 1)
                sessions.extend(running.server.sessions)

            statuses: dict[str, int] = {}
            answered = {"one": trio.Event(), "two": trio.Event()}

            async def hold(running: Running, name: str) -> None:
                reply = await fetch(running.port, b"GET", b"/hold", host=name.encode())
                statuses[name] = reply.status
                answered[name].set()

            nursery.start_soon(hold, first, "one")
            nursery.start_soon(hold, second, "two")
            await one.hold_started.wait()
            await two.hold_started.wait()
            assert agent.in_flight == 2

            drained = trio.Event()

            async def drain() -> None:
                await agent.drain()
                drained.set()

            nursery.start_soon(drain)
            # Both servers hear GOAWAY, on connections that stay open for the streams.
            for session in sessions:
                await session.tunnel.going_away.wait()
                assert session.tunnel.closed is None
            one.release.set()
            await answered["one"].wait()
            await trio.testing.wait_all_tasks_blocked()
            assert not drained.is_set()  # the second server's stream is still running
            assert agent.in_flight == 1
            two.release.set()
            await drained.wait()
            await answered["two"].wait()
            assert statuses == {"one": 200, "two": 200}
            nursery.cancel_scope.cancel()


async def status_of(address: tuple[str, int] | None) -> dict[str, Any]:
    return dict(await admin_status_of(address))


async def ready_status(address: tuple[str, int] | None) -> int:
    return (await admin_get(address, b"/ready")).status


async def test_status_metrics_and_ready_cover_every_server_connection() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            first = await start_server(nursery)
            second, second_scope = await start_server_in_scope(nursery, server_config())
            refuser = await start_server(nursery, refusing_token())
            upstream, port = await start_upstream(nursery, "svc")
            servers = [first, second, refuser]
            agent = TunnelAgent(
                multi_agent_config(
                    servers, {"app": port}, timeouts=QUICK_RETRY, admin=AdminConfig(port=0)
                )
            )
            status: AgentStatus = await nursery.start(agent.serve)
            admin = status.admin
            first_link, second_link, refused_link = agent.links
            await wait_for(
                agent,
                lambda: (
                    first_link.connected
                    and second_link.connected
                    and refused_link.refusal is not None
                ),
            )
            held = trio.Event()

            async def hold() -> None:
                assert (await fetch(second.port, b"GET", b"/hold")).status == 200
                held.set()

            nursery.start_soon(hold)
            await upstream.hold_started.wait()

            document = await status_of(admin)
            assert (document["ready"], document["connected"], document["in_flight"]) == (
                True,
                True,
                1,
            )
            assert document["server"] == ", ".join(s.url for s in servers)
            entries = document["servers"]
            assert [
                (e["url"], e["connected"], e["in_flight"], e["reconnects"]) for e in entries
            ] == [
                (first.url, True, 0, 0),
                (second.url, True, 1, 0),
                (refuser.url, False, 0, 0),
            ]
            for entry in entries[:2]:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["connected_since"])
                assert 0 <= entry["connected_for_s"] < LIMIT_S
                assert entry["refused"] is None
            assert (entries[2]["connected_since"], entries[2]["connected_for_s"]) == (None, None)
            assert "refused this agent's token (HTTP 401)" in entries[2]["refused"]

            metrics = await scrape(admin)
            assert metrics.value("pvtunnel_agent_connected") == 1
            assert metrics.value("pvtunnel_agent_active_streams") == 1
            assert metrics.series("pvtunnel_agent_server_connected") == {
                (("server", first.url),): 1,
                (("server", second.url),): 1,
                (("server", refuser.url),): 0,
            }

            admin_url = f"http://{admin[0]}:{admin[1]}" if admin else ""
            shown = await pvtunnel("status", "--admin", admin_url)
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.decode().splitlines()
            assert (
                "ready, connected to 2 of 3 servers, 0 reconnects, 1 stream in flight" in (lines[0])
            )
            assert lines[2].split()[:2] == ["SERVER", "STATE"]
            assert re.match(rf"{first.url} +connected +\S+Z +\d+s +0 +0$", lines[3])
            assert re.match(rf"{second.url} +connected +\S+Z +\d+s +0 +1$", lines[4])
            assert re.match(rf"{refuser.url} +refused +- +- +0 +0$", lines[5])
            assert lines[7].startswith("ROUTE ")

            # One server gone: still ready through the other, and the figures say so.
            upstream.release.set()
            await held.wait()
            second_scope.cancel()
            await wait_for(agent, lambda: second_link.reconnects >= 1)
            assert await ready_status(admin) == 200
            after = await status_of(admin)
            assert [e["connected"] for e in after["servers"]] == [True, False, False]
            assert after["reconnects"] == sum(e["reconnects"] for e in after["servers"]) >= 1
            metrics = await scrape(admin)
            assert metrics.value("pvtunnel_agent_server_connected", server=second.url) == 0
            assert metrics.value(
                "pvtunnel_agent_server_reconnects_total", server=second.url
            ) == metrics.value("pvtunnel_agent_reconnects_total")
            nursery.cancel_scope.cancel()


async def test_the_agent_command_takes_server_several_times(processes: list[Process]) -> None:
    with trio.fail_after(LIMIT_S * 2):
        async with trio.open_nursery() as nursery:
            first = await start_server(nursery)
            second = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "svc")
            agent = await Process.launch(
                "agent",
                f"--server={first.url}",
                "--server",
                second.url,
                f"--route=app=127.0.0.1:{port}",
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            processes.append(agent)
            await agent.wait_for(r"ready server=ws://127\.0\.0\.1:\d+ routes=app$")
            for running in (first, second):
                await wait_for_sessions(running, 1)
                assert (await fetch(running.port, b"GET", b"/")).status == 200
            assert len(upstream.requests) == 2
            agent.process.send_signal(signal.SIGTERM)
            assert await agent.process.wait() == 0
            nursery.cancel_scope.cancel()


async def test_a_server_that_comes_back_during_a_drain_gets_no_connection() -> None:
    """A draining agent's links that are down stay down (see also test_holding)."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, port = await start_upstream(nursery, "svc")
            away, away_scope = await start_server_in_scope(nursery, server_config())
            staying = await start_server(nursery)
            agent = TunnelAgent(
                multi_agent_config([away, staying], {"app": port}, timeouts=QUICK_RETRY)
            )
            await nursery.start(agent.serve)
            away_link = link_to(agent, away)
            await wait_for(agent, lambda: all(link.connected for link in agent.links))
            away_scope.cancel()
            await wait_for(agent, lambda: not away_link.connected)
            await agent.drain()  # nothing in flight: done at once
            (staying_session,) = staying.server.sessions
            await staying_session.tunnel.going_away.wait()
            await wait_for(agent, lambda: away_link.stood_down)
            reconnects = away_link.reconnects

            back = server_config(
                internal={"port": away.addresses.internal[1]}, external={"port": away.port}
            )
            revived = await start_server(nursery, back)
            await trio.testing.wait_all_tasks_blocked()
            assert not revived.server.sessions
            assert away_link.reconnects == reconnects
            served = len(upstream.requests)
            assert (await fetch(revived.port, b"GET", b"/")).status == 404
            assert len(upstream.requests) == served
            nursery.cancel_scope.cancel()


async def test_two_urls_to_one_server_keep_one_link_and_do_not_replace_each_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """127.0.0.1 and localhost name one server: the server keeps one connection per
    client id, so two registrations would replace each other in a loop. The first
    link stays; the second retries at the reconnect pace and registers nowhere, and
    /status and pvtunnel status say which link it shares the server with."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            by_name = running.url.replace("127.0.0.1", "localhost")
            config = multi_agent_config(
                [running], {"app": port}, timeouts=QUICK_RETRY, admin=AdminConfig(port=0)
            )
            endpoint = attrs.evolve(config.server, urls=(running.url, by_name))
            agent = TunnelAgent(attrs.evolve(config, server=endpoint))
            status: AgentStatus = await nursery.start(agent.serve)
            (kept,) = (link for link in agent.links if link.connected)
            (other,) = (link for link in agent.links if link is not kept)
            since = kept.connected_at
            # Several retries of the other link: each reached the server, and none
            # of them registered there or displaced the kept one.
            await wait_for(agent, lambda: other.reconnects >= 3)
            assert running.server.state.metrics.agent_connects == 1
            assert (kept.connected, kept.connected_at, kept.reconnects) == (True, since, 0)
            assert not other.connected
            assert len(running.server.sessions) == 1
            assert (await fetch(running.port, b"GET", b"/")).status == 200

            server_id = running.server.server_id
            assert re.fullmatch(r"[0-9a-f]{32}", server_id)
            assert ServerAdmin(running.server).status()["server_id"] == server_id
            document = await status_of(status.admin)
            assert {
                e["url"]: (e["connected"], e["server_id"], e["same_server_as"])
                for e in document["servers"]
            } == {kept.url: (True, server_id, None), other.url: (False, None, kept.url)}
            admin = status.admin
            admin_url = f"http://{admin[0]}:{admin[1]}" if admin else ""
            shown = await pvtunnel("status", "--admin", admin_url)
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.decode().splitlines()
            assert "connected to 1 of 2 servers" in lines[0]
            assert any(re.match(rf"{other.url} +same server +- +- ", line) for line in lines)
            assert (
                f"{other.url}: not registered; its latest attempt reached the server "
                f"{kept.url} holds" in lines
            )
            nursery.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    same = [r.getMessage() for r in warnings if "same server" in r.getMessage()]
    assert len(same) == 1, [r.getMessage() for r in warnings]
    assert kept.url in same[0]
    assert other.url in same[0]
    # The server hears a clean close before any HELLO: the agent's choice, no failure.
    assert not [r.getMessage() for r in warnings if r.name == "pvtunnel.server"]
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


async def test_once_the_link_holding_the_server_drops_one_link_takes_it_again() -> None:
    """The claim on a server ends with the connection that made it: after the server
    drops it, the two links race again, one registers, and the other keeps finding
    it there instead of replacing it."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            config = multi_agent_config([running], {"app": port}, timeouts=QUICK_RETRY)
            by_name = running.url.replace("127.0.0.1", "localhost")
            endpoint = attrs.evolve(config.server, urls=(running.url, by_name))
            agent = TunnelAgent(attrs.evolve(config, server=endpoint))
            await nursery.start(agent.serve)
            (kept,) = (link for link in agent.links if link.connected)
            await wait_for(agent, lambda: any(link.same_server_as for link in agent.links))

            (session,) = running.server.sessions
            session.scope.cancel()
            await wait_for(agent, lambda: not kept.connected)
            await wait_for_sessions(running, 1)
            attempts = agent.reconnects
            await wait_for(agent, lambda: agent.reconnects >= attempts + 4)
            assert running.server.state.metrics.agent_connects == 2
            assert sum(link.connected for link in agent.links) == 1
            (holder,) = (link for link in agent.links if link.connected)
            assert holder.server_id == running.server.server_id
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            nursery.cancel_scope.cancel()
