"""Frame types, their encoding, and an incremental decoder (protocol.md sections 2-4).

Pure: no trio, no sockets, no clock. The decoder treats the concatenation of all
binary WebSocket messages as one byte stream, so a frame may be split across
messages and several frames may share one. It validates every header field (type,
flags, stream ID, length against its cap) as soon as the ten header bytes are
there, before a single payload byte is buffered, so hostile input can never make
it allocate more than ``MAX_FRAME_PAYLOAD`` bytes beyond what it was handed.
"""

from __future__ import annotations

import enum
import json
import struct
import sys
from typing import Final, NewType, assert_never

import attrs

from pvtunnel._errors import ErrorCode, RemoteProtocolError
from pvtunnel._wire._make import positional

StreamId = NewType("StreamId", int)

HEADER: Final = struct.Struct(">BBII")
HEADER_SIZE: Final = HEADER.size
MAX_FRAME_PAYLOAD: Final = 65536
MAX_STREAM_ID: Final = 2**32 - 1
MAX_WINDOW: Final = 2**31 - 1
MAX_FIELD_LENGTH: Final = 65535
PROTOCOL_VERSION: Final = 1
MAX_REASON_LENGTH: Final = 1024

_U32: Final = struct.Struct(">I")


class FrameType(enum.IntEnum):
    """The frame kinds of protocol.md section 3."""

    HELLO = 0x01
    ACCEPT = 0x02
    REJECT = 0x03
    HEAD = 0x04
    DATA = 0x05
    END = 0x06
    RESET = 0x07
    WINDOW = 0x08
    PING = 0x09
    PONG = 0x0A
    GOAWAY = 0x0B


class Flag(enum.IntFlag):
    """Header flags; only HEAD defines one."""

    INFORMATIONAL = 0x01


# Which stream IDs each type may carry, as (on stream 0, on a stream): connection
# frames only on 0, stream frames never on 0, and WINDOW on both (on 0 it returns
# connection credit, section 7).
_CONNECTION_ONLY: Final = (True, False)
_STREAM_ONLY: Final = (False, True)
_STREAM_IDS: Final = {
    FrameType.HELLO: _CONNECTION_ONLY,
    FrameType.ACCEPT: _CONNECTION_ONLY,
    FrameType.REJECT: _CONNECTION_ONLY,
    FrameType.HEAD: _STREAM_ONLY,
    FrameType.DATA: _STREAM_ONLY,
    FrameType.END: _STREAM_ONLY,
    FrameType.RESET: _STREAM_ONLY,
    FrameType.WINDOW: (True, True),
    FrameType.PING: _CONNECTION_ONLY,
    FrameType.PONG: _CONNECTION_ONLY,
    FrameType.GOAWAY: _CONNECTION_ONLY,
}
CONNECTION_STREAM: Final = StreamId(0)
# Plain ints: ``~Flag.INFORMATIONAL`` is Flag(0) (the complement within the enum's
# own bits), which would let every reserved bit through the check below.
_ALLOWED_FLAGS: Final = {
    t: (int(Flag.INFORMATIONAL) if t is FrameType.HEAD else 0) for t in FrameType
}
# (minimum, maximum) payload length per type, checked before the payload is read.
_LENGTHS: Final = {
    FrameType.HELLO: (2, MAX_FRAME_PAYLOAD),
    FrameType.ACCEPT: (2, MAX_FRAME_PAYLOAD),
    FrameType.REJECT: (0, MAX_REASON_LENGTH),
    FrameType.HEAD: (4, MAX_FRAME_PAYLOAD),
    FrameType.DATA: (1, MAX_FRAME_PAYLOAD),
    FrameType.END: (0, 0),
    FrameType.RESET: (4, 4 + MAX_REASON_LENGTH),
    FrameType.WINDOW: (4, 4),
    FrameType.PING: (8, 8),
    FrameType.PONG: (8, 8),
    FrameType.GOAWAY: (5, 5 + MAX_REASON_LENGTH),
}
# The above per type byte, for the decoder: plain int keys hash in C, where
# IntEnum members hash through Python code (enum.Enum.__hash__).
_RULES: Final = {int(t): (t, *_LENGTHS[t], _ALLOWED_FLAGS[t], _STREAM_IDS[t]) for t in FrameType}
_INFORMATIONAL: Final = int(Flag.INFORMATIONAL)


@attrs.frozen(kw_only=True)
class Hello:
    """The agent's first frame: who it is and which names it serves."""

    versions: tuple[int, ...]
    client_id: str
    routes: tuple[str, ...]
    window: int
    connection_window: int


@attrs.frozen(kw_only=True)
class Accept:
    """The server's answer to a usable hello; ``refused`` maps route name to reason."""

    version: int
    refused: tuple[tuple[str, str], ...]
    window: int
    connection_window: int


@attrs.frozen(kw_only=True)
class Reject:
    """The server's final no to a hello; the agent logs ``reason`` and exits."""

    reason: str


@attrs.frozen(kw_only=True)
class Head:
    """A request or response head; ``fields`` are length-prefixed strings on the wire."""

    stream_id: StreamId
    fields: tuple[bytes, ...]
    is_informational: bool = False


@attrs.frozen(kw_only=True)
class Data:
    stream_id: StreamId
    data: bytes


@attrs.frozen(kw_only=True)
class End:
    stream_id: StreamId


@attrs.frozen(kw_only=True)
class Reset:
    stream_id: StreamId
    code: ErrorCode
    reason: str = ""


@attrs.frozen(kw_only=True)
class Window:
    """Credit returned: for one stream, or for the connection when ``stream_id`` is 0."""

    stream_id: StreamId
    increment: int


@attrs.frozen(kw_only=True)
class Ping:
    payload: bytes


@attrs.frozen(kw_only=True)
class Pong:
    payload: bytes


@attrs.frozen(kw_only=True)
class GoAway:
    last_stream_id: StreamId
    code: ErrorCode = ErrorCode.NO_ERROR
    reason: str = ""


# The frames of every proxied request, built from header fields the decoder checked.
_data = positional(Data, "stream_id", "data")
_head = positional(Head, "stream_id", "fields", "is_informational")
_end = positional(End, "stream_id")

Frame = Hello | Accept | Reject | Head | Data | End | Reset | Window | Ping | Pong | GoAway


def encode_fields(fields: tuple[bytes, ...] | list[bytes]) -> bytes:
    """Head payload: each field as a 16-bit big-endian length and its bytes."""
    parts: list[bytes] = []
    append = parts.append
    try:
        for field in fields:
            # to_bytes refuses what a u16 cannot hold: the one check a field needs.
            append(len(field).to_bytes(2))
            append(field)
    except OverflowError:
        raise ValueError("head field longer than 65535 bytes") from None
    return b"".join(parts)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def our_hello(
    *, client_id: str, routes: tuple[str, ...], window: int, connection_window: int
) -> Hello:
    """The HELLO this implementation's agent sends: the versions it speaks, with its
    name, routes and windows. The agent's configuration is checked against it too."""
    return Hello(
        versions=(PROTOCOL_VERSION,),
        client_id=client_id,
        routes=routes,
        window=window,
        connection_window=connection_window,
    )


def hello_payload(hello: Hello) -> bytes:
    """A HELLO's payload. An agent's configuration is checked against its size: every
    route name goes in it, and it must fit in one frame (`MAX_FRAME_PAYLOAD`)."""
    return _json(
        {
            "versions": list(hello.versions),
            "client_id": hello.client_id,
            "routes": list(hello.routes),
            "window": hello.window,
            "connection_window": hello.connection_window,
        }
    )


def _reason(reason: str) -> bytes:
    # Reasons are diagnostics: cut them to the cap rather than fail the frame.
    cut = reason.encode("utf-8")[:MAX_REASON_LENGTH]
    return cut.decode("utf-8", "ignore").encode("utf-8")


def encode(frame: Frame) -> bytes:
    """Encode one frame to its wire bytes (header then payload).

    Raises:
        ValueError: the frame cannot be represented (payload over its cap).
    """
    frame_type: FrameType
    flags = 0
    stream_id = 0
    match frame:
        case Hello():
            frame_type, payload = FrameType.HELLO, hello_payload(frame)
        case Accept():
            frame_type = FrameType.ACCEPT
            payload = _json(
                {
                    "version": frame.version,
                    "refused": dict(frame.refused),
                    "window": frame.window,
                    "connection_window": frame.connection_window,
                }
            )
        case Reject():
            frame_type = FrameType.REJECT
            payload = _reason(frame.reason)
        case Head():
            frame_type, stream_id = FrameType.HEAD, frame.stream_id
            flags = Flag.INFORMATIONAL if frame.is_informational else 0
            payload = encode_fields(frame.fields)
        case Data():
            frame_type, stream_id, payload = FrameType.DATA, frame.stream_id, frame.data
        case End():
            frame_type, stream_id, payload = FrameType.END, frame.stream_id, b""
        case Reset():
            frame_type, stream_id = FrameType.RESET, frame.stream_id
            payload = _U32.pack(frame.code) + _reason(frame.reason)
        case Window():
            frame_type, stream_id = FrameType.WINDOW, frame.stream_id
            payload = _U32.pack(frame.increment)
        case Ping():
            frame_type, payload = FrameType.PING, frame.payload
        case Pong():
            frame_type, payload = FrameType.PONG, frame.payload
        case GoAway():
            frame_type = FrameType.GOAWAY
            payload = _U32.pack(frame.last_stream_id) + bytes([frame.code]) + _reason(frame.reason)
        case _:  # pragma: no cover  (a new frame class fails the type check here)
            assert_never(frame)
    low, high = _LENGTHS[frame_type]
    if not low <= len(payload) <= high:
        raise ValueError(f"{frame_type.name} payload of {len(payload)} bytes is out of range")
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


class FrameDecoder:
    """Turns a byte stream into frames, validating each header before its payload.

    ``feed`` bytes in any split; ``frames`` returns every whole frame so far. After a
    `RemoteProtocolError` the decoder is poisoned and every later call raises it again:
    the connection must be closed with the error's code.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None
        self._stopped_early = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes held waiting for the rest of a frame (never above header + cap)."""
        return len(self._buffer)

    @property
    def stopped_early(self) -> bool:
        """The last `feed` returned its ``max_frames``: whole frames may be waiting
        for the next (``feed(b"")`` takes them)."""
        return self._stopped_early

    def feed(self, data: bytes, max_frames: int = sys.maxsize) -> list[Frame]:
        """Add bytes and return the frames they complete, at most ``max_frames``.

        A cap lets the caller take a message of many tiny frames in steps, letting
        others run in between; the frames past it wait here (`stopped_early`).

        Raises:
            RemoteProtocolError: the bytes break protocol.md; the decoder is poisoned.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        try:
            frames, consumed = _decode_all(view, max_frames)
        except RemoteProtocolError as exc:
            self._error = exc
            self._buffer = bytearray()
            raise
        if buffer:
            del buffer[:consumed]
        elif consumed < len(data):
            buffer += data[consumed:]
        self._stopped_early = len(frames) == max_frames
        return frames


def _fail(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.PROTOCOL_ERROR)


def _decode_all(view: bytes | bytearray, max_frames: int) -> tuple[list[Frame], int]:
    frames: list[Frame] = []
    offset = 0
    end = len(view)
    unpack_header = HEADER.unpack_from
    while end - offset >= HEADER_SIZE and len(frames) < max_frames:
        raw_type, flags, stream_id, length = unpack_header(view, offset)
        rules = _RULES.get(raw_type)
        if rules is None:
            raise _fail(f"unknown frame type 0x{raw_type:02x}")
        frame_type, low, high, allowed_flags, on_stream = rules
        if not low <= length <= high:
            raise _fail(f"{frame_type.name} frame with a payload of {length} bytes")
        if flags & ~allowed_flags:
            raise _fail(f"{frame_type.name} frame with reserved flags 0x{flags:02x}")
        if not on_stream[stream_id != 0]:
            raise _fail(f"{frame_type.name} frame on stream {stream_id}")
        start = offset + HEADER_SIZE
        if end - start < length:
            break
        payload = bytes(view[start : start + length])
        # stream_id is struct's Any: no StreamId() call, which is a Python function.
        frames.append(_decode_payload(frame_type, flags, stream_id, payload))
        offset = start + length
    return frames, offset


def _decode_payload(
    frame_type: FrameType, flags: int, stream_id: StreamId, payload: bytes
) -> Frame:
    match frame_type:
        case FrameType.DATA:
            return _data(stream_id, payload)
        case FrameType.HEAD:
            return _head(stream_id, decode_fields(payload), flags == _INFORMATIONAL)
        case FrameType.END:
            return _end(stream_id)
        case FrameType.WINDOW:
            (increment,) = _U32.unpack(payload)
            if not 1 <= increment <= MAX_WINDOW:
                raise _fail(f"WINDOW increment {increment} out of range")
            return Window(stream_id=stream_id, increment=increment)
        case FrameType.RESET:
            return Reset(
                stream_id=stream_id,
                code=_code(_U32.unpack_from(payload)[0]),
                reason=_text(payload[4:]),
            )
        case FrameType.PING:
            return Ping(payload=payload)
        case FrameType.PONG:
            return Pong(payload=payload)
        case FrameType.GOAWAY:
            (last_stream_id,) = _U32.unpack_from(payload)
            return GoAway(
                last_stream_id=StreamId(last_stream_id),
                code=_code(payload[4]),
                reason=_text(payload[5:]),
            )
        case FrameType.HELLO:
            return _decode_hello(payload)
        case FrameType.ACCEPT:
            return _decode_accept(payload)
        case FrameType.REJECT:
            return Reject(reason=_text(payload))
        case _:  # pragma: no cover  (a new frame type fails the type check here)
            assert_never(frame_type)


def _code(raw: int) -> ErrorCode:
    try:
        return ErrorCode(raw)
    except ValueError:
        # Unknown codes are legal (forward compatibility) and mean an internal error.
        return ErrorCode.INTERNAL_ERROR


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("text that is not UTF-8") from None


def decode_fields(payload: bytes) -> tuple[bytes, ...]:
    """Split a head payload into its fields.

    Raises:
        RemoteProtocolError: a length runs past the end of the payload.
    """
    fields: list[bytes] = []
    append = fields.append
    offset = 0
    # Indexing two bytes is cheaper than a struct call per field; a field that runs
    # past the end stops the loop, and where it stopped tells the two errors apart.
    last = len(payload) - 1
    while offset < last:
        start = offset + 2
        offset = start + (payload[offset] << 8 | payload[start - 1])
        append(payload[start:offset])
    if offset != last + 1:
        raise _fail(
            "truncated head field length" if offset == last else "head field runs past the frame"
        )
    return tuple(fields)


def _load_object(payload: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        # UnicodeDecodeError is a ValueError; RecursionError is how the json module
        # answers deep nesting ("[[[[..."), which fits easily in one payload.
        raise _fail(f"{what} payload is not UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise _fail(f"{what} payload is not a JSON object")
    return value


def _window(obj: dict[str, object], key: str, what: str) -> int:
    value = obj.get(key)
    if type(value) is not int or not 1 <= value <= MAX_WINDOW:
        raise _fail(f"{what} {key} must be an integer from 1 to {MAX_WINDOW}")
    return value


def _decode_hello(payload: bytes) -> Hello:
    obj = _load_object(payload, "HELLO")
    versions, client_id, routes = obj.get("versions"), obj.get("client_id"), obj.get("routes")
    if not (
        isinstance(versions, list) and versions and all(type(v) is int and v >= 0 for v in versions)
    ):
        raise _fail("HELLO versions must be a non-empty list of integers")
    if not isinstance(client_id, str):
        raise _fail("HELLO client_id must be a string")
    if not (isinstance(routes, list) and all(isinstance(r, str) for r in routes)):
        raise _fail("HELLO routes must be a list of strings")
    return Hello(
        versions=tuple(versions),
        client_id=client_id,
        routes=tuple(routes),
        window=_window(obj, "window", "HELLO"),
        connection_window=_window(obj, "connection_window", "HELLO"),
    )


def _decode_accept(payload: bytes) -> Accept:
    obj = _load_object(payload, "ACCEPT")
    version, refused = obj.get("version"), obj.get("refused")
    if type(version) is not int:
        raise _fail("ACCEPT version must be an integer")
    if not (
        isinstance(refused, dict) and all(isinstance(reason, str) for reason in refused.values())
    ):
        raise _fail("ACCEPT refused must map route names to reasons")
    return Accept(
        version=version,
        refused=tuple(sorted(refused.items())),
        window=_window(obj, "window", "ACCEPT"),
        connection_window=_window(obj, "connection_window", "ACCEPT"),
    )
