"""Requests held while a route's agent reconnects, on a real server and agents (loopback).

The agent leaves by being cancelled (its connection closes, as in a restart or a
network cut the heartbeat noticed); requests sent meanwhile must wait and reach
the agent that registers next, or get 503 + Retry-After once the hold time is
over. Names never served still get 404 at once, and a request already in flight
on the lost agent still fails with 502 (shown by
``test_proxying.test_agent_killed_mid_request_gives_502_quickly``). Waiting is
awaited through the server's own state (`HeldRequests.wait_waiting_changed`),
never by sleeping.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import TYPE_CHECKING

import attrs
import trio
import trio.testing

from pvtunnel._config import AdminConfig
from pvtunnel._config.rules import MAX_HOLD_S
from pvtunnel._metrics import NO_ROUTE
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._wire.frames import MAX_STREAM_ID
from tests.integration.admin_probe import scrape
from tests.integration.client import Reply, fetch
from tests.integration.harness import (
    TOKEN,
    Running,
    agent_config,
    server_config,
    start_agent,
    start_server,
    start_upstream,
    wait_for,
    wait_for_sessions,
)
from tests.integration.hostile import GOAWAY, HostileAgent, frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import pytest

    from pvtunnel._config import ServerConfig
    from pvtunnel._trio.server import TunnelServer
    from tests.integration.upstream import RecordingUpstream

LIMIT_S = 20


async def start_departed(
    nursery: trio.Nursery, config: ServerConfig
) -> tuple[Running, RecordingUpstream, int]:
    """A server whose only agent served "app" (on a recording upstream) and has left."""
    running = await start_server(nursery, config)
    upstream, port = await start_upstream(nursery, "svc")
    _, _, scope = await start_agent(nursery, running, {"app": port})
    assert (await fetch(running.port, b"GET", b"/")).status == 200
    scope.cancel()
    await wait_for_sessions(running, 0)
    return running, upstream, port


async def wait_held(server: TunnelServer, count: int) -> None:
    held = server.state.held
    while held.waiting != count:
        await held.wait_waiting_changed()


@contextlib.asynccontextmanager
async def held_request(
    running: Running, target: bytes = b"/", host: bytes = b"app"
) -> AsyncIterator[list[Reply]]:
    """One request, held for an agent inside the block; its reply in the list after.

    A request answered at once instead fails the test there, not by a wait for a
    hold that never comes.
    """
    replies: list[Reply] = []
    answered = trio.CancelScope()

    async def client() -> None:
        replies.append(await fetch(running.port, b"GET", target, host=host))
        answered.cancel()

    async with trio.open_nursery() as clients:
        clients.start_soon(client)
        with answered:
            await wait_held(running.server, 1)
        assert replies == [], "answered at once instead of held"
        yield replies


async def test_a_request_sent_while_the_agent_is_away_reaches_it_when_it_is_back() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _, _ = await start_departed(nursery, server_config(timeouts={"hold_s": 30.0}))
            new, new_port = await start_upstream(nursery, "new")
            replies: list[Reply] = []

            async def client() -> None:
                replies.append(await fetch(running.port, b"POST", b"/echo", body=b"held body"))

            async with trio.open_nursery() as clients:
                for _ in range(3):
                    clients.start_soon(client)
                await wait_held(running.server, 3)
                assert replies == []
                await start_agent(nursery, running, {"app": new_port})
            assert [(r.status, r.body, r.header(b"x-upstream")) for r in replies] == [
                (200, b"held body", b"new")
            ] * 3
            assert len(new.requests) == 3
            held = running.server.state.metrics.held_requests
            assert held["served"] == 3
            assert running.server.state.held.waiting == 0
            nursery.cancel_scope.cancel()


async def test_no_agent_back_within_hold_s_is_503_with_retry_after() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _, _ = await start_departed(nursery, server_config(timeouts={"hold_s": 0.5}))
            started = trio.current_time()
            reply = await fetch(running.port, b"GET", b"/", host=b"app:8080")
            assert trio.current_time() - started >= 0.5
            assert reply.status == 503
            assert reply.header(b"retry-after") == b"1"
            assert b"reconnecting" in reply.body
            assert running.server.state.metrics.held_requests["timed_out"] == 1
            nursery.cancel_scope.cancel()


async def test_the_longest_hold_asks_the_client_back_after_an_hour(
    mock_clock: trio.testing.MockClock,
) -> None:
    """hold_s is at most an hour (MAX_HOLD_S), so Retry-After is at most 3600: at
    1e308 it was a 309-digit number."""
    async with trio.open_nursery() as nursery:
        config = server_config(timeouts={"hold_s": float(MAX_HOLD_S)})
        running, _, _ = await start_departed(nursery, config)
        async with held_request(running) as replies:
            mock_clock.jump(MAX_HOLD_S - 1)
            await trio.testing.wait_all_tasks_blocked()
            assert (replies, running.server.state.held.waiting) == ([], 1)
            mock_clock.jump(1.5)
        assert [(reply.status, reply.header(b"retry-after")) for reply in replies] == [
            (503, b"3600")
        ]
        nursery.cancel_scope.cancel()


async def test_a_held_request_refused_is_logged_under_its_route_with_its_wait(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The redeploy case operators watch: the 503 counts for the route, not for
    "no route", and its line says how long the client waited."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    async with trio.open_nursery() as nursery:
        running, _, _ = await start_departed(nursery, server_config(timeouts={"hold_s": 4.0}))
        served = running.server.state.metrics.routes["app"].duration.count  # before it left
        replies: list[Reply] = []

        async def client() -> None:
            replies.append(await fetch(running.port, b"GET", b"/held", host=b"app:8080"))

        async with trio.open_nursery() as clients:
            clients.start_soon(client)
            await wait_held(running.server, 1)
            mock_clock.jump(4.5)
        assert [reply.status for reply in replies] == [503]
        line = vars([r for r in caplog.records if r.name == "pvtunnel.access"][-1])
        assert (line["target"], line["status"], line["route"]) == ("/held", 503, "app")
        assert line["duration_ms"] >= 4000
        figures = running.server.state.metrics.routes["app"]
        assert figures.status_classes[5] == 1
        # It reached no agent: the duration histogram (agent time) leaves it out.
        assert figures.duration.count == served
        assert NO_ROUTE not in running.server.state.metrics.routes
        nursery.cancel_scope.cancel()


async def test_a_held_request_served_is_logged_with_its_wait(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Its line says how long the client waited, wait included; the duration
    histogram keeps the agent's part alone, as for any other request."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    async with trio.open_nursery() as nursery:
        running, _, port = await start_departed(nursery, server_config(timeouts={"hold_s": 30.0}))
        before = running.server.state.metrics.routes["app"].duration
        count, total = before.count, before.sum
        async with held_request(running, b"/held") as replies:
            mock_clock.jump(2.5)
            await start_agent(nursery, running, {"app": port})
        assert [reply.status for reply in replies] == [200]
        line = vars([r for r in caplog.records if r.name == "pvtunnel.access"][-1])
        assert (line["target"], line["status"]) == ("/held", 200)
        assert line["duration_ms"] >= 2500
        figures = running.server.state.metrics.routes["app"]
        assert figures.duration.count == count + 1
        assert figures.duration.sum - total < 1.0  # the 2.5 s wait is not the agent's
        nursery.cancel_scope.cancel()


async def test_a_name_never_served_is_not_in_the_duration_histogram() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_config())
            assert (await fetch(running.port, b"GET", b"/", host=b"nowhere")).status == 404
            figures = running.server.state.metrics.routes[NO_ROUTE]
            assert (figures.status_classes[4], figures.duration.count) == (1, 0)
            nursery.cancel_scope.cancel()


async def test_the_hold_is_not_the_upstreams_time(mock_clock: trio.testing.MockClock) -> None:
    """A hold longer than ``upstream_response_s`` still ends as a hold does (503 once
    ``hold_s`` is over), and a request served after such a hold gets the upstream's
    whole time from then on.

    The clock stands still unless the test moves it: the jumps are the only time
    that passes, past ``upstream_response_s`` and then past ``hold_s``.
    """
    timeouts = {"hold_s": 1.0, "upstream_response_s": 0.3}
    async with trio.open_nursery() as nursery:
        running, _, _ = await start_departed(nursery, server_config(timeouts=timeouts))
        replies: list[Reply] = []

        async def client() -> None:
            replies.append(await fetch(running.port, b"GET", b"/"))

        started = trio.current_time()
        async with trio.open_nursery() as clients:
            clients.start_soon(client)
            await wait_held(running.server, 1)
            mock_clock.jump(0.5)  # past upstream_response_s: still held
            await trio.testing.wait_all_tasks_blocked()
            assert replies == []
            mock_clock.jump(0.6)  # past hold_s
        assert trio.current_time() - started >= 1.0
        (reply,) = replies
        assert (reply.status, reply.header(b"retry-after")) == (503, b"1")
        replies.clear()
        async with trio.open_nursery() as clients:
            clients.start_soon(client)
            await wait_held(running.server, 1)
            # Back after longer than the upstream may take, within the hold.
            mock_clock.jump(0.5)
            await trio.testing.wait_all_tasks_blocked()
            _, new_port = await start_upstream(nursery, "new")
            await start_agent(nursery, running, {"app": new_port})
        assert [(r.status, r.header(b"x-upstream")) for r in replies] == [(200, b"new")]
        held = running.server.state.metrics.held_requests
        assert (held["timed_out"], held["served"], held["abandoned"]) == (1, 1, 0)
        nursery.cancel_scope.cancel()


async def test_never_served_names_are_404_at_once_while_departed_ones_wait() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            config = server_config(timeouts={"hold_s": 60.0}, limits={"max_held_requests": 1})
            running, _, _ = await start_departed(nursery, config)
            async with trio.open_nursery() as clients:
                clients.start_soon(fetch, running.port, b"GET", b"/")
                await wait_held(running.server, 1)
                # Far inside the 60 s hold: these are answered without waiting.
                with trio.fail_after(5):
                    never = await fetch(running.port, b"GET", b"/", host=b"never-served")
                    beyond = await fetch(running.port, b"GET", b"/")
                clients.cancel_scope.cancel()
            assert never.status == 404
            assert beyond.status == 503
            assert beyond.header(b"retry-after") == b"60"
            assert b"too many" in beyond.body
            nursery.cancel_scope.cancel()


async def test_metrics_show_held_requests_waiting_and_their_outcomes() -> None:
    config = attrs.evolve(server_config(timeouts={"hold_s": 30.0}), admin=AdminConfig(port=0))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _, port = await start_departed(nursery, config)
            async with trio.open_nursery() as clients:
                clients.start_soon(fetch, running.port, b"GET", b"/")
                await wait_held(running.server, 1)
                page = await scrape(running.addresses.admin)
                assert page.value("pvtunnel_held_requests_waiting") == 1
                await start_agent(nursery, running, {"app": port})
            page = await scrape(running.addresses.admin)
            assert page.value("pvtunnel_held_requests_waiting") == 0
            assert page.value("pvtunnel_held_requests_total", outcome="served") == 1
            assert page.value("pvtunnel_held_requests_total", outcome="timed_out") == 0
            nursery.cancel_scope.cancel()


async def test_a_held_client_that_hangs_up_frees_its_place_at_once() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            config = server_config(timeouts={"hold_s": 60.0}, limits={"max_held_requests": 1})
            running, _, port = await start_departed(nursery, config)
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            await wait_held(running.server, 1)
            await stream.aclose()
            # Far inside the 60 s hold: the place is free again, for a client that stays.
            await wait_held(running.server, 0)
            assert running.server.state.metrics.held_requests["abandoned"] == 1
            async with held_request(running) as replies:
                await start_agent(nursery, running, {"app": port})
            assert [reply.status for reply in replies] == [200]
            nursery.cancel_scope.cancel()


async def test_a_connection_out_of_stream_ids_is_replaced_without_failing_a_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stream IDs are never reused: the request on the last one is answered, the
    agent is told to reconnect (GOAWAY), and the next request waits for it."""
    caplog.set_level(logging.INFO, "pvtunnel")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_config())
            _, port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": port})
            (old,) = running.server.sessions
            old.tunnel.mux._highest_stream_id = MAX_STREAM_ID - 1  # four billion requests on
            last = await fetch(running.port, b"GET", b"/")
            assert (last.status, last.header(b"x-upstream")) == (200, b"svc")
            assert not old.tunnel.mux.can_open_stream
            # Unrouted at once: the next request is held, not sent to a spent connection.
            held = await fetch(running.port, b"GET", b"/")
            assert (held.status, held.header(b"x-upstream")) == (200, b"svc")
            (new,) = running.server.sessions
            assert new is not old
            used_up = "stream IDs used up; the agent is asked to reconnect"
            assert [r.name for r in caplog.records if used_up in r.message] == ["pvtunnel.server"]
            nursery.cancel_scope.cancel()


async def test_a_request_an_agent_refuses_as_it_leaves_goes_to_another() -> None:
    """The server opened a stream on an agent whose GOAWAY was already on its way:
    the agent never saw the request, so it is sent again, here to the agent that
    registered meanwhile, not answered 503."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_config())
            _, port = await start_upstream(nursery, "svc")
            async with await HostileAgent.connect(
                running.addresses.internal, TOKEN, client_id="leaving"
            ) as leaving:
                replies: list[Reply] = []

                async def client() -> None:
                    replies.append(await fetch(running.port, b"GET", b"/"))

                async with trio.open_nursery() as clients:
                    clients.start_soon(client)
                    head = await leaving.receive_request()
                    await start_agent(nursery, running, {"app": port})
                    # GOAWAY with the last stream ID below the request's: refused unseen.
                    payload = struct.pack(">IB", head.stream_id - 1, 0) + b"restarting"
                    await leaving.send(frame(GOAWAY, 0, payload))
            ((status, upstream),) = [(r.status, r.header(b"x-upstream")) for r in replies]
            assert (status, upstream) == (200, b"svc")
            nursery.cancel_scope.cancel()


async def test_a_server_just_started_holds_any_name_until_its_agent_comes(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A restarted server, or a new replica agents find at their next DNS look-up,
    has met no agent yet: a name it cannot know waits, as a remembered one does,
    and after ``startup_hold_s`` an unknown name is a 404 again at once."""
    config = server_config(timeouts={"startup_hold_s": 30.0, "hold_s": 10.0})
    with trio.fail_after(60):  # on the mock clock: it jumps 35.5 s in all
        await _startup_hold(config, mock_clock)


async def _startup_hold(config: ServerConfig, mock_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, config)
        _, port = await start_upstream(nursery, "svc")
        async with held_request(running) as replies:
            mock_clock.jump(5.0)
            await start_agent(nursery, running, {"app": port})
        assert [(r.status, r.header(b"x-upstream")) for r in replies] == [(200, b"svc")]
        async with held_request(running, host=b"typo") as replies:
            mock_clock.jump(10.5)  # no agent comes: 503, "try again"
        assert (replies[-1].status, replies[-1].header(b"retry-after")) == (503, b"10")
        mock_clock.jump(20.0)  # past startup_hold_s
        assert (await fetch(running.port, b"GET", b"/", host=b"typo")).status == 404
        nursery.cancel_scope.cancel()


async def test_a_draining_agent_does_not_connect_to_take_held_requests() -> None:
    """Registered, it would be sent the requests held for its routes at once (its
    GOAWAY comes after its HELLO), only to refuse them: the client would wait the
    hold time twice over instead of once."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            config = server_config(timeouts={"hold_s": 0.5})
            running, upstream, port = await start_departed(nursery, config)
            replies: list[Reply] = []

            async def client() -> None:
                replies.append(await fetch(running.port, b"GET", b"/"))

            async with trio.open_nursery() as clients:
                for _ in range(2):
                    clients.start_soon(client)
                await wait_held(running.server, 2)
                agent = TunnelAgent(
                    agent_config(running.addresses, {"app": port}, client_id="leaving")
                )
                await agent.drain()  # nothing connected: done at once
                nursery.start_soon(agent.serve)
                await wait_for(agent, lambda: all(link.stood_down for link in agent.links))
                assert not running.server.sessions
            assert [reply.status for reply in replies] == [503, 503]
            held = running.server.state.metrics.held_requests
            assert (held["served"], held["timed_out"]) == (0, 2)
            assert len(upstream.requests) == 1  # start_departed's own request
            nursery.cancel_scope.cancel()
