"""Hypothesis strategies for frames, heads and byte streams, shared by tests/ and fuzz/.

Frame strategies produce only frames that `encode` accepts and that decode back to
themselves (reasons within the 1024-byte cap, ACCEPT refusals sorted and unique), so
round-trip properties can compare with ``==``. Hostile input comes from `mutated`
and plain `st.binary`, never from bending these.
"""

from __future__ import annotations

import itertools

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
