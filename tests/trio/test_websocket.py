"""The tunnel's WebSocket (`pvtunnel._trio.websocket`): trio-websocket with the tunnel's rules.

trio-websocket does the framing and the close handshake; what is tested here is
what the tunnel adds or relies on: the upgrade as the server's agent port sees it
(path, headers, a refusal with a status and body, a request that is no upgrade, a
transport that ends first, all without waiting for a timeout), binary messages
intact both ways, the 1 MiB cap (close 1009), text refused (close 1003), a close
that never waits past its grace, and a lost transport read as an abnormal close.
The interoperability tests put an independent implementation (the `websockets`
package, in a thread over a real socket) on the other end, so the two sides of a
test cannot share one misreading of RFC 6455. Waiting is done through Trio, never
by sleeping; the close grace runs on an autojumping `MockClock`.
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
import trio
import trio.testing
import trio_websocket
import websockets.sync.client
import websockets.sync.server

from pvtunnel._errors import HandshakeError, RemoteProtocolError, WebSocketClosed
from pvtunnel._trio.websocket import (
    CLOSE_GRACE_S,
    MAX_MESSAGE_BYTES,
    ConnectionRejected,
    WebSocket,
    connect,
    read_upgrade,
)
from tests.trio.helpers import LIMIT_S, open_pair

MiB = 1024 * 1024
UPGRADE = (
    b"GET /agent HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def receive_exactly(ws: WebSocket, size: int) -> bytes:
    """Exactly ``size`` payload bytes, however the messages split them."""
    data = bytearray()
    with trio.fail_after(LIMIT_S):
        while len(data) < size:
            chunk = await ws.receive_some()
            assert chunk, f"closed after {len(data)} of {size} bytes"
            data += chunk
    return bytes(data)


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
    async with open_pair(
        "/agents/connect?v=1", [(b"Authorization", b"Bearer s3cret"), (b"X-Agent", b"a1")]
    ) as pair:
        assert pair.request.path == "/agents/connect?v=1"
        headers = [(name.lower(), value) for name, value in pair.request.headers]
        assert (b"authorization", b"Bearer s3cret") in headers
        assert (b"x-agent", b"a1") in headers
        assert pair.server.remote == "agent"
        assert pair.client.closed is None
        assert pair.server.closed is None


async def test_messages_go_both_ways_intact() -> None:
    async with open_pair() as pair:
        await pair.client.send(b"hello, ")
        await pair.client.send(b"server")
        assert await receive_exactly(pair.server, 13) == b"hello, server"
        await pair.server.send(b"hello, agent")
        assert await receive_exactly(pair.client, 12) == b"hello, agent"


async def test_a_message_at_the_limit_arrives_intact_both_ways() -> None:
    async with open_pair() as pair, trio.open_nursery() as nursery:
        payload = os.urandom(MAX_MESSAGE_BYTES)
        nursery.start_soon(pair.client.send, payload)
        assert await pair.server.receive_some() == payload
        nursery.start_soon(pair.server.send, payload[::-1])
        assert await pair.client.receive_some() == payload[::-1]


async def test_a_message_over_the_limit_closes_with_1009() -> None:
    async with open_pair() as pair, trio.open_nursery() as nursery:
        nursery.start_soon(pair.client.send, b"x" * (MAX_MESSAGE_BYTES + 1))
        with trio.fail_after(LIMIT_S):
            assert await pair.server.receive_some() == b""
            assert await pair.client.receive_some() == b""
        assert pair.server.closed is not None
        assert pair.server.closed.code == 1009
        assert pair.client.closed is not None
        assert pair.client.closed.code == 1009


@pytest.mark.parametrize(
    ("status", "body"),
    [(401, b"unknown agent token"), (503, b"the server is shutting down")],
)
async def test_a_rejected_upgrade_gives_the_client_the_status_and_body(
    status: int, body: bytes
) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()

    async def serve(nursery: trio.Nursery) -> None:
        request = await read_upgrade(nursery, server_end)
        assert request is not None
        await request.reject(status, body=body)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, nursery)
            await connect(nursery, client_end, "server", "/", [])

    with trio.fail_after(LIMIT_S), pytest.RaisesGroup(ConnectionRejected) as caught:
        await run()
    (rejected,) = caught.value.exceptions
    assert isinstance(rejected, ConnectionRejected)
    assert rejected.status_code == status
    assert rejected.body == body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="plain-get"),
        # RFC 6455 section 4.4: 426 naming the version the server speaks.
        pytest.param(UPGRADE.replace(b"Version: 13", b"Version: 8"), 426, id="old-version"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, id="not-http"),
        pytest.param(
            UPGRADE[:-2] + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 100) for i in range(200)),
            400,
            id="oversized",
        ),
    ],
)
async def test_a_request_that_is_no_usable_upgrade_is_answered_and_closed_at_once(
    raw: bytes, status: int
) -> None:
    """Answered 400 and closed, and `read_upgrade` returns: it has no timeout of its own."""
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(raw)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            assert await read_upgrade(nursery, server_end) is None
    assert status_of(await read_to_eof(client_end)) == status


@pytest.mark.parametrize("partial", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["empty", "half"])
async def test_a_connection_closed_before_the_whole_upgrade_gives_none(partial: bytes) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(partial)
    await client_end.send_stream.aclose()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            assert await read_upgrade(nursery, server_end) is None
            await server_end.aclose()


async def test_a_server_that_hangs_up_during_the_upgrade_fails_the_client_at_once() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()

    async def hang_up() -> None:
        await server_end.receive_some()
        await server_end.aclose()

    async def run() -> None:
        async with client_end, trio.open_nursery() as nursery:
            nursery.start_soon(hang_up)
            await connect(nursery, client_end, "server", "/", [])

    with trio.fail_after(LIMIT_S), pytest.RaisesGroup(HandshakeError):
        await run()


async def test_an_accept_after_the_client_left_raises_connection_closed() -> None:
    """An agent that sends its upgrade and leaves: the server's 101 cannot go out."""
    client_end, server_end = trio.testing.memory_stream_pair()
    await client_end.send_all(UPGRADE)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            request = await read_upgrade(nursery, server_end)
            assert request is not None
            await client_end.aclose()
            with pytest.raises(trio_websocket.ConnectionClosed):
                await request.accept()
            await server_end.aclose()


# --- text, closing, a lost transport ------------------------------------------------


async def test_a_text_message_is_a_protocol_error_closed_with_1003() -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        peers: list[trio_websocket.WebSocketConnection] = []

        async def serve() -> None:
            request = await trio_websocket.wrap_server_stream(nursery, server_end)
            peers.append(await request.accept())

        with trio.fail_after(LIMIT_S):
            async with trio.open_nursery() as handshake:
                handshake.start_soon(serve)
                client = await connect(nursery, client_end, "server", "/", [])
            (peer,) = peers
            await peer.send_message(b"binary is fine")
            assert await client.receive_some() == b"binary is fine"
            await peer.send_message("text is not")
            with pytest.raises(RemoteProtocolError):
                await client.receive_some()
            with pytest.raises(trio_websocket.ConnectionClosed):
                await peer.get_message()
        assert peer.closed is not None
        assert peer.closed.code == 1003
        with pytest.raises(WebSocketClosed):
            await client.send(b"after the error")
        await trio.aclose_forcefully(server_end)


async def test_our_close_reaches_a_receiving_peer_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pair() as pair:
        async with trio.open_nursery() as nursery:
            received = start_reading(nursery, pair.server)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            await pair.client.aclose(4001, "agent stopping")
            # The peer answered: no wait for the grace period.
            assert trio.current_time() == start
        assert received == [b""]
        assert pair.server.closed is not None
        assert (pair.server.closed.code, pair.server.closed.reason) == (4001, "agent stopping")
        with pytest.raises(WebSocketClosed):
            await pair.client.send(b"late")
        with pytest.raises(WebSocketClosed):
            await pair.server.send(b"late")


async def test_our_close_gives_up_on_a_silent_peer_after_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_accept_and_go_silent, nursery, server_end)
        client = await connect(nursery, client_end, "server", "/", [])
        start = trio.current_time()
        await client.aclose(1000, "bye")
        assert trio.current_time() - start == pytest.approx(CLOSE_GRACE_S)
        # The transport is closed all the same: the peer finds the close frame, then EOF.
        data = await read_to_eof(server_end)
        assert data[:1] == b"\x88"  # FIN + close opcode


async def _accept_and_go_silent(nursery: trio.Nursery, stream: trio.abc.Stream) -> None:
    """Answer the upgrade by hand, then read nothing more: a peer that never closes."""
    head = bytearray()
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some()
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + _accept_key(bytes(head)) + b"\r\n\r\n"
    )


def _accept_key(head: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
            return base64.b64encode(digest.digest())
    raise AssertionError("no key")


async def test_a_close_from_the_peer_ends_reading_after_what_came_before() -> None:
    async with open_pair() as pair, trio.open_nursery() as nursery:
        await pair.client.send(b"last words")
        nursery.start_soon(pair.client.aclose, 1001, "going away")
        assert await receive_exactly(pair.server, 10) == b"last words"
        with trio.fail_after(LIMIT_S):
            assert await pair.server.receive_some() == b""
        assert pair.server.closed is not None
        assert (pair.server.closed.code, pair.server.closed.reason) == (1001, "going away")
        assert await pair.server.receive_some() == b""  # and stays closed


async def test_aclose_twice_is_harmless() -> None:
    async with open_pair() as pair:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pair.server.receive_some)
            await pair.client.aclose()
        await pair.client.aclose()
        await pair.server.aclose()
        assert pair.client.closed is not None
        assert pair.client.closed.code == 1000


async def test_a_lost_transport_reads_as_an_abnormal_close() -> None:
    async with open_pair() as pair:
        await pair.server.transport.aclose()  # no close frame
        with trio.fail_after(LIMIT_S):
            assert await pair.client.receive_some() == b""
        assert pair.client.closed is not None
        assert pair.client.closed.code == 1006
        assert await pair.client.receive_some() == b""
        with pytest.raises(WebSocketClosed):
            await pair.client.send(b"anyone?")


async def test_sending_into_a_lost_transport_raises_closed() -> None:
    async with open_pair() as pair:
        await pair.client.transport.aclose()
        with pytest.raises(WebSocketClosed) as caught:
            await pair.client.send(b"anyone?")
        assert caught.value.code == 1006
        assert pair.client.closed is caught.value


# --- an independent implementation on the other end ---------------------------------


async def test_the_websockets_package_as_the_client() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    payload = os.urandom(200_000)

    def client() -> tuple[bytes, int | None]:
        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/agent",
            additional_headers={"Authorization": "Bearer t"},
            proxy=None,
        ) as theirs:
            theirs.send(payload)
            echoed = theirs.recv()
            assert isinstance(echoed, bytes)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                theirs.recv()
            return echoed, closed.value.rcvd.code if closed.value.rcvd else None

    async with listener, trio.open_nursery() as nursery:

        async def serve() -> None:
            stream = await listener.accept()
            async with trio.open_nursery() as connection:
                request = await read_upgrade(connection, stream)
                assert request is not None
                assert request.path == "/agent"
                assert (b"authorization", b"Bearer t") in [
                    (name.lower(), value) for name, value in request.headers
                ]
                ws = WebSocket(await request.accept(), stream)
                message = await ws.receive_some()
                await ws.send(message[::-1])
                await ws.aclose(4000, "done")

        nursery.start_soon(serve)
        with trio.fail_after(LIMIT_S):
            echoed, code = await trio.to_thread.run_sync(client)
    assert echoed == payload[::-1]
    assert code == 4000


async def test_the_websockets_package_as_the_server() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(connection: websockets.sync.server.ServerConnection) -> None:
        assert connection.request is not None
        seen.append((connection.request.path, connection.request.headers.get("Authorization")))
        for message in connection:
            connection.send(message[::-1] if isinstance(message, bytes) else b"text?")
            connection.close(4001, "server restarting")

    server = websockets.sync.server.serve(handler, "127.0.0.1", 0, compression=None)
    port = server.socket.getsockname()[1]
    payload = os.urandom(200_000)
    async with trio.open_nursery() as outer:
        outer.start_soon(trio.to_thread.run_sync, server.serve_forever)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(LIMIT_S):
                async with stream, trio.open_nursery() as nursery:
                    client = await connect(
                        nursery,
                        stream,
                        f"127.0.0.1:{port}",
                        "/agent",
                        [(b"Authorization", b"Bearer t")],
                    )
                    await client.send(payload)
                    assert await client.receive_some() == payload[::-1]
                    assert await client.receive_some() == b""
                    assert client.closed is not None
                    assert (client.closed.code, client.closed.reason) == (4001, "server restarting")
                    await client.aclose()
        finally:
            server.shutdown()
    assert seen == [("/agent", "Bearer t")]


async def test_a_send_cut_short_ends_the_connection_instead_of_corrupting_it() -> None:
    """A cancelled send may stop halfway through a frame: the transport is dropped then,
    so the peer sees the connection end, never the next frame spliced onto a torn one."""
    a, b = trio.socket.socketpair()
    client_end, server_end = trio.SocketStream(a), trio.SocketStream(b)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(LIMIT_S):
            nursery.start_soon(_accept_and_go_silent, nursery, server_end)
            client = await connect(nursery, client_end, "server", "/", [])
        async with trio.open_nursery() as sending:
            cut = trio.CancelScope()

            async def send() -> None:
                with cut:
                    await client.send(b"x" * MAX_MESSAGE_BYTES)

            sending.start_soon(send)
            # The kernel's buffers take the frame's start; nobody reads, the send waits.
            await trio.testing.wait_all_tasks_blocked()
            cut.cancel()
        torn = await server_end.receive_some(1000)
        assert torn.startswith(b"\x82")  # FIN + binary
        assert client.closed is not None
        with pytest.raises(WebSocketClosed):
            await client.send(b"next")
        # What had gone out of the frame, then the end: the frame stays torn and
        # nothing follows it (14 header bytes: the length takes 8, the mask 4).
        rest = await read_to_eof(server_end)
        assert rest
        assert len(torn) + len(rest) < 14 + MAX_MESSAGE_BYTES
        await trio.aclose_forcefully(server_end)
