"""Closing a client connection that may still be sending, without losing the answer.

When the server answers before it has read a request's whole body (a refusal, an
upstream that answered early, a body that broke the rules) and then closes, the
client's unread bytes make the kernel answer with a reset, and a reset destroys
whatever the client has not read yet: the answer it was meant to get. Clients that
send the whole body before they read (Python's http.client, many others) then
see "connection reset" instead of a 404 or a 413. RFC 9112 section 9.6 asks a
server to close in stages: stop sending, then read away what still comes for a
while, then close. nginx calls it a lingering close.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Final

import trio

from pvtunnel._trio.hangups import raw_socket
from pvtunnel._trio.sockio import BROKEN, RECEIVE_SIZE

# How long the client may go on sending after the answer: long enough for a body of
# several MiB on a slow link to finish, short enough that a client that never
# stops holds its connection a few seconds only.
LINGER_S: Final = 5.0


async def close_lingering(stream: trio.abc.Stream) -> None:
    """Half-close ``stream``, read away what the client still sends (for at most
    `LINGER_S`), then close it. Cancellation ends the lingering, not the close."""
    try:
        with trio.move_on_after(LINGER_S), contextlib.suppress(*BROKEN):
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()  # TLS cannot: the client sees the end at the close
            while await stream.receive_some(RECEIVE_SIZE):
                pass
    finally:
        with trio.move_on_after(1, shield=True):
            await stream.aclose()


async def close_after_answer(
    stream: trio.abc.Stream, *, may_still_send: bool, may_hold_unread: bool = True
) -> None:
    """Close ``stream`` once its answer is written, lingering only where it must.

    A client that ``may_still_send`` (a body not read to its end, a head that broke
    the rules), or whose bytes wait unread (a pipelined request, a stray empty
    line: asked only where ``may_hold_unread``), would turn a plain close into a
    reset that destroys the answer: `close_lingering` then; otherwise a plain close.
    """
    if may_still_send or (may_hold_unread and has_unread_bytes(stream)):
        await close_lingering(stream)
    else:
        with trio.move_on_after(1, shield=True):
            await stream.aclose()


_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)


async def close_with_reset(stream: trio.abc.Stream) -> None:
    """Close ``stream`` with a reset (RST) rather than the orderly end (FIN).

    For a response whose body ends where the connection ends (an HTTP/1.0 client,
    no Content-Length): cut short, an orderly close would make it look whole
    (RFC 9112 section 8). A reset is the one way left to say it is not.
    """
    sock = raw_socket(stream)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    with trio.move_on_after(1, shield=True):
        await stream.aclose()


def has_unread_bytes(stream: trio.abc.Stream) -> bool:
    """Whether the client's side of ``stream`` holds bytes not read yet (or its end).

    Closed over unread bytes, a socket sends a reset, which destroys what the
    client has not read yet: then the close goes in stages (`close_lingering`).
    False where there is no socket to ask (a memory stream in tests).
    """
    sock = raw_socket(stream)
    if sock is None:
        return False
    if sock.fileno() < 0:
        return False  # closed already (a TLS error closes its transport)
    return sock.is_readable()
