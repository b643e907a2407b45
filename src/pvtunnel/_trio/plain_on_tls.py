"""A plain-HTTP request on the https port: answered in plain HTTP, as nginx does.

A client that dials the https port with an ``http://`` URL would otherwise meet a
TLS handshake that fails on its first byte: the connection closes with no word of
why (curl says "Empty reply from server"), and nothing is logged. The first byte
tells the two apart without taking it from the TLS layer (it is peeked): a TLS
connection starts with a record type (0x16 for a handshake, 0x80 or more for an
SSLv2-style hello), an HTTP request with the letter of a method.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Final

import trio

from pvtunnel._http.errors import error_body
from pvtunnel._trio.closing import close_lingering
from pvtunnel._trio.dates import http_date
from pvtunnel._trio.sockio import BROKEN

DETAIL: Final = "a plain HTTP request was sent to the HTTPS port: use https://"


async def speaks_plain_http(stream: trio.SSLStream[trio.abc.Stream]) -> bool:
    """Whether the client's first byte starts an HTTP request rather than TLS.

    Waits for that byte (the caller bounds the wait); False when the client closed
    without one, or its transport is no socket (nothing to peek at).
    """
    transport = stream.transport_stream
    if not isinstance(transport, trio.SocketStream):
        return False
    try:
        first = await transport.socket.recv(1, socket.MSG_PEEK)
    except OSError:
        return False  # reset before its first byte: the handshake meets it too
    return first.isalpha()


async def answer_in_plain_http(stream: trio.SSLStream[trio.abc.Stream]) -> None:
    """Answer 400 without TLS, saying what went wrong, and close (lingering: the
    request is left unread, and a reset would destroy the answer)."""
    body = error_body(400, DETAIL)
    head = (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Date: %s\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    ) % (len(body), http_date())
    transport = stream.transport_stream
    with contextlib.suppress(*BROKEN):
        await transport.send_all(head + body)
    await close_lingering(transport)
