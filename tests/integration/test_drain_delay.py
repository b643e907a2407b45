"""A drain with ``drain_delay_s``: readiness goes first, the listeners close after the delay.

Time is a `MockClock` that moves only when the test jumps it, so "requests are
still served during the delay" is checked without racing a real timer.
"""

from __future__ import annotations

import trio
import trio.testing

from pvtunnel._trio.server import ServerAdmin
from tests.integration.client import Client, fetch
from tests.integration.harness import Running, server_config, start_drain, start_tunnel


def draining(running: Running) -> bool:
    return running.server.state.draining


async def test_ready_goes_false_first_and_requests_are_served_until_the_delay_ends(
    mock_clock: trio.testing.MockClock,
) -> None:
    config = server_config(timeouts={"drain_delay_s": 5.0})
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery, config)
        admin = ServerAdmin(running.server)
        assert admin.is_ready()
        drained = start_drain(nursery, running)
        await trio.testing.wait_all_tasks_blocked()
        assert not admin.is_ready()
        assert not draining(running)
        during = await fetch(running.port, b"GET", b"/during-the-delay")
        assert during.status == 200
        # It ends its connection, so a pool's kept-alive one comes back on a new
        # connection (to another server) instead of meeting a 503 after the delay.
        assert during.header(b"connection") == b"close"
        mock_clock.jump(5.0)
        await drained.wait()  # nothing in flight: done once the delay is over
        assert draining(running)
        assert not admin.is_ready()
        nursery.cancel_scope.cancel()


async def test_without_a_delay_the_drain_starts_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery, server_config())
        await running.server.drain()
        assert running.server.state.draining
        assert not running.server.state.withdrawn
        nursery.cancel_scope.cancel()


async def test_idle_kept_alive_connections_are_closed_when_the_drain_starts(
    mock_clock: trio.testing.MockClock,
) -> None:
    # Left open, their next request met a 503 "shutting down" (or, on its way in as
    # the listeners closed, was cut): closed now, the client opens a new connection.
    config = server_config(timeouts={"drain_delay_s": 5.0})
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery, config)
        async with await Client.connect(running.port) as idle:
            assert (await idle.request(b"GET", b"/before")).status == 200
            busy = await trio.open_tcp_stream("127.0.0.1", running.port)
            await busy.send_all(b"GET /half HTTP/1.1\r\n")  # a head on its way: kept
            await trio.testing.wait_all_tasks_blocked()
            start_drain(nursery, running)
            await trio.testing.wait_all_tasks_blocked()
            # Its handler ended, the kept one's did not; the client reads the close.
            assert running.server.state.client_connections == 1
            assert await idle.stream.receive_some(1) == b""
            await busy.send_all(b"Host: app\r\n\r\n")
            answer = await busy.receive_some(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b"connection: close" in answer.lower()
            await busy.aclose()
        nursery.cancel_scope.cancel()
