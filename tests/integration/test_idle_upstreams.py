"""Idle pooled upstream connections are closed as they come due, not at the next request.

A route may see no request for hours: its pooled connections would keep the
upstream's slots past `upstream_idle_s`, and those the upstream closed would stay
open sockets here. Time is a `MockClock` the test moves.
"""

from __future__ import annotations

from typing import Final

import trio
import trio.testing

from pvtunnel._config import AgentTimeouts
from pvtunnel._trio.upstream import REAP_EVERY_S
from tests.integration.client import fetch
from tests.integration.harness import start_agent, start_server
from tests.integration.raw_upstream import start_raw_upstream

OK: Final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_connection_idle_past_upstream_idle_s_is_closed(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery)
        upstream, port = await start_raw_upstream(nursery, OK)
        timeouts = AgentTimeouts(upstream_idle_s=3.0)
        agent, _, _ = await start_agent(nursery, running, {"app": port}, timeouts=timeouts)
        assert (await fetch(running.port, b"GET", b"/")).body == b"ok"
        await trio.testing.wait_all_tasks_blocked()
        assert agent.pool.idle_count("app") == 1
        mock_clock.jump(2.0)
        await trio.testing.wait_all_tasks_blocked()
        assert (agent.pool.idle_count("app"), upstream.ended) == (1, 0)  # not yet
        mock_clock.jump(2.0)
        await trio.testing.wait_all_tasks_blocked()
        assert (agent.pool.idle_count("app"), upstream.ended) == (0, 1)
        nursery.cancel_scope.cancel()


async def test_a_connection_its_upstream_closed_is_closed_here_too(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery)
        upstream, port = await start_raw_upstream(nursery, OK, hang_up=True)
        agent, _, _ = await start_agent(nursery, running, {"app": port})
        assert (await fetch(running.port, b"GET", b"/")).body == b"ok"
        await trio.testing.wait_all_tasks_blocked()
        (pooled,) = agent.pool.idle_connections("app")
        upstream.send_late.set()  # the upstream closes its end of the idle connection
        await upstream.late_sent.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert agent.pool.idle_count("app") == 1  # nobody has looked yet
        mock_clock.jump(REAP_EVERY_S)
        await trio.testing.wait_all_tasks_blocked()
        assert agent.pool.idle_count("app") == 0
        assert pooled.stream.socket.fileno() == -1  # closed, not left in CLOSE_WAIT
        nursery.cancel_scope.cancel()
