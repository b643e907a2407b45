"""An h11 connection bound to a Trio stream: the one read/feed/send loop both ends share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import h11

from pvtunnel._trio.sockio import BROKEN, RECEIVE_SIZE, fast_io

if TYPE_CHECKING:
    import trio


class H11Stream:
    """``conn`` over ``stream``; a broken stream reads as end of input, which h11 judges.

    ``received`` counts bytes fed to h11 since it was last reset, so a caller can
    tell how big a head really was (h11 only caps heads that arrive incomplete);
    ``reads`` counts the reads that brought them.
    While ``recording`` is a buffer, the bytes fed are also appended to it, so a
    caller can check what h11 normalises away (obs-fold, see ``_http.framing``).
    """

    __slots__ = (
        "conn",
        "io",
        "pending",
        "pending_bytes",
        "reads",
        "received",
        "recording",
        "stream",
    )

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.io = fast_io(stream)
        self.received = 0
        self.reads = 0
        self.recording: bytearray | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    async def next_event(self) -> h11.Event:
        """The next event, reading as needed.

        Raises:
            h11.RemoteProtocolError: the peer broke HTTP/1.1 (``error_status_hint``
                says how to answer), or pipelined a request we may not read yet.
        """
        conn = self.conn
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                raise h11.RemoteProtocolError("pipelined request before the response")
            try:
                data = await self.io.receive_some(RECEIVE_SIZE)
            except BROKEN:
                data = b""
            self.received += len(data)
            self.reads += 1
            if self.recording is not None:
                self.recording += data
            conn.receive_data(bytes(data))

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if self.pending:
            self.pending.append(data or b"")
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
