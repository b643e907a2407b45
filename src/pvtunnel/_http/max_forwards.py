"""Max-Forwards on OPTIONS and TRACE (RFC 9110 section 7.6.2).

A client tracing or probing a chain of intermediaries says how many more may
forward its request. Every intermediary that forwards an OPTIONS or TRACE
decrements the count, and the one that receives it at 0 answers the request
itself, as its final recipient: that is how a client learns what each hop in the
chain is. Other methods ignore the field.

Pure functions over the parsed request; the server decides when to call them
(after the access checks and the routing, so nothing is answered that a proxied
request would not have reached).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pvtunnel._http.headers import header_value

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

_METHODS: Final = frozenset({b"OPTIONS", b"TRACE"})
# RFC 9110 section 9.3.8: the final recipient of a TRACE "SHOULD exclude any request
# fields that are likely to contain sensitive data": credentials and cookies, which
# a page script could otherwise read back from the reflection.
_NOT_REFLECTED: Final = frozenset({b"authorization", b"proxy-authorization", b"cookie"})


def remaining_forwards(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The request's Max-Forwards, or None when it does not apply.

    It applies to OPTIONS and TRACE only, and only as the field's grammar
    (``1*DIGIT``) allows: a value that is not a number is passed on untouched,
    as a hop that does not know the field would.
    """
    if method not in _METHODS:
        return None
    value = header_value(headers, b"max-forwards")
    if value is None or not value.isdigit():
        return None
    return int(value)


def decremented(
    headers: Sequence[tuple[bytes, bytes]], remaining: int
) -> tuple[tuple[bytes, bytes], ...]:
    """``headers`` with Max-Forwards one less than ``remaining``, on its first line.

    Further Max-Forwards lines (the field takes one value) are dropped, so the next
    hop reads the count we forwarded and nothing else.
    """
    result: list[tuple[bytes, bytes]] = []
    written = False
    for name, value in headers:
        if name.lower() == b"max-forwards":
            if written:
                continue
            value, written = b"%d" % (remaining - 1), True
        result.append((name, value))
    return tuple(result)


def final_answer(
    method: bytes,
    target: bytes,
    http_version: bytes,
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """The header fields and content of a 200 answering a request at Max-Forwards 0.

    OPTIONS gets an empty 200: the server forwards any method, and says nothing
    about the resource, which only the upstream knows. TRACE gets its request back
    as ``message/http`` (RFC 9110 section 9.3.8), less credentials and cookies.
    """
    if method != b"TRACE":
        return (), b""
    lines = [b"%s %s HTTP/%s" % (method, target, http_version)]
    lines.extend(
        name + b": " + value for name, value in headers if name.lower() not in _NOT_REFLECTED
    )
    return ((b"content-type", b"message/http"),), b"\r\n".join(lines) + b"\r\n\r\n"
