"""The message-framing checks h11 leaves to a proxy (request smuggling, response splitting).

h11 already refuses most malformed messages: conflicting Content-Lengths,
whitespace before a colon, bare CR, NUL, unknown or repeated transfer codings.
Six shapes it accepts are dangerous in a proxy, because a server behind or in
front of us may read them differently:

- Content-Length together with Transfer-Encoding. RFC 9112 section 6.3: such a
  message "ought to be handled as an error", and a server "MUST close the
  connection after responding to such a request". h11 lets Transfer-Encoding win.
- Transfer-Encoding in an HTTP/1.0 message. RFC 9112 section 6.1: the recipient
  "MUST treat the message as if the framing is faulty".
- obs-fold (a header line continued on the next line by leading whitespace).
  RFC 9112 section 5.2 lets a server reject it with 400; h11 unfolds it silently,
  so only the raw head bytes show it, and a folded ``Transfer-Encoding`` is a
  classic smuggling vector.
- Control bytes in a header value. h11 refuses NUL, CR, LF, VT and FF but passes
  the others (0x01-0x08, 0x0E-0x1F, DEL), which RFC 9110 section 5.5 rules out of
  field values and which servers behind us may read differently.
- A version other than HTTP/1.0 and HTTP/1.1 (``HTTP/0.9``, ``HTTP/1.2``,
  ``HTTP/2.0``: h11 reads any ``d.d``). RFC 9112 section 2.3: the message is not
  HTTP/1.1; h11 would still frame it as one (Transfer-Encoding in ``HTTP/0.9`` too).
- A Content-Length past 2^63-1. h11 takes up to 20 digits; a server behind us
  that parses into 64 bits would wrap it and frame the body differently.

Pure functions over values; the caller decides the status (400 for a client, 502
for an upstream) and closes the connection.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

# h11 ends a head at the first empty line, LF or CRLF terminated (its blank_line_regex).
_HEAD_END: Final = re.compile(rb"\n\r?\n")
_FOLDED_LINE: Final = re.compile(rb"\n[ \t]")
# Control bytes other than HTAB (RFC 9110 section 5.5).
_CONTROL_BYTE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


# Interim (1xx) responses one request may get. HTTP sets no limit, and they take no
# flow-control credit: an upstream (or an agent) writing them in a loop to a client
# that does not read them would grow memory without bound. A real one sends a few
# (100 Continue, 103 Early Hints); more ends the request as the upstream's error.
MAX_INTERIM_RESPONSES: Final = 32
# And what they may hold together, counted as they sit in memory: a field is two
# Python bytes objects and a tuple, some 130 bytes before its text, so one HEAD
# frame of 8,000 empty fields would hold a megabyte. A 103 with a few Link fields
# takes a kilobyte or two.
MAX_INTERIM_BYTES: Final = 32 * 1024
_FIELD_COST: Final = 128


def interim_cost(reason: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> int:
    """What an interim head counts against `MAX_INTERIM_BYTES`."""
    return len(reason) + sum(len(name) + len(value) + _FIELD_COST for name, value in headers)


# The largest body length a signed 64-bit integer holds: what most servers parse into.
MAX_CONTENT_LENGTH: Final = 2**63 - 1
_LONGEST_LENGTH_DIGITS: Final = len(str(MAX_CONTENT_LENGTH))


def framing_problem(headers: Iterable[tuple[bytes, bytes]], http_version: bytes) -> str | None:
    """Why a message parsed by h11 must not be forwarded, or None when it is fine.

    Args:
        headers: The message's header fields (names in any case).
        http_version: ``b"1.1"`` or ``b"1.0"``, as h11 reports it.

    Returns:
        A short reason fit for a ``text/plain`` error body, or None.
    """
    if http_version != b"1.1" and http_version != b"1.0":
        return "not an HTTP/1.0 or HTTP/1.1 message (RFC 9112 section 2.3)"
    has_length = False
    has_coding = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            has_length = True
            # h11 takes up to 20 digits; a hop that parses into 64 bits would wrap.
            if len(value) >= _LONGEST_LENGTH_DIGITS and int(value) > MAX_CONTENT_LENGTH:
                return "a Content-Length past 2^63-1"

        elif lower == b"transfer-encoding":
            has_coding = True
        if _CONTROL_BYTE.search(value) is not None:
            return "a control byte in a header value (RFC 9110 section 5.5)"
    if not has_coding:
        return None
    if has_length:
        return "both Content-Length and Transfer-Encoding (RFC 9112 section 6.3)"
    if http_version == b"1.0":
        return "Transfer-Encoding in an HTTP/1.0 message (RFC 9112 section 6.1)"
    return None


def has_obs_fold(received: bytes | bytearray) -> bool:
    """Whether the head at the start of ``received`` folds a header over two lines.

    Args:
        received: The bytes h11 parsed a head from, starting at its request or
            status line; anything after the head (body, a pipelined request) is
            ignored. A head h11 accepted never starts with whitespace.

    Returns:
        True when a line of the head starts with a space or a tab.
    """
    end = _HEAD_END.search(received)
    head = received if end is None else received[: end.start() + 1]
    return _FOLDED_LINE.search(head) is not None


def request_head_problem(
    headers: Iterable[tuple[bytes, bytes]], http_version: bytes, received: bytes | bytearray
) -> str | None:
    """Why the server must answer a parsed request head with 400 and close, or None.

    Args:
        headers: The request's header fields as h11 parsed them.
        http_version: The request's HTTP version as h11 reports it.
        received: The raw bytes the head was parsed from, head first.

    Returns:
        A short reason for the error body, or None when the head may be routed.
    """
    problem = framing_problem(headers, http_version)
    if problem is None and has_obs_fold(received):
        problem = "a header folded over two lines (obs-fold, RFC 9112 section 5.2)"
    return problem


# What h11 checks when it *parses* a head but not all of it when it *writes* one: the
# reason phrase goes out unchecked (RFC 9112 section 4: ``*( HTAB / SP / VCHAR /
# obs-text )``), so CRLF in it would start a second response. The server writes
# response heads an agent sent, and an agent is only as trusted as its token.
_REASON: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_FIELD_NAME: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# RFC 9110 section 5.5 field-value, as h11 writes it: no leading or trailing blanks.
_FIELD_VALUE: Final = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
_LENGTH: Final = re.compile(rb"[0-9]{1,19}")


def field_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why header fields must not be written as they are, or None.

    Whatever h11's constructors refuse is refused here, and the control bytes they
    let through, so a head checked here may skip their check (``_parsed=True``):
    theirs makes some twenty calls per field where this makes two.

    Args:
        headers: The fields, names in any case.

    Returns:
        "an invalid header name" or "an invalid header value", or None.
    """
    for name, value in headers:
        if _FIELD_NAME.fullmatch(name) is None:
            return "an invalid header name"
        if _FIELD_VALUE.fullmatch(value) is None:
            return "an invalid header value"
    return None


def response_head_problem(reason: bytes, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a response head from an agent must not be written to a client, or None.

    The server answers such a head with 502 instead, so a client receives exactly
    one response per request whatever the agent sends (response splitting).

    Args:
        reason: The reason phrase as the agent sent it.
        headers: The header fields as the agent sent them.

    Returns:
        A short reason for logs and the error body, or None when the head is fine.
    """
    if _REASON.fullmatch(reason) is None:
        return "a control byte in the reason phrase"
    length: bytes | None = None
    for name, value in headers:
        if _FIELD_NAME.fullmatch(name) is None:
            return "an invalid header name"
        if _FIELD_VALUE.fullmatch(value) is None:
            return "an invalid header value"
        if name.lower() == b"content-length":
            if (
                _LENGTH.fullmatch(value) is None
                or (length is not None and value != length)
                or (len(value) == _LONGEST_LENGTH_DIGITS and int(value) > MAX_CONTENT_LENGTH)
            ):
                return "an invalid Content-Length"
            length = value
    return None


_TRANSFER_ENCODING_LINE: Final = re.compile(rb"(?im)^transfer-encoding[ \t]*:(.*?)\r?$")


def refused_head_status(hint: int, received: bytes | bytearray, limit: int) -> tuple[int, str]:
    """The status and reason for a request head h11 refused with ``hint``.

    h11's hints are close but not always the status RFC 9112 asks for: a request
    line longer than the head limit is 414, not 431 (section 3); a
    Transfer-Encoding whose last coding is not chunked is 400, not 501, since the
    body's length cannot be known (section 6.3); 501 stays for a coding merely
    unknown in front of chunked (section 6.1).

    Args:
        hint: h11's ``error_status_hint``.
        received: The raw bytes of the head as far as they came.
        limit: The head limit (``max_request_head_bytes``).
    """
    if hint == 431:
        if b"\n" not in received[:limit]:
            return 414, "request target too long"
        return 431, "request head too large"
    if hint == 501:
        # Only this head's lines: what was read may hold a pipelined request too.
        end = _HEAD_END.search(received)
        head = received if end is None else received[: end.start() + 1]
        lines = _TRANSFER_ENCODING_LINE.findall(head)
        # Empty list elements count for nothing (RFC 9110 section 5.6.1): "chunked,"
        # ends in chunked, and an empty field is a list with no coding at all, so
        # not ending in chunked either.
        codings = [c.strip().lower() for c in b",".join(lines).split(b",") if c.strip()]
        if not codings or codings[-1] != b"chunked":
            return 400, "a Transfer-Encoding that does not end in chunked"
        return 501, "a transfer coding other than chunked"
    return hint, "malformed request"
