"""The tunnel's WebSocket: trio-websocket, with the tunnel's sizes and failure rules.

trio-websocket does the upgrade, the framing, pings and the close handshake; its
reader task lives in a nursery the caller passes (the agent connection's), so the
connection never outlives whoever serves it. This module only sets the sizes the
tunnel needs and turns the library's outcomes into the tunnel's:

- Messages are binary and bounded: one over `MAX_MESSAGE_BYTES` closes the
  connection with 1009, and a text message is a protocol error (close 1003).
- A 256 KiB receive buffer, where trio-websocket's default is 4 KiB: a masked
  64 KiB message then parses from one or two reads instead of sixteen, which is
  what keeps the agent-to-server direction (every download) fast.
- A handshake whose transport ends early fails at once. trio-websocket answers a
  request that is no usable upgrade with 400 and closes, or sees the connection
  end, but leaves a caller waiting for an upgrade that will never come; the
  `_Watched` stream notices both and ends that wait.

The tunnel writes through one task at a time and reads through one task, so the
library's send lock never queues more than one waiting writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, cast

import trio
import trio_websocket

from pvtunnel._errors import HandshakeError, RemoteProtocolError, WebSocketClosed
from pvtunnel._trio.sockio import fast_io

if TYPE_CHECKING:
    from collections.abc import Sequence

CLOSE_GRACE_S: Final = 2.0
# Largest message taken from a peer; the tunnel's own stay at 256 KiB.
MAX_MESSAGE_BYTES: Final = 1024 * 1024
RECEIVE_BUFFER_BYTES: Final = 256 * 1024
# Messages parsed but not yet taken by the tunnel's reader. Memory held per
# connection is at most this many messages of `MAX_MESSAGE_BYTES`, beside the
# receive buffer; a full queue stops the library reading the socket.
MESSAGE_QUEUE_SIZE: Final = 2
# Close codes (RFC 6455 section 7.4.1) the tunnel says itself.
UNSUPPORTED_DATA: Final = 1003

# What a send or receive raises once the connection or its transport is gone.
TRANSPORT_GONE: Final = (
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


# The server answered the upgrade with an HTTP status (``status_code``, ``body``)
# instead of 101. trio-websocket raises it in the connection's reader task.
ConnectionRejected = trio_websocket.ConnectionRejected


class WebSocket:
    """One open tunnel WebSocket: binary messages in, binary messages out.

    One task receives and one task at a time sends (the tunnel keeps it so); a
    close may come from any task.
    """

    def __init__(
        self,
        connection: trio_websocket.WebSocketConnection,
        transport: trio.abc.Stream,
        remote: str = "",
    ) -> None:
        self.connection = connection
        self.transport = transport
        self.remote = remote
        self.closed: WebSocketClosed | None = None

    async def receive_some(self) -> bytes:
        """The next non-empty binary message; b"" once the WebSocket closed (either
        side) or broke.

        An empty message is skipped: message boundaries mean nothing to the tunnel
        (protocol.md section 1), so it carries nothing, and must not read as the end.

        Raises:
            RemoteProtocolError: the peer sent a text message (the WebSocket is
                closed with 1003 first).
        """
        while True:
            try:
                message = await self.connection.get_message()
            except trio_websocket.ConnectionClosed as exc:
                self._closed_by(exc.reason)
                return b""
            if isinstance(message, str):
                reason = "text WebSocket message on the tunnel"
                await self.aclose(UNSUPPORTED_DATA, reason)
                raise RemoteProtocolError(reason)
            if message:
                return message

    async def send(self, data: bytes) -> None:
        """Send one binary message.

        Raises:
            WebSocketClosed: the WebSocket is closed or the transport broke.
        """
        if self.closed is not None:
            raise self.closed
        try:
            await self.connection.send_message(data)
        except TRANSPORT_GONE as exc:
            reason = exc.reason if isinstance(exc, trio_websocket.ConnectionClosed) else None
            self._closed_by(reason)
            assert self.closed is not None
            raise self.closed from None
        except trio.Cancelled:
            # Perhaps halfway through a frame: what follows on the wire would be
            # garbage to the peer, so the connection ends here instead.
            self._closed_by(None)
            await trio.aclose_forcefully(self.transport)
            raise

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close: say why, wait up to `CLOSE_GRACE_S` for the peer's close, drop the transport.

        Not shielded: cancelled, it drops the transport at once, where a shielded close
        would wait out the grace period for a peer that is itself shutting down.
        """
        if self.closed is None:
            self.closed = WebSocketClosed(reason or "closed here", code)
        with trio.move_on_after(CLOSE_GRACE_S):
            await self.connection.aclose(code, _short(reason) or None)
        # A close the library did not finish itself (the peer was silent, or the
        # library had already given up on the connection) still ends the transport.
        await trio.aclose_forcefully(self.transport)

    def _closed_by(self, reason: trio_websocket.CloseReason | None) -> None:
        if self.closed is None:
            if reason is None:
                self.closed = WebSocketClosed("the connection closed", 1006)
            else:
                self.closed = WebSocketClosed(reason.reason or reason.name, reason.code)


async def read_upgrade(
    nursery: trio.Nursery, stream: trio.abc.Stream
) -> trio_websocket.WebSocketRequest | None:
    """An agent's upgrade request, not yet answered; None if there will be none.

    None when the transport ended first, or the request was no usable upgrade
    (trio-websocket has answered it with 400 then). The connection's reader task
    runs in ``nursery``; the caller bounds the wait (the handshake timeout) and
    closes ``stream`` when done with it.
    """
    watched = _Watched(stream)
    with watched.handshake:
        return await trio_websocket.wrap_server_stream(
            nursery,
            watched,
            message_queue_size=MESSAGE_QUEUE_SIZE,
            max_message_size=MAX_MESSAGE_BYTES,
            receive_buffer_size=RECEIVE_BUFFER_BYTES,
        )
    return None


async def connect(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    extra_headers: Sequence[tuple[bytes, bytes]],
) -> WebSocket:
    """The client's upgrade over an open transport, its reader task in ``nursery``.

    ``host`` is the Host header (with a port when not the default). A refusal is
    raised by the reader task, so it reaches the caller through ``nursery`` as
    `ConnectionRejected`. The caller bounds the wait (the connect timeout).

    Raises:
        ConnectionRejected: the server answered with an HTTP status (401, 503...).
        HandshakeError: the connection closed before a whole answer came.
    """
    watched = _Watched(stream)
    with watched.handshake:
        connection = await trio_websocket.wrap_client_stream(
            nursery,
            # trio-websocket types the stream as a socket or TLS stream, but uses
            # only the `trio.abc.Stream` methods (its own tests wrap memory streams).
            cast("trio.SocketStream", watched),
            host,
            resource,
            extra_headers=list(extra_headers),
            message_queue_size=MESSAGE_QUEUE_SIZE,
            max_message_size=MAX_MESSAGE_BYTES,
            receive_buffer_size=RECEIVE_BUFFER_BYTES,
        )
        return WebSocket(connection, stream, host)
    raise HandshakeError("the connection closed during the upgrade")


class _Watched(trio.abc.Stream):
    """The transport as trio-websocket sees it: watched while the upgrade is under way.

    Once the transport ends (read to its end, broken, or closed by the library)
    before the upgrade is done, ``handshake`` is cancelled (see the module
    docstring). Reads and writes go through `sockio.fast_io`, which skips Trio's
    extra scheduling round after a system call that did not have to wait.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.handshake = trio.CancelScope()
        # The system call first, a wait only if it would block (see `sockio`).
        self._io = fast_io(stream)

    def _ended(self) -> None:
        self.handshake.cancel()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._io.send_all(data)
        except TRANSPORT_GONE:
            self._ended()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._io.receive_some(max_bytes)
        except TRANSPORT_GONE:
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    async def aclose(self) -> None:
        self._ended()
        await self.stream.aclose()


def _short(reason: str) -> str:
    """A close reason has room for 123 bytes."""
    return reason.encode()[:120].decode(errors="ignore")
