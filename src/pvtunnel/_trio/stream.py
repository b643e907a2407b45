"""A tunnel stream's Trio side: the inbox of what the peer sent, and the sends (`Channel`).

The `Tunnel`'s reader fills a stream's inbox; the task serving the stream (a
client's request on the server, its replay on the agent, a pipe) takes from it
and sends through it. Of the connection a channel needs only its multiplexer and
a few ways to wait and to wake the writer (`StreamTunnel`): how the connection
reads, writes, batches and keeps alive stays in `tunnel`, which builds channels.

A stream's inbox cannot grow without bound: the peer may only send what the
stream's credit window allows, and all inboxes together what the connection window
allows; credit comes back only after `Channel.consume` has been called for bytes
the stream's task has actually passed on (or the channel was reset or forgotten).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final, Protocol

import trio

from pvtunnel._errors import ErrorCode, StreamClosedError, StreamResetError
from pvtunnel._trio.batching import SEND_BACKLOG_BYTES, SEND_BACKLOG_PIECES
from pvtunnel._wire.heads import ResponseHead

if TYPE_CHECKING:
    from collections.abc import Callable

    from pvtunnel._wire.frames import StreamId
    from pvtunnel._wire.mux import Multiplexer

# Body pieces under this size join the small piece queued before them (`deliver_data`).
_JOIN_BELOW: Final = 4096


class _End:
    """Inbox marker: the peer finished its half of the stream."""


END: Final = _End()

InboxItem = bytes | ResponseHead | _End


class StreamTunnel(Protocol):
    """What a channel needs of its stream's connection (`pvtunnel._trio.tunnel.Tunnel`)."""

    @property
    def mux(self) -> Multiplexer: ...
    @property
    def early_send_due(self) -> bool: ...
    @property
    def sent_lot(self) -> trio.lowlevel.ParkingLot: ...
    @property
    def credit_waiters(self) -> set[Channel]: ...
    def wake_writer(self) -> None: ...
    def forget(self, stream_id: StreamId) -> None: ...
    async def send_early(self) -> None: ...


class Channel:
    """The Trio side of one stream: an inbox of what the peer sent, and send helpers.

    Items are `ResponseHead` (server side), body ``bytes``, and `END`. A reset or a
    lost connection makes `receive` raise; a reset also cancels ``cancel_scope``
    so whoever serves the stream stops at once.

    The tunnel that owns the channel fills it (`deliver`, `deliver_data`, `fail`,
    `credit_granted`); whoever serves the stream uses the rest.
    """

    __slots__ = (
        "_credit_lot",
        "_failure",
        "_inbox",
        "_lot",
        "_tunnel",
        "cancel_scope",
        "interim",
        "interim_bytes",
        "stream_id",
    )

    def __init__(self, tunnel: StreamTunnel, stream_id: StreamId) -> None:
        self._tunnel = tunnel
        self.stream_id = stream_id
        # Body bytes come out as ``bytes``; joined small pieces wait as a bytearray.
        self._inbox: collections.deque[InboxItem | bytearray] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._credit_lot = trio.lowlevel.ParkingLot()
        self._failure: Exception | None = None
        self.cancel_scope = trio.CancelScope()
        # Interim (1xx) response heads received (server side), and their `interim_cost`.
        self.interim = 0
        self.interim_bytes = 0

    @property
    def failure(self) -> Exception | None:
        """Why the stream stopped early (a `StreamResetError` or `TunnelClosedError`)."""
        return self._failure

    def deliver_data(self, data: bytes) -> None:
        """Queue body bytes; small pieces join the small piece before them.

        Credit counts payload bytes only, and a queued ``bytes`` object costs some
        50 bytes of its own: a peer sending its window in 2-byte DATA frames would
        otherwise make the inbox hold some 25 times the window.
        """
        inbox = self._inbox
        if len(data) < _JOIN_BELOW and inbox:
            tail = inbox[-1]
            if type(tail) is bytearray and len(tail) < _JOIN_BELOW:
                tail += data
                return
            if type(tail) is bytes and len(tail) < _JOIN_BELOW:
                inbox[-1] = bytearray(tail) + data
                return
        self.deliver(data)

    def deliver(self, item: InboxItem | bytearray) -> None:
        self._inbox.append(item)
        # unpark_all is Python code that walks the lot even when it is empty, and
        # most pushes (several per request) find nobody waiting.
        if self._lot:
            self._lot.unpark_all()

    def fail(self, failure: Exception) -> None:
        if self._failure is None:
            self._failure = failure
        self._lot.unpark_all()
        self._credit_lot.unpark_all()

    def credit_granted(self) -> None:
        if self._credit_lot:
            self._credit_lot.unpark_all()

    async def receive(self) -> InboxItem:
        """The next item from the peer.

        Raises:
            StreamResetError: the peer reset the stream.
            TunnelClosedError: the connection is gone.
        """
        while not self._inbox:
            if self._failure is not None:
                raise self._failure
            if self._tunnel.early_send_due:
                await self._tunnel.send_early()
                continue
            await self._lot.park()
        item = self._inbox.popleft()
        return bytes(item) if isinstance(item, bytearray) else item

    def receive_nowait(self) -> InboxItem | None:
        """The next item if one is already here, else None (raises like `receive`)."""
        if self._inbox:
            item = self._inbox.popleft()
            return bytes(item) if isinstance(item, bytearray) else item
        if self._failure is not None:
            raise self._failure
        return None

    def connection_short(self) -> bool:
        """Whether the application holds half the connection window or more: what
        it holds for streams that do not move is credit every other stream lacks."""
        mux = self._tunnel.mux
        return mux.held_bytes * 2 >= mux.connection_window

    def consume(self, size: int) -> None:
        """Return ``size`` bytes of credit once they were passed on.

        A no-op once the channel failed: a reset gave back whatever the stream still
        held, and a closed connection has no credit left to return.
        """
        if self._failure is not None:
            return
        tunnel = self._tunnel
        tunnel.mux.acknowledge_data(self.stream_id, size)
        tunnel.wake_writer()

    async def send_data(self, data: bytes) -> None:
        """Send body bytes, waiting for credit as needed.

        Raises:
            StreamResetError / TunnelClosedError: the stream or connection is gone.
        """
        tunnel = self._tunnel
        mux = tunnel.mux
        stream_id = self.stream_id
        while data:
            if self._failure is not None:
                raise self._failure
            if mux.queued_pieces >= SEND_BACKLOG_PIECES and mux.queued_bytes >= SEND_BACKLOG_BYTES:
                tunnel.wake_writer()
                await tunnel.sent_lot.park()
                continue
            credit = mux.send_credit(stream_id)
            if credit == 0:
                if not mux.is_stream_open(stream_id):
                    raise StreamResetError(ErrorCode.CANCEL, "stream closed")
                # Registered so that connection credit (stream 0) wakes us too.
                tunnel.credit_waiters.add(self)
                try:
                    await self._credit_lot.park()
                finally:
                    tunnel.credit_waiters.discard(self)
                continue
            if credit >= len(data):
                chunk, data = data, b""
            else:
                chunk, data = data[:credit], data[credit:]
            self._call(mux.send_data, stream_id, chunk)
            tunnel.wake_writer()

    def send_response(self, head: ResponseHead) -> None:
        self._call(self._tunnel.mux.send_response, self.stream_id, head)
        self._tunnel.wake_writer()

    def end(self) -> None:
        """Finish our half of the stream."""
        self._call(self._tunnel.mux.end_stream, self.stream_id)
        self._tunnel.wake_writer()

    def reset(self, code: ErrorCode, reason: str = "") -> None:
        """Abort the stream both ways; harmless when it already ended."""
        tunnel = self._tunnel
        tunnel.mux.reset_stream(self.stream_id, code, reason)
        tunnel.forget(self.stream_id)
        tunnel.wake_writer()
        self.fail(StreamResetError(code, "reset here"))

    def _call(self, method: Callable[..., None], *args: object) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            method(*args)
        except StreamClosedError:
            raise StreamResetError(ErrorCode.CANCEL, "stream closed") from None
