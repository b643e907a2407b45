"""A second decoder, written from protocol.md sections 2-4 alone, to judge the codec.

`reference_decode` reads a whole byte stream the slow, obvious way and says which
frames it holds and where the first violation becomes visible: a header's
violation (unknown type, a length outside the type's range, a reserved flag, a
stream ID of the wrong kind) as soon as its ten bytes are there, a payload's once
the payload is complete. `judge_chunks` feeds the same bytes, cut anyhow, to a
`FrameDecoder` and checks it returns exactly those frames, chunk by chunk, and
raises from the chunk that reveals the violation on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from pvtunnel._errors import ErrorCode, RemoteProtocolError
from pvtunnel._wire import frames as fr
from pvtunnel._wire.frames import FrameDecoder, StreamId

_CAP = 65536
_REASON = 1024
_MAX_WINDOW = 2**31 - 1
_ZERO, _NONZERO, _ANY = "stream 0", "not 0", "any"
# type: (name, stream rule, allowed flag bits, minimum length, maximum length)
_TYPES = {
    0x01: ("HELLO", _ZERO, 0, 2, _CAP),
    0x02: ("ACCEPT", _ZERO, 0, 2, _CAP),
    0x03: ("REJECT", _ZERO, 0, 0, _REASON),
    0x04: ("HEAD", _NONZERO, 0x01, 4, _CAP),
    0x05: ("DATA", _NONZERO, 0, 1, _CAP),
    0x06: ("END", _NONZERO, 0, 0, 0),
    0x07: ("RESET", _NONZERO, 0, 4, 4 + _REASON),
    0x08: ("WINDOW", _ANY, 0, 4, 4),
    0x09: ("PING", _ZERO, 0, 8, 8),
    0x0A: ("PONG", _ZERO, 0, 8, 8),
    0x0B: ("GOAWAY", _ZERO, 0, 5, 5 + _REASON),
}


class _Invalid(Exception):
    pass


@dataclass(frozen=True)
class Reading:
    """What a byte stream holds: each frame with the offset where it ends, then
    either the offset where the first violation shows, or the bytes left over."""

    frames: list[tuple[fr.Frame, int]]
    error_at: int | None
    consumed: int


def reference_decode(data: bytes) -> Reading:
    frames: list[tuple[fr.Frame, int]] = []
    offset = 0
    while len(data) - offset >= 10:
        kind, flags = data[offset], data[offset + 1]
        stream_id = int.from_bytes(data[offset + 2 : offset + 6], "big")
        length = int.from_bytes(data[offset + 6 : offset + 10], "big")
        rule = _TYPES.get(kind)
        if rule is None:
            return Reading(frames, offset + 10, offset)
        name, streams, allowed_flags, low, high = rule
        bad_stream = (streams == _ZERO and stream_id != 0) or (
            streams == _NONZERO and stream_id == 0
        )
        if not low <= length <= high or flags & ~allowed_flags or bad_stream:
            return Reading(frames, offset + 10, offset)
        end = offset + 10 + length
        if end > len(data):
            break
        try:
            frame = _payload(name, flags, StreamId(stream_id), data[offset + 10 : end])
        except _Invalid:
            return Reading(frames, end, offset)
        frames.append((frame, end))
        offset = end
    return Reading(frames, None, offset)


def _payload(name: str, flags: int, stream_id: StreamId, payload: bytes) -> fr.Frame:
    if name == "DATA":
        return fr.Data(stream_id=stream_id, data=payload)
    if name == "END":
        return fr.End(stream_id=stream_id)
    if name == "HEAD":
        return fr.Head(stream_id=stream_id, fields=_fields(payload), is_informational=flags == 1)
    if name == "WINDOW":
        increment = int.from_bytes(payload, "big")
        if not 1 <= increment <= _MAX_WINDOW:
            raise _Invalid
        return fr.Window(stream_id=stream_id, increment=increment)
    if name == "RESET":
        code = _code(int.from_bytes(payload[:4], "big"))
        return fr.Reset(stream_id=stream_id, code=code, reason=_utf8(payload[4:]))
    if name in ("PING", "PONG"):
        return fr.Ping(payload=payload) if name == "PING" else fr.Pong(payload=payload)
    if name == "GOAWAY":
        last = StreamId(int.from_bytes(payload[:4], "big"))
        return fr.GoAway(last_stream_id=last, code=_code(payload[4]), reason=_utf8(payload[5:]))
    if name == "REJECT":
        return fr.Reject(reason=_utf8(payload))
    obj = _json_object(payload)
    if name == "HELLO":
        versions, client_id, routes = obj.get("versions"), obj.get("client_id"), obj.get("routes")
        if not isinstance(versions, list) or not versions:
            raise _Invalid
        if not all(_is_int(v) and v >= 0 for v in versions):
            raise _Invalid
        if not isinstance(client_id, str) or not isinstance(routes, list):
            raise _Invalid
        if not all(isinstance(route, str) for route in routes):
            raise _Invalid
        return fr.Hello(
            versions=tuple(versions),
            client_id=client_id,
            routes=tuple(routes),
            window=_window(obj.get("window")),
            connection_window=_window(obj.get("connection_window")),
        )
    version, refused = obj.get("version"), obj.get("refused")
    if not _is_int(version) or not isinstance(refused, dict):
        raise _Invalid
    if not all(isinstance(reason, str) for reason in refused.values()):
        raise _Invalid
    assert isinstance(version, int)
    return fr.Accept(
        version=version,
        refused=tuple(sorted(refused.items())),
        window=_window(obj.get("window")),
        connection_window=_window(obj.get("connection_window")),
    )


def _fields(payload: bytes) -> tuple[bytes, ...]:
    fields = []
    rest = payload
    while rest:
        if len(rest) < 2:
            raise _Invalid
        size = int.from_bytes(rest[:2], "big")
        if len(rest) - 2 < size:
            raise _Invalid
        fields.append(rest[2 : 2 + size])
        rest = rest[2 + size :]
    return tuple(fields)


def _code(raw: int) -> ErrorCode:
    known = {code.value: code for code in ErrorCode}
    return known.get(raw, ErrorCode.INTERNAL_ERROR)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Invalid from None


def _json_object(payload: bytes) -> dict[str, object]:
    try:
        value = json.loads(_utf8(payload))
    except (ValueError, RecursionError):
        raise _Invalid from None
    if not isinstance(value, dict):
        raise _Invalid
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _window(value: object) -> int:
    if not _is_int(value):
        raise _Invalid
    assert isinstance(value, int)
    if not 1 <= value <= _MAX_WINDOW:
        raise _Invalid
    return value


def judge_chunks(chunks: list[bytes]) -> list[fr.Frame]:
    """Feed ``chunks`` to a fresh `FrameDecoder`; check each call against the reading
    of the whole stream. Returns the frames decoded."""
    reading = reference_decode(b"".join(chunks))
    decoder = FrameDecoder()
    decoded: list[fr.Frame] = []
    start = 0
    for chunk in chunks:
        end = start + len(chunk)
        if reading.error_at is not None and reading.error_at <= end:
            with pytest.raises(RemoteProtocolError) as refused:
                decoder.feed(chunk)
            assert refused.value.code is ErrorCode.PROTOCOL_ERROR
            assert decoder.buffered_bytes == 0
            with pytest.raises(RemoteProtocolError) as again:
                decoder.feed(b"")
            assert again.value is refused.value
            return decoded
        expected = [frame for frame, at in reading.frames if start < at <= end]
        assert decoder.feed(chunk) == expected, f"bytes {start}-{end}"
        decoded += expected
        start = end
    assert decoder.buffered_bytes == start - reading.consumed
    return decoded


def reference_encode(frame: fr.Frame) -> bytes:
    """The bytes protocol.md sections 2-4 give for ``frame``; ValueError when its
    payload is outside the type's length range (or a head field over 65535 bytes).

    Reasons are cut at a character boundary at or below 1024 bytes; HELLO and ACCEPT
    are compact JSON with sorted keys, as the reference encoder writes them.
    """
    flags, stream_id = 0, 0
    match frame:
        case fr.Hello():
            kind, payload = (
                0x01,
                _compact_json(
                    {
                        "versions": list(frame.versions),
                        "client_id": frame.client_id,
                        "routes": list(frame.routes),
                        "window": frame.window,
                        "connection_window": frame.connection_window,
                    }
                ),
            )
        case fr.Accept():
            kind, payload = (
                0x02,
                _compact_json(
                    {
                        "version": frame.version,
                        "refused": dict(frame.refused),
                        "window": frame.window,
                        "connection_window": frame.connection_window,
                    }
                ),
            )
        case fr.Reject():
            kind, payload = 0x03, _cut(frame.reason)
        case fr.Head():
            kind, stream_id, flags = 0x04, frame.stream_id, int(frame.is_informational)
            if any(len(field) > 65535 for field in frame.fields):
                raise ValueError("head field over 65535 bytes")
            payload = b"".join(len(f).to_bytes(2, "big") + f for f in frame.fields)
        case fr.Data():
            kind, stream_id, payload = 0x05, frame.stream_id, frame.data
        case fr.End():
            kind, stream_id, payload = 0x06, frame.stream_id, b""
        case fr.Reset():
            kind, stream_id = 0x07, frame.stream_id
            payload = frame.code.value.to_bytes(4, "big") + _cut(frame.reason)
        case fr.Window():
            kind, stream_id = 0x08, frame.stream_id
            payload = frame.increment.to_bytes(4, "big")
        case fr.Ping() | fr.Pong():
            kind, payload = (0x09 if isinstance(frame, fr.Ping) else 0x0A), frame.payload
        case fr.GoAway():
            kind = 0x0B
            payload = (
                frame.last_stream_id.to_bytes(4, "big")
                + bytes([frame.code.value])
                + _cut(frame.reason)
            )
    _name, _streams, _flags, low, high = _TYPES[kind]
    if not low <= len(payload) <= high:
        raise ValueError("payload out of range")
    header = bytes([kind, flags]) + stream_id.to_bytes(4, "big") + len(payload).to_bytes(4, "big")
    return header + payload


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _cut(reason: str) -> bytes:
    raw = reason.encode("utf-8")
    end = min(len(raw), _REASON)
    while end < len(raw) and raw[end] & 0xC0 == 0x80:  # inside a character: back off
        end -= 1
    return raw[:end]
