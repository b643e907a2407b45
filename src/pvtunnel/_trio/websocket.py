"""The tunnel's WebSocket: the sans-I/O core of `websockets`, driven by the tunnel's tasks.

trio-websocket ran a reader task per connection that handed each message over a
memory channel and sent under a lock: two extra task switches per message on each
side. wsproto, which it drives, masks in pure Python and copies each payload five
times: framing 256 KiB from the agent (the masked direction, so every download)
took 1.2 ms, capping downloads near 200 MB/s. The `websockets` protocol masks in
C (``websockets.speedups``) and frames a 256 KiB message in ~65 us; here the
tunnel's reader feeds it straight from the socket and hands payload to the
multiplexer, and a send is one system call when the socket has room
(`sockio.FastSocket`).

Only binary messages are part of the tunnel; a text message is a protocol error.
WebSocket pings are answered (by the protocol); the tunnel's own liveness check is
its PING frame. The protocol's logger never logs at debug level: the upgrade's
headers carry the agent's token.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final, NoReturn

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from pvtunnel._errors import RemoteProtocolError
from pvtunnel._trio.sockio import BROKEN, RECEIVE_SIZE, ByteStream, FastSocket, fast_io

if TYPE_CHECKING:
    from collections.abc import Sequence

CLOSE_GRACE_S: Final = 2.0
# Largest message taken from a peer; the tunnel's own stay under 300 KiB. A frame is
# buffered whole before it is parsed, so this also bounds memory per connection.
MAX_MESSAGE_BYTES: Final = 1024 * 1024
# An upgrade request or answer is a few hundred bytes; this bounds a hostile one.
MAX_HANDSHAKE_BYTES: Final = 64 * 1024
_BAD_UPGRADE: Final = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 30\r\nConnection: close\r\n\r\nthis is no WebSocket upgrade.\n"
)

# Never at debug level: the protocol would log the upgrade's headers, token included.
_protocol_logger = logging.getLogger("pvtunnel.websocket")
_protocol_logger.setLevel(logging.WARNING)


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
        self,
        stream: trio.abc.Stream,
        protocol: ClientProtocol | ServerProtocol,
        remote: str = "",
        pending: list[Event] | None = None,
    ) -> None:
        self.stream = stream
        self.remote = remote
        self._io = fast_io(stream)
        # Whether `send_nowait` can ever apply: a plain socket, not TLS.
        self.writes_nowait = isinstance(self._io, FastSocket)
        self._protocol = protocol
        self._receiving = False
        self._broken = False
        self._writing = False
        self._write_done = trio.lowlevel.ParkingLot()
        # Bytes `send_nowait` framed but could not write; they go out first next time.
        self._backlog: list[bytes | memoryview] = []
        # Set once the peer's close arrived or the transport ended: nothing more to read.
        self._close_seen = trio.Event()
        # Frames parsed together with the upgrade, before this object existed.
        self._pending = pending or []
        self.closed: WebSocketClosed | None = None

    @property
    def sending(self) -> bool:
        """Whether a write is under way (a caller may leave its frames to that writer)."""
        return self._writing

    @property
    def has_backlog(self) -> bool:
        """Whether `send_nowait` left bytes that a `flush` (or `send`) must write first."""
        return bool(self._backlog)

    @property
    def can_send_nowait(self) -> bool:
        """Whether `send_nowait` may be called now: a plain socket, open, nothing pending."""
        return (
            self.writes_nowait
            and not self._writing
            and not self._backlog
            and self.closed is None
            and not self._broken
        )

    def send_nowait(self, data: bytes) -> bool:
        """Frame one binary message and write it without yielding; True if it all went out.

        Only when `can_send_nowait`. Otherwise, or when the socket took only part,
        the rest is kept in order (`has_backlog`) for the next `flush` or `send`,
        which the caller must see to; a broken transport is remembered and raised
        there.
        """
        assert isinstance(self._io, FastSocket)
        try:
            self._protocol.send_binary(data)
        except InvalidState:
            self._lost("the WebSocket is closing")
            return False
        writes: list[bytes | memoryview] = list(self._protocol.data_to_send())
        for index, chunk in enumerate(writes):
            if not chunk:  # SEND_EOF: never after a binary frame; for safety
                self._backlog = writes[index:]
                return False
            try:
                written = self._io.try_send(chunk)
            except BROKEN:
                self._lost("the connection broke while sending")
                return False
            if written < len(chunk):
                self._backlog = [memoryview(chunk)[written:], *writes[index + 1 :]]
                return False
        return True

    async def flush(self) -> None:
        """Write whatever `send_nowait` left behind.

        Raises:
            WebSocketClosed: the transport broke (perhaps under `send_nowait`).
        """
        if self._broken and self.closed is not None:
            raise self.closed
        await self._flush()

    async def receive_some(self) -> bytes:
        """Binary payload bytes as they arrive, across message boundaries; b"" once closed.

        Closed means the peer's close arrived or the transport ended.

        Raises:
            RemoteProtocolError: the peer broke the WebSocket protocol, or sent text.
        """
        if self._close_seen.is_set():
            return b""
        self._receiving = True
        try:
            while True:
                payload = await self._take_events()
                if payload or self._close_seen.is_set():
                    return payload
                try:
                    data = await self._io.receive_some(RECEIVE_SIZE)
                except BROKEN:
                    data = b""
                if not data:
                    self._lost("the connection closed without a WebSocket close")
                    return b""
                self._protocol.receive_data(data)
        finally:
            self._receiving = False

    async def send(self, data: bytes) -> None:
        """Send one binary message, after whatever earlier calls handed over.

        The message is framed before anything yields, so messages leave in the order
        of the calls even when a write under way makes this one wait.

        Raises:
            WebSocketClosed: the WebSocket is closed or the transport broke.
        """
        if self.closed is not None:
            raise self.closed
        try:
            self._protocol.send_binary(data)
        except InvalidState:
            raise WebSocketClosed("the WebSocket is closing") from None
        await self._flush()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close: say why, wait a moment for the peer's close, then drop the transport.

        Not shielded: cancelled, it drops the transport at once, where a shielded close
        would wait out the grace period for a peer that is itself shutting down.
        """
        protocol = self._protocol
        try:
            with trio.move_on_after(CLOSE_GRACE_S):
                if self.closed is None and not self._broken:
                    self.closed = WebSocketClosed(reason or "closed here", code)
                    if protocol.state is State.OPEN:
                        protocol.send_close(code, _short(reason))
                        await self._flush()
                    if self._receiving:
                        # The tunnel's reader sees the peer's close and tells us.
                        await self._close_seen.wait()
                    else:
                        while await self.receive_some():  # payload still on its way
                            pass
        except (WebSocketClosed, RemoteProtocolError):
            pass
        finally:
            self.closed = self.closed or WebSocketClosed(reason or "closed here", code)
            self._close_seen.set()
            await trio.aclose_forcefully(self.stream)

    async def _take_events(self) -> bytes:
        """Payload of the frames received so far; answers pings and closes on the way."""
        protocol = self._protocol
        chunks: list[bytes] = []
        text = False
        events = protocol.events_received()
        if self._pending:
            events, self._pending = self._pending + events, []
        for event in events:
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.BINARY or opcode is Opcode.CONT:
                chunks.append(bytes(event.data))
            elif opcode is Opcode.TEXT:
                text = True
        if text:
            await self._fail_protocol("text WebSocket message on the tunnel", 1003)
        if protocol.parser_exc is not None and not isinstance(protocol.parser_exc, EOFError):
            # The protocol already queued a close saying why; it goes out first.
            await self._fail_protocol(f"WebSocket protocol error: {protocol.parser_exc}", 1002)
        if protocol.close_rcvd is not None and not self._close_seen.is_set():
            close = protocol.close_rcvd
            if self.closed is None:
                self.closed = WebSocketClosed(close.reason or "closed by the peer", close.code)
            self._close_seen.set()
        if protocol.writes:  # pongs, the answer to a close
            # The peer may have left right after its close: nothing more to say then.
            with contextlib.suppress(WebSocketClosed):
                await self._flush()
        return b"".join(chunks)  # one chunk: that very object, no copy

    async def _fail_protocol(self, reason: str, code: int) -> NoReturn:
        """Tell the peer why (a close with ``code``), then raise `RemoteProtocolError`."""
        protocol = self._protocol
        if self.closed is None:
            self.closed = WebSocketClosed(reason, code)
        if protocol.state is State.OPEN:
            protocol.fail(code, _short(reason))
        if not self._broken:
            with contextlib.suppress(WebSocketClosed):
                await self._flush()
        self._close_seen.set()
        raise RemoteProtocolError(reason)

    async def _flush(self) -> None:
        """Send what the protocol has queued; one writer at a time, so frames never interleave.

        Frames are serialised when queued, in call order, and leave in that order:
        whoever writes takes everything queued so far.
        """
        while self._writing:
            await self._write_done.park()
        writes: list[bytes | memoryview] = list(self._protocol.data_to_send())
        if self._backlog:
            writes, self._backlog = [*self._backlog, *writes], []
        if not writes:
            return
        if self._broken:
            raise WebSocketClosed("the connection is broken")
        self._writing = True
        try:
            await _write_all(self.stream, writes, self._io)
        except BROKEN:
            self._lost("the connection broke while sending")
            raise self.closed or WebSocketClosed("the connection broke") from None
        except BaseException:
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
    """An upgrade the server has read and found valid, not yet answered."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: ServerProtocol,
        request: Request,
        accepted: Response,
        pending: list[Event],
    ) -> None:
        self.stream = stream
        self._protocol = protocol
        self._accepted = accepted
        self._pending = pending
        self.path = request.path
        self.headers: list[tuple[bytes, bytes]] = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.raw_items()
        ]

    async def accept(self, remote: str = "") -> WebSocket:
        """Answer 101 and hand over the WebSocket.

        Raises:
            WebSocketClosed: the peer left before the answer went out (the stream
                is closed then).
        """
        protocol = self._protocol
        protocol.send_response(self._accepted)
        try:
            await _write_all(self.stream, protocol.data_to_send())
        except BROKEN as exc:
            await trio.aclose_forcefully(self.stream)
            raise WebSocketClosed(f"the upgrade's answer could not be sent: {exc}", 1006) from None
        return WebSocket(self.stream, protocol, remote, self._pending)

    async def reject(self, status: int, body: bytes) -> None:
        """Answer with an HTTP error and close the transport."""
        protocol = self._protocol
        try:
            protocol.send_response(protocol.reject(status, body.decode()))
            await _write_all(self.stream, protocol.data_to_send())
        except BROKEN:
            pass
        finally:
            await trio.aclose_forcefully(self.stream)


async def read_upgrade(stream: trio.abc.Stream) -> UpgradeRequest | None:
    """Read an agent's upgrade request; None if it was no usable upgrade (answered, closed)."""
    protocol = ServerProtocol(max_size=MAX_MESSAGE_BYTES, logger=_protocol_logger)
    io = fast_io(stream)
    received = 0
    try:
        while True:
            events = protocol.events_received()
            if events:
                request = events[0]
                assert isinstance(request, Request)
                response = protocol.accept(request)
                if response.status_code == 101:
                    return UpgradeRequest(stream, protocol, request, response, list(events[1:]))
                protocol.send_response(response)  # 400, 426...: not a usable upgrade
                await _write_all(stream, protocol.data_to_send())
                break
            if protocol.handshake_exc is not None:  # not HTTP, or too large
                writes = protocol.data_to_send()
                if not any(writes):  # the protocol gave up without an answer: ours
                    writes = [_BAD_UPGRADE]
                await _write_all(stream, writes)
                break
            if received > MAX_HANDSHAKE_BYTES:
                await _write_all(stream, [_BAD_UPGRADE])
                break
            try:
                data = await io.receive_some(RECEIVE_SIZE)
            except BROKEN:
                data = b""
            if not data:
                break
            received += len(data)
            protocol.receive_data(data)
    except BROKEN:
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

    ``host`` is the Host header (with a port when not the default).

    Raises:
        ConnectionRejected: the server answered with an HTTP status (401, 503...).
        HandshakeError: the answer was not HTTP or never came whole.
    """
    protocol = ClientProtocol(
        parse_uri("ws://pvtunnel" + resource),
        max_size=MAX_MESSAGE_BYTES,
        logger=_protocol_logger,
    )
    request = protocol.connect()
    del request.headers["Host"]
    request.headers["Host"] = host
    for name, value in extra_headers:
        request.headers[name.decode("latin-1")] = value.decode("latin-1")
    protocol.send_request(request)
    io = fast_io(stream)
    try:
        await _write_all(stream, protocol.data_to_send())
    except BROKEN as exc:
        raise HandshakeError("the connection closed during the upgrade") from exc
    received = 0
    while True:
        events = protocol.events_received()
        for index, event in enumerate(events):
            if isinstance(event, Response):
                if event.status_code != 101:
                    raise ConnectionRejected(event.status_code, bytes(event.body))
                if protocol.handshake_exc is not None:
                    raise HandshakeError(f"bad upgrade answer: {protocol.handshake_exc}")
                # Frames that came in the same read as the answer are the tunnel's.
                return WebSocket(stream, protocol, host, list(events[index + 1 :]))
        if protocol.handshake_exc is not None:
            raise HandshakeError(f"bad upgrade answer: {protocol.handshake_exc}")
        if received > MAX_HANDSHAKE_BYTES:
            raise HandshakeError("the upgrade answer is too large")
        try:
            data = await io.receive_some(RECEIVE_SIZE)
        except BROKEN:
            data = b""
        if not data:
            protocol.receive_eof()
            for event in protocol.events_received():  # an answer ended by the close
                if isinstance(event, Response) and event.status_code != 101:
                    raise ConnectionRejected(event.status_code, bytes(event.body))
            raise HandshakeError("the connection closed during the upgrade")
        received += len(data)
        protocol.receive_data(data)


async def _write_all(
    stream: trio.abc.Stream,
    writes: Sequence[bytes | memoryview],
    io: ByteStream | None = None,
) -> None:
    """The protocol's writes in order; its end-of-stream marker half-closes ``stream``."""
    io = io or fast_io(stream)
    for data in writes:
        if not data:  # SEND_EOF is b""
            await _send_eof(stream)
        else:
            await io.send_all(data)


async def _send_eof(stream: trio.abc.Stream) -> None:
    # The protocol's end of stream; a TLS stream cannot half-close, and need not.
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()


def _short(reason: str) -> str:
    """A close reason has room for 123 bytes."""
    return reason.encode()[:120].decode(errors="ignore")
