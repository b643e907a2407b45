"""A hostile agent for tests, built from protocol.md alone: wsproto plus hand-made frames.

It shares no code with pvtunnel's own codec, multiplexer or WebSocket, so what it
sends is what protocol.md allows a peer to send, not what our encoder would: a
reason phrase with CRLF in it, a client id with ESC in it, a flood of PINGs. The
socket is ours too, so a test can shrink its receive buffer and simply stop reading.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import TYPE_CHECKING, Final

import attrs
import trio
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    Request,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

# protocol.md section 2: type u8, flags u8, stream ID u32, length u32.
_HEADER: Final = struct.Struct(">BBII")
HELLO: Final = 0x01
ACCEPT: Final = 0x02
REJECT: Final = 0x03
HEAD: Final = 0x04
DATA: Final = 0x05
END: Final = 0x06
RESET: Final = 0x07
WINDOW: Final = 0x08
PING: Final = 0x09
PONG: Final = 0x0A
GOAWAY: Final = 0x0B
INFORMATIONAL: Final = 0x01
WINDOW_BYTES: Final = 1 << 20


def frame(kind: int, stream_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame as protocol.md section 2 lays it out."""
    return _HEADER.pack(kind, flags, stream_id, len(payload)) + payload


def fields(*items: bytes) -> bytes:
    """A HEAD payload (protocol.md section 4.4): u16-length-prefixed fields."""
    return b"".join(struct.pack(">H", len(item)) + item for item in items)


def response_head(
    stream_id: int,
    status: bytes,
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    informational: bool = False,
) -> bytes:
    """A response HEAD frame with whatever status, reason and fields the test wants."""
    pairs = [item for pair in headers for item in pair]
    payload = fields(status, reason, *pairs)
    return frame(HEAD, stream_id, payload, INFORMATIONAL if informational else 0)


def hello(
    client_id: str,
    routes: Sequence[str],
    window: int = WINDOW_BYTES,
    connection_window: int = 16 * WINDOW_BYTES,
) -> bytes:
    body = {
        "versions": [1],
        "client_id": client_id,
        "routes": list(routes),
        "window": window,
        "connection_window": connection_window,
    }
    return frame(HELLO, 0, json.dumps(body).encode())


@attrs.frozen
class Frame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes

    def head_fields(self) -> list[bytes]:
        """The fields of a HEAD payload."""
        items, offset = [], 0
        while offset < len(self.payload):
            (size,) = struct.unpack_from(">H", self.payload, offset)
            items.append(self.payload[offset + 2 : offset + 2 + size])
            offset += 2 + size
        return items


class HandshakeRejectedError(Exception):
    """The server answered HELLO with REJECT (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HostileAgent:
    """One raw agent connection: WebSocket via wsproto, frames by hand."""

    def __init__(self, stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self._buffer = bytearray()
        self.closed: CloseConnection | None = None

    @classmethod
    async def connect(
        cls,
        address: tuple[str, int],
        token: str,
        *,
        client_id: str = "hostile",
        routes: Sequence[str] = ("app",),
        receive_buffer_bytes: int | None = None,
        before_hello: Callable[[], Awaitable[None]] | None = None,
        window: int = WINDOW_BYTES,
        connection_window: int = 16 * WINDOW_BYTES,
    ) -> HostileAgent:
        """Upgrade, say HELLO, and return once ACCEPT arrived.

        ``before_hello`` runs between the upgrade and HELLO, for races with the server.
        ``window`` and ``connection_window`` are the credit HELLO announces.

        Raises:
            HandshakeRejectedError: the server sent REJECT.
        """
        host, port = address
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if receive_buffer_bytes is not None:
            # Before connecting, so the window the peer sees is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        await sock.connect((host, port))
        stream = trio.SocketStream(sock)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        agent = cls(stream, ws)
        request = Request(
            host=f"{host}:{port}",
            target="/",
            extra_headers=[(b"authorization", f"Bearer {token}".encode())],
        )
        try:
            await agent._handshake(
                request, hello(client_id, routes, window, connection_window), before_hello
            )
        except BaseException:
            await stream.aclose()
            raise
        return agent

    async def _handshake(
        self,
        request: Request,
        greeting: bytes,
        before_hello: Callable[[], Awaitable[None]] | None,
    ) -> None:
        await self.stream.send_all(self.ws.send(request))
        while True:
            event = await self._next_ws_event()
            if isinstance(event, AcceptConnection):
                break
            if isinstance(event, RejectConnection):
                raise HandshakeRejectedError(f"upgrade refused: {event.status_code}")
        if before_hello is not None:
            await before_hello()
        await self.send(greeting)
        first = await self.receive_frame()
        if first is None:
            raise HandshakeRejectedError("closed before answering HELLO")
        if first.kind == REJECT:
            raise HandshakeRejectedError(first.payload.decode())
        assert first.kind == ACCEPT, first

    async def send(self, data: bytes) -> None:
        """One binary WebSocket message."""
        await self.stream.send_all(self.ws.send(BytesMessage(data=data)))

    async def receive_frame(self) -> Frame | None:
        """The next frame from the server, or None once the WebSocket closed."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                kind, flags, stream_id, length = _HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= _HEADER.size + length:
                    payload = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
                    del self._buffer[: _HEADER.size + length]
                    return Frame(kind, flags, stream_id, payload)
            event = await self._next_ws_event()
            if event is None:
                return None
            if isinstance(event, BytesMessage):
                self._buffer += event.data

    async def receive_request(self) -> Frame:
        """The next request HEAD (skipping END, WINDOW, PING and the like)."""
        while True:
            received = await self.receive_frame()
            assert received is not None, "the server closed the tunnel"
            if received.kind == HEAD:
                return received

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> HostileAgent:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _next_ws_event(self) -> object | None:
        while True:
            for event in self.ws.events():
                if isinstance(event, CloseConnection):
                    self.closed = event
                    return None
                if isinstance(event, BytesMessage | AcceptConnection | RejectConnection):
                    return event
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self.ws.receive_data(data)
