"""Header rewriting on the way through the tunnel (RFC 9110 section 7.6).

Hop-by-hop fields belong to one connection, so each hop removes them: the fixed
set below plus every field the Connection header names. Framing is re-derived at
each hop: Content-Length when the length is known, otherwise the next hop's h11
frames the body as chunked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pvtunnel._wire.heads import Headers

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Fields a Connection header cannot drop: the next hop needs them back at once (HTTP/1.1
# requires Host, RFC 9112 section 3.2; Content-Length frames the body, RFC 9110 section
# 8.6). "Connection: content-length" would otherwise forward a body without its length.
KEPT_DESPITE_CONNECTION: Final = frozenset({b"host", b"content-length"})
VIA: Final = b"1.1 pvtunnel"
# Set by the server on every forwarded request; a client's own lines are dropped.
_SET_BY_US: Final = frozenset({b"x-forwarded-host", b"x-forwarded-proto"})


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop fields; names must already be lower-case (as h11 gives them)."""
    items = list(headers)
    named = _connection_tokens(items) - KEPT_DESPITE_CONNECTION
    if named:
        return [(n, v) for n, v in items if n not in HOP_BY_HOP and n not in named]
    return [(n, v) for n, v in items if n not in HOP_BY_HOP]


def _append(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    """Append to an existing comma-separated field, or add it.

    Several lines of one field read as one list in order (RFC 9110 section 5.3), so
    the value goes on the *last* line: on the first, a client's second
    ``X-Forwarded-For`` line would still be the right-most entry.
    """
    last = next((i for i in range(len(headers) - 1, -1, -1) if headers[i][0] == name), -1)
    _extend_at(headers, last, name, value)


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_address: str,
    host: bytes | None,
    proto: bytes,
    is_chunked: bool,
) -> Headers:
    """Headers the agent replays upstream: end-to-end ones plus X-Forwarded-* and Via.

    ``host`` replaces the client's Host (the authority of an absolute-form target);
    ``is_chunked`` asks the next hop to frame a body of unknown length as chunked.
    """
    # One pass on the per-request hot path: drop hop-by-hop and Connection-named
    # fields, the Host being replaced and the X-Forwarded-Host/Proto we set, and
    # remember the last X-Forwarded-For and Via lines to append to.
    items = list(headers)
    named = _connection_tokens(items) - KEPT_DESPITE_CONNECTION
    result: list[tuple[bytes, bytes]] = [] if host is None else [(b"host", host)]
    original_host = host
    last_forwarded_for = last_via = -1
    for name, value in items:
        if name in HOP_BY_HOP or name in _SET_BY_US or name in named:
            continue
        if name == b"host":
            if host is not None:
                continue
            if original_host is None:
                original_host = value
        elif name == b"x-forwarded-for":
            last_forwarded_for = len(result)
        elif name == b"via":
            last_via = len(result)
        result.append((name, value))
    _extend_at(result, last_forwarded_for, b"x-forwarded-for", client_address.encode("ascii"))
    if original_host is not None:
        result.append((b"x-forwarded-host", original_host))
    result.append((b"x-forwarded-proto", proto))
    _extend_at(result, last_via, b"via", VIA)
    if is_chunked:
        result.append((b"transfer-encoding", b"chunked"))
    return tuple(result)


def _extend_at(headers: list[tuple[bytes, bytes]], index: int, name: bytes, value: bytes) -> None:
    """Append ``value`` to the line at ``index`` (-1: add a new line at the end)."""
    if index < 0:
        headers.append((name, value))
    else:
        headers[index] = (name, headers[index][1] + b", " + value)


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers sent back to the client: end-to-end ones plus Via."""
    result = end_to_end(headers)
    _append(result, b"via", VIA)
    return result


def is_chunked(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a parsed message (h11 already validated it) uses chunked framing."""
    return any(n == b"transfer-encoding" for n, _ in headers)


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


@attrs.frozen(kw_only=True)
class Switch:
    """A request that may turn its stream into a raw byte pipe.

    ``upgrade`` is the Upgrade header's value (WebSocket and friends); None means
    CONNECT. The switch happens only if the upstream agrees: 101 for an upgrade,
    any 2xx for CONNECT; any other answer is an ordinary response.
    """

    upgrade: bytes | None

    def accepts(self, status: int) -> bool:
        if self.upgrade is not None:
            return status == 101
        return 200 <= status < 300

    def request_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """Hop-by-hop fields the next hop needs to agree to the same switch."""
        if self.upgrade is None:
            return ()
        return ((b"connection", b"upgrade"), (b"upgrade", self.upgrade))


def protocol_switch(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Switch | None:
    """The switch a request asks for, if any (RFC 9110 sections 7.8 and 9.3.6)."""
    if method == b"CONNECT":
        return Switch(upgrade=None)
    items = list(headers)
    if b"upgrade" not in _connection_tokens(items):
        return None
    upgrade = next((v for n, v in items if n == b"upgrade"), None)
    return Switch(upgrade=upgrade) if upgrade else None
