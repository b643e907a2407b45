"""Hypothesis strategies for frames, heads and byte streams, shared by tests/ and fuzz/.

Frame strategies produce only frames that `encode` accepts and that decode back to
themselves (reasons within the 1024-byte cap, ACCEPT refusals sorted and unique), so
round-trip properties can compare with ``==``. Hostile input comes from `mutated`
and plain `st.binary`, never from bending these.
"""

from __future__ import annotations

import itertools
import json
import re

import attrs
from hypothesis import strategies as st

from pvtunnel._errors import ErrorCode
from pvtunnel._wire import frames as fr
from pvtunnel._wire.frames import MAX_STREAM_ID, MAX_WINDOW, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead

stream_ids = st.integers(1, MAX_STREAM_ID).map(StreamId)
error_codes = st.sampled_from(ErrorCode)
windows = st.integers(1, MAX_WINDOW)
# 256 code points are at most 1024 UTF-8 bytes: never cut, so they round-trip.
reasons = st.text(max_size=256)
ping_payloads = st.binary(min_size=8, max_size=8)
ascii_text = st.text(st.characters(max_codepoint=127), max_size=20)
header_pairs = st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=6).map(
    tuple
)


def hellos() -> st.SearchStrategy[fr.Hello]:
    return st.builds(
        fr.Hello,
        versions=st.lists(st.integers(0, 2**63), min_size=1, max_size=4).map(tuple),
        client_id=st.text(max_size=30),
        routes=st.lists(st.text(max_size=20), max_size=4).map(tuple),
        window=windows,
        connection_window=windows,
    )


def accepts() -> st.SearchStrategy[fr.Accept]:
    return st.builds(
        fr.Accept,
        version=st.integers(-(2**63), 2**63),
        refused=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4).map(
            lambda refused: tuple(sorted(refused.items()))
        ),
        window=windows,
        connection_window=windows,
    )


def heads(stream_id: st.SearchStrategy[StreamId] = stream_ids) -> st.SearchStrategy[fr.Head]:
    # Two fields at least: HEAD's minimum payload is two empty fields (4 bytes).
    return st.builds(
        fr.Head,
        stream_id=stream_id,
        fields=st.lists(st.binary(max_size=40), min_size=2, max_size=8).map(tuple),
        is_informational=st.booleans(),
    )


def datas(
    stream_id: st.SearchStrategy[StreamId] = stream_ids, max_size: int = 2048
) -> st.SearchStrategy[fr.Data]:
    return st.builds(fr.Data, stream_id=stream_id, data=st.binary(min_size=1, max_size=max_size))


def frames(stream_id: st.SearchStrategy[StreamId] = stream_ids) -> st.SearchStrategy[fr.Frame]:
    """Any single valid frame, every kind equally likely.

    Narrow ``stream_id`` (say to 1-3) to aim at a multiplexer's open streams rather than
    at IDs it never opened. WINDOW frames go to stream 0 (the connection) or to one of
    ``stream_id``.
    """
    return st.one_of(
        hellos(),
        accepts(),
        st.builds(fr.Reject, reason=reasons),
        heads(stream_id),
        datas(stream_id),
        st.builds(fr.End, stream_id=stream_id),
        st.builds(fr.Reset, stream_id=stream_id, code=error_codes, reason=reasons),
        # WINDOW on stream 0 returns connection credit.
        st.builds(
            fr.Window,
            stream_id=st.one_of(st.just(fr.CONNECTION_STREAM), stream_id),
            increment=windows,
        ),
        st.builds(fr.Ping, payload=ping_payloads),
        st.builds(fr.Pong, payload=ping_payloads),
        st.builds(
            fr.GoAway,
            last_stream_id=st.integers(0, MAX_STREAM_ID).map(StreamId),
            code=error_codes,
            reason=reasons,
        ),
    )


def request_heads() -> st.SearchStrategy[RequestHead]:
    return st.builds(
        RequestHead,
        route=ascii_text,
        method=st.binary(min_size=1, max_size=10),
        target=st.binary(min_size=1, max_size=40),
        headers=header_pairs,
    )


statuses = st.integers(100, 599)


def response_heads(
    status: st.SearchStrategy[int] = statuses,
) -> st.SearchStrategy[ResponseHead]:
    return st.builds(
        ResponseHead, status=status, reason=st.binary(max_size=20), headers=header_pairs
    )


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included): how a transport may
    split or coalesce a byte stream."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


# Header bytes worth aiming at: each frame type, flag, and length boundaries.
_INTERESTING_BYTES = st.sampled_from(
    [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07, 0x08, 0x0B, 0x0C, 0x7F, 0x80, 0xFE, 0xFF]
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after a few byte-level edits: flips, overwrites, inserts, deletions,
    truncation. Starting from valid frames keeps most of the input plausible, so the
    edits reach the payload checks instead of dying at the first header byte."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, len(buffer)))
        if operation == "insert" or not buffer:
            buffer[position:position] = draw(st.binary(min_size=1, max_size=16))
            continue
        position = min(position, len(buffer) - 1)
        match operation:
            case "flip":
                buffer[position] ^= 1 << draw(st.integers(0, 7))
            case "set":
                buffer[position] = draw(_INTERESTING_BYTES)
            case "delete":
                del buffer[position : position + draw(st.integers(1, 16))]
            case _:
                del buffer[position:]
    return bytes(buffer)


@st.composite
def frame_streams(
    draw: st.DrawFn, stream_id: st.SearchStrategy[StreamId] = stream_ids, max_frames: int = 6
) -> bytes:
    """Several valid frames, encoded back to back."""
    chosen = draw(st.lists(frames(stream_id), max_size=max_frames))
    return b"".join(fr.encode(frame) for frame in chosen)


def hostile_streams(
    stream_id: st.SearchStrategy[StreamId] = stream_ids,
) -> st.SearchStrategy[bytes]:
    """Bytes a peer might send: garbage, valid frames, or valid frames with a few edits."""
    valid = frame_streams(stream_id)
    return st.one_of(st.binary(max_size=200), valid, valid.flatmap(mutated))


# Payloads at the edges of each type's rules (protocol.md sections 3-4), by type byte.
_U32_EDGES = [0, 1, 2**31 - 1, 2**31, 2**32 - 1]
_REASON_EDGES = st.sampled_from([b"", b"ok", b"\xff", b"r" * 1024, b"r" * 1025, b"\xc3"])
_JSON_VALUES: st.SearchStrategy[object] = st.sampled_from(
    [
        0,
        1,
        -1,
        2**31 - 1,
        2**31,
        True,
        None,
        "1",
        [],
        [1],
        [0, 2],
        [-1],
        [True],
        ["a"],
        {},
        {"db": 1},
    ]
)
_JSON_KEYS = [
    "versions",
    "client_id",
    "routes",
    "window",
    "connection_window",
    "version",
    "refused",
]


@st.composite
def _json_payload(draw: st.DrawFn) -> bytes:
    """A HELLO or ACCEPT object with keys missing, of the wrong type or at the edges."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.sampled_from([b"[]", b"{", b"\xff{}", b"[" * 3000, b"12"]))
    obj = {
        "versions": [1],
        "client_id": "c",
        "routes": ["app"],
        "window": 5,
        "connection_window": 7,
        "version": 1,
        "refused": {"db": "taken"},
    }
    for key in draw(st.lists(st.sampled_from(_JSON_KEYS), max_size=2)):
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(_JSON_VALUES)
    return json.dumps(obj).encode()


def _edge_payloads(frame_type: int) -> st.SearchStrategy[bytes]:
    u32 = st.sampled_from(_U32_EDGES).map(lambda n: n.to_bytes(4, "big"))
    match frame_type:
        case 0x01 | 0x02:
            return _json_payload()
        case 0x03:
            return _REASON_EDGES
        case 0x04:
            fields = st.lists(st.binary(max_size=3), min_size=2, max_size=4).map(fr.encode_fields)
            return st.one_of(fields, fields.map(lambda f: f + b"\x00"), st.just(b"\x00\x05ab\x00"))
        case 0x07:
            return st.tuples(u32, _REASON_EDGES).map(b"".join)
        case 0x08:
            return u32
        case 0x0B:
            code = st.sampled_from([b"\x00", b"\x03", b"\x0a", b"\x0b", b"\xff"])
            return st.tuples(u32, code, _REASON_EDGES).map(b"".join)
        case _:
            return st.binary(max_size=12)


@st.composite
def edge_frames(draw: st.DrawFn) -> bytes:
    """One frame at the edges of the rules: each type (and unknown ones) with single
    flag bits, stream 0, 1 or the top ID, and a payload at, inside or just past its
    limits; the header's length field says the payload's real length."""
    frame_type = draw(st.one_of(st.integers(1, 11), st.sampled_from([0, 12, 255])))
    flags = draw(st.sampled_from([0, 0, 0, 1, 2, 0x80]))
    stream_id = draw(st.sampled_from([0, 1, 1, 2**32 - 1]))
    payload = draw(_edge_payloads(frame_type))
    if frame_type in (0x05, 0x01) and draw(st.integers(0, 9)) == 0:
        payload = b"x" * draw(st.sampled_from([0, 65536, 65537]))
    return fr.HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


def edge_streams() -> st.SearchStrategy[bytes]:
    """A few frames at the edges of the rules, back to back."""
    return st.lists(edge_frames(), min_size=1, max_size=4).map(b"".join)


# ---------------------------------------------------------------- HTTP/1.1 requests
#
# For tests/integration/test_http_fuzz.py and fuzz/targets/http.py. `http_requests`
# writes valid requests in the many ways RFC 9112 allows (header name casing,
# whitespace around values, Content-Length lists, chunk sizes with leading zeros,
# extensions and trailers, absolute-form targets) and keeps, next to the bytes,
# what they mean as a parser reports it; `http_mutated` bends such bytes.

_TCHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
# Names whose meaning the generator controls itself (framing, routing, switching).
_RESERVED_NAMES = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"expect",
        b"max-forwards",
    }
)
_HOP_BY_HOP_FIELDS = (
    (b"keep-alive", b"timeout=5, max=100"),
    (b"te", b"trailers"),
    (b"trailer", b"x-checksum"),
    (b"proxy-connection", b"keep-alive"),
    (b"proxy-authorization", b"Bearer not-checked-here"),
    (b"proxy-authenticate", b"Basic"),
)
_METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"PROPFIND")
_BIG_PATTERN = bytes(range(256)) * 1200


def _latin1(alphabet: bytes, *, min_size: int = 0, max_size: int) -> st.SearchStrategy[bytes]:
    # Text over a fixed alphabet generates (and shrinks) far faster than lists of bytes.
    text = st.text(alphabet=alphabet.decode("latin-1"), min_size=min_size, max_size=max_size)
    return text.map(lambda chars: chars.encode("latin-1"))


http_tokens = _latin1(_TCHARS, min_size=1, max_size=12)
http_field_names = http_tokens.filter(lambda name: name not in _RESERVED_NAMES)
_field_words = _latin1(bytes([*range(0x21, 0x7F), *range(0x80, 0x100)]), min_size=1, max_size=10)
# field-value (RFC 9110 section 5.5): visible bytes and obs-text, inner spaces and tabs.
http_field_values = st.lists(
    st.tuples(st.sampled_from([b" ", b"\t", b"  ", b" \t"]), _field_words), max_size=4
).map(lambda parts: b"".join(sep + word for sep, word in parts).lstrip(b" \t"))
_query = _latin1(bytes(c for c in range(0x21, 0x7F) if c != ord("#")), max_size=16)
_ows = st.sampled_from([b"", b"", b" ", b"\t", b"  "])


@attrs.frozen(kw_only=True)
class HttpRequest:
    """A request as a client writes it, and what it means.

    ``writes`` are the bytes as the client hands them to TCP (cut at random points);
    ``fields`` are the header fields as a parser reports them: names lower-cased,
    whitespace around values stripped, a Content-Length list or repeat collapsed to
    its first line, in order; ``names`` are the same fields' names as written (in
    any case). ``body`` is the content, however it was framed.
    """

    method: bytes
    target: bytes
    version: bytes
    fields: tuple[tuple[bytes, bytes], ...]
    names: tuple[bytes, ...]
    body: bytes
    chunked: bool
    writes: tuple[bytes, ...]

    @property
    def wire(self) -> bytes:
        return b"".join(self.writes)

    @property
    def closes(self) -> bool:
        """Whether the server must close the connection after answering it."""
        tokens = {
            token.strip().lower()
            for name, value in self.fields
            if name == b"connection"
            for token in value.split(b",")
        }
        return self.version == b"1.0" or b"close" in tokens


def http_request(
    method: bytes,
    target: bytes,
    fields: tuple[tuple[bytes, bytes], ...] = (),
    body: bytes = b"",
    *,
    host: bytes = b"app",
) -> HttpRequest:
    """A plainly written request (for pinned examples): Host first, Content-Length last."""
    items = ((b"host", host), *fields)
    if body:
        items += ((b"content-length", b"%d" % len(body)),)
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (
        method,
        target,
        b"".join(b"%s: %s\r\n" % item for item in items),
    )
    return HttpRequest(
        method=method,
        target=target,
        version=b"1.1",
        fields=items,
        names=tuple(name for name, _ in items),
        body=body,
        chunked=False,
        writes=(head + body,),
    )


_CASE_STYLES = st.sampled_from(["lower", "title", "upper", "random"])
_SMALL = st.integers(0, 2)
_BYTE = st.integers(0, 255)
_CHUNK_EXTENSIONS = st.one_of(
    st.just(b""),
    http_tokens.map(lambda name: b";" + name),
    st.tuples(http_tokens, http_tokens).map(lambda pair: b";%s=%s" % pair),
    st.tuples(http_tokens, _field_words).map(
        lambda pair: b';%s="%s"' % (pair[0], pair[1].replace(b'"', b"").replace(b"\\", b""))
    ),
)
_TRAILERS = st.lists(st.tuples(http_field_names, http_field_values), max_size=2)
_CUSTOM_FIELDS = st.lists(st.tuples(http_field_names, http_field_values), max_size=6)
_HOP_BY_HOP_CHOICES = st.lists(st.sampled_from(_HOP_BY_HOP_FIELDS), max_size=2, unique=True)
_METHOD_CHOICES = st.one_of(
    st.sampled_from(_METHODS),
    http_tokens.map(bytes.upper).filter(lambda m: m not in (b"HEAD", b"CONNECT")),
)
_MAX_FORWARDS = st.one_of(
    st.integers(1, 10**20).map(lambda n: b"%d" % n), st.sampled_from([b"0x1", b"1, 2", b"-1"])
)
_QUERIES = st.one_of(st.just(b""), _query.map(lambda q: b"?" + q))
_SCHEMES = st.sampled_from([b"http://", b"HTTP://", b"https://"])
_USERINFO = st.sampled_from([b"", b"user@", b"u:p@"])
_LENGTH_FORMS = st.sampled_from(["plain", "plain", "list", "repeat"])
_CODINGS = st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"])


def _cased(draw: st.DrawFn, name: bytes) -> bytes:
    """``name`` with any letters in upper case (field names are case-insensitive)."""
    style = draw(_CASE_STYLES)
    if style == "lower":
        return name
    if style == "title":
        return b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))
    if style == "upper":
        return name.upper()
    flips = draw(st.integers(0, 2 ** len(name) - 1))
    return bytes(c - 32 if flips >> i & 1 and 0x61 <= c <= 0x7A else c for i, c in enumerate(name))


def _one_in(draw: st.DrawFn, n: int) -> bool:
    """True now and then; False is what shrinking goes to."""
    return draw(st.integers(0, n - 1)) == n - 1


def _body(draw: st.DrawFn, max_size: int) -> bytes:
    if max_size > 1000 and _one_in(draw, 10):
        # Now and then a big one: several socket reads, flushes and credit windows.
        start = draw(_BYTE)
        return _BIG_PATTERN[start : start + draw(st.integers(1000, max_size))]
    return draw(st.binary(max_size=min(max_size, 300)))


def _chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` in chunked coding: any cuts, sizes in either case with leading zeros,
    chunk extensions, and a trailer section."""

    def size_line(size: int) -> bytes:
        digits = (b"%X" if draw(st.booleans()) else b"%x") % size
        return b"0" * draw(_SMALL) + digits + draw(_CHUNK_EXTENSIONS) + b"\r\n"

    out = bytearray()
    for piece in draw(chunked(body)):
        if piece:
            out += size_line(len(piece)) + piece + b"\r\n"
    out += size_line(0)
    for name, value in draw(_TRAILERS):
        out += b"%s:%s%s\r\n" % (_cased(draw, name), draw(_ows), value)
    return bytes(out + b"\r\n")


@st.composite
def http_requests(
    draw: st.DrawFn, *, last: bool = False, max_body: int = 150_000, host: bytes = b"app"
) -> HttpRequest:
    """One valid request to the route ``host``'s ``/echo`` (any method but HEAD and CONNECT).

    Only a ``last`` request on its connection may be HTTP/1.0 or say ``Connection: close``.
    """
    method = draw(_METHOD_CHOICES)
    version = b"1.0" if last and _one_in(draw, 6) else b"1.1"
    query = draw(_QUERIES)
    hosts = [host, host.upper(), host + b":8080"]
    fields: list[tuple[bytes, bytes]] = []
    if _one_in(draw, 5):
        # Absolute form (proxy mode): the authority is the route and the Host sent on.
        authority = draw(st.sampled_from([*hosts, host + b":80"]))
        target = draw(_SCHEMES) + draw(_USERINFO) + authority + b"/echo" + query
        fields.append((b"host", draw(st.sampled_from([b"proxy.example:8080", host]))))
    else:
        target = b"/echo" + query
        fields.append((b"host", draw(st.sampled_from(hosts))))
    custom = draw(_CUSTOM_FIELDS)
    fields += custom
    fields += draw(_HOP_BY_HOP_CHOICES)
    # Now and then twice: a proxy appends to the last line, never an earlier one.
    fields += [(b"x-forwarded-for", b"192.0.2.%d" % i) for i in range(draw(_SMALL))]
    fields += [(b"via", b"1.0 front-%d" % i) for i in range(draw(_SMALL))]
    if _one_in(draw, 4):
        # Counted down on OPTIONS and TRACE, ignored on the rest. Never 0 here: an
        # OPTIONS or TRACE at 0 is answered by the server, not sent to /echo.
        fields += [(b"max-forwards", draw(_MAX_FORWARDS)) for _ in range(draw(_SMALL) + 1)]
    if draw(st.booleans()):
        fields.append((b"x-forwarded-host", b"spoofed.example"))
    if draw(st.booleans()):
        fields.append((b"x-forwarded-proto", b"https"))
    if draw(st.booleans()):
        # Connection names some fields (they go), keep-alive, and now and then fields
        # a proxy may not drop: Host and Content-Length (RFC 9110 sections 7.2, 8.6).
        options = [name for name, _ in custom] + [b"keep-alive", b"host", b"content-length"]
        tokens = draw(st.lists(st.sampled_from(options), min_size=1, max_size=3))
        if last and draw(st.booleans()):
            tokens.append(b"close")
        fields.append((b"connection", b", ".join(_cased(draw, token) for token in tokens)))
    body = _body(draw, max_body)
    chunked_body = version == b"1.1" and draw(st.booleans())
    if body or draw(st.booleans()):
        if chunked_body:
            fields.append((b"transfer-encoding", b"chunked"))
        else:
            fields.append((b"content-length", b"%d" % len(body)))
    else:
        chunked_body = False
    if body and _one_in(draw, 4):
        fields.append((b"expect", b"100-continue"))
    fields = list(draw(st.permutations(fields)))
    # Write the head; a parser keeps Content-Length digits as written, zeros and all.
    lines = [b"%s %s HTTP/%s\r\n" % (method, target, version)]
    names: list[bytes] = []
    for index, (name, value) in enumerate(fields):
        wire_name = _cased(draw, name)
        names.append(wire_name)
        if name == b"content-length":
            value = b"0" * draw(_SMALL) + value
            fields[index] = (name, value)
            form = draw(_LENGTH_FORMS)
            written = value + b", " + value if form == "list" else value
            lines.append(b"%s:%s%s%s\r\n" % (wire_name, draw(_ows), written, draw(_ows)))
            if form == "repeat":
                lines.append(b"Content-Length: %s\r\n" % value)
            continue
        if name == b"transfer-encoding":
            value = draw(_CODINGS)
        lines.append(b"%s:%s%s%s\r\n" % (wire_name, draw(_ows), value, draw(_ows)))
    lines.append(b"\r\n")
    wire = b"".join(lines) + (_chunked_body(draw, body) if chunked_body else body)
    return HttpRequest(
        method=method,
        target=target,
        version=version,
        fields=tuple(fields),
        names=tuple(names),
        body=body,
        chunked=chunked_body,
        writes=tuple(draw(chunked(wire))),
    )


@st.composite
def http_conversations(draw: st.DrawFn, max_requests: int = 3) -> list[HttpRequest]:
    """Requests for one keep-alive connection; only the last may close it."""
    count = draw(st.integers(1, max_requests))
    return [draw(http_requests(last=index == count - 1)) for index in range(count)]


# Bytes worth inserting into a request: line ends, NUL and other controls, the
# separators parsers disagree about, and the start of a folded line.
_HTTP_INSERTS = st.sampled_from(
    [
        b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\r\n ", b"\r\n\t", b"\x00", b" ", b"\t",
        b":", b",", b";", b"\x01", b"\x0b", b"\x1f", b"\x7f", b"\x80", b"\xff", b"0",
        b"a", b"-", b"0\r\n\r\n",
    ]
)  # fmt: skip
# Header lines that change framing, routing or the connection.
_HTTP_FIELD_INSERTS = st.sampled_from(
    [
        b"Content-Length: 0\r\n",
        b"Content-Length: 7\r\n",
        b"Content-Length: 1, 2\r\n",
        b"Content-Length: +1\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding:\tchunked\r\n",
        b"Transfer-Encoding: \x0bchunked\r\n",
        b"Connection: close\r\n",
        b"Connection: content-length\r\n",
        b"Connection: host\r\n",
        b"Host: app\r\n",
        b"Host: elsewhere.example\r\n",
        b"Expect: 100-continue\r\n",
        b"X-Folded: a\r\n b\r\n",
    ]
)


# Line-wise edits, aimed at heads, come up about twice as often as byte-wise ones.
_HTTP_OPERATIONS = st.sampled_from(
    [
        "flip", "insert", "delete", "truncate",  # anywhere
        "in-line", "in-line", "field", "field", "version", "method",  # line-wise
        "repeat", "drop", "swap",
    ]
)  # fmt: skip
_HTTP_VERSIONS = st.sampled_from(
    [b"HTTP/1.0", b"HTTP/1.1", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/9.9", b"HTTP/1"]
)
_HTTP_METHODS = st.sampled_from([b"HEAD", b"CONNECT", b"GET", b"POST", b"OPTIONS", b"get"])


@st.composite
def http_mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after a few edits aimed at HTTP/1.1 parsing: flipped bits, line ends
    and control bytes inserted (anywhere, or inside one line), lines dropped, repeated
    or swapped, framing and routing header lines added, versions and methods
    replaced, bytes deleted, the end cut off."""
    buffer = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(_HTTP_OPERATIONS)
        if operation not in ("flip", "insert", "delete", "truncate"):
            lines = bytes(buffer).splitlines(keepends=True)
            if not lines:
                continue
            if operation in ("version", "method"):
                # Aim at a request line (the first of each request, and CLOSER's).
                starts = [i for i, line in enumerate(lines) if b" HTTP/1." in line] or [0]
                index = draw(st.sampled_from(starts))
            else:
                index = draw(st.integers(0, len(lines) - 1))
            line = lines[index]
            if operation == "in-line":
                cut = draw(st.integers(0, len(line)))
                lines[index] = line[:cut] + draw(_HTTP_INSERTS) + line[cut:]
            elif operation == "version":
                lines[index] = re.sub(rb"HTTP/1\.[01]", draw(_HTTP_VERSIONS), line, count=1)
            elif operation == "method":
                lines[index] = re.sub(rb"^[A-Z]+ ", draw(_HTTP_METHODS) + b" ", line, count=1)
            elif operation == "field":
                lines.insert(index + 1, draw(_HTTP_FIELD_INSERTS))
            elif operation == "repeat":
                lines.insert(index, lines[index])
            elif operation == "drop":
                del lines[index]
            else:
                other = draw(st.integers(0, len(lines) - 1))
                lines[index], lines[other] = lines[other], lines[index]
            buffer = bytearray(b"".join(lines))
            continue
        position = draw(st.integers(0, len(buffer)))
        if operation == "insert" or not buffer:
            buffer[position:position] = draw(_HTTP_INSERTS)
            continue
        position = min(position, len(buffer) - 1)
        if operation == "flip":
            buffer[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "delete":
            del buffer[position : position + draw(st.integers(1, 8))]
        else:
            del buffer[position:]
    return bytes(buffer)
