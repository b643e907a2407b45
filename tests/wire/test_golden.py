"""protocol.md's hex blocks are exactly what the codec and the multiplexer produce."""

from __future__ import annotations

import pytest

from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import FrameDecoder
from pvtunnel._wire.mux import Multiplexer, Role
from tests.wire.golden import (
    CONNECTION_WINDOW,
    EXAMPLE_BODY,
    EXAMPLE_REQUEST,
    EXAMPLE_RESPONSE,
    GOLDEN,
    PROTOCOL_MD,
    S1,
    WINDOW,
    document_blocks,
)

BLOCKS = document_blocks(PROTOCOL_MD.read_text(encoding="utf-8"))


def test_document_shows_every_golden_case_and_every_frame_type() -> None:
    assert sorted(BLOCKS) == sorted(GOLDEN)
    shown = {type(frame) for frames in GOLDEN.values() for frame in frames}
    assert len(shown) == len(fr.FrameType)
    assert any(f.is_informational for fs in GOLDEN.values() for f in fs if isinstance(f, fr.Head))
    windows = [f for fs in GOLDEN.values() for f in fs if isinstance(f, fr.Window)]
    assert {w.stream_id == 0 for w in windows} == {True, False}  # connection and stream


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encoder_writes_the_documented_bytes(name: str) -> None:
    assert b"".join(fr.encode(frame) for frame in GOLDEN[name]) == BLOCKS[name]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_documented_bytes_decode_whole_bytewise_and_with_trailing_bytes(name: str) -> None:
    wire, expected = BLOCKS[name], list(GOLDEN[name])

    whole = FrameDecoder()
    assert whole.feed(wire) == expected
    assert whole.buffered_bytes == 0

    bytewise = FrameDecoder()
    frames: list[fr.Frame] = []
    for index in range(len(wire)):
        frames += bytewise.feed(wire[index : index + 1])
    assert frames == expected
    assert bytewise.buffered_bytes == 0

    # The first 9 bytes of the next frame: not even a header yet, so held back.
    trailing = FrameDecoder()
    assert trailing.feed(wire + wire[:9]) == expected
    assert trailing.buffered_bytes == 9
    assert trailing.feed(wire[9:]) == expected
    assert trailing.buffered_bytes == 0


def test_worked_example_is_what_two_multiplexers_send() -> None:
    """Section 12 is not a hand-written illustration: it is the real exchange."""
    server = Multiplexer(Role.SERVER, window=WINDOW, connection_window=CONNECTION_WINDOW)
    agent = Multiplexer(Role.AGENT, window=WINDOW, connection_window=CONNECTION_WINDOW)

    agent.send_hello(client_id="agent-1", routes=("app",))
    message = agent.data_to_send()
    assert message == BLOCKS["example-hello"]
    assert server.receive_data(message) == [ev.HelloReceived(client_id="agent-1", routes=("app",))]
    server.accept()
    message = server.data_to_send()
    assert message == BLOCKS["example-accept"]
    assert agent.receive_data(message) == [ev.Accepted(refused=())]

    assert server.open_stream(EXAMPLE_REQUEST, end_stream=True) == S1
    message = server.data_to_send()
    assert message == BLOCKS["example-request"]
    assert agent.receive_data(message) == [
        ev.StreamOpened(stream_id=S1, head=EXAMPLE_REQUEST),
        ev.StreamEnded(stream_id=S1),
    ]

    agent.send_response(S1, EXAMPLE_RESPONSE)
    agent.send_data(S1, EXAMPLE_BODY)
    agent.end_stream(S1)
    message = agent.data_to_send()
    assert message == BLOCKS["example-response"]
    assert server.receive_data(message) == [
        ev.ResponseReceived(stream_id=S1, head=EXAMPLE_RESPONSE),
        ev.DataReceived(stream_id=S1, data=EXAMPLE_BODY),
        ev.StreamEnded(stream_id=S1),
    ]
    assert server.held_bytes == len(EXAMPLE_BODY)  # forgotten, but not yet passed on
    server.acknowledge_data(S1, len(EXAMPLE_BODY))
    assert server.held_bytes == 0
    assert (server.stream_count, agent.stream_count) == (0, 0)
    assert not server.has_data_to_send
    assert not agent.has_data_to_send
