"""The frame codec: round trips under any split, strict headers, hostile input."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

import pytest
from hypothesis import example, given, strategies as st

from pvtunnel._errors import ErrorCode, RemoteProtocolError
from pvtunnel._wire import frames as fr
from pvtunnel._wire.frames import (
    HEADER_SIZE,
    MAX_FRAME_PAYLOAD,
    MAX_WINDOW,
    FrameDecoder,
    FrameType,
    StreamId,
)
from tests import strategies as sts
from tests.wire.codec_oracle import judge_chunks, reference_encode
from tests.wire.helpers import raw_frame, raw_header

if TYPE_CHECKING:
    from collections.abc import Callable

BUFFER_CAP = HEADER_SIZE + MAX_FRAME_PAYLOAD
CONNECTION_TYPES = {
    FrameType.HELLO,
    FrameType.ACCEPT,
    FrameType.REJECT,
    FrameType.PING,
    FrameType.PONG,
    FrameType.GOAWAY,
}
# WINDOW goes on a stream (stream credit) or on stream 0 (connection credit).
ANY_STREAM_TYPES = {FrameType.WINDOW}
# protocol.md section 3, written out again so that a change to _LENGTHS must be deliberate.
LENGTHS = {
    FrameType.HELLO: (2, 65536),
    FrameType.ACCEPT: (2, 65536),
    FrameType.REJECT: (0, 1024),
    FrameType.HEAD: (4, 65536),
    FrameType.DATA: (1, 65536),
    FrameType.END: (0, 0),
    FrameType.RESET: (4, 1028),
    FrameType.WINDOW: (4, 4),
    FrameType.PING: (8, 8),
    FrameType.PONG: (8, 8),
    FrameType.GOAWAY: (5, 1029),
}
S1 = StreamId(1)


def header_is_valid(frame_type: int, flags: int, stream_id: int, length: int) -> bool:
    """The header rules of protocol.md sections 2 and 3, as an independent oracle."""
    if frame_type not in set(FrameType):
        return False
    kind = FrameType(frame_type)
    low, high = LENGTHS[kind]
    allowed_flags = 0x01 if kind is FrameType.HEAD else 0
    return (
        low <= length <= high
        and not flags & ~allowed_flags
        and (kind in ANY_STREAM_TYPES or (stream_id == 0) == (kind in CONNECTION_TYPES))
    )


def feed_chunks(decoder: FrameDecoder, chunks: list[bytes]) -> list[fr.Frame]:
    frames: list[fr.Frame] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
        assert decoder.buffered_bytes < BUFFER_CAP
    return frames


# -- round trips ---------------------------------------------------------------------


@given(sts.frames())
def test_decoding_inverts_encoding(frame: fr.Frame) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(fr.encode(frame)) == [frame]
    assert decoder.buffered_bytes == 0


# Fields of 256 bytes and more: a length's high byte is not 0 (the strategy draws
# short fields only, and a search of few examples would not go there).
_LONG_FIELDS: Final = fr.Head(
    stream_id=S1, fields=(b"n" * 256, b"v" * 0x1FF, b"", b"x" * 4097), is_informational=False
)


@given(
    st.lists(sts.frames(), max_size=8).flatmap(
        lambda frames: st.tuples(
            st.just(frames), sts.chunked(b"".join(fr.encode(f) for f in frames))
        )
    )
)
@example(([_LONG_FIELDS], [fr.encode(_LONG_FIELDS)]))
def test_any_split_or_coalescing_decodes_to_the_same_frames(
    case: tuple[list[fr.Frame], list[bytes]],
) -> None:
    frames, chunks = case
    decoder = FrameDecoder()
    assert feed_chunks(decoder, chunks) == frames
    assert decoder.buffered_bytes == 0


@given(
    st.lists(sts.frames(), max_size=12).flatmap(
        lambda frames: st.tuples(
            st.just(frames), sts.chunked(b"".join(fr.encode(f) for f in frames))
        )
    ),
    st.integers(1, 5),
)
def test_frames_taken_a_few_at_a_time_are_the_same_frames(
    case: tuple[list[fr.Frame], list[bytes]], max_frames: int
) -> None:
    frames, chunks = case
    decoder = FrameDecoder()
    taken: list[fr.Frame] = []
    for chunk in chunks:
        step = decoder.feed(chunk, max_frames)
        while True:
            assert len(step) <= max_frames
            assert decoder.stopped_early == (len(step) == max_frames)
            taken += step
            if not decoder.stopped_early:
                break
            step = decoder.feed(b"", max_frames)
    assert taken == frames
    assert decoder.buffered_bytes == 0


def test_largest_frames_round_trip_and_one_byte_more_is_refused() -> None:
    biggest: list[fr.Frame] = [
        fr.Data(stream_id=S1, data=b"x" * MAX_FRAME_PAYLOAD),
        # Two length prefixes plus the bytes: exactly the cap.
        fr.Head(stream_id=S1, fields=(b"a" * (MAX_FRAME_PAYLOAD - 4), b"")),
        fr.Reset(stream_id=S1, code=ErrorCode.CANCEL, reason="r" * 1024),
    ]
    for frame in biggest:
        assert FrameDecoder().feed(fr.encode(frame)) == [frame]
    with pytest.raises(ValueError, match="out of range"):
        fr.encode(fr.Data(stream_id=S1, data=b"x" * (MAX_FRAME_PAYLOAD + 1)))
    with pytest.raises(ValueError, match="out of range"):
        fr.encode(fr.Head(stream_id=S1, fields=(b"a" * (MAX_FRAME_PAYLOAD - 3), b"")))


@pytest.mark.parametrize(
    "frame",
    [
        fr.Data(stream_id=S1, data=b""),
        fr.Ping(payload=b"1234567"),
        fr.Pong(payload=b"123456789"),
        fr.Head(stream_id=S1, fields=(b"x",)),
    ],
)
def test_encode_refuses_payloads_outside_the_type_range(frame: fr.Frame) -> None:
    with pytest.raises(ValueError, match="out of range"):
        fr.encode(frame)


def test_encode_refuses_a_head_field_over_65535_bytes() -> None:
    with pytest.raises(ValueError, match="65535"):
        fr.encode_fields([b"x" * 65536])


@pytest.mark.parametrize(
    "make",
    [
        lambda reason: fr.Reset(stream_id=S1, code=ErrorCode.CANCEL, reason=reason),
        lambda reason: fr.GoAway(last_stream_id=StreamId(3), reason=reason),
        lambda reason: fr.Reject(reason=reason),
    ],
)
def test_long_reasons_are_cut_to_1024_bytes_on_a_character_boundary(
    make: Callable[[str], fr.Reset | fr.GoAway | fr.Reject],
) -> None:
    reason = "é" * 700  # 1400 bytes; 1024 would split the 513th character
    (decoded,) = FrameDecoder().feed(fr.encode(make(reason)))
    assert isinstance(decoded, fr.Reset | fr.GoAway | fr.Reject)
    assert decoded.reason == "é" * 512


# -- hostile input -------------------------------------------------------------------


@given(
    st.one_of(
        st.binary(max_size=300), sts.hostile_streams(), sts.edge_streams().flatmap(sts.mutated)
    ).flatmap(sts.chunked)
)
@example([b"\x01\x00\x00\x00\x00\x00\x00\x00\xff\xff" + b"[" * 65535 + b"1"])
@example([raw_frame(FrameType.HELLO, 0, b"[" * 5000)])
def test_hostile_bytes_either_decode_or_raise_remote_protocol_error(chunks: list[bytes]) -> None:
    """Every chunk gives exactly the frames an independent reading of protocol.md
    finds, and the chunk that reveals a violation raises (and every later one)."""
    # Whatever decodes can be written again and reads back the same: no frame the
    # codec accepts is one it could not have produced.
    for frame in judge_chunks(chunks):
        assert FrameDecoder().feed(fr.encode(frame)) == [frame]


# Frames whose reasons may need cutting, and frames whose payload is out of range.
# Three-byte characters first: 1024 is not a multiple of 3, so the cut falls inside one.
_long_reasons = st.text(st.sampled_from("€𝄞ré"), min_size=250, max_size=1100)
_unencodable = st.sampled_from(
    [
        fr.Data(stream_id=StreamId(1), data=b""),
        fr.Data(stream_id=StreamId(1), data=b"x" * (MAX_FRAME_PAYLOAD + 1)),
        fr.Ping(payload=b"1234567"),
        fr.Pong(payload=b"123456789"),
        fr.Head(stream_id=StreamId(1), fields=(b"x",)),
        fr.Head(stream_id=StreamId(1), fields=(b"a" * (MAX_FRAME_PAYLOAD - 3), b"")),
        fr.Head(stream_id=StreamId(1), fields=(b"a" * 65536, b"")),
    ]
)
_frames_to_write = st.one_of(
    sts.frames(),
    _unencodable,
    _long_reasons.map(lambda r: fr.Reset(stream_id=StreamId(3), code=ErrorCode.CANCEL, reason=r)),
    _long_reasons.map(lambda r: fr.GoAway(last_stream_id=StreamId(3), reason=r)),
    _long_reasons.map(lambda r: fr.Reject(reason=r)),
)


@given(sts.edge_streams().flatmap(sts.chunked), st.lists(_frames_to_write, max_size=4))
# The largest WINDOW increment, a head field running past its payload, an ACCEPT
# refusal whose reason is not a string, a reason cut inside a character.
@example([raw_frame(FrameType.WINDOW, 1, (2**31 - 1).to_bytes(4))], [])
@example([raw_frame(FrameType.HEAD, 1, b"\x00\x01a\x00\x05ab\x00")], [])
@example(
    [
        raw_frame(
            FrameType.ACCEPT,
            0,
            b'{"version":1,"refused":{"db":1},"window":1,"connection_window":1}',
        )
    ],
    [fr.Reject(reason="\u20ac" * 400)],
)
def test_frames_at_the_edges_of_the_rules_are_judged_as_protocol_md_says(
    chunks: list[bytes], to_write: list[fr.Frame]
) -> None:
    """Reading: the frames or the refusal a second decoder finds. Writing: the bytes
    protocol.md gives (reasons cut at a character boundary, compact sorted JSON), or
    ValueError for a payload outside the type's range."""
    judge_chunks(chunks)
    for frame in to_write:
        try:
            expected = reference_encode(frame)
        except ValueError:
            with pytest.raises(ValueError, match=r"out of range|65535"):
                fr.encode(frame)
        else:
            assert fr.encode(frame) == expected


# Mostly known types, single flag bits and boundary lengths: uniform bytes would
# almost never pair a known type with a valid length, and a rule hides behind another.
header_types = st.one_of(st.sampled_from(FrameType), st.integers(0, 255))
header_flags = st.one_of(st.sampled_from([0, 1, 2, 0x80]), st.integers(0, 255))
header_lengths = st.one_of(
    st.sampled_from(
        sorted(
            {n for low, high in LENGTHS.values() for n in (low - 1, low, high, high + 1) if n >= 0}
        )
    ),
    st.integers(0, 2**32 - 1),
)


@given(header_types, header_flags, st.sampled_from([0, 1, 2**32 - 1]), header_lengths)
@example(FrameType.HEAD, 0x02, 1, 8)  # a reserved HEAD flag once slipped through
def test_every_header_is_judged_as_soon_as_its_ten_bytes_are_there(
    frame_type: int, flags: int, stream_id: int, length: int
) -> None:
    decoder = FrameDecoder()
    header = raw_header(frame_type, flags, stream_id, length)
    assert decoder.feed(header[:-1]) == []
    if header_is_valid(frame_type, flags, stream_id, length):
        frames = decoder.feed(header[-1:])
        # Only a zero-length frame can be complete already (END, or an empty REJECT).
        assert decoder.buffered_bytes == (0 if frames else HEADER_SIZE)
    else:
        with pytest.raises(RemoteProtocolError) as info:
            decoder.feed(header[-1:])
        assert info.value.code is ErrorCode.PROTOCOL_ERROR


def _valid_length(kind: FrameType) -> int:
    return LENGTHS[kind][1]


def _valid_stream(kind: FrameType) -> int:
    return 0 if kind in CONNECTION_TYPES else 1


@pytest.mark.parametrize("kind", list(FrameType))
def test_each_header_rule_alone_for_every_type(kind: FrameType) -> None:
    """Every rule broken alone, the others kept, for every type: exhaustive, so a
    hole in one rule cannot hide behind the randomness of the property above."""
    cases = [(1 << bit, _valid_stream(kind), _valid_length(kind)) for bit in range(8)]
    cases += [(0, stream_id, _valid_length(kind)) for stream_id in (0, 1, 2**32 - 1)]
    low, high = LENGTHS[kind]
    cases += [
        (0, _valid_stream(kind), length)
        for length in (low - 1, low, high, high + 1, 2**32 - 1)
        if length >= 0
    ]
    for flags, stream_id, length in cases:
        header = raw_header(kind, flags, stream_id, length)
        if header_is_valid(kind, flags, stream_id, length):
            FrameDecoder().feed(header)
        else:
            with pytest.raises(RemoteProtocolError):
                FrameDecoder().feed(header)


@pytest.mark.parametrize("frame_type", [0x00, *range(0x0C, 0x100)])
def test_unknown_types_are_refused_from_the_header(frame_type: int) -> None:
    with pytest.raises(RemoteProtocolError, match="unknown frame type"):
        FrameDecoder().feed(raw_header(frame_type, 0, 0, 0))


def test_header_violations_are_caught_without_any_payload() -> None:
    cases = [
        raw_header(0x00, 0, 0, 8),  # unknown type
        raw_header(0x0C, 0, 1, 8),
        raw_header(FrameType.DATA, 0x01, 1, 8),  # reserved flag
        raw_header(FrameType.HEAD, 0x02, 1, 8),
        raw_header(FrameType.DATA, 0, 0, 8),  # stream frame on stream 0
        raw_header(FrameType.PING, 0, 1, 8),  # connection frame on a stream
        raw_header(FrameType.DATA, 0, 1, MAX_FRAME_PAYLOAD + 1),  # length over the cap
        raw_header(FrameType.DATA, 0, 1, 2**32 - 1),
        raw_header(FrameType.DATA, 0, 1, 0),  # under the minimum
        raw_header(FrameType.END, 0, 1, 1),
        raw_header(FrameType.WINDOW, 0, 1, 5),
        raw_header(FrameType.RESET, 0, 1, 1029),
    ]
    for header in cases:
        with pytest.raises(RemoteProtocolError):
            FrameDecoder().feed(header)


def test_window_is_valid_on_stream_0_for_the_connection_and_on_any_stream() -> None:
    frames = [fr.Window(stream_id=StreamId(s), increment=9) for s in (0, 1, 2**32 - 1)]
    wire = b"".join(fr.encode(frame) for frame in frames)
    assert wire[2:6] == bytes(4)  # stream 0 on the wire
    assert FrameDecoder().feed(wire) == frames


def payload_error(frame_type: FrameType, stream_id: int, payload: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder().feed(raw_frame(frame_type, stream_id, payload))
    assert info.value.code is ErrorCode.PROTOCOL_ERROR
    return str(info.value)


def hello(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "versions": [1],
        "client_id": "a",
        "routes": ["r"],
        "window": 10,
        "connection_window": 20,
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{]", "not UTF-8 JSON"),
        # Deep enough for a RecursionError inside json on every supported Python (3.13
        # parses 5,000 levels), and within one frame.
        (b"[" * 20000 + b"]" * 20000, "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (hello(versions=[]), "versions"),
        (hello(versions=None), "versions"),
        (hello(versions=[-1]), "versions"),
        (hello(versions=[True]), "versions"),
        (hello(versions=[1.0]), "versions"),
        (hello(client_id=None), "client_id"),
        (hello(client_id=7), "client_id"),
        (hello(routes="r"), "routes"),
        (hello(routes=[1]), "routes"),
        (hello(window=None), "window"),
        (hello(window=0), "window"),
        (hello(window=MAX_WINDOW + 1), "window"),
        (hello(window=True), "window"),
        (hello(window=1.5), "window"),
        (hello(connection_window=None), "connection_window"),
        (hello(connection_window=0), "connection_window"),
        (hello(connection_window=MAX_WINDOW + 1), "connection_window"),
        (hello(connection_window=False), "connection_window"),
        (hello(connection_window="20"), "connection_window"),
    ],
)
def test_bad_hello_payloads(payload: bytes, message: str) -> None:
    assert message in payload_error(FrameType.HELLO, 0, payload)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"refused": {}}, "version"),
        ({"version": "1", "refused": {}}, "version"),
        ({"version": True, "refused": {}}, "version"),
        ({"version": 1}, "refused"),
        ({"version": 1, "refused": []}, "refused"),
        ({"version": 1, "refused": {"r": 1}}, "refused"),
        ({"version": 1, "refused": {}, "window": None}, "ACCEPT window"),
        ({"version": 1, "refused": {}, "window": -5}, "ACCEPT window"),
        ({"version": 1, "refused": {}, "connection_window": None}, "connection_window"),
        ({"version": 1, "refused": {}, "connection_window": 0}, "connection_window"),
        ({"version": 1, "refused": {}, "connection_window": 2**31}, "connection_window"),
    ],
)
def test_bad_accept_payloads(body: dict[str, object], message: str) -> None:
    good: dict[str, object] = {"window": 10, "connection_window": 20}
    payload = json.dumps({k: v for k, v in (good | body).items() if v is not None})
    assert message in payload_error(FrameType.ACCEPT, 0, payload.encode())


def test_json_payloads_accept_any_key_order_whitespace_and_unknown_keys() -> None:
    payload = (
        b' { "window" : 7, "extra": [1], "routes": [], "client_id": "", '
        b'"connection_window": 8, "versions": [0, 1] }'
    )
    assert FrameDecoder().feed(raw_frame(FrameType.HELLO, 0, payload)) == [
        fr.Hello(versions=(0, 1), client_id="", routes=(), window=7, connection_window=8)
    ]
    payload = (
        b'{"connection_window": 2, "version": 1, "window": 1, "refused": {"b": "x", "a": "y"}}'
    )
    assert FrameDecoder().feed(raw_frame(FrameType.ACCEPT, 0, payload)) == [
        fr.Accept(version=1, refused=(("a", "y"), ("b", "x")), window=1, connection_window=2)
    ]


@pytest.mark.parametrize("increment", [0, MAX_WINDOW + 1, 2**32 - 1])
def test_window_increment_out_of_range(increment: int) -> None:
    assert "increment" in payload_error(FrameType.WINDOW, 1, increment.to_bytes(4))


@pytest.mark.parametrize(
    ("frame_type", "stream_id", "payload"),
    [
        (FrameType.RESET, 1, b"\x00\x00\x00\x05\xff"),
        (FrameType.GOAWAY, 0, b"\x00\x00\x00\x01\x00\xc3"),
        (FrameType.REJECT, 0, b"\xed\xa0\x80"),  # an encoded surrogate is not UTF-8
    ],
)
def test_reasons_that_are_not_utf8(frame_type: FrameType, stream_id: int, payload: bytes) -> None:
    assert "UTF-8" in payload_error(frame_type, stream_id, payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x01a\x00", "truncated head field length"),
        (b"\x00\x05abc", "runs past"),
        (b"\x00\x00\xff\xff", "runs past"),
        (b"\x00\x01a\x00\x02bc\x00", "truncated head field length"),
        (b"\x00\x01a\x00\x02b\x00\x01c", "runs past"),
    ],
)
def test_head_fields_that_do_not_add_up(payload: bytes, message: str) -> None:
    assert message in payload_error(FrameType.HEAD, 1, payload)


def test_unknown_error_codes_read_as_internal_error() -> None:
    reset = raw_frame(FrameType.RESET, 1, (999).to_bytes(4) + b"why")
    goaway = raw_frame(FrameType.GOAWAY, 0, (4).to_bytes(4) + b"\xc8")
    assert FrameDecoder().feed(reset + goaway) == [
        fr.Reset(stream_id=S1, code=ErrorCode.INTERNAL_ERROR, reason="why"),
        fr.GoAway(last_stream_id=StreamId(4), code=ErrorCode.INTERNAL_ERROR, reason=""),
    ]


def test_a_poisoned_decoder_keeps_raising_and_drops_its_buffer() -> None:
    decoder = FrameDecoder()
    good = fr.encode(fr.End(stream_id=S1))
    assert decoder.feed(good + good[:5]) == [fr.End(stream_id=S1)]
    assert decoder.buffered_bytes == 5
    with pytest.raises(RemoteProtocolError) as first:
        decoder.feed(b"\x00\x00\x00\x01\x01")  # completes a header with a nonzero length
    assert decoder.buffered_bytes == 0
    for later in (b"", good):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.feed(later)
        assert again.value is first.value


def test_frames_before_an_error_in_the_same_feed_are_not_returned_but_the_error_is() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(fr.encode(fr.End(stream_id=S1)) + raw_header(0xFF, 0, 0, 0))
