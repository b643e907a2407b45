"""An h11 connection bound to a Trio stream: the one read/feed/send loop both ends share.

Peers that write a message in pieces without TCP_NODELAY (Python's http.server
writes a response's head and its body in two sends, and so do many frameworks)
hold each later piece back under Nagle's algorithm until the earlier one is
acknowledged, while our kernel delays that acknowledgement hoping to piggyback it
on data we would send: we send nothing until the message is whole, so each piece
waits out the delayed-ACK timer, about 40 ms on Linux. So when we are about to
wait for more of a message than has arrived, we ask for the acknowledgement now
(TCP_QUICKACK, which sends a pending ACK at once): at most twice per message (once
its head is in, once in a head still arriving), and never for a message that
arrived in one read, the common case.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import h11
import trio

from pvtunnel._trio.sockio import BROKEN, RECEIVE_SIZE, fast_io

if TYPE_CHECKING:
    from collections.abc import Callable

_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)
_ACKS_PER_MESSAGE: Final = 2
# `gather` joins body pieces already read up to this size, and this many pieces
# before it yields: one 64 KiB read of 2-byte chunks is about 9,000 of them, and
# h11 parses them one by one.
GATHER_BYTES: Final = 65536
GATHER_PIECES: Final = 512

S = TypeVar("S", bound=trio.abc.Stream)


class H11Stream(Generic[S]):
    """``conn`` over ``stream``; a broken stream reads as end of input, which h11 judges,
    except in a body, where it raises.

    ``received`` counts bytes fed to h11 since it was last reset, so a caller can
    tell how big a head really was (h11 only caps heads that arrive incomplete).
    While ``recording`` is a buffer, the bytes fed are also appended to it, so a
    caller can check what h11 normalises away (obs-fold, see ``_http.framing``).
    ``on_data``, if set, is called once (and then unset) when some bytes of a
    message arrived and more are awaited, so a caller can bound the rest from the
    first byte on.
    """

    __slots__ = (
        "acks_left",
        "acks_per_message",
        "conn",
        "io",
        "on_data",
        "pending",
        "pending_bytes",
        "received",
        "recording",
        "skip_blank_lines",
        "stream",
    )

    def __init__(self, conn: h11.Connection, stream: S) -> None:
        self.conn = conn
        self.stream = stream
        self.io = fast_io(stream)
        self.received = 0
        self.recording: bytearray | None = None
        self.on_data: Callable[[], None] | None = None
        # While set, CR and LF bytes read are dropped until another byte comes: a
        # server expecting a request line ignores empty lines before it (RFC 9112
        # section 2.2; some clients send CRLF after a POST body). The caller sets it
        # when nothing of the next request is buffered (h11 refuses such lines).
        self.skip_blank_lines = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        # Quick ACKs still allowed for the message being read (see the module docstring);
        # none where the option or a socket is missing (TLS, memory streams).
        self.acks_per_message = (
            _ACKS_PER_MESSAGE
            if _QUICKACK is not None and isinstance(stream, trio.SocketStream)
            else 0
        )
        self.acks_left = self.acks_per_message

    async def next_event(self, *, read_first: bool = False) -> h11.Event:
        """The next event, reading as needed.

        ``read_first`` skips asking h11 before the first read: for the first event
        of an answer to a request just sent, where h11 holds nothing and would say
        so at the cost of a parse attempt.

        Raises:
            h11.RemoteProtocolError: the peer broke HTTP/1.1 (``error_status_hint``
                says how to answer), or pipelined a request we may not read yet.
        """
        conn = self.conn
        read = False
        while True:
            if not read_first:
                event = self.buffered_event()
                if event is not None:
                    return event
                if self.acks_left > 0 and (read or conn.their_state is h11.SEND_BODY):
                    # More of this message is due: a peer under Nagle waits for our ACK.
                    self.acks_left -= 1
                    self._ack_now()
                if read and self.on_data is not None:
                    # Part of a message came and we wait for the rest. A message that
                    # came whole in one read (the common case) never calls it.
                    self.on_data()
                    self.on_data = None
            read_first, read = False, True
            try:
                data = await self.io.receive_some(RECEIVE_SIZE)
            except BROKEN:
                if conn.their_state is h11.SEND_BODY:
                    # A reset in a body is no end of it: a body read until the
                    # close (no length) would otherwise pass for whole.
                    raise
                data = b""
            if self.skip_blank_lines and data:
                data = data.lstrip(b"\r\n")
                if not data:
                    continue  # only blank lines so far: read on
                self.skip_blank_lines = False
            self.received += len(data)
            if self.recording is not None:
                self.recording += data
            conn.receive_data(bytes(data))

    def buffered_event(self) -> h11.Event | None:
        """The next event if what was already read holds it, else None; never reads.

        Raises:
            h11.RemoteProtocolError: as for `next_event`.
        """
        event = self.conn.next_event()
        if isinstance(event, h11.Event):
            if type(event) is h11.EndOfMessage:
                self.acks_left = self.acks_per_message
            return event
        if event is h11.PAUSED:
            raise h11.RemoteProtocolError("pipelined request before the response")
        return None

    async def gather(self, first: bytes | bytearray) -> tuple[bytes, h11.Event | None]:
        """``first`` (a body piece) and the pieces already read after it, as one.

        A body sent in tiny pieces (chunked, a few bytes per chunk) would otherwise
        be passed on piece by piece: a frame, a queued item and a send each, which
        costs many times the bytes themselves. Yields to other tasks after
        `GATHER_PIECES` pieces, so such a body cannot hold the event loop.

        Returns:
            The joined bytes (at most `GATHER_BYTES` past ``first``), and the event
            that followed them if one was taken (not a body piece), else None.
        """
        event = self.buffered_event()
        if type(event) is not h11.Data:
            return bytes(first), event  # the common case: one piece per read
        pieces = [first, event.data]
        size = len(first) + len(event.data)
        following: h11.Event | None = None
        while size < GATHER_BYTES and len(pieces) < GATHER_PIECES:
            following = self.buffered_event()
            if type(following) is not h11.Data:
                break
            pieces.append(following.data)
            size += len(following.data)
            following = None
        if len(pieces) >= GATHER_PIECES:
            await trio.lowlevel.checkpoint()
        return b"".join(pieces), following

    def _ack_now(self) -> None:
        assert _QUICKACK is not None
        assert isinstance(self.stream, trio.SocketStream)
        with contextlib.suppress(OSError):
            self.stream.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if self.pending:
            self.pending.append(data or b"")
            await self.flush()
        elif data:
            await self.io.send_all(data)

    async def send_message(self, head: h11.Event) -> None:
        """Send a message without a body, its head and its end in one write."""
        conn = self.conn
        data = (conn.send(head) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        if self.pending:
            self.pending.append(data)
            await self.flush()
        elif data:
            await self.io.send_all(data)

    def queue(self, event: h11.Event) -> int:
        """Serialise an event to go out with the next `flush`; returns bytes queued.

        On loopback every send is a system call that also runs the receiver's
        side of TCP, so a response head, a small body and its end go out as one.
        """
        data = self.conn.send(event)
        if data:
            self.pending.append(data)
            self.pending_bytes += len(data)
        return self.pending_bytes

    def discard(self) -> None:
        """Drop what is queued (the connection is being abandoned)."""
        self.pending.clear()
        self.pending_bytes = 0

    async def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_bytes = 0
            await self.io.send_all(data)
