"""Flow control in the multiplexer: stream and connection windows, between two `MuxPair` ends.

Credit is what bounds the memory a peer can make us hold, whatever the body size:
these tests pin when it is spent, when it comes back, and that nothing a stream
held is lost when the stream ends, is reset or is refused.
"""

from __future__ import annotations

import pytest

from pvtunnel._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import MAX_FRAME_PAYLOAD, FrameType, StreamId
from pvtunnel._wire.mux import Multiplexer, Role
from tests.wire.helpers import (
    GET,
    OK,
    MuxPair,
    decode_all,
    opened_pair,
    raw_frame,
)

S1 = StreamId(1)


# -- flow control ----------------------------------------------------------------------


def test_sending_beyond_credit_is_refused_locally() -> None:
    pair = opened_pair(agent_window=10)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"x" * 6)
    assert pair.server.send_credit(stream_id) == 4
    with pytest.raises(LocalProtocolError, match="exceed the credit of 4"):
        pair.server.send_data(stream_id, b"x" * 5)
    pair.server.send_data(stream_id, b"x" * 4)
    assert pair.server.send_credit(stream_id) == 0
    with pytest.raises(LocalProtocolError):
        pair.server.send_data(stream_id, b"x")
    pair.server.send_data(stream_id, b"")  # nothing to send is never refused
    assert pair.to_agent() == [
        ev.DataReceived(stream_id=stream_id, data=b"x" * 6),
        ev.DataReceived(stream_id=stream_id, data=b"x" * 4),
    ]


def test_credit_comes_back_in_quarter_window_batches_after_acknowledgement() -> None:
    pair = opened_pair(agent_window=100)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"x" * 100)
    pair.to_agent()
    assert not pair.agent.has_data_to_send  # received is not consumed: no credit yet
    pair.agent.acknowledge_data(stream_id, 24)
    assert not pair.agent.has_data_to_send  # 24 < 100 // 4
    pair.agent.acknowledge_data(stream_id, 1)
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=stream_id, increment=25)]
    pair.agent.acknowledge_data(stream_id, 75)
    assert pair.to_server() == [ev.CreditGranted(stream_id=stream_id, increment=75)]
    assert pair.server.send_credit(stream_id) == 75


def test_a_window_smaller_than_four_returns_credit_byte_by_byte() -> None:
    pair = opened_pair(agent_window=3)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"abc")
    pair.to_agent()
    pair.agent.acknowledge_data(stream_id, 1)
    assert pair.to_server() == [ev.CreditGranted(stream_id=stream_id, increment=1)]


@pytest.mark.parametrize("size", [-1, 11])
def test_acknowledging_more_than_was_received_is_refused(size: int) -> None:
    pair = opened_pair(agent_window=100)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"x" * 10)
    pair.to_agent()
    with pytest.raises(LocalProtocolError, match="more than it holds"):
        pair.agent.acknowledge_data(stream_id, size)
    pair.agent.acknowledge_data(stream_id, 10)
    with pytest.raises(LocalProtocolError):
        pair.agent.acknowledge_data(stream_id, 1)  # all 10 are acknowledged already


def test_acknowledging_an_ended_half_returns_no_stream_credit() -> None:
    pair = opened_pair(agent_window=4, agent_connection_window=4)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"abcd")
    pair.server.end_stream(stream_id)
    pair.to_agent()
    pair.agent.acknowledge_data(stream_id, 4)  # the request half is CLOSED...
    # ...so nothing more can come on the stream: only the connection gets credit.
    assert pair.to_server() == [ev.CreditGranted(stream_id=StreamId(0), increment=4)]
    with pytest.raises(LocalProtocolError, match="more than it holds"):
        pair.agent.acknowledge_data(stream_id, 1)


def test_acknowledging_nothing_is_always_fine_and_anything_on_an_unknown_stream_is_not() -> None:
    pair = opened_pair()
    pair.agent.acknowledge_data(StreamId(99), 0)
    pair.agent.acknowledge_all(StreamId(99))
    with pytest.raises(LocalProtocolError, match="more than it holds"):
        pair.agent.acknowledge_data(StreamId(99), 4)
    assert not pair.agent.has_data_to_send


def test_data_beyond_the_granted_window_is_a_flow_control_error() -> None:
    pair = opened_pair(agent_window=10)
    stream_id = pair.open()
    pair.agent.receive_data(raw_frame(FrameType.DATA, stream_id, b"x" * 10))
    with pytest.raises(RemoteProtocolError) as info:
        pair.agent.receive_data(raw_frame(FrameType.DATA, stream_id, b"x"))
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_the_window_granted_is_what_the_peer_may_send_again() -> None:
    pair = opened_pair(agent_window=8)
    stream_id = pair.open()
    pair.agent.receive_data(raw_frame(FrameType.DATA, stream_id, b"x" * 8))
    pair.agent.acknowledge_data(stream_id, 8)
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=stream_id, increment=8)]
    pair.agent.receive_data(raw_frame(FrameType.DATA, stream_id, b"x" * 8))
    with pytest.raises(RemoteProtocolError) as info:
        pair.agent.receive_data(raw_frame(FrameType.DATA, stream_id, b"x"))
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_credit_above_2_31_minus_1_is_a_flow_control_error() -> None:
    pair = opened_pair(agent_window=fr.MAX_WINDOW)
    stream_id = pair.open()
    pair.agent.send_response(stream_id, OK)
    window = fr.encode(fr.Window(stream_id=stream_id, increment=1))
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive_data(
            fr.encode(fr.Window(stream_id=stream_id, increment=fr.MAX_WINDOW)) + window
        )
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_window_out_of_range_is_refused_at_construction() -> None:
    for window in (0, fr.MAX_WINDOW + 1):
        with pytest.raises(ValueError, match="window"):
            Multiplexer(Role.SERVER, window=window)
        with pytest.raises(ValueError, match="connection window"):
            Multiplexer(Role.AGENT, connection_window=window)


# -- connection flow control ---------------------------------------------------------

C0 = StreamId(0)


def test_each_side_starts_with_the_connection_window_the_other_announced() -> None:
    pair = MuxPair(server_connection_window=300, agent_connection_window=700)
    assert pair.server.connection_credit == pair.agent.connection_credit == 0
    pair.handshake()
    assert pair.server.connection_credit == 700
    assert pair.agent.connection_credit == 300
    # send_credit is the smaller of the stream's credit (1024) and the connection's.
    stream_id = pair.open()
    assert pair.server.send_credit(stream_id) == 700
    pair.agent.send_response(stream_id, OK)
    assert pair.agent.send_credit(stream_id) == 300


def test_sending_beyond_connection_credit_is_refused_even_within_stream_credit() -> None:
    pair = opened_pair(agent_window=100, agent_connection_window=150)
    first, second = pair.open(), pair.open()
    pair.server.send_data(first, b"x" * 100)
    assert pair.server.send_credit(first) == 0  # the stream's credit is spent
    assert pair.server.send_credit(second) == 50  # the connection's bounds the other
    with pytest.raises(LocalProtocolError, match="connection credit of 50"):
        pair.server.send_data(second, b"x" * 51)
    assert pair.server.connection_credit == 50  # a refusal spends nothing
    pair.server.send_data(second, b"x" * 50)
    assert pair.server.send_credit(second) == 0
    assert pair.server.connection_credit == 0


def test_window_on_stream_0_returns_connection_credit() -> None:
    pair = opened_pair(agent_connection_window=10)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"x" * 10)
    assert pair.server.send_credit(stream_id) == 0
    events = pair.server.receive_data(fr.encode(fr.Window(stream_id=C0, increment=7)))
    assert events == [ev.CreditGranted(stream_id=C0, increment=7)]
    assert pair.server.connection_credit == 7
    assert pair.server.send_credit(stream_id) == 7


def test_connection_credit_above_2_31_minus_1_is_a_flow_control_error() -> None:
    pair = opened_pair(agent_connection_window=fr.MAX_WINDOW)
    with pytest.raises(RemoteProtocolError, match="connection credit") as info:
        pair.server.receive_data(fr.encode(fr.Window(stream_id=C0, increment=1)))
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_window_on_stream_0_before_the_handshake_is_an_error() -> None:
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="a", routes=())
    with pytest.raises(RemoteProtocolError, match="hello-sent"):
        agent.receive_data(fr.encode(fr.Window(stream_id=C0, increment=1)))


def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    pair = opened_pair(agent_window=10, agent_connection_window=15)
    first, second = pair.open(), pair.open()
    pair.agent.receive_data(raw_frame(FrameType.DATA, first, b"x" * 10))
    pair.agent.receive_data(raw_frame(FrameType.DATA, second, b"x" * 5))
    with pytest.raises(RemoteProtocolError, match="connection window") as info:
        pair.agent.receive_data(raw_frame(FrameType.DATA, second, b"x"))  # stream allows 5
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_connection_credit_comes_back_in_quarter_window_batches() -> None:
    pair = opened_pair(agent_window=1000, agent_connection_window=100)
    first, second = pair.open(), pair.open()
    pair.server.send_data(first, b"a" * 60)
    pair.server.send_data(second, b"b" * 40)
    pair.to_agent()
    assert pair.agent.held_bytes == 100
    pair.agent.acknowledge_data(first, 20)
    pair.agent.acknowledge_data(second, 4)
    assert not pair.agent.has_data_to_send  # 24 < 100 // 4, and < 1000 // 4 per stream
    pair.agent.acknowledge_data(second, 1)
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=C0, increment=25)]
    pair.agent.acknowledge_data(first, 40)
    pair.agent.acknowledge_data(second, 35)
    assert pair.agent.held_bytes == 0
    assert decode_all(pair.agent.data_to_send()) == [
        fr.Window(stream_id=C0, increment=40),
        fr.Window(stream_id=C0, increment=35),
    ]
    # A stream's batch and the connection's can fall due together: stream first.
    many = opened_pair(agent_window=100, agent_connection_window=100)
    stream_id = many.open()
    many.server.send_data(stream_id, b"c" * 100)
    many.to_agent()
    many.agent.acknowledge_data(stream_id, 30)
    assert many.to_server() == [
        ev.CreditGranted(stream_id=stream_id, increment=30),
        ev.CreditGranted(stream_id=C0, increment=30),
    ]
    assert many.server.send_credit(stream_id) == 30


def test_a_starved_connection_unblocks_once_data_is_acknowledged() -> None:
    pair = opened_pair(agent_window=1000, agent_connection_window=64)
    streams = [pair.open() for _ in range(4)]
    for stream_id in streams:
        pair.server.send_data(stream_id, b"x" * 16)
    pair.to_agent()
    assert [pair.server.send_credit(s) for s in streams] == [0, 0, 0, 0]
    pair.agent.acknowledge_data(streams[2], 16)  # one stream's reader catches up
    assert pair.to_server() == [ev.CreditGranted(stream_id=C0, increment=16)]
    assert [pair.server.send_credit(s) for s in streams] == [16, 16, 16, 16]


def test_finished_streams_still_return_connection_credit_as_they_are_drained() -> None:
    """The application may still be draining a stream both ends have forgotten."""
    pair = opened_pair(agent_connection_window=8)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"12345678")
    pair.server.end_stream(stream_id)
    pair.agent.send_response(stream_id, OK)
    pair.agent.end_stream(stream_id)
    pair.to_agent()
    pair.to_server()
    assert not pair.agent.is_stream_open(stream_id)
    assert pair.agent.held_bytes == 8
    pair.agent.acknowledge_data(stream_id, 1)
    assert not pair.agent.has_data_to_send  # 1 < 8 // 4
    pair.agent.acknowledge_data(stream_id, 5)
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=C0, increment=6)]
    with pytest.raises(LocalProtocolError, match=r"more than it holds \(2\)"):
        pair.agent.acknowledge_data(stream_id, 3)
    pair.agent.acknowledge_all(stream_id)
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=C0, increment=2)]
    assert pair.agent.held_bytes == 0
    with pytest.raises(LocalProtocolError):
        pair.agent.acknowledge_data(stream_id, 1)  # all of it was acknowledged


def test_data_for_a_gone_stream_counts_against_the_connection_and_is_returned_at_once() -> None:
    pair = opened_pair(agent_window=100, agent_connection_window=40)
    stream_id = pair.open()
    pair.agent.reset_stream(stream_id, ErrorCode.CANCEL)
    pair.server.send_data(stream_id, b"x" * 40)  # crosses the RESET
    assert pair.to_agent() == []
    assert pair.agent.held_bytes == 0
    assert decode_all(pair.agent.data_to_send()) == [
        fr.Reset(stream_id=stream_id, code=ErrorCode.CANCEL),
        fr.Window(stream_id=C0, increment=40),
    ]
    # It still counts: more than the connection window, even for a gone stream, is
    # a violation.
    with pytest.raises(RemoteProtocolError) as info:
        pair.agent.receive_data(raw_frame(FrameType.DATA, stream_id, b"x" * 41))
    assert info.value.code is ErrorCode.FLOW_CONTROL_ERROR


def test_a_stream_refused_at_its_head_returns_the_connection_credit_of_its_data() -> None:
    pair = opened_pair(agent_connection_window=4, max_streams=1)
    pair.open()
    refused = pair.server.open_stream(GET)
    pair.server.send_data(refused, b"body")
    assert pair.to_agent() == []
    assert pair.to_server() == [
        ev.StreamReset(
            stream_id=refused,
            code=ErrorCode.REFUSED_STREAM,
            reason="agent is at its stream limit or leaving",
        ),
        ev.CreditGranted(stream_id=C0, increment=4),
    ]


@pytest.mark.parametrize("by", ["receiver", "sender"])
def test_a_reset_returns_what_the_stream_held_at_once(by: str) -> None:
    pair = opened_pair(agent_window=100, agent_connection_window=100)
    kept, reset = pair.open(), pair.open()
    pair.server.send_data(kept, b"k" * 10)
    pair.server.send_data(reset, b"r" * 30)
    pair.to_agent()
    pair.agent.acknowledge_data(reset, 5)
    assert pair.agent.held_bytes == 35
    if by == "receiver":
        pair.agent.reset_stream(reset, ErrorCode.CANCEL)
    else:
        pair.server.reset_stream(reset, ErrorCode.CANCEL)
        pair.to_agent()
    assert pair.agent.held_bytes == 10
    # The 25 held plus the 5 acknowledged make 30, over a quarter: returned at once.
    assert pair.to_server()[-1] == ev.CreditGranted(stream_id=C0, increment=30)
    # They count as consumed: acknowledging them again is refused.
    with pytest.raises(LocalProtocolError):
        pair.agent.acknowledge_data(reset, 1)
    pair.agent.acknowledge_data(kept, 10)  # the other stream is untouched


def test_resetting_a_finished_stream_releases_what_is_still_held_and_sends_nothing() -> None:
    pair = opened_pair(agent_connection_window=4)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"abcd")
    pair.server.end_stream(stream_id)
    pair.agent.send_response(stream_id, OK)
    pair.agent.end_stream(stream_id)
    pair.to_agent()
    pair.to_server()
    pair.agent.acknowledge_data(stream_id, 1)
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=C0, increment=1)]
    pair.agent.reset_stream(stream_id, ErrorCode.CANCEL)  # the application gives up
    assert decode_all(pair.agent.data_to_send()) == [fr.Window(stream_id=C0, increment=3)]
    assert pair.agent.held_bytes == 0
    pair.agent.reset_stream(stream_id, ErrorCode.CANCEL)  # nothing left: a no-op
    assert not pair.agent.has_data_to_send


def test_acknowledge_all_returns_everything_a_live_stream_holds() -> None:
    pair = opened_pair(agent_window=8, agent_connection_window=100)
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"x" * 8)
    pair.to_agent()
    pair.agent.acknowledge_data(stream_id, 1)
    pair.agent.acknowledge_all(stream_id)
    assert pair.agent.held_bytes == 0
    assert pair.to_server() == [ev.CreditGranted(stream_id=stream_id, increment=8)]
    assert pair.server.send_credit(stream_id) == 8


def test_streams_a_goaway_refuses_give_back_what_they_held() -> None:
    """Only a misbehaving agent answers streams above its own GOAWAY, but the server
    must not lose that connection credit."""
    pair = opened_pair(server_connection_window=4)
    kept = pair.open()
    above = pair.open()
    pair.agent.send_response(above, OK)
    pair.agent.send_data(above, b"abcd")
    pair.to_server()
    assert pair.server.held_bytes == 4
    events = pair.server.receive_data(fr.encode(fr.GoAway(last_stream_id=kept)))
    assert (
        ev.StreamReset(stream_id=above, code=ErrorCode.REFUSED_STREAM, reason="agent is going away")
        in events
    )
    assert pair.server.held_bytes == 0
    assert decode_all(pair.server.data_to_send()) == [fr.Window(stream_id=C0, increment=4)]


def test_held_bytes_and_their_peak() -> None:
    pair = opened_pair(agent_window=100, agent_connection_window=1000)
    first, second = pair.open(), pair.open()
    pair.server.send_data(first, b"x" * 70)
    pair.server.send_data(second, b"y" * 50)
    pair.to_agent()
    assert (pair.agent.held_bytes, pair.agent.peak_held_bytes) == (120, 120)
    pair.agent.acknowledge_data(first, 70)
    pair.server.send_data(second, b"y" * 30)
    pair.to_agent()
    assert (pair.agent.held_bytes, pair.agent.peak_held_bytes) == (80, 120)


def test_large_bodies_go_out_in_frames_of_at_most_64_kib() -> None:
    pair = opened_pair(agent_window=3 * MAX_FRAME_PAYLOAD)
    stream_id = pair.open()
    body = bytes(range(256)) * (2 * MAX_FRAME_PAYLOAD // 256) + b"tail"
    pair.server.send_data(stream_id, body)
    events = pair.to_agent()
    sizes = [len(e.data) for e in events if isinstance(e, ev.DataReceived)]
    assert sizes == [MAX_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD, 4]
    assert b"".join(e.data for e in events if isinstance(e, ev.DataReceived)) == body
