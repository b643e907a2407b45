"""Clients that stop reading their response: cut after a while, so they cannot hold an agent.

A client that takes nothing keeps its stream's window of response bytes held in
the server; a few of them hold the agent connection's whole window, which every
other stream of that agent needs. Time is a `MockClock` the test moves, so "not
yet" and "now" are checked without racing a timer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Final

import h11
import trio
import trio.testing

from pvtunnel._trio.front import ClientConnection
from pvtunnel._trio.hangups import HANGUP_CHECK_S
from pvtunnel._trio.pipe import STALL_CHECK_S, STALLED_WHEN_SHORT_S as PIPE_STALLED_S
from pvtunnel._trio.relay import STALLED_WHEN_SHORT_S
from tests.integration.client import fetch
from tests.integration.echo import open_connect
from tests.integration.harness import (
    server_config,
    start_agent,
    start_server,
    start_tunnel,
    start_upstream,
)
from tests.integration.listen import serve_on_loopback

if TYPE_CHECKING:
    import pytest

    from pvtunnel._config import ServerConfig
    from pvtunnel._wire.mux import Multiplexer
    from tests.integration.harness import Running

STREAM_WINDOW: Final = 65536
CONNECTION_WINDOW: Final = 4 * STREAM_WINDOW
BIG: Final = b"/bytes/8000000"


def stalled_client(
    port: int, request: bytes = b"GET " + BIG + b" HTTP/1.1\r\nHost: app\r\n\r\n"
) -> socket.socket:
    """A client that asks for a big answer and reads nothing (a small receive buffer).

    A plain socket: the handshake and the short request complete in the kernel
    without waiting for the server, and later reads must not wait either.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    sock.setblocking(False)
    return sock


async def was_cut(sock: socket.socket) -> bool:
    """Read what is there until the server's close (True) or until nothing moves.

    Reading is progress for the server's write: only ask once the cut is due.
    """
    while True:
        await trio.testing.wait_all_tasks_blocked()
        moved = False
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            moved = True
        if not moved:
            return False


async def cut_once_due(
    mock_clock: trio.testing.MockClock,
    client: ClientConnection,
    sock: socket.socket,
    mux: Multiplexer,
) -> None:
    """Move past the limit (two checks of the watch): the client is cut, its window back."""
    mock_clock.jump(2 * HANGUP_CHECK_S)
    await trio.testing.wait_all_tasks_blocked()
    assert client.stopped_reading
    assert await was_cut(sock)
    await trio.testing.wait_all_tasks_blocked()
    assert mux.held_bytes == 0


def roomy_config() -> ServerConfig:
    """`idle_s` 30 s, and a connection window that one stalled stream cannot make short."""
    return server_config(
        timeouts={"idle_s": 30.0},
        limits={
            "stream_window_bytes": STREAM_WINDOW,
            "connection_window_bytes": 16 * STREAM_WINDOW,
        },
    )


def agent_link(running: Running) -> Multiplexer:
    (session,) = running.server.sessions
    return session.tunnel.mux


async def test_clients_that_stop_reading_are_cut_once_the_agent_runs_short(
    mock_clock: trio.testing.MockClock,
) -> None:
    config = server_config(
        limits={"stream_window_bytes": STREAM_WINDOW, "connection_window_bytes": CONNECTION_WINDOW}
    )
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery, config)
        stalled = [stalled_client(running.port) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        mux = agent_link(running)
        assert mux.held_bytes * 2 >= mux.connection_window  # the agent is short
        awaiting = running.server.state.awaiting
        clients = [client for client in awaiting if isinstance(client, ClientConnection)]
        assert len(clients) == 3
        ports = {}
        for client in clients:
            assert isinstance(client.stream, trio.SocketStream)
            ports[client.stream.socket.getpeername()[1]] = client
        mock_clock.jump(HANGUP_CHECK_S)  # the watch sees the writes that do not end
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(STALLED_WHEN_SHORT_S - 2 * HANGUP_CHECK_S)
        await trio.testing.wait_all_tasks_blocked()
        assert len(awaiting) == 3  # not yet (reading would be progress)
        mock_clock.jump(2 * HANGUP_CHECK_S)
        await trio.testing.wait_all_tasks_blocked()
        # As many are cut as it takes to end the shortage; the last keeps its `idle_s`.
        assert len(awaiting) == 1
        assert mux.held_bytes * 2 < mux.connection_window
        for sock in stalled:
            client = ports[sock.getsockname()[1]]
            if client not in awaiting:
                assert client.stopped_reading
                assert await was_cut(sock)
        # Another client of the same agent gets its whole answer.
        reply = await fetch(running.port, b"GET", b"/bytes/300000")
        assert reply.status == 200
        assert len(reply.body) == 300000
        for sock in stalled:
            sock.close()
        nursery.cancel_scope.cancel()


async def test_without_a_shortage_a_client_that_stops_reading_has_idle_s(
    mock_clock: trio.testing.MockClock,
) -> None:
    """One stalled client among a connection window big enough for it: it keeps its
    stream until `idle_s` has passed without a write ending, and loses it then."""
    config = roomy_config()
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery, config)
        sock = stalled_client(running.port)
        await trio.testing.wait_all_tasks_blocked()
        mux = agent_link(running)
        assert 0 < mux.held_bytes * 2 < mux.connection_window
        (client,) = running.server.state.awaiting
        assert isinstance(client, ClientConnection)
        mock_clock.jump(HANGUP_CHECK_S)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(STALLED_WHEN_SHORT_S + 1)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(30.0 - STALLED_WHEN_SHORT_S - 1 - 2 * HANGUP_CHECK_S)
        await trio.testing.wait_all_tasks_blocked()
        assert len(running.server.state.awaiting) == 1  # not yet (reading would be progress)
        assert mux.held_bytes > 0
        await cut_once_due(mock_clock, client, sock, mux)
        sock.close()
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_reading_its_pipe_is_cut_after_idle_s(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A CONNECT (or WebSocket) client that takes nothing of a stream of bytes holds
    its stream's window in the server as a response's reader does: it is cut the
    same way, and the pipe logged with what went out."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")

    async def firehose(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await stream.send_all(b"x" * 65536)

    config = roomy_config()
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, config)
        port = await nursery.start(serve_on_loopback, firehose)
        await start_agent(nursery, running, {"db": port})
        sock = stalled_client(running.port, b"CONNECT db:1 HTTP/1.1\r\nHost: db:1\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        mux = agent_link(running)
        assert mux.held_bytes > 0  # the pipe's window, held for a client that reads nothing
        (client,) = running.server.state.awaiting
        assert isinstance(client, ClientConnection)
        mock_clock.jump(HANGUP_CHECK_S)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(30.0 - 2 * HANGUP_CHECK_S)
        await trio.testing.wait_all_tasks_blocked()
        assert client in running.server.state.awaiting  # not yet: still watched
        await cut_once_due(mock_clock, client, sock, mux)
        assert running.server.state.awaiting == {}
        (line,) = [vars(r) for r in caplog.records if r.name == "pvtunnel.access"]
        assert (line["method"], line["status"]) == ("CONNECT", 200)
        assert line["bytes_out"] > 0
        sock.close()
        nursery.cancel_scope.cancel()


async def test_pipes_into_an_upstream_that_reads_nothing_are_cut_once_the_agent_runs_short(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's side of a pipe holds its stream's window while its upstream takes
    nothing; a few such pipes held the window every request body of that agent
    needs, on every route (an unrelated upload got 504), and for good."""
    caplog.set_level(logging.INFO, logger="pvtunnel.agent")
    sinks: list[trio.SocketStream] = []

    async def sink(stream: trio.SocketStream) -> None:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sinks.append(stream)  # kept open, never read
        await trio.sleep_forever()

    async def push(stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await stream.send_all(b"u" * 65536)

    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, server_config())
        sink_port = await nursery.start(serve_on_loopback, sink)
        upstream, echo_port = await start_upstream(nursery, "svc")
        agent, _, _ = await start_agent(
            nursery,
            running,
            {"db": sink_port, "app": echo_port},
            stream_window_bytes=STREAM_WINDOW,
            connection_window_bytes=CONNECTION_WINDOW,
        )
        (link,) = agent.links
        assert link.tunnel is not None
        clients = []
        for _ in range(3):
            client, head = await open_connect(running, b"db:1")
            assert head.startswith(b"HTTP/1.1 200 ")
            nursery.start_soon(push, client)
            clients.append(client)
        await trio.testing.wait_all_tasks_blocked()
        assert link.tunnel.in_flight == 3
        assert link.tunnel.mux.held_bytes * 2 >= link.tunnel.mux.connection_window  # short
        for _ in range(int(PIPE_STALLED_S / STALL_CHECK_S) + 2):
            mock_clock.jump(STALL_CHECK_S)
            await trio.testing.wait_all_tasks_blocked()
        # Cut while the connection is short: as many as it takes to make it not short.
        cut = len(
            [r for r in caplog.records if r.name == "pvtunnel.agent" and "pipe cut" in r.message]
        )
        assert link.tunnel.in_flight == 3 - cut < 3
        assert link.tunnel.mux.held_bytes * 2 < link.tunnel.mux.connection_window
        # The window is the connection's again: an upload to another route goes through.
        mock_clock.autojump_threshold = 0
        body = b"b" * (2 * STREAM_WINDOW)
        reply = await fetch(running.port, b"POST", b"/upload", body=body)
        assert reply.status == 200
        assert upstream.requests[-1].body == body
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_body_that_ends_at_the_close_cut_in_its_last_write_is_reset(
    mock_clock: trio.testing.MockClock,
) -> None:
    """To an HTTP/1.0 client a body without a length ends at the close. Cut while its
    last write is under way (the client stopped reading), the response is not
    whole although h11 took its end when it was queued: the connection is reset,
    never closed in order, which would pass the truncated body for a whole one."""
    release = trio.Event()
    body = b"b" * 60000

    async def upstream(stream: trio.SocketStream) -> None:
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
        await release.wait()
        # Chunked, head to last chunk in one send: the agent reads it whole, so the
        # body and its end reach the server together and leave in one write.
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (len(body), body)
        )

    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, roomy_config())
        port = await nursery.start(serve_on_loopback, upstream)
        await start_agent(nursery, running, {"app": port})
        sock = stalled_client(running.port, b"GET /page HTTP/1.0\r\nHost: app\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        (client,) = running.server.state.awaiting
        assert isinstance(client, ClientConnection)
        # The write must wait: the client reads nothing, and little fits on the way.
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[attr-defined]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert client.writing
        assert client.conn.our_state is h11.MUST_CLOSE  # the end was queued with the body
        # idle_s (30 s) without a write ending, seen by the watch's checks.
        for _ in range(int(30.0 / HANGUP_CHECK_S) + 3):
            mock_clock.jump(HANGUP_CHECK_S)
            await trio.testing.wait_all_tasks_blocked()
        assert client.stopped_reading
        received = b""
        reset = ended = False
        for _ in range(100):  # time moves on too: a close in stages would end too
            await trio.testing.wait_all_tasks_blocked()
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                mock_clock.jump(1.0)
                continue
            except ConnectionResetError:
                reset = True
                break
            if not chunk:
                ended = True
                break
            received += chunk
        assert reset, (ended, len(received))
        assert len(received.partition(b"\r\n\r\n")[2]) < len(body)
        sock.close()
        nursery.cancel_scope.cancel()


async def test_a_whole_answer_is_closed_in_order_though_the_client_sent_more() -> None:
    """Bytes the client sent that the server never reads (here a stray empty line
    after an HTTP/1.0 request) turn a plain close into a reset, and a reset drops
    what the client has not read yet: the end of a whole answer. The server closes
    such a connection in stages (lingering), so the answer arrives whole and ends
    with the orderly close its framing needs."""
    size = 8_000_000  # more than the kernel buffers between the two: the write waits
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery)
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await sock.connect(("127.0.0.1", running.port))
            stream = trio.SocketStream(sock)
            await stream.send_all(b"GET /bytes/%d HTTP/1.0\r\nHost: app\r\n\r\n" % size)
            while not running.server.state.awaiting:  # the head is read; nothing more is
                await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(b"\r\n")
            received = bytearray()
            reset = False
            try:
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                reset = True
            await stream.aclose()
            assert not reset
            head, _, body = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert len(body) == size
            nursery.cancel_scope.cancel()
