"""Noticing a client that hung up while the server reads nothing from it.

While a request waits for its response, or is held for an agent, nobody reads the
client's socket, so a hang-up shows only on the socket: readable with nothing to
read, or (Linux) POLLRDHUP behind unread data. Everything here only peeks, so a
pipelined request stays for the keep-alive loop to read.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from pvtunnel._trio.groups import first_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._trio.state import ServerState

T = TypeVar("T")

logger = logging.getLogger("pvtunnel.server")

HANGUP_CHECK_S: Final = 0.2


async def watch_hangups(state: ServerState) -> None:
    """Notice clients that hang up while they wait for a response, for the whole server.

    A peek at each waiting client a few times a second costs almost nothing, where
    a watching task per request (spawned, waiting on its socket, cancelled) cost a
    sixth of the server's CPU under load. The upstream learns of a hang-up within
    `HANGUP_CHECK_S`.
    """
    awaiting = state.awaiting
    while True:
        if not awaiting:
            await state.awaiting_started.park()
            continue
        await trio.sleep(HANGUP_CHECK_S)
        for client, channel in list(awaiting.items()):
            # The client may have moved on to another request while we peeked at others.
            if awaiting.get(client) is not channel:
                continue
            try:
                settled = await client.check_hangup(channel)
            except Exception:
                # Boundary: this task serves the whole server, and a failure checking
                # one client must not end it (and every connection with it).
                logger.exception("checking %s for a hang-up failed", client.address)
                settled = True
            if settled and awaiting.get(client) is channel:
                del awaiting[client]
        state.hangups_checked.unpark_all()


async def has_hung_up(stream: trio.abc.Stream) -> bool:
    """Whether the client closed its side, judged now without waiting.

    False for a stream without a socket and for one with nothing to read. Data
    to read (a pipelined request) counts as a hang-up only if the peer's close
    is seen behind it (`_peer_closed`).
    """
    sock = raw_socket(stream)
    if sock is None or not sock.is_readable():
        return False
    return await _closed_at_peek(sock)


async def unless_hung_up(stream: trio.abc.Stream, work: Callable[[], Awaitable[T]]) -> T | None:
    """``work``'s result, or None when the client hangs up first (``work`` is then
    cancelled): a request held for an agent, a replay waiting for its answer, whose
    client has gone frees its place now rather than when the wait runs out.

    Data instead (a pipelined request) is left unread, and ``work`` goes on.
    """
    result: T | None = None
    try:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                if await hung_up_when_readable(stream):
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            result = await work()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return result


async def hung_up_when_readable(stream: trio.abc.Stream) -> bool:
    """Wait until the client's socket is readable: True if that was a hang-up.

    Returns False at once for a stream without a socket, and False when data came
    instead (it is left unread).
    """
    sock = raw_socket(stream)
    if sock is None:
        return False
    await trio.lowlevel.wait_readable(sock)
    return await _closed_at_peek(sock)


async def _closed_at_peek(sock: trio.socket.SocketType) -> bool:
    # Readable, so this returns at once (no other task reads the socket now).
    try:
        peeked = await sock.recv(1, socket.MSG_PEEK)
    except OSError:
        peeked = b""
    if sock.fileno() == -1:
        # The peek yields once it has its answer, and meanwhile the connection's
        # own task may have finished the exchange and closed the socket: nobody is
        # waiting any more, so there is no hang-up to act on.
        return False
    return not peeked or _peer_closed(sock)


# Linux reports a peer's FIN even behind unread data (a pipelined request); elsewhere
# a hang-up behind such data shows only once the server reads up to it.
_POLL_CLOSED: Final = getattr(select, "POLLRDHUP", 0)


def _peer_closed(sock: trio.socket.SocketType) -> bool:
    """Whether the peer closed its side (or reset), whatever data is still unread."""
    if not _POLL_CLOSED:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _POLL_CLOSED)
    # POLLHUP and POLLERR (a reset) are reported whatever the mask asks for.
    return bool(poller.poll(0))


def raw_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under a stream (through any TLS layers); None for other streams."""
    transport = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    return transport.socket if isinstance(transport, trio.SocketStream) else None


def peer_address(stream: trio.abc.Stream) -> str:
    """The peer's IP address, or ``"unknown"`` (not a socket, or already reset)."""
    sock = raw_socket(stream)
    if sock is not None:
        try:
            peer = sock.getpeername()
        except OSError:  # ENOTCONN: the peer reset the connection before we asked
            return "unknown"
        if isinstance(peer, tuple):
            return str(peer[0])
    return "unknown"
