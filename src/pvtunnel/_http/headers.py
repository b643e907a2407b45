"""Header rewriting on the way through the tunnel (RFC 9110 section 7.6).

Hop-by-hop fields belong to one connection, so each hop removes them: the fixed
set below plus every field the Connection header names. Framing is re-derived at
each hop: Content-Length when the length is known, otherwise the next hop's h11
frames the body as chunked.

Field names travel as the sender wrote them (h11's ``raw_items``): names are
case-insensitive (RFC 9110 section 5.1), yet some applications match them by their
exact bytes, and a tunnel should not be the hop that breaks those. So every
function here compares names case-insensitively and passes the original on; the
lines pvtunnel adds itself are spelled in the usual capitalisation.
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
# RFC 9110 section 7.6.3: a Via entry names the protocol version the hop received.
VIA: Final = b"1.1 pvtunnel"
VIA_1_0: Final = b"1.0 pvtunnel"
# Set by the server on every forwarded request; a client's own lines are dropped.
# X-Real-IP is dropped and not set: it names the client, and the client wrote it
# (X-Forwarded-For's right-most entry is the address pvtunnel saw).
_SET_BY_US: Final = frozenset({b"x-forwarded-host", b"x-forwarded-proto", b"x-real-ip"})
# CGI-style upstreams (WSGI's wsgiref, many frameworks) map "-" and "_" in a name to
# the same variable, so a client's "X_Forwarded_For" would stand in for ours there,
# and its "Transfer_Encoding" or "Proxy_Connection" for a field this hop removed. The
# underscore spellings of the fields that name the client, the hop-by-hop ones and
# Content-Length are dropped (as nginx and gunicorn drop every underscore name).
_CGI_ALIASED: Final = (
    _SET_BY_US | {b"x-forwarded-for", b"forwarded", b"content-length"} | HOP_BY_HOP
)
# Never forwarded. No HTTP field is named Proxy, but CGI turns one into HTTP_PROXY,
# the variable many HTTP client libraries take their outgoing proxy from: a client's
# would redirect the upstream's own requests ("httpoxy").
_DROPPED: Final = HOP_BY_HOP | _SET_BY_US | {b"proxy"}
_IGNORED_FROM_HTTP_1_0: Final = frozenset({b"expect"})


def _connection_tokens(items: list[tuple[bytes, bytes]], lowered: list[bytes]) -> frozenset[bytes]:
    """The options the Connection lines name; ``lowered`` holds the names in lower case."""
    if b"connection" not in lowered:
        return frozenset()
    return frozenset(
        token.strip().lower()
        for (_, value), name in zip(items, lowered, strict=True)
        if name == b"connection"
        for token in value.split(b",")
    )


def _end_to_end(
    items: list[tuple[bytes, bytes]], lowered: list[bytes]
) -> list[tuple[bytes, bytes]]:
    named = _connection_tokens(items, lowered) - KEPT_DESPITE_CONNECTION
    drop = HOP_BY_HOP | named if named else HOP_BY_HOP
    return [item for item, name in zip(items, lowered, strict=True) if name not in drop]


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop fields, and those the Connection header names."""
    items = list(headers)
    return _end_to_end(items, [name.lower() for name, _ in items])


def response_end_to_end(
    headers: Iterable[tuple[bytes, bytes]], status: int
) -> list[tuple[bytes, bytes]]:
    """`end_to_end` for a response the agent relays: a 426 keeps its Upgrade, which it
    must send (RFC 9110 section 7.8), for the server to answer with (`response_headers`)."""
    items = list(headers)
    result = _end_to_end(items, [name.lower() for name, _ in items])
    if status == 426:
        upgrade = header_value(items, b"upgrade")
        if upgrade:
            result.append((b"Upgrade", upgrade))
    return result


def request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    *,
    client_address: str,
    host: bytes | None,
    proto: bytes,
    is_chunked: bool,
    http_version: bytes = b"1.1",
) -> Headers:
    """Headers the agent replays upstream: end-to-end ones plus X-Forwarded-* and Via.

    A client's ``Forwarded`` gets our element appended; a client's ``X-Real-IP`` is
    dropped; ``Content-Length`` goes out once, as the number it parsed to.

    ``host`` replaces the client's Host (the authority of an absolute-form target);
    ``is_chunked`` asks the next hop to frame a body of unknown length as chunked;
    ``http_version`` is the client's: our Via entry names it, and an HTTP/1.0
    request's ``Expect`` is dropped (RFC 9110 section 10.1.1: a server ignores a
    100-continue expectation in one; the request goes on as HTTP/1.1, where the
    next hop would act on it).
    """
    via = VIA if http_version == b"1.1" else VIA_1_0
    ignored = _IGNORED_FROM_HTTP_1_0 if http_version != b"1.1" else frozenset()
    # One pass on the per-request hot path: drop hop-by-hop and Connection-named
    # fields, the Host being replaced and the X-Forwarded-Host/Proto we set, and
    # remember the last X-Forwarded-For and Via lines to append to.
    items = list(headers)
    lowered = [name.lower() for name, _ in items]
    named = _connection_tokens(items, lowered) - KEPT_DESPITE_CONNECTION
    result: list[tuple[bytes, bytes]] = [] if host is None else [(b"Host", host)]
    original_host = host
    last_forwarded_for = last_via = last_forwarded = -1
    has_length = False
    for (name, value), lower in zip(items, lowered, strict=True):
        if lower in _DROPPED or lower in named or lower in ignored:
            continue
        if b"_" in lower and lower.replace(b"_", b"-") in _CGI_ALIASED:
            continue
        if lower == b"host":
            if host is not None:
                continue
            if original_host is None:
                original_host = value
        elif lower == b"x-forwarded-for":
            last_forwarded_for = len(result)
        elif lower == b"via":
            last_via = len(result)
        elif lower == b"forwarded":
            last_forwarded = len(result)
        elif lower == b"content-length":
            # As parsed, once: "0005" or a repeated line may read differently upstream.
            if has_length:
                continue
            has_length = True
            value = b"%d" % int(value)
        result.append((name, value))
    address = client_address.encode("ascii")
    _extend_at(result, last_forwarded_for, b"X-Forwarded-For", address)
    if last_forwarded >= 0:
        # RFC 7239: our hop goes last, so the right-most element is the one we saw.
        _extend_at(result, last_forwarded, b"Forwarded", _forwarded_element(address, proto))
    if original_host is not None:
        result.append((b"X-Forwarded-Host", original_host))
    result.append((b"X-Forwarded-Proto", proto))
    _extend_at(result, last_via, b"Via", via)
    if is_chunked:
        result.append((b"Transfer-Encoding", b"chunked"))
    return tuple(result)


def _forwarded_element(address: bytes, proto: bytes) -> bytes:
    """RFC 7239 section 4: ``for=`` the client and ``proto=``; IPv6 quoted in brackets,
    without a zone (``%eth0``), which its node syntax has no room for."""
    if b":" in address:
        return b'for="[%s]";proto=%s' % (address.partition(b"%")[0], proto)
    return b"for=%s;proto=%s" % (address, proto)


def _extend_at(headers: list[tuple[bytes, bytes]], index: int, name: bytes, value: bytes) -> None:
    """Append ``value`` to the line at ``index`` (-1: add a line named ``name``)."""
    if index < 0:
        headers.append((name, value))
    else:
        existing, values = headers[index]
        # An empty line (a client may send one) takes the value alone, not ", value".
        headers[index] = (existing, values + b", " + value if values.strip() else value)


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, status: int = 200, date: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """Headers sent back to the client: end-to-end ones plus Via, and ``date`` as the
    Date header when the response has none (RFC 9110 section 6.6.1).

    ``status`` is the response's: a 1xx or a 204 never carries Content-Length (RFC
    9110 section 8.6; an upstream's is dropped, as nginx drops it), and a 426 keeps
    its Upgrade, which it must send (section 7.8), though hop-by-hop elsewhere.
    """
    items = list(headers)
    lowered = [name.lower() for name, _ in items]
    result = _end_to_end(items, lowered)
    if status < 200 or status == 204:
        if b"content-length" in lowered:
            result = [(n, v) for n, v in result if n.lower() != b"content-length"]
    elif status == 426 and b"upgrade" in lowered:
        upgrade = header_value(items, b"upgrade")
        if upgrade:
            result += [(b"Upgrade", upgrade), (b"Connection", b"upgrade")]
    last_via = -1
    if b"via" in lowered:
        # Several lines of one field read as one list in order (RFC 9110 section 5.3),
        # so the value goes on the *last* Via line.
        last_via = max(
            (i for i, (name, _) in enumerate(result) if name.lower() == b"via"), default=-1
        )
    _extend_at(result, last_via, b"Via", VIA)
    if date is not None and b"date" not in lowered:
        result.append((b"Date", date))
    return result


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of the field ``name`` (lower-case), or None."""
    return next((v for n, v in headers if n.lower() == name), None)


def is_chunked(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a parsed message (h11 already validated it) uses chunked framing."""
    return any(n.lower() == b"transfer-encoding" for n, _ in headers)


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    value = header_value(headers, b"content-length")
    return None if value is None else int(value)


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
        return ((b"Connection", b"upgrade"), (b"Upgrade", self.upgrade))


def protocol_switch(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> Switch | None:
    """The switch a request asks for, if any (RFC 9110 sections 7.8 and 9.3.6)."""
    if method == b"CONNECT":
        return Switch(upgrade=None)
    items = list(headers)
    if b"upgrade" not in _connection_tokens(items, [name.lower() for name, _ in items]):
        return None
    upgrade = header_value(items, b"upgrade")
    return Switch(upgrade=upgrade) if upgrade else None
