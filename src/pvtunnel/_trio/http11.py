"""An h11 connection bound to a Trio stream: the one read/feed/send loop both ends share."""

from __future__ import annotations

from typing import Final

import h11
import trio

RECEIVE_SIZE: Final = 65536
BROKEN: Final = (trio.BrokenResourceError, trio.ClosedResourceError)


class H11Stream:
    """``conn`` over ``stream``; a broken stream reads as end of input, which h11 judges.

    ``received`` counts bytes fed to h11 since it was last reset, so a caller can
    tell how big a head really was (h11 only caps heads that arrive incomplete).
    """

    __slots__ = ("conn", "received", "stream")

    def __init__(self, conn: h11.Connection, stream: trio.abc.Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.received = 0

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
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except BROKEN:
                data = b""
            self.received += len(data)
            conn.receive_data(bytes(data))

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)
