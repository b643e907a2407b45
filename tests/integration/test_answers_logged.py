"""Every request the server answers or cuts is logged once and counted once.

Also those it answers before their head could be read (h11 refused it, or it did
not come in time), those cut by the end of the shutdown grace period, and a
protocol switch whose client left before the answer. Where time matters it is a
`MockClock` the test moves.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import TYPE_CHECKING, Any, Final

import trio
import trio.testing

from pvtunnel._metrics import NO_ROUTE
from tests.integration.client import raw_exchange
from tests.integration.harness import (
    server_config,
    start_agent,
    start_drain,
    start_server,
    start_server_in_scope,
    start_upstream,
)
from tests.integration.raw_upstream import start_raw_upstream

if TYPE_CHECKING:
    import pytest

    from tests.integration.harness import Running

LIMIT_S: Final = 10


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(r) for r in caplog.records if r.name == "pvtunnel.access"]


def answered(running: Running, route: str, status_class: int) -> int:
    figures = running.server.state.metrics.routes.get(route)
    return 0 if figures is None else figures.status_classes[status_class]


async def test_heads_h11_refuses_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    config = server_config(limits={"max_request_head_bytes": 1024})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            no_host = await raw_exchange(running.port, b"GET / HTTP/1.1\r\n\r\n")
            assert no_host.startswith(b"HTTP/1.1 400 "), no_host
            # Past the limit in pieces: h11 refuses it before it is whole.
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: ")
                await trio.testing.wait_all_tasks_blocked()
                await stream.send_all(b"a" * 2000)
                too_big = await stream.receive_some(65536)
            assert too_big.startswith(b"HTTP/1.1 431 "), too_big
            assert too_big.endswith(b"request head too large\n")
            lines = access_lines(caplog)
            assert [(line["status"], line["method"], line["target"]) for line in lines] == [
                (400, "-", "-"),
                (431, "-", "-"),
            ]
            assert answered(running, NO_ROUTE, 4) == 2
            assert running.server.state.metrics.client_protocol_errors == 2
            nursery.cancel_scope.cancel()


async def test_a_head_that_does_not_come_in_time_is_logged_408(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, server_config(timeouts={"request_head_s": 5.0}))
        idle = await trio.open_tcp_stream("127.0.0.1", running.port)
        slow = await trio.open_tcp_stream("127.0.0.1", running.port)
        await slow.send_all(b"GET / HTTP/1.1\r\nHost: ap")
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(6.0)
        assert await slow.receive_some(65536) == b""  # closed without an answer
        assert await idle.receive_some(65536) == b""
        await trio.testing.wait_all_tasks_blocked()
        # The connection that sent nothing is no request; the one cut mid-head is.
        assert [line["status"] for line in access_lines(caplog)] == [408]
        for stream in (idle, slow):
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_malformed_request_body_counts_as_a_protocol_error() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": port})
            answer = await raw_exchange(
                running.port,
                b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"zz\r\nnot a chunk\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert running.server.state.metrics.client_protocol_errors == 1
            nursery.cancel_scope.cancel()


async def test_requests_cut_by_the_end_of_the_grace_period_are_logged(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One waits for its response head (its client is told 503), one is being
    written to a client that reads nothing (its status, and what went out)."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    async with trio.open_nursery() as nursery:
        running, server_scope = await start_server_in_scope(
            nursery, server_config(timeouts={"grace_s": 3.0})
        )
        upstream, port = await start_upstream(nursery, "svc")
        await start_agent(nursery, running, {"app": port})
        waiting = await trio.open_tcp_stream("127.0.0.1", running.port)
        await waiting.send_all(b"GET /hold HTTP/1.1\r\nHost: app\r\n\r\n")
        reading = socket.socket()
        reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reading.connect(("127.0.0.1", running.port))
        reading.sendall(b"GET /bytes/8000000 HTTP/1.1\r\nHost: app\r\n\r\n")
        await upstream.hold_started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert access_lines(caplog) == []
        drained = start_drain(nursery, running)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(3.0)
        await drained.wait()
        server_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        lines = {line["target"]: line for line in access_lines(caplog)}
        told = await waiting.receive_some(65536)
        assert told.startswith(b"HTTP/1.1 503 "), told  # what its line says it got
        assert b"\r\nconnection: close\r\n" in told.lower()
        assert lines["/hold"]["status"] == 503
        assert lines["/bytes/8000000"]["status"] == 200
        assert 0 < lines["/bytes/8000000"]["bytes_out"] < 8000000
        assert len(access_lines(caplog)) == 2
        await waiting.aclose()
        reading.close()
        nursery.cancel_scope.cancel()


async def test_during_a_drain_answers_close_their_connection() -> None:
    """A client told `Connection: close` retries on a new connection (another server
    behind the load balancer); kept alive, its next request would only get a 503."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": port})
            in_flight = await trio.open_tcp_stream("127.0.0.1", running.port)
            await in_flight.send_all(b"GET /hold HTTP/1.1\r\nHost: app\r\n\r\n")
            kept = await trio.open_tcp_stream("127.0.0.1", running.port)
            await upstream.hold_started.wait()
            nursery.start_soon(running.server.drain)
            await trio.testing.wait_all_tasks_blocked()
            assert running.server.state.draining
            await kept.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            upstream.release.set()
            for stream, status in ((in_flight, b"200"), (kept, b"503")):
                received = b""
                while chunk := await stream.receive_some(65536):
                    received += chunk
                head = received.partition(b"\r\n\r\n")[0].lower()
                assert head.startswith(b"http/1.1 " + status), received
                assert b"\r\nconnection: close" in head, received
                await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_switch_whose_client_left_before_the_101_is_logged_499(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_raw_upstream(nursery, switched)
            upstream.hold = trio.Event()
            await start_agent(nursery, running, {"app": port})
            client = socket.socket()
            client.connect(("127.0.0.1", running.port))
            client.sendall(
                b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"
            )
            while not upstream.heads:
                await trio.testing.wait_all_tasks_blocked()
            # Gone with a reset, so the server's write of the 101 fails.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            upstream.hold.set()
            while not access_lines(caplog):
                await trio.testing.wait_all_tasks_blocked()
            (line,) = access_lines(caplog)
            assert (line["target"], line["status"]) == ("/ws", 499)
            nursery.cancel_scope.cancel()
