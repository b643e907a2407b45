"""The tunnel's WebSocket: wsproto driven straight from the task that needs it.

trio-websocket runs a reader task per connection that hands each message over a
memory channel, and sends under a lock; on the tunnel's hot path that was two
extra task switches per message on each side, and whole messages were gathered
before the multiplexer saw a byte. Here the tunnel's own reader feeds received
payload to the multiplexer as it arrives (its decoder takes any split), and a
send is one system call when the socket has room (`sockio.FastSocket`). The
handshake is wsproto's too: an HTTP/1.1 upgrade parsed and answered by h11.

Only binary messages are part of the tunnel; a text message is a protocol error.
WebSocket pings are answered; the tunnel's own liveness check is its PING frame.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Final, NoReturn

import trio
import wsproto
import wsproto.utilities
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from pvtunnel._errors import RemoteProtocolError
from pvtunnel._trio.sockio import fast_io

RECEIVE_SIZE: Final = 65536
CLOSE_GRACE_S: Final = 2.0
# An upgrade request or answer is a few hundred bytes; this bounds a hostile one
# (h11 inside wsproto caps an incomplete head at 16 KiB on its own).
MAX_HANDSHAKE_BYTES: Final = 64 * 1024
_BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class WebSocketClosed(Exception):
    """The WebSocket is closed (by either side) or its transport broke."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """The upgrade failed before any answer: not HTTP, or the connection closed."""


class ConnectionRejected(HandshakeError):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.body = body


class WebSocket:
    """One open WebSocket over a Trio stream.

    One task receives and one task at a time sends (the tunnel keeps it so); a
    close may come from any task.
    """

    def __init__(
        self, stream: trio.abc.Stream, connection: wsproto.WSConnection, remote: str = ""
    ) -> None:
        self.stream = stream
        self.remote = remote
        self._io = fast_io(stream)
        self._ws = connection
        self._receiving = False
        self._broken = False
        self._close_seen = trio.Event()
        self._writing = False
        self._write_done = trio.lowlevel.ParkingLot()
        self.closed: WebSocketClosed | None = None

    async def receive_some(self) -> bytes:
        """Binary payload bytes as they arrive, across message boundaries; b"" once closed.

        Closed means the peer's close arrived or the transport ended.

        Raises:
            RemoteProtocolError: the peer broke the WebSocket protocol, or sent text.
        """
        # After a close we sent, data may still come until the peer's close does.
        if self._close_seen.is_set():
            return b""
        self._receiving = True
        try:
            while True:
                payload = await self._drain_events()
                if payload or self._close_seen.is_set():
                    return payload
                try:
                    data = await self._io.receive_some(RECEIVE_SIZE)
                except _BROKEN:
                    data = b""
                if not data:
                    self._lost("the connection closed without a WebSocket close")
                    return b""
                self._ws.receive_data(bytes(data))
        finally:
            self._receiving = False

    async def send(self, data: bytes) -> None:
        """Send one binary message.

        Raises:
            WebSocketClosed: the WebSocket is closed or the transport broke.
        """
        if self.closed is not None:
            raise self.closed
        await self._write(BytesMessage(data=data))

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close: say why, wait a moment for the peer's close, then drop the transport.

        Not shielded: cancelled, it drops the transport at once, where a shielded close
        would wait out the grace period for a peer that is itself shutting down.
        """
        try:
            with trio.move_on_after(CLOSE_GRACE_S):
                if self.closed is None and not self._broken:
                    self.closed = WebSocketClosed(reason or "closed here", code)
                    await self._write(CloseConnection(code=code, reason=reason))
                    if self._receiving:
                        # The tunnel's reader sees the peer's close and tells us.
                        await self._close_seen.wait()
                    else:
                        await self._await_close()
        except (WebSocketClosed, RemoteProtocolError):
            pass
        finally:
            self.closed = self.closed or WebSocketClosed(reason or "closed here", code)
            self._close_seen.set()
            await trio.aclose_forcefully(self.stream)

    async def _await_close(self) -> None:
        while not self._close_seen.is_set():
            await self._drain_events()
            if self._close_seen.is_set():
                return
            try:
                data = await self._io.receive_some(RECEIVE_SIZE)
            except _BROKEN:
                return
            if not data:
                return
            self._ws.receive_data(bytes(data))

    async def _drain_events(self) -> bytes:
        chunks: list[bytes] = []
        try:
            for event in self._ws.events():
                await self._handle(event, chunks)
        except wsproto.utilities.RemoteProtocolError as exc:
            await self._fail_protocol(f"WebSocket protocol error: {exc}", 1002)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def _handle(self, event: Event, chunks: list[bytes]) -> None:
        match event:
            case BytesMessage():
                chunks.append(bytes(event.data))
            case TextMessage():
                await self._fail_protocol("text WebSocket message on the tunnel", 1003)
            case Ping() if self._ws.state is ConnectionState.OPEN:
                await self._write(event.response())
            case CloseConnection() if self._ws.state is ConnectionState.OPEN:
                # Still open: no close came from the peer, wsproto found a bad frame.
                await self._fail_protocol(f"WebSocket protocol error: {event.reason}", event.code)
            case CloseConnection():
                if self.closed is None:
                    self.closed = WebSocketClosed(event.reason or "closed by the peer", event.code)
                    # Answer the close (the peer waits for it), unless we began it.
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        with contextlib.suppress(WebSocketClosed):
                            await self._write(event.response())
                self._close_seen.set()
            case _:
                pass  # pongs (we send no WebSocket pings), pings once closing

    async def _fail_protocol(self, reason: str, code: int) -> NoReturn:
        """Tell the peer why (a close with ``code``), then raise `RemoteProtocolError`."""
        if self.closed is None:
            self.closed = WebSocketClosed(reason, code)
            if self._ws.state is ConnectionState.OPEN and not self._broken:
                # A close reason has room for 123 bytes.
                short = reason.encode()[:120].decode(errors="ignore")
                with contextlib.suppress(WebSocketClosed):
                    await self._write(CloseConnection(code=code, reason=short))
        self._close_seen.set()
        raise RemoteProtocolError(reason)

    async def _write(self, event: Event) -> None:
        """Serialise and send one event; one writer at a time, so frames never interleave.

        The event is serialised only once it is this task's turn, so nothing queued
        behind a close goes out after it.
        """
        while self._writing:
            await self._write_done.park()
        if self._broken:
            raise WebSocketClosed("the connection is broken")
        self._writing = True
        try:
            try:
                data = self._ws.send(event)
            except wsproto.utilities.LocalProtocolError:
                raise self.closed or WebSocketClosed("the WebSocket is closing") from None
            await self._io.send_all(data)
        except _BROKEN:
            self._lost("the connection broke while sending")
            raise self.closed or WebSocketClosed("the connection broke") from None
        except BaseException as exc:
            if not isinstance(exc, WebSocketClosed):
                # Cancelled mid-message: what is on the wire is no longer framed.
                self._broken = True
            raise
        finally:
            self._writing = False
            if self._write_done:
                self._write_done.unpark_all()

    def _lost(self, reason: str) -> None:
        self._broken = True
        if self.closed is None:
            self.closed = WebSocketClosed(reason, 1006)
        self._close_seen.set()


class UpgradeRequest:
    """An upgrade the server has read and not yet answered."""

    def __init__(
        self, stream: trio.abc.Stream, connection: wsproto.WSConnection, request: Request
    ) -> None:
        self.stream = stream
        self._connection = connection
        self.path = request.target
        self.headers: list[tuple[bytes, bytes]] = [
            (bytes(name).lower(), bytes(value)) for name, value in request.extra_headers
        ]

    async def accept(self, remote: str = "") -> WebSocket:
        data = self._connection.send(AcceptConnection())
        await fast_io(self.stream).send_all(data)
        return WebSocket(self.stream, self._connection, remote)

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with an HTTP error and close the transport."""
        connection = self._connection
        try:
            data = connection.send(
                RejectConnection(
                    status_code=status,
                    headers=[
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", b"%d" % len(body)),
                    ],
                    has_body=True,
                )
            )
            data += connection.send(RejectData(data=body))
            await fast_io(self.stream).send_all(data)
        except _BROKEN:
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


async def read_upgrade(stream: trio.abc.Stream) -> UpgradeRequest | None:
    """Read an agent's upgrade request; None if it was no usable upgrade (answered, closed)."""
    connection = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    io = fast_io(stream)
    received = 0
    try:
        while True:
            for event in connection.events():
                if isinstance(event, Request):
                    return UpgradeRequest(stream, connection, event)
            if received > MAX_HANDSHAKE_BYTES:
                raise wsproto.utilities.RemoteProtocolError(
                    "upgrade request too large", event_hint=RejectConnection(status_code=431)
                )
            try:
                data = await io.receive_some(RECEIVE_SIZE)
            except _BROKEN:
                data = b""
            if not data:
                await trio.aclose_forcefully(stream)
                return None
            received += len(data)
            connection.receive_data(bytes(data))
    except wsproto.utilities.RemoteProtocolError as exc:
        hint = exc.event_hint
        if isinstance(hint, RejectConnection):
            try:
                await io.send_all(connection.send(hint))
            except (*_BROKEN, wsproto.utilities.LocalProtocolError):
                pass
        await trio.aclose_forcefully(stream)
        return None


async def connect(
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    extra_headers: list[tuple[bytes, bytes]],
) -> WebSocket:
    """The client's upgrade over an open transport.

    Raises:
        ConnectionRejected: the server answered with an HTTP status (401, 503...).
        HandshakeError: the answer was not HTTP or never came whole.
    """
    connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    io = fast_io(stream)
    try:
        await io.send_all(
            connection.send(Request(host=host, target=resource, extra_headers=extra_headers))
        )
    except _BROKEN as exc:
        raise HandshakeError("the connection closed during the upgrade") from exc
    rejected: int | None = None
    body: collections.deque[bytes] = collections.deque()
    received = 0
    try:
        while True:
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    return WebSocket(stream, connection, host)
                if isinstance(event, RejectConnection):
                    rejected = event.status_code
                    if not event.has_body:
                        raise ConnectionRejected(rejected, b"")
                elif isinstance(event, RejectData):
                    body.append(event.data)
                    if event.body_finished:
                        assert rejected is not None
                        raise ConnectionRejected(rejected, b"".join(body))
            if received > MAX_HANDSHAKE_BYTES:
                raise HandshakeError("the upgrade answer is too large")
            try:
                data = await io.receive_some(RECEIVE_SIZE)
            except _BROKEN:
                data = b""
            if not data:
                if rejected is not None:
                    raise ConnectionRejected(rejected, b"".join(body))
                raise HandshakeError("the connection closed during the upgrade")
            received += len(data)
            connection.receive_data(bytes(data))
    except wsproto.utilities.RemoteProtocolError as exc:
        raise HandshakeError(f"bad upgrade answer: {exc}") from None
