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

from pvtunnel._http.errors import error_body, reason_phrase
from pvtunnel._trio.closing import close_lingering
from pvtunnel._trio.dates import http_date
from pvtunnel._trio.sockio import BROKEN

PLAIN_ON_TLS: Final = "a plain HTTP request was sent to the HTTPS port: use https://"
# What a plain-HTTP request may start with: a method's letter, or the empty lines a
# server ignores before a request line (RFC 9112 section 2.2). A TLS connection
# starts with a record type, 0x14 to 0x18, or 0x80 and up for an SSLv2-style hello.
_PLAIN_FIRST: Final = frozenset(b"\r\nABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


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
    return bool(first) and first[0] in _PLAIN_FIRST


async def answer_in_plain_http(
    stream: trio.SSLStream[trio.abc.Stream], status: int, detail: str
) -> None:
    """Answer without TLS, saying what went wrong, and close (lingering: the
    request is left unread, and a reset would destroy the answer)."""
    body = error_body(status, detail)
    head = (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n"
        b"Date: %s\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    ) % (status, reason_phrase(status), len(body), http_date())
    transport = stream.transport_stream
    with contextlib.suppress(*BROKEN):
        await transport.send_all(head + body)
    await close_lingering(transport)
