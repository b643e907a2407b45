"""The tunnel's own WebSocket (`pvtunnel._trio.websocket`): wsproto driven directly.

It replaced trio-websocket on the tunnel's path, so what that library used to
guarantee has to hold here too: the upgrade handshake (accepted, rejected with a
status and body, refused when it is no upgrade or too large), binary payload intact
in both directions, pings answered, and a close that tells the peer why and never
waits longer than its grace period. trio-websocket stays in the tests as an
independent implementation on the other end, so the two sides of a test cannot share
one misreading of RFC 6455. Streams are in memory (or a socket pair where
trio-websocket wants a socket); waiting is done through Trio, never by sleeping, and
the 2 s close grace runs on an autojumping `MockClock`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto.frame_protocol as fp

from pvtunnel._errors import RemoteProtocolError
from pvtunnel._trio.websocket import (
    CLOSE_GRACE_S,
    MAX_HANDSHAKE_BYTES,
    MAX_MESSAGE_BYTES,
    ConnectionRejected,
    UpgradeRequest,
    WebSocket,
    WebSocketClosed,
    connect,
    read_upgrade,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

LIMIT_S = 10
MiB = 1024 * 1024


async def open_pair(
    resource: str = "/tunnel",
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    sockets: bool = False,
) -> tuple[WebSocket, WebSocket, UpgradeRequest]:
    """(client, server, the upgrade the server read) over a fresh memory stream pair.

    With ``sockets``, over a connected socket pair instead (the `FastSocket` path).
    """
    client_end: trio.abc.Stream
    server_end: trio.abc.Stream
    if sockets:
        a, b = trio.socket.socketpair()
        client_end, server_end = trio.SocketStream(a), trio.SocketStream(b)
    else:
        client_end, server_end = trio.testing.memory_stream_pair()
    seen: list[tuple[WebSocket, UpgradeRequest]] = []

    async def serve() -> None:
        request = await read_upgrade(server_end)
        assert request is not None
        seen.append((await request.accept("agent"), request))

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            client = await connect(client_end, "server.example", resource, list(headers))
    ((server, request),) = seen
    return client, server, request


async def receive_exactly(ws: WebSocket, size: int) -> bytes:
    """Exactly ``size`` payload bytes, however the WebSocket splits them."""
    data = bytearray()
    with trio.fail_after(LIMIT_S):
        while len(data) < size:
            chunk = await ws.receive_some()
            assert chunk, f"closed after {len(data)} of {size} bytes"
            data += chunk
    return bytes(data)


async def open_against_trio_websocket(
    nursery: trio.Nursery,
) -> tuple[WebSocket, trio_websocket.WebSocketConnection]:
    """Our client, and trio-websocket accepting it as the server (its reader in ``nursery``)."""
    client_end, server_end = trio.testing.memory_stream_pair()
    peers: list[trio_websocket.WebSocketConnection] = []

    async def serve() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_end)
        peers.append(await request.accept())

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as handshake:
            handshake.start_soon(serve)
            client = await connect(client_end, "server", "/", [])
    (theirs,) = peers
    return client, theirs


def start_reading(nursery: trio.Nursery, ws: WebSocket) -> list[bytes]:
    """Start a task that takes one `receive_some` of ``ws``; its result lands in the list."""
    received: list[bytes] = []

    async def read() -> None:
        received.append(await ws.receive_some())

    nursery.start_soon(read)
    return received


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    with trio.fail_after(LIMIT_S):
        while chunk := await stream.receive_some():
            data += chunk
    return bytes(data)


def status_of(answer: bytes) -> int:
    """The status code of a raw HTTP/1.1 answer."""
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


# --- the handshake ---------------------------------------------------------------


async def test_the_server_sees_the_path_and_the_extra_headers() -> None:
    client, server, request = await open_pair(
        "/agents/connect?v=1", [(b"Authorization", b"Bearer s3cret"), (b"X-Agent", b"a1")]
    )
    assert request.path == "/agents/connect?v=1"
    # Names come lower-cased whatever the client wrote; values stay as sent.
    assert (b"authorization", b"Bearer s3cret") in request.headers
    assert (b"x-agent", b"a1") in request.headers
    assert server.remote == "agent"
    assert client.closed is None
    assert server.closed is None


async def test_messages_go_both_ways_and_may_be_read_across_boundaries() -> None:
    client, server, _ = await open_pair()
    await client.send(b"hello, ")
    await client.send(b"server")
    assert await receive_exactly(server, 13) == b"hello, server"
    await server.send(b"hello, agent")
    assert await receive_exactly(client, 12) == b"hello, agent"


async def test_a_message_sent_right_after_the_accept_is_not_lost() -> None:
    # The 101 and the first frame reach the client in one read: the frame must
    # survive the handshake's parser. The server-to-client direction is pumped by hand.
    to_server, from_client = trio.testing.memory_stream_one_way_pair()
    to_client = trio.testing.MemorySendStream()
    from_server = trio.testing.MemoryReceiveStream()
    client_end = trio.StapledStream(to_server, from_server)
    server_end = trio.StapledStream(to_client, from_client)
    clients: list[WebSocket] = []

    async def run_client() -> None:
        clients.append(await connect(client_end, "server", "/", []))

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_client)
            request = await read_upgrade(server_end)
            assert request is not None
            server = await request.accept()
            await server.send(b"welcome")
            assert trio.testing.memory_stream_pump(to_client, from_server)
    (client,) = clients
    assert await receive_exactly(client, 7) == b"welcome"
    await server.send(b" back")
    trio.testing.memory_stream_pump(to_client, from_server)
    assert await receive_exactly(client, 5) == b" back"


async def test_a_large_message_arrives_intact() -> None:
    client, server, _ = await open_pair()
    payload = os.urandom(MiB)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, payload)
        assert await receive_exactly(server, MiB) == payload
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send, payload[::-1])
        assert await receive_exactly(client, MiB) == payload[::-1]


async def test_a_message_over_the_limit_is_refused_with_1009() -> None:
    """A frame is buffered whole before it is parsed: the limit bounds that memory."""
    client, server, _ = await open_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, b"x" * (MAX_MESSAGE_BYTES + 1))
        with trio.fail_after(LIMIT_S), pytest.raises(RemoteProtocolError):
            await receive_exactly(server, 1)
    assert await client.receive_some() == b""
    assert client.closed is not None
    assert client.closed.code == 1009


@pytest.mark.parametrize(
    ("status", "body"),
    [(401, b"unknown agent token"), (503, b"the server is shutting down")],
)
async def test_a_rejected_upgrade_gives_the_client_the_status_and_body(
    status: int, body: bytes
) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()

    async def serve() -> None:
        request = await read_upgrade(server_end)
        assert request is not None
        await request.reject(status, body)

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(ConnectionRejected) as caught:
                await connect(client_end, "server", "/", [])
    assert caught.value.status_code == status
    assert caught.value.body == body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", range(400, 500), id="plain-get"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            [400, 426],  # RFC 6455 section 4.4: "an appropriate HTTP error code"
            id="old-websocket-version",
        ),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", [400], id="not-http"),
    ],
)
async def test_a_request_that_is_no_usable_upgrade_is_answered_and_closed(
    raw: bytes, expected: Sequence[int]
) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(raw)
    with trio.fail_after(LIMIT_S):
        assert await read_upgrade(server_end) is None
    answer = await read_to_eof(client_end)  # EOF: the server closed the connection
    assert status_of(answer) in expected


async def test_an_accept_after_the_client_left_raises_websocket_closed() -> None:
    """An agent that sends its upgrade and leaves: the server's 101 cannot go out.
    That is the connection closing, not an error for the server's listener."""
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(LIMIT_S):
        request = await read_upgrade(server_end)
        assert request is not None
        await client_end.aclose()
        with pytest.raises(WebSocketClosed):
            await request.accept()
    with pytest.raises(trio.ClosedResourceError):  # and the stream is closed
        await server_end.send_all(b"x")


@pytest.mark.parametrize("partial", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["empty", "half"])
async def test_a_connection_closed_before_the_whole_upgrade_gives_none(partial: bytes) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(partial)
    await client_end.send_stream.aclose()
    with trio.fail_after(LIMIT_S):
        assert await read_upgrade(server_end) is None


@pytest.mark.parametrize("finished", [False, True], ids=["unfinished", "finished"])
async def test_an_oversized_upgrade_is_refused(finished: bool) -> None:
    head = bytearray(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    index = 0
    while len(head) <= MAX_HANDSHAKE_BYTES + 4096:
        head += b"X-Filler-%d: %s\r\n" % (index, b"f" * 100)
        index += 1
    if finished:
        head += b"\r\n"
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(bytes(head))
    with trio.fail_after(LIMIT_S):
        assert await read_upgrade(server_end) is None
    assert status_of(await read_to_eof(client_end)) in (400, 431)


async def test_an_upgrade_trickling_in_past_the_limit_is_refused() -> None:
    # Small complete header lines, one read each: no single read looks suspicious.
    client_end, server_end = trio.testing.memory_stream_pair()
    refused = trio.Event()
    result: list[UpgradeRequest | None] = []

    async def serve() -> None:
        result.append(await read_upgrade(server_end))
        refused.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_end.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        with trio.fail_after(LIMIT_S):
            while not refused.is_set():
                assert sent <= 2 * MAX_HANDSHAKE_BYTES, "still reading the upgrade"
                line = b"X-Filler-%d: %s\r\n" % (sent, b"f" * 200)
                try:
                    await client_end.send_all(line)
                except trio.BrokenResourceError:
                    break  # the server hung up
                sent += len(line)
                await trio.testing.wait_all_tasks_blocked()
    assert result == [None]
    assert status_of(await read_to_eof(client_end)) in (400, 431)


# --- interoperability with trio-websocket -------------------------------------------


async def test_trio_websocket_as_the_client() -> None:
    a, b = trio.socket.socketpair()
    their_end, our_end = trio.SocketStream(a), trio.SocketStream(b)
    ours: list[WebSocket] = []
    async with their_end, our_end, trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await read_upgrade(our_end)
            assert request is not None
            assert request.path == "/agent"
            assert (b"authorization", b"Bearer t") in request.headers
            ours.append(await request.accept())

        nursery.start_soon(serve)
        with trio.fail_after(LIMIT_S):
            theirs = await trio_websocket.wrap_client_stream(
                nursery,
                their_end,
                "server",
                "/agent",
                extra_headers=[(b"Authorization", b"Bearer t")],
            )
            await trio.testing.wait_all_tasks_blocked()
            (server,) = ours
            payload = os.urandom(200_000)
            await theirs.send_message(payload)
            await theirs.send_message(b"!")
            assert await receive_exactly(server, len(payload) + 1) == payload + b"!"
            await server.send(payload[::-1])
            assert await theirs.get_message() == payload[::-1]
            await server.aclose(1000, "done")
            # trio-websocket answered our close: it reports our code and reason.
            with pytest.raises(trio_websocket.ConnectionClosed):
                await theirs.get_message()
            assert theirs.closed is not None
            assert (theirs.closed.code, theirs.closed.reason) == (1000, "done")


async def test_trio_websocket_as_the_server() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    peers: list[trio_websocket.WebSocketConnection] = []
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await trio_websocket.wrap_server_stream(nursery, server_end)
            assert request.path == "/agent"
            assert (b"authorization", b"Bearer t") in request.headers
            peers.append(await request.accept())

        with trio.fail_after(LIMIT_S):
            async with trio.open_nursery() as handshake:
                handshake.start_soon(serve)
                client = await connect(
                    client_end, "server", "/agent", [(b"Authorization", b"Bearer t")]
                )
            (theirs,) = peers
            payload = os.urandom(200_000)
            await client.send(payload)
            assert await theirs.get_message() == payload
            await theirs.send_message(b"one")
            await theirs.send_message(b"two")
            assert await receive_exactly(client, 6) == b"onetwo"
            nursery.start_soon(theirs.aclose, 4000, "server restarting")
            assert await client.receive_some() == b""
            assert client.closed is not None
            assert client.closed.code == 4000
            assert client.closed.reason == "server restarting"
            await client.aclose()


async def test_a_text_message_is_a_protocol_error() -> None:
    async with trio.open_nursery() as nursery:
        client, theirs = await open_against_trio_websocket(nursery)
        with trio.fail_after(LIMIT_S):
            await theirs.send_message(b"binary is fine")
            assert await receive_exactly(client, 14) == b"binary is fine"
            await theirs.send_message("text is not")
            with pytest.raises(RemoteProtocolError):
                await client.receive_some()
            assert client.closed is not None
            with pytest.raises(WebSocketClosed):
                await client.send(b"after the error")
            await client.aclose()  # drops the transport: trio-websocket's reader ends


async def test_a_ping_is_answered_while_receiving() -> None:
    async with trio.open_nursery() as nursery:
        client, theirs = await open_against_trio_websocket(nursery)
        with trio.fail_after(LIMIT_S):
            async with trio.open_nursery() as reading:
                received = start_reading(reading, client)
                await trio.testing.wait_all_tasks_blocked()
                # ping() returns only once the matching pong is back.
                await theirs.ping(b"are you there")
                await theirs.ping(b"still there")
                assert received == []  # a ping is no payload
                await theirs.send_message(b"data")
            assert received == [b"data"]
            await client.aclose()
            assert theirs.closed is not None
            assert theirs.closed.code == 1000


# --- closing ---------------------------------------------------------------------


async def test_our_close_reaches_a_receiving_peer_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server, _ = await open_pair()
    async with trio.open_nursery() as nursery:
        received = start_reading(nursery, server)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await client.aclose(4001, "agent stopping")
        # The peer answered: no wait for the grace period.
        assert trio.current_time() == start
    assert received == [b""]
    assert server.closed is not None
    assert (server.closed.code, server.closed.reason) == (4001, "agent stopping")
    assert client.closed is not None
    assert client.closed.code == 4001
    with pytest.raises(WebSocketClosed):
        await client.send(b"late")
    with pytest.raises(WebSocketClosed):
        await server.send(b"late")
    await server.aclose()


async def test_our_close_while_our_own_reader_waits_returns_on_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server, _ = await open_pair()
    async with trio.open_nursery() as nursery:
        ours = start_reading(nursery, client)
        theirs = start_reading(nursery, server)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        # Our reader owns the transport; aclose learns of the answer from it.
        await client.aclose(1000, "bye")
        assert trio.current_time() == start
        assert ours == [b""]
    assert theirs == [b""]
    assert server.closed is not None
    assert (server.closed.code, server.closed.reason) == (1000, "bye")
    await server.aclose()


async def test_our_close_gives_up_on_a_silent_peer_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server, _ = await open_pair()
    start = trio.current_time()
    await client.aclose(1000, "bye")
    assert trio.current_time() - start == pytest.approx(CLOSE_GRACE_S)
    # The transport is closed all the same: the peer finds the close frame, then EOF.
    data = await read_to_eof(server.stream)
    assert data[:1] == b"\x88"  # FIN + close opcode


async def test_our_close_with_our_reader_waiting_gives_up_on_a_silent_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server, _ = await open_pair()
    async with trio.open_nursery() as nursery:
        ours = start_reading(nursery, client)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await client.aclose(1000, "bye")
        assert trio.current_time() - start == pytest.approx(CLOSE_GRACE_S)
    assert ours == [b""]
    assert client.closed is not None
    assert client.closed.code == 1000
    data = await read_to_eof(server.stream)
    assert data[:1] == b"\x88"


async def test_a_close_from_the_peer_is_answered() -> None:
    client, server, _ = await open_pair()
    await client.send(b"last words")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.aclose, 1001, "going away")
        # What was sent before the close still arrives, then the close.
        assert await receive_exactly(server, 10) == b"last words"
        with trio.fail_after(LIMIT_S):
            assert await server.receive_some() == b""
    assert server.closed is not None
    assert (server.closed.code, server.closed.reason) == (1001, "going away")
    assert await server.receive_some() == b""  # and stays closed
    await server.aclose()


async def test_aclose_twice_is_harmless() -> None:
    client, server, _ = await open_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.receive_some)
        await client.aclose()
    await client.aclose()
    await server.aclose()
    assert client.closed is not None
    assert client.closed.code == 1000


# --- a lost transport --------------------------------------------------------------


async def test_a_lost_transport_reads_as_an_abnormal_close() -> None:
    client, server, _ = await open_pair()
    await server.stream.aclose()  # no close frame
    with trio.fail_after(LIMIT_S):
        assert await client.receive_some() == b""
    assert client.closed is not None
    assert client.closed.code == 1006
    assert await client.receive_some() == b""
    with pytest.raises(WebSocketClosed):
        await client.send(b"anyone?")
    await client.aclose()


async def test_a_transport_lost_under_a_waiting_reader() -> None:
    client, server, _ = await open_pair()
    async with trio.open_nursery() as nursery:
        received = start_reading(nursery, client)
        await trio.testing.wait_all_tasks_blocked()
        await server.stream.aclose()
    assert received == [b""]
    assert client.closed is not None
    assert client.closed.code == 1006


async def test_sending_into_a_lost_transport_raises_closed() -> None:
    client, server, _ = await open_pair()
    await server.stream.aclose()
    with pytest.raises(WebSocketClosed) as caught:
        await client.send(b"anyone?")
    assert caught.value.code == 1006
    assert client.closed is caught.value
    assert await client.receive_some() == b""
    await client.aclose()


# --- send_nowait: a message written without yielding, or kept for flush ------------


async def test_send_nowait_needs_a_plain_socket() -> None:
    client, server, _ = await open_pair()  # memory streams: no file descriptor
    assert not client.writes_nowait
    assert not client.can_send_nowait
    await client.aclose()
    await server.aclose()


async def test_send_nowait_writes_a_whole_message_at_once() -> None:
    client, server, _ = await open_pair(sockets=True)
    assert client.can_send_nowait
    assert client.send_nowait(b"at once")
    assert not client.has_backlog
    assert await receive_exactly(server, 7) == b"at once"
    await client.aclose()
    await server.aclose()


async def test_what_send_nowait_could_not_write_goes_first_at_the_next_flush() -> None:
    client, server, _ = await open_pair(sockets=True)
    big = os.urandom(MAX_MESSAGE_BYTES - 1024)  # more than the socket buffers hold
    assert not client.send_nowait(big)
    backlog = [client.has_backlog]
    assert not client.can_send_nowait  # nothing may jump the queue
    received: list[bytes] = []
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                received.append(await receive_exactly(server, len(big) + 5))

            nursery.start_soon(read)
            await client.flush()
            backlog.append(client.has_backlog)
            await client.send(b"after")
    assert backlog == [True, False]
    assert received == [big + b"after"]
    await client.aclose()
    await server.aclose()


async def test_send_nowait_into_a_broken_transport_is_raised_by_flush() -> None:
    client, server, _ = await open_pair(sockets=True)
    assert isinstance(client.stream, trio.SocketStream)
    client.stream.socket.shutdown(trio.socket.SHUT_WR)
    assert not client.send_nowait(b"anyone?")
    assert client.closed is not None
    assert client.closed.code == 1006
    with pytest.raises(WebSocketClosed):
        await client.flush()
    await client.aclose()
    await server.aclose()


# --- regressions: bad frames, and pings and closes that cross ----------------------


def _server_frames() -> fp.FrameProtocol:
    """Frames as a server writes them (unmasked), to inject into the client's input."""
    return fp.FrameProtocol(client=False, extensions=[])


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x83\x00", 1002),  # reserved opcode 0x3: RFC 6455 says fail the connection
        (b"\x82\x02hi", 1002),  # unmasked, toward the server only (see below)
    ],
    ids=["reserved-opcode", "unmasked-from-client"],
)
async def test_a_bad_frame_raises_and_tells_the_peer_why(frame: bytes, code: int) -> None:
    client, server, _ = await open_pair()
    # The unmasked frame is only wrong toward the server, so it goes that way.
    sender, receiver = (client, server) if frame.startswith(b"\x82") else (server, client)
    await sender.stream.send_all(frame)
    with trio.fail_after(LIMIT_S), pytest.raises(RemoteProtocolError):
        await receiver.receive_some()
    assert await receiver.receive_some() == b""
    # Unlike a clean close, the peer hears the protocol error code.
    assert await sender.receive_some() == b""
    assert sender.closed is not None
    assert sender.closed.code == code


async def test_a_ping_crossing_our_close_is_not_answered() -> None:
    client, server, _ = await open_pair()
    await server.stream.send_all(_server_frames().ping(b"x"))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.aclose)
            await trio.testing.wait_all_tasks_blocked()
            assert await server.receive_some() == b""  # answers our close


async def test_a_ping_crossing_our_close_under_our_reader() -> None:
    client, server, _ = await open_pair()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            got = start_reading(nursery, client)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(client.aclose)
            await trio.testing.wait_all_tasks_blocked()  # our close is on its way
            await server.stream.send_all(_server_frames().ping(b"x"))
            await trio.testing.wait_all_tasks_blocked()
            assert await server.receive_some() == b""
    assert got == [b""]


@pytest.mark.parametrize("transport", ["memory", "socketpair"])
async def test_a_close_from_a_peer_that_already_left_reads_as_closed(transport: str) -> None:
    """The peer's grace ran out: its close arrives, then its transport is gone."""
    client, server, _ = await open_pair(sockets=transport == "socketpair")
    await server.stream.send_all(_server_frames().close(1000, "bye"))
    await server.stream.aclose()
    with trio.fail_after(LIMIT_S):
        assert await client.receive_some() == b""
    assert client.closed is not None
    assert client.closed.code == 1000
    await client.aclose()
