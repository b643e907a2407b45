"""A raw byte pipe between a socket and a tunnel stream (after a 101, or for CONNECT).

Once a stream stops carrying HTTP, it carries bytes both ways with the same flow
control as a body. Each direction ends on its own: the socket's EOF becomes the
stream's END, and the stream's END becomes a half-close (``send_eof``) of the
socket, so protocols that half-close (a client that shuts down writing and still
reads the answer) work. Over TLS, which trio cannot half-close, the stream's END
ends the whole pipe instead. The pipe ends when both directions have, or at once
on a reset or a broken socket.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final, Protocol

import trio

from pvtunnel._errors import ErrorCode, TunnelClosedError
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.sockio import BROKEN, RECEIVE_SIZE
from pvtunnel._trio.stream import END

if TYPE_CHECKING:
    from pvtunnel._trio.channels import StreamChannel

logger = logging.getLogger("pvtunnel.agent")  # only the agent cuts a stalled pipe

_BROKEN: Final = (*BROKEN, OSError)
# A write to the connection that takes nothing this long, while the tunnel
# connection is short of window, ends the pipe (`cut_stalled`): the pipe holds its
# stream's window meanwhile, and a few such pipes would hold the window every other
# stream of the connection needs to move at all. Looked at every `STALL_CHECK_S`.
STALLED_WHEN_SHORT_S: Final = 5.0
STALL_CHECK_S: Final = 1.0


class PipeBytes:
    """What a pipe moved so far, each way: read while it runs, or after it ended
    however it ended (a log line written when it is cancelled still has them)."""

    __slots__ = ("from_socket", "to_socket")

    def __init__(self) -> None:
        self.from_socket = 0  # read from the connection, sent into the tunnel stream
        self.to_socket = 0  # taken from the tunnel stream, written to the connection


class WriteWatch(Protocol):
    """Whoever watches the writes to the connection: a write under way, and how many
    ended (a count that does not move while one is under way is a peer that stopped
    reading). The server's client connection is one, for its responses and pipe alike."""

    writing: bool
    writes: int


async def run_pipe(
    stream: trio.abc.Stream,
    channel: StreamChannel,
    initial: bytes = b"",
    counts: PipeBytes | None = None,
    watch: WriteWatch | None = None,
    *,
    cut_stalled: bool = False,
) -> None:
    """Move bytes both ways until both directions ended; never raises for I/O failures.

    Args:
        stream: the client or upstream connection, already past HTTP.
        channel: the tunnel stream.
        initial: bytes already read from ``stream`` beyond the HTTP head (h11's
            trailing data), sent first.
        counts: where to count the bytes moved, if the caller wants them.
        watch: told of each write to ``stream``, if the caller watches them.
        cut_stalled: watch the writes here, and reset the stream when one takes
            nothing for `STALLED_WHEN_SHORT_S` while the connection is short of
            window (the agent's pipes to upstreams; the server watches its clients'
            writes itself, through ``watch``).
    """
    counts = PipeBytes() if counts is None else counts
    if cut_stalled:
        watch = _Writes()
    try:
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            if cut_stalled:
                assert isinstance(watch, _Writes)
                nursery.start_soon(_cut_when_stalled, watch, channel, scope)
            async with trio.open_nursery() as directions:
                directions.start_soon(_socket_to_stream, stream, channel, initial, counts, scope)
                directions.start_soon(_stream_to_socket, stream, channel, counts, watch, scope)
            scope.cancel()  # both directions ended: so does the watch
    except BaseExceptionGroup as group:
        raise first_error(group) from None


async def _socket_to_stream(
    stream: trio.abc.Stream,
    channel: StreamChannel,
    initial: bytes,
    counts: PipeBytes,
    scope: trio.CancelScope,
) -> None:
    try:
        if initial:
            await channel.send_data(initial)
            counts.from_socket += len(initial)
        while data := await stream.receive_some(RECEIVE_SIZE):
            await channel.send_data(bytes(data))
            counts.from_socket += len(data)
        channel.end()
    except _BROKEN:
        channel.reset(ErrorCode.CANCEL, "connection broken")
        scope.cancel()
    except TunnelClosedError:
        scope.cancel()


async def _stream_to_socket(
    stream: trio.abc.Stream,
    channel: StreamChannel,
    counts: PipeBytes,
    watch: WriteWatch | None,
    scope: trio.CancelScope,
) -> None:
    try:
        while (item := await channel.receive()) is not END:
            assert isinstance(item, bytes)
            # Counted once on its way, as a response's body is: a write cut short (a
            # client that stops reading) is logged with what it was sending.
            counts.to_socket += len(item)
            if watch is None:
                await stream.send_all(item)
            else:
                watch.writing = True
                try:
                    await stream.send_all(item)
                finally:
                    watch.writing = False
                watch.writes += 1
            channel.consume(len(item))
        if isinstance(stream, trio.abc.HalfCloseableStream):
            with contextlib.suppress(*_BROKEN):
                await stream.send_eof()
        else:
            # A stream that cannot half-close (TLS): the end can only be passed on
            # by closing the whole connection, or the peer would wait for it forever.
            scope.cancel()
    except _BROKEN:
        channel.reset(ErrorCode.CANCEL, "connection broken")
        scope.cancel()
    except TunnelClosedError:
        scope.cancel()


class _Writes:
    """A `WriteWatch` of the pipe's own."""

    __slots__ = ("writes", "writing")

    def __init__(self) -> None:
        self.writing = False
        self.writes = 0


async def _cut_when_stalled(
    watch: _Writes, channel: StreamChannel, scope: trio.CancelScope
) -> None:
    seen, since = -1, trio.current_time()
    while True:
        await trio.sleep(STALL_CHECK_S)
        now = trio.current_time()
        if not watch.writing or watch.writes != seen or not channel.connection_short():
            seen, since = watch.writes, now
            continue
        if now - since >= STALLED_WHEN_SHORT_S:
            logger.info(
                "stream %d: pipe cut: the connection took nothing for %.1fs",
                channel.stream_id,
                now - since,
            )
            channel.reset(ErrorCode.CANCEL, "the pipe's connection stopped reading")
            scope.cancel()
            return
