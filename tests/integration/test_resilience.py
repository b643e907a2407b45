"""Networks drop, stall and lie; agents reboot; servers get redeployed (issue: resilience)."""

from __future__ import annotations

import contextlib
import logging
import random
import re
from typing import TYPE_CHECKING

import attrs
import h11
import pytest
import trio
import trio.testing

from pvtunnel._backoff import Backoff
from pvtunnel._config import AgentTimeouts
from pvtunnel._errors import ServerUnreachableError, TunnelClosedError
from pvtunnel._trio import links as links_module
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.server import ServerAddresses
from tests.integration.client import Client, fetch
from tests.integration.harness import (
    Running,
    agent_config,
    server_config,
    start_agent,
    start_server,
    start_server_in_scope,
    start_tunnel,
    start_upstream,
    wait_for_sessions,
)
from tests.integration.relay import Relay

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from tests.integration.upstream import RecordingUpstream

FAST_HEARTBEAT = {"heartbeat_s": 0.1, "heartbeat_timeout_s": 0.5}


def test_backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(7))
    steps = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    for step in steps:
        delay = backoff.next_delay()
        assert step / 2 <= delay <= step
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(0, 1)


def test_a_cap_below_the_first_step_is_every_step() -> None:
    """``reconnect_max_s`` may be set below the first step (0.5 s): every delay is
    then at most the cap, and the agent runs (it stopped with ValueError)."""
    backoff = Backoff(0.5, 0.2, random.Random(7))
    assert all(0.1 <= backoff.next_delay() <= 0.2 for _ in range(5))


async def test_an_agent_with_a_reconnect_max_below_the_first_step_runs() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            await start_agent(
                nursery, running, {"app": port}, timeouts=AgentTimeouts(reconnect_max_s=0.2)
            )
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            nursery.cancel_scope.cancel()


async def test_backoff_grows_for_a_server_whose_dial_always_times_out(
    mock_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each attempt takes ``connect_s`` (10 s) and a hair more: only time after a
    registration counts as a session that lasted, so the delays still grow."""
    caplog.set_level(logging.INFO, logger="pvtunnel.agent")
    # Jumps over the waits, and real time flows too: a real dial's microseconds.
    mock_clock.rate = 1.0
    mock_clock.autojump_threshold = 0

    async def black_holed(*args: object, timeout_s: float) -> trio.SocketStream:
        # A lost SYN: the dial gives up once `connect_s` is over.
        await trio.sleep(timeout_s)
        raise ServerUnreachableError("no TCP connection within connect_s")

    monkeypatch.setattr(links_module, "dial", black_holed)
    addresses = ServerAddresses(internal=("127.0.0.1", 9), external=("127.0.0.1", 9))
    with trio.move_on_after(200):
        await TunnelAgent(agent_config(addresses, {"app": 1})).serve()
    delays = [
        float(match.group(1))
        for record in caplog.records
        if (match := re.search(r"reconnecting to .* in ([\d.]+)s", record.getMessage()))
    ]
    assert len(delays) >= 5
    assert max(delays) > 4.0, delays


def via(running: Running, port: int) -> Running:
    """The same server, as seen through a relay on ``port``."""
    return Running(
        server=running.server,
        addresses=attrs.evolve(running.addresses, internal=("127.0.0.1", port)),
    )


async def test_blackholed_network_is_noticed_and_the_agent_comes_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    config = server_config(timeouts=FAST_HEARTBEAT)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            _, port = await start_upstream(nursery, "svc")
            relay = Relay(running.addresses.internal[1])
            relay_port = await nursery.start(relay.serve)
            agent, _, _ = await start_agent(
                nursery,
                via(running, relay_port),
                {"app": port},
                timeouts=AgentTimeouts(**FAST_HEARTBEAT),
            )
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            relay.blackhole()
            # Both ends notice within the heartbeat window (0.5 s), not TCP's minutes.
            with trio.fail_after(3):
                await wait_for_sessions(running, 0)
            # Sent while the agent is away: held until it is back, then served.
            held: list[int] = []

            async def client() -> None:
                held.append((await fetch(running.port, b"GET", b"/")).status)

            async with trio.open_nursery() as clients:
                clients.start_soon(client)
                while running.server.state.held.waiting != 1:
                    await running.server.state.held.wait_waiting_changed()
                relay.heal()
                with trio.fail_after(10):
                    await wait_for_sessions(running, 1)
            assert held == [200]
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            assert agent.reconnects >= 1
            # Each end says so, under its own program's logger.
            dead = {r.name for r in caplog.records if "declaring the connection dead" in r.message}
            assert dead == {"pvtunnel.server", "pvtunnel.agent"}
            nursery.cancel_scope.cancel()


async def test_agent_survives_server_restarts() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, port = await start_upstream(nursery, "svc")
            first = await start_server_in_scope(nursery, server_config())
            internal_port = first[0].addresses.internal[1]
            external_port = first[0].port
            await start_agent(nursery, first[0], {"app": port})
            assert (await fetch(external_port, b"GET", b"/")).status == 200
            first[1].cancel()
            for _ in range(2):
                config = server_config(
                    internal={"port": internal_port}, external={"port": external_port}
                )
                running, scope = await start_server_in_scope(nursery, config)
                with trio.fail_after(10):
                    await wait_for_sessions(running, 1)
                assert (await fetch(external_port, b"GET", b"/x")).status == 200
                scope.cancel()
            nursery.cancel_scope.cancel()


async def test_reconnecting_client_id_replaces_its_stale_session() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port_old = await start_upstream(nursery, "old")
            _, port_new = await start_upstream(nursery, "new")
            relay = Relay(running.addresses.internal[1])
            relay_port = await nursery.start(relay.serve)
            await start_agent(
                nursery, via(running, relay_port), {"app": port_old}, client_id="edge-1"
            )
            relay.blackhole()  # the old connection is dead, but nobody knows yet
            await start_agent(nursery, running, {"app": port_new}, client_id="edge-1")
            assert len(running.server.sessions) == 1
            reply = await fetch(running.port, b"GET", b"/")
            assert reply.header(b"x-upstream") == b"new"
            nursery.cancel_scope.cancel()


async def test_the_server_logs_each_agent_connecting_and_disconnecting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line each: who connected (its client_id), from where, with which routes;
    and who left."""
    caplog.set_level(logging.INFO, logger="pvtunnel.server")

    def said_of(client_id: str) -> list[list[str]]:
        """The server's lines naming ``client_id``, as their words (punctuation aside)."""
        lines = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.server"]
        return [re.findall(r"\w(?:[\w.-]*\w)?", line) for line in lines if client_id in line]

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            _, _, scope = await start_agent(
                nursery, running, {"app": port, "api": port}, client_id="edge-7"
            )
            (session,) = running.server.sessions
            assert session.address == "127.0.0.1"
            connected = ["agent", "edge-7", "connected", "from", "127.0.0.1"]
            assert said_of("edge-7") == [[*connected, "with", "routes", "app", "api"]]
            scope.cancel()
            await wait_for_sessions(running, 0)
            assert said_of("edge-7")[1:] == [["agent", "edge-7", "disconnected"]]
            nursery.cancel_scope.cancel()


async def test_a_reconnect_leaves_a_draining_connection_to_finish_its_requests() -> None:
    """A rolling restart: the old agent said GOAWAY and is finishing a request when
    the new one, with the same client_id, registers. Only a connection that is not
    leaving is taken as stale and closed; this one's request still gets its answer,
    and new requests go to the new connection."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "svc")
            old_agent, _, _ = await start_agent(nursery, running, {"app": port}, client_id="edge")
            (old,) = running.server.sessions
            statuses: list[int] = []

            async def held_request() -> None:
                statuses.append((await fetch(running.port, b"GET", b"/hold")).status)

            async with trio.open_nursery() as requests:
                requests.start_soon(held_request)
                await upstream.hold_started.wait()
                nursery.start_soon(old_agent.drain)
                await old.tunnel.going_away.wait()
                await start_agent(nursery, running, {"app": port}, client_id="edge")
                assert old in running.server.sessions
                (new,) = running.server.sessions - {old}
                assert (await fetch(running.port, b"GET", b"/")).status == 200
                assert (new.requests, old.requests) == (1, 1)
                upstream.release.set()
            assert statuses == [200]
            nursery.cancel_scope.cancel()


async def test_client_hanging_up_resets_the_stream_and_the_upstream_connection() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            client = await Client.connect(running.port)
            await client._send(
                h11.Request(method=b"GET", target=b"/watch", headers=[(b"host", b"app")])
            )
            await client._send(h11.EndOfMessage())
            await upstream.hold_started.wait()
            await client.stream.aclose()
            with trio.fail_after(5):
                await upstream.hung_up.wait()
                await running.server.state.idle.wait()
            assert upstream.hangups == 1
            nursery.cancel_scope.cancel()


async def test_client_hanging_up_mid_body_resets_the_stream() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000
            )
            while upstream.connections == 0:
                await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
            with trio.fail_after(5):
                await upstream.hung_up.wait()
                await running.server.state.idle.wait()
            assert upstream.requests == []  # the partial request never completed upstream
            nursery.cancel_scope.cancel()


async def test_many_slow_requests_do_not_block_fast_ones() -> None:
    """1,000 requests held by the upstream; fast requests still go through meanwhile."""
    slow_count = 1000
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            slow_upstream, slow_port = await start_upstream(nursery, "slow")
            _, fast_port = await start_upstream(nursery, "fast")
            await start_agent(nursery, running, {"slow": slow_port, "fast": fast_port})
            statuses: list[int] = []

            async def slow() -> None:
                reply = await fetch(running.port, b"GET", b"/hold", host=b"slow")
                statuses.append(reply.status)

            async with trio.open_nursery() as clients:
                for _ in range(slow_count):
                    clients.start_soon(slow)
                while slow_upstream.holding < slow_count:
                    slow_upstream.hold_started = trio.Event()
                    await slow_upstream.hold_started.wait()
                # All 1,000 are in flight through one agent connection; fast ones still work.
                async with await Client.connect(running.port) as client:
                    for index in range(50):
                        reply = await client.request(b"GET", b"/f/%d" % index, host=b"fast")
                        assert reply.body == b"fast saw GET /f/%d" % index
                assert statuses == []
                slow_upstream.release.set()
            assert statuses == [200] * slow_count
            nursery.cancel_scope.cancel()


async def test_idle_half_sent_connections_do_not_stop_other_clients() -> None:
    config = server_config(timeouts={"request_head_s": 1.0})
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery, config)
            idle = []
            for _ in range(300):
                stream = await trio.open_tcp_stream("127.0.0.1", running.port)
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: ap")
                idle.append(stream)
            for index in range(20):
                reply = await fetch(running.port, b"GET", b"/ok/%d" % index)
                assert reply.status == 200
            # Slowloris: each half-sent head is cut off once request_head_s passes.
            for stream in idle:
                assert await stream.receive_some(1024) == b""
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_drain_finishes_in_flight_requests_and_refuses_new_ones() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            statuses: list[int] = []
            async with await Client.connect(running.port) as kept_alive:
                assert (await kept_alive.request(b"GET", b"/")).status == 200

                async def in_flight() -> None:
                    statuses.append((await fetch(running.port, b"GET", b"/hold")).status)

                async with trio.open_nursery() as work:
                    work.start_soon(in_flight)
                    await upstream.hold_started.wait()
                    drained = trio.Event()

                    async def drain() -> None:
                        await running.server.drain()
                        drained.set()

                    work.start_soon(drain)
                    await trio.testing.wait_all_tasks_blocked()
                    # The idle kept-alive connection is closed (its client opens a
                    # new one, to another server), and new connections are refused.
                    assert await kept_alive.stream.receive_some(1) == b""
                    with pytest.raises(OSError, match=r"[Cc]onnect|refused"):
                        await trio.open_tcp_stream("127.0.0.1", running.port)
                    assert not drained.is_set()
                    upstream.release.set()
                    await drained.wait()
            assert statuses == [200]
            nursery.cancel_scope.cancel()


async def _stop_waits_10_seconds(
    mock_clock: trio.testing.MockClock,
    upstream: RecordingUpstream,
    port: int,
    stop: Callable[[], Awaitable[None]],
) -> None:
    """Stop with two requests in flight through ``port``: one answered 9.9 s in gets
    its answer, and the stop gives up on the other once 10 s have passed."""
    async with trio.open_nursery() as nursery:
        statuses: list[int] = []

        async def answered() -> None:
            statuses.append((await fetch(port, b"GET", b"/hold")).status)

        nursery.start_soon(answered)
        nursery.start_soon(fetch, port, b"GET", b"/never")
        while len(upstream.requests) < 2:
            await trio.testing.wait_all_tasks_blocked()
        stopped = trio.Event()

        async def stopping() -> None:
            await stop()
            stopped.set()

        nursery.start_soon(stopping)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(9.9)
        await trio.testing.wait_all_tasks_blocked()
        assert not stopped.is_set()
        upstream.release.set()
        while not statuses:
            await trio.testing.wait_all_tasks_blocked()
        assert statuses == [200]
        assert not stopped.is_set()  # the other is still in flight
        mock_clock.jump(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert stopped.is_set()
        nursery.cancel_scope.cancel()


async def test_a_server_stop_waits_10_seconds_for_requests_in_flight_by_default(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        running, upstream = await start_tunnel(nursery)  # no grace_s given
        await _stop_waits_10_seconds(mock_clock, upstream, running.port, running.server.drain)
        nursery.cancel_scope.cancel()


async def test_an_agent_stop_waits_10_seconds_for_requests_in_flight_by_default(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery)
        upstream, port = await start_upstream(nursery, "svc")
        agent, _, _ = await start_agent(nursery, running, {"app": port})  # no grace_s given
        await _stop_waits_10_seconds(mock_clock, upstream, running.port, agent.drain)
        nursery.cancel_scope.cancel()


async def test_a_slow_link_delays_but_never_breaks_requests() -> None:
    """Every chunk between agent and server held back 50 ms: slower, still correct."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            relay = Relay(running.addresses.internal[1])
            relay_port = await nursery.start(relay.serve)
            await start_agent(nursery, via(running, relay_port), {"app": port})
            relay.delay_s = 0.05
            body = bytes(range(256)) * 1024  # 256 KiB: several delayed chunks and WINDOWs
            async with trio.open_nursery() as clients:
                for _ in range(4):
                    clients.start_soon(fetch_and_check, running.port, body)
            nursery.cancel_scope.cancel()


async def fetch_and_check(port: int, body: bytes) -> None:
    reply = await fetch(port, b"POST", b"/echo", body=body)
    assert reply.status == 200
    assert reply.body == body


async def test_a_request_pipelined_while_waiting_is_not_taken_for_a_hang_up() -> None:
    """The hang-up check peeks at a waiting client: data there is a next request, not EOF."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            state = running.server.state
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            await stream.send_all(b"GET /hold HTTP/1.1\r\nHost: app\r\n\r\n")
            await upstream.hold_started.wait()
            await stream.send_all(b"GET /next HTTP/1.1\r\nHost: app\r\n\r\n")
            # Rounds of checks see the pipelined bytes; the client stays watched (it
            # may still hang up behind them), and is not taken for gone.
            for _ in range(3):
                await state.hangups_checked.park()
            assert len(state.awaiting) == 1
            upstream.release.set()
            answer = bytearray()
            while answer.count(b"HTTP/1.1 200 ") < 2:
                chunk = await stream.receive_some(65536)
                assert chunk, bytes(answer)
                answer += chunk
            assert [r.target for r in upstream.requests] == [b"/hold", b"/next"]
            assert upstream.hangups == 0
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_clients_closing_while_their_hang_up_is_checked_never_stop_the_server() -> None:
    """The server-wide hang-up watch peeks at a waiting client's socket, and the
    peek yields: the client's own task may answer it and close the socket meanwhile.
    The watch must take that in its stride, not stop the server with it.

    Each client leaves a byte unread behind its request (so the watch peeks and
    then asks the kernel about the socket) and gets its answer at a random moment.
    """
    rounds_s, clients = 3.0, 300
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery)

            async def client() -> None:
                with trio.move_on_after(rounds_s):
                    while True:
                        delay_ms = random.randrange(150, 450)
                        async with await trio.open_tcp_stream("127.0.0.1", running.port) as s:
                            await s.send_all(
                                b"GET /sleep/%d HTTP/1.1\r\nHost: app\r\n"
                                b"Connection: close\r\n\r\n" % delay_ms
                            )
                            # Once the server has read the head (everything waits
                            # again): this byte stays on the socket for the watch.
                            await trio.testing.wait_all_tasks_blocked()
                            # Closing with the byte unread, the server resets the
                            # connection: the client may see that instead of the end.
                            with contextlib.suppress(trio.BrokenResourceError):
                                await s.send_all(b"X")
                                while await s.receive_some(65536):
                                    pass

            async with trio.open_nursery() as load:
                for _ in range(clients):
                    load.start_soon(client)
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            nursery.cancel_scope.cancel()


async def test_a_closed_agent_connection_leaves_the_router_at_once() -> None:
    """The moment a connection closes (a heartbeat timeout, a broken read), the
    router stops offering it: a request admitted in the same scheduler pass goes to
    a sibling agent, not to a connection that can only answer 502."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": port}, client_id="edge-1")
            (first,) = running.server.sessions
            await start_agent(nursery, running, {"app": port}, client_id="edge-2")
            (second,) = running.server.sessions - {first}
            router = running.server.state.router
            assert set(router.names()["app"]) == {first, second}
            first.tunnel._close_all(TunnelClosedError("the peer stopped answering heartbeats"))
            # No checkpoint since: nothing else has run.
            assert router.lookup("app") == ("app", second)
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            nursery.cancel_scope.cancel()
