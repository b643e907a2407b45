"""The agent's upstream connections: idle ones are closed as they come due, not at
the next request, and a connection that cannot be made says why.

A route may see no request for hours: its pooled connections would keep the
upstream's slots past `upstream_idle_s`, and those the upstream closed would stay
open sockets here. Time is a `MockClock` the test moves.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Final

import pytest
import trio
import trio.testing

from pvtunnel._config import AgentConfig, AgentTimeouts, Route, RouteType
from pvtunnel._errors import UpstreamError
from pvtunnel._metrics import AgentMetrics
from pvtunnel._trio.upstream import REAP_EVERY_S, UpstreamPool
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


async def test_a_failed_connect_says_why_as_the_system_put_it() -> None:
    """trio's own message ("all attempts ... failed") names no reason: the log
    line and the reset carry the system's (ECONNREFUSED here), as nginx's do."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        port = closed.getsockname()[1]
        route = Route(name="app", value="127.0.0.1", port=port, type=RouteType.IP)
        pool = UpstreamPool(AgentConfig(client_id="a", routes=(route,)))
        with pytest.raises(UpstreamError) as caught:
            await pool.connect(route)
    refused = f"{errno.ECONNREFUSED}: {os.strerror(errno.ECONNREFUSED)}"
    assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: {refused}"


@pytest.mark.parametrize(("idle_s", "every_s"), [(60.0, 5.0), (3.0, 3.0), (1e-6, 0.5)])
def test_the_reaper_looks_every_few_seconds_never_in_a_spin(idle_s: float, every_s: float) -> None:
    config = AgentConfig(client_id="a", timeouts=AgentTimeouts(upstream_idle_s=idle_s))
    assert UpstreamPool(config).reap_every_s == every_s


async def test_running_out_of_descriptors_is_the_agents_not_the_upstreams(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EMFILE is this process's limit: not counted as the route's connect error, and
    the line says what to do. (trio reports it as it reports a refusal: the cause
    of its own "all attempts ... failed".)"""

    async def out_of_files(host: str, port: int) -> trio.SocketStream:
        emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        failed = ExceptionGroup("all attempts failed", [emfile])
        raise OSError(f"all attempts to connect to {host}:{port} failed") from failed

    monkeypatch.setattr(trio, "open_tcp_stream", out_of_files)
    route = Route(name="app", value="127.0.0.1", port=9, type=RouteType.IP)
    metrics = AgentMetrics()
    pool = UpstreamPool(AgentConfig(client_id="a", routes=(route,)), metrics)
    with pytest.raises(UpstreamError, match=f"{errno.EMFILE}: Too many open files") as caught:
        await pool.connect(route)
    assert "out of file descriptors: raise its limit" in str(caught.value)
    assert metrics.upstream_connect_errors == {}
