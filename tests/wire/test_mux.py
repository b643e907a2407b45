"""The multiplexer, end to end between two real instances (`MuxPair`).

Flow control has its own module, ``test_mux_credit.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given, strategies as st

from pvtunnel._errors import ErrorCode, LocalProtocolError, RemoteProtocolError, StreamClosedError
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import HEADER_SIZE, MAX_FRAME_PAYLOAD, FrameType, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role
from pvtunnel._wire.states import ConnectionState
from tests import strategies as sts
from tests.wire.helpers import (
    CONTINUE,
    GET,
    OK,
    MuxPair,
    decode_all,
    opened_pair,
    raw_frame,
)

if TYPE_CHECKING:
    from collections.abc import Callable

S1 = StreamId(1)

# -- handshake ------------------------------------------------------------------------


def test_handshake_accepts_and_reports_refused_routes() -> None:
    pair = MuxPair(server_window=100, agent_window=200)
    pair.handshake(routes=("app", "db"), refused=(("db", "taken"),))
    assert pair.server.state is pair.agent.state is ConnectionState.OPEN
    # Each side's credit is the window the other announced.
    stream_id = pair.open()
    assert pair.server.send_credit(stream_id) == 200
    pair.agent.send_response(stream_id, OK)
    assert pair.agent.send_credit(stream_id) == 100


def test_an_accept_too_big_for_a_frame_changes_nothing_and_a_reject_can_follow() -> None:
    pair = MuxPair()
    routes = tuple(f"!{index}" for index in range(3000))
    pair.agent.send_hello(client_id="a", routes=routes)
    pair.to_server()
    refused = tuple((route, "not a valid route name") for route in routes)
    with pytest.raises(ValueError, match=r"ACCEPT payload of \d+ bytes is out of range"):
        pair.server.accept(refused=refused)
    assert not pair.server.has_data_to_send
    pair.server.reject("3000 routes refused")
    assert pair.to_agent() == [ev.Rejected(reason="3000 routes refused")]


def test_a_hello_too_big_for_a_frame_changes_nothing_and_a_smaller_one_can_follow() -> None:
    pair = MuxPair()
    routes = tuple(f"r{index:04d}-" + "a" * 50 for index in range(1200))
    with pytest.raises(ValueError, match=r"HELLO payload of \d+ bytes is out of range"):
        pair.agent.send_hello(client_id="a", routes=routes)
    assert pair.agent.state is ConnectionState.START
    assert not pair.agent.has_data_to_send
    pair.agent.send_hello(client_id="a", routes=routes[:10])
    pair.to_server()
    pair.server.accept()
    pair.to_agent()
    assert {pair.server.state, pair.agent.state} == {ConnectionState.OPEN}


def test_frames_received_in_steps_give_the_same_events() -> None:
    pair = MuxPair()
    pair.handshake()
    for _ in range(5):
        pair.server.ping(b"\0" * 8)
    pings = pair.server.data_to_send()
    first = pair.agent.receive_data(pings, max_frames=2)
    waiting = [pair.agent.has_frames_waiting]
    rest = pair.agent.receive_data(b"", max_frames=2) + pair.agent.receive_data(b"", max_frames=2)
    waiting.append(pair.agent.has_frames_waiting)
    assert (len(first), len(rest), waiting) == (2, 3, [True, False])
    assert all(isinstance(event, ev.PingReceived) for event in first + rest)


def test_queued_bytes_counts_every_frame_waiting() -> None:
    pair = MuxPair()
    pair.handshake()
    assert pair.server.queued_bytes == 0
    stream_id = pair.server.open_stream(GET, end_stream=False)
    pair.server.send_data(stream_id, b"x" * 1000)
    queued = pair.server.queued_bytes
    assert queued == len(pair.server.data_to_send())
    assert queued > 1000
    assert pair.server.queued_bytes == 0


def test_reject_is_final_for_the_agent() -> None:
    pair = MuxPair()
    pair.agent.send_hello(client_id="a", routes=())
    pair.to_server()
    pair.server.reject("no routes")
    assert pair.server.state is ConnectionState.CLOSED
    assert pair.to_agent() == [ev.Rejected(reason="no routes")]
    assert pair.agent.state is ConnectionState.CLOSED
    assert not pair.server.can_open_stream


def test_version_mismatch_queues_a_reject_and_raises() -> None:
    server = Multiplexer(Role.SERVER)
    hello = fr.Hello(
        versions=(7, 8), client_id="future", routes=("app",), window=10, connection_window=10
    )
    with pytest.raises(RemoteProtocolError, match="no protocol version"):
        server.receive_data(fr.encode(hello))
    assert server.state is ConnectionState.CLOSED
    (reject,) = decode_all(server.data_to_send())
    assert isinstance(reject, fr.Reject)
    assert "7, 8" in reject.reason
    assert "1" in reject.reason


def test_version_mismatch_with_a_huge_version_list_still_fits_a_reject() -> None:
    """The reason quotes the agent's list; it used to outgrow REJECT's cap (ValueError)."""
    server = Multiplexer(Role.SERVER)
    versions = tuple([2] * 30_000)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(
            fr.encode(
                fr.Hello(versions=versions, client_id="", routes=(), window=1, connection_window=1)
            )
        )
    (reject,) = decode_all(server.data_to_send())
    assert isinstance(reject, fr.Reject)
    assert len(reject.reason.encode()) <= 1024


def test_agent_refuses_an_accept_for_a_version_it_did_not_offer() -> None:
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="a", routes=())
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        agent.receive_data(
            fr.encode(fr.Accept(version=2, refused=(), window=10, connection_window=10))
        )
    assert agent.state is ConnectionState.CLOSED


@pytest.mark.parametrize(
    ("role", "frame"),
    [
        (
            Role.AGENT,
            fr.Hello(versions=(1,), client_id="", routes=(), window=1, connection_window=1),
        ),
        (Role.SERVER, fr.Accept(version=1, refused=(), window=1, connection_window=1)),
        (Role.SERVER, fr.Reject(reason="")),
    ],
)
def test_handshake_frames_sent_to_the_wrong_role(role: Role, frame: fr.Frame) -> None:
    with pytest.raises(RemoteProtocolError, match="sent to the"):
        Multiplexer(role).receive_data(fr.encode(frame))


def test_stream_frames_before_the_handshake_are_refused() -> None:
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="a", routes=())
    head = fr.Head(stream_id=S1, fields=tuple(GET.to_fields()))
    with pytest.raises(RemoteProtocolError, match="hello-sent"):
        agent.receive_data(fr.encode(head))


def test_a_poisoned_multiplexer_keeps_raising() -> None:
    pair = opened_pair()
    with pytest.raises(RemoteProtocolError) as first:
        pair.agent.receive_data(raw_frame(FrameType.DATA, 5, b"x"))
    with pytest.raises(RemoteProtocolError) as again:
        pair.agent.receive_data(b"")
    assert again.value is first.value
    assert pair.agent.state is ConnectionState.CLOSED


# -- streams both ways -------------------------------------------------------------------


def test_request_and_response_with_bodies_both_ways() -> None:
    pair = opened_pair()
    post = RequestHead(
        route="app", method=b"POST", target=b"/up", headers=((b"content-length", b"6"),)
    )
    stream_id = pair.open(post)
    pair.server.send_data(stream_id, b"abc")
    pair.server.send_data(stream_id, b"def")
    pair.server.end_stream(stream_id)
    assert pair.to_agent() == [
        ev.DataReceived(stream_id=stream_id, data=b"abc"),
        ev.DataReceived(stream_id=stream_id, data=b"def"),
        ev.StreamEnded(stream_id=stream_id),
    ]
    pair.agent.send_response(stream_id, OK)
    pair.agent.send_data(stream_id, b"done")
    assert pair.server.stream_count == pair.agent.stream_count == 1
    pair.agent.end_stream(stream_id)
    assert pair.agent.stream_count == 0
    assert pair.to_server() == [
        ev.ResponseReceived(stream_id=stream_id, head=OK),
        ev.DataReceived(stream_id=stream_id, data=b"done"),
        ev.StreamEnded(stream_id=stream_id),
    ]
    assert pair.server.stream_count == 0


def test_queued_pieces_counts_frames_until_they_are_taken() -> None:
    """The cheap batch size the Trio layer flushes on: a DATA frame is two pieces."""
    pair = opened_pair()
    assert pair.server.queued_pieces == 0
    stream_id = pair.server.open_stream(GET, end_stream=False)
    assert pair.server.queued_pieces == 1
    pair.server.send_data(stream_id, b"body")
    pair.server.end_stream(stream_id)
    assert pair.server.queued_pieces == 4
    pair.server.data_to_send()
    assert pair.server.queued_pieces == 0


def test_stream_ids_increase_from_one() -> None:
    pair = opened_pair()
    assert [pair.open() for _ in range(3)] == [1, 2, 3]


def test_informational_heads_precede_the_final_one() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.agent.send_response(stream_id, CONTINUE)
    pair.agent.send_response(stream_id, ResponseHead(status=103))
    with pytest.raises(LocalProtocolError):
        pair.agent.send_data(stream_id, b"too early")
    pair.agent.send_response(stream_id, OK)
    with pytest.raises(LocalProtocolError):
        pair.agent.send_response(stream_id, CONTINUE)
    assert pair.to_server() == [
        ev.ResponseReceived(stream_id=stream_id, head=CONTINUE),
        ev.ResponseReceived(stream_id=stream_id, head=ResponseHead(status=103)),
        ev.ResponseReceived(stream_id=stream_id, head=OK),
    ]


def test_after_101_the_stream_is_a_byte_pipe_both_ways() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.agent.send_response(stream_id, ResponseHead(status=101))
    pair.agent.send_data(stream_id, b"from upstream")
    pair.server.send_data(stream_id, b"from client")
    assert pair.to_server()[1] == ev.DataReceived(stream_id=stream_id, data=b"from upstream")
    assert pair.to_agent() == [ev.DataReceived(stream_id=stream_id, data=b"from client")]


@pytest.mark.parametrize(
    "head",
    [
        RequestHead(route="app", method=b"", target=b"/"),
        RequestHead(route="app", method=b"GET", target=b""),
        RequestHead(route="caf\xe9", method=b"GET", target=b"/"),
        RequestHead(route="app", method=b"GET", target=b"/", headers=((b"x", b"y" * 65536),)),
        RequestHead(route="app", method=b"GET", target=b"/" * (MAX_FRAME_PAYLOAD - 11)),
    ],
)
def test_a_request_head_the_agent_would_refuse_is_refused_locally(head: RequestHead) -> None:
    pair = opened_pair()
    with pytest.raises(LocalProtocolError):
        pair.server.open_stream(head)
    assert pair.server.stream_count == 0
    assert not pair.server.has_data_to_send
    assert pair.open() == S1  # the failed attempt used no stream ID


def test_the_largest_request_head_fits() -> None:
    pair = opened_pair()
    # 3 fields: 6 bytes of lengths, 3 of route, 3 of method, the rest target.
    head = RequestHead(route="app", method=b"GET", target=b"/" * (MAX_FRAME_PAYLOAD - 12))
    assert pair.open(head) == S1


@pytest.mark.parametrize(
    "head",
    [
        ResponseHead(status=99),
        ResponseHead(status=600),
        ResponseHead(status=1000),
        ResponseHead(status=200, headers=((b"x", b"y" * 65536),)),
        ResponseHead(status=200, reason=b"r" * MAX_FRAME_PAYLOAD),
    ],
)
def test_a_response_head_the_server_would_refuse_is_refused_locally(head: ResponseHead) -> None:
    pair = opened_pair()
    stream_id = pair.open()
    with pytest.raises(LocalProtocolError):
        pair.agent.send_response(stream_id, head)
    assert not pair.agent.has_data_to_send
    pair.agent.send_response(stream_id, OK)  # the half is still IDLE
    assert pair.to_server() == [ev.ResponseReceived(stream_id=stream_id, head=OK)]


def test_only_the_server_opens_and_only_the_agent_answers() -> None:
    pair = opened_pair()
    with pytest.raises(LocalProtocolError):
        pair.agent.open_stream(GET)
    stream_id = pair.open()
    with pytest.raises(LocalProtocolError, match="only the agent"):
        pair.server.send_response(stream_id, OK)


def test_a_request_head_on_a_used_id_or_with_the_informational_flag_is_an_error() -> None:
    for stream_id, flags in ((1, 0), (0x10, 1)):
        pair = opened_pair()
        pair.open()
        payload = fr.encode_fields(GET.to_fields())
        with pytest.raises(RemoteProtocolError, match="reuses stream"):
            pair.agent.receive_data(raw_frame(FrameType.HEAD, stream_id, payload, flags))


def test_the_agent_accepts_stream_ids_that_skip() -> None:
    pair = opened_pair()
    head = fr.Head(stream_id=StreamId(10), fields=tuple(GET.to_fields()))
    assert pair.agent.receive_data(fr.encode(head)) == [
        ev.StreamOpened(stream_id=StreamId(10), head=GET)
    ]
    # 5 was skipped: at or below the highest ID, so it reads as a gone stream.
    assert pair.agent.receive_data(fr.encode(fr.Data(stream_id=StreamId(5), data=b"x"))) == []


# -- gone and unknown streams ------------------------------------------------------------


def test_frames_on_gone_streams_are_ignored() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.server.reset_stream(stream_id, ErrorCode.CANCEL)
    assert pair.server.stream_count == 0
    # The agent has not seen the RESET yet and keeps sending: all of it is ignored.
    pair.agent.send_response(stream_id, OK)
    pair.agent.send_data(stream_id, b"late")
    pair.agent.end_stream(stream_id)
    late = pair.agent.data_to_send() + fr.encode(fr.Window(stream_id=stream_id, increment=5))
    late += fr.encode(fr.Reset(stream_id=stream_id, code=ErrorCode.CANCEL))
    assert pair.server.receive_data(late) == []
    assert pair.to_agent() == [
        ev.StreamReset(stream_id=stream_id, code=ErrorCode.CANCEL, reason="")
    ]
    assert pair.server.stream_count == pair.agent.stream_count == 0


@pytest.mark.parametrize(
    "frame",
    [
        fr.Data(stream_id=StreamId(2), data=b"x"),
        fr.End(stream_id=StreamId(2)),
        fr.Window(stream_id=StreamId(2), increment=1),
        fr.Reset(stream_id=StreamId(2), code=ErrorCode.CANCEL),
        fr.Head(stream_id=StreamId(2), fields=(b"200", b"")),
    ],
)
def test_frames_on_never_opened_streams_are_errors(frame: fr.Frame) -> None:
    pair = opened_pair()
    pair.open()
    with pytest.raises(RemoteProtocolError, match="never opened"):
        pair.server.receive_data(fr.encode(frame))
    if not isinstance(frame, fr.Head):  # to the agent, a HEAD opens a stream
        pair = opened_pair()
        pair.open()
        with pytest.raises(RemoteProtocolError, match="never opened"):
            pair.agent.receive_data(fr.encode(frame))


def test_reset_by_the_server_leaves_no_state_on_either_side() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.server.reset_stream(stream_id, ErrorCode.CANCEL, "client left")
    pair.server.reset_stream(stream_id, ErrorCode.CANCEL)  # already gone: no-op
    assert pair.to_agent() == [
        ev.StreamReset(stream_id=stream_id, code=ErrorCode.CANCEL, reason="client left")
    ]
    assert pair.server.stream_count == pair.agent.stream_count == 0
    assert not pair.agent.has_data_to_send  # a RESET is not answered


def test_reset_by_the_agent_leaves_no_state_on_either_side() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.agent.reset_stream(stream_id, ErrorCode.UPSTREAM_TIMEOUT, "slow")
    assert pair.to_server() == [
        ev.StreamReset(stream_id=stream_id, code=ErrorCode.UPSTREAM_TIMEOUT, reason="slow")
    ]
    assert pair.server.stream_count == pair.agent.stream_count == 0


def test_sending_on_a_reset_stream_raises_stream_closed() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.agent.reset_stream(stream_id, ErrorCode.CANCEL)
    pair.to_server()
    commands: list[Callable[[], None]] = [
        lambda: pair.server.send_data(stream_id, b"x"),
        lambda: pair.server.end_stream(stream_id),
        lambda: pair.agent.send_response(stream_id, OK),
        lambda: pair.agent.send_data(stream_id, b"x"),
    ]
    for command in commands:
        with pytest.raises(StreamClosedError):
            command()
    assert pair.server.send_credit(stream_id) == 0
    assert not pair.server.is_stream_open(stream_id)


# -- limits and goaway ----------------------------------------------------------------


def test_agent_refuses_streams_beyond_max_streams() -> None:
    pair = opened_pair(max_streams=2)
    first, second = pair.open(), pair.open()
    third = pair.server.open_stream(GET)
    pair.server.send_data(third, b"body")
    assert pair.to_agent() == []
    assert pair.to_server() == [
        ev.StreamReset(
            stream_id=third,
            code=ErrorCode.REFUSED_STREAM,
            reason="agent is at its stream limit or leaving",
        )
    ]
    assert pair.server.stream_count == pair.agent.stream_count == 2
    pair.agent.reset_stream(first, ErrorCode.CANCEL)
    pair.to_server()
    assert pair.open() == 4  # room again
    assert second < 4


def test_agent_goaway_refuses_server_streams_above_its_last_id() -> None:
    pair = opened_pair()
    kept = pair.open()
    in_flight = pair.server.open_stream(GET)  # crosses the GOAWAY on the wire
    pair.agent.goaway(ErrorCode.NO_ERROR, "bye")
    assert pair.agent.is_going_away
    events = pair.to_server()
    assert events == [
        ev.GoAwayReceived(last_stream_id=kept, code=ErrorCode.NO_ERROR, reason="bye"),
        ev.StreamReset(
            stream_id=in_flight, code=ErrorCode.REFUSED_STREAM, reason="agent is going away"
        ),
    ]
    assert not pair.server.can_open_stream
    with pytest.raises(LocalProtocolError):
        pair.server.open_stream(GET)
    # The agent refuses the HEAD that crossed; the server ignores that RESET.
    assert pair.to_agent() == []
    assert pair.to_server() == []
    # The stream below the last ID still finishes normally.
    pair.server.end_stream(kept)
    pair.agent.send_response(kept, OK)
    pair.agent.end_stream(kept)
    assert pair.to_agent() == [ev.StreamEnded(stream_id=kept)]
    assert pair.to_server() == [
        ev.ResponseReceived(stream_id=kept, head=OK),
        ev.StreamEnded(stream_id=kept),
    ]
    assert pair.server.stream_count == pair.agent.stream_count == 0


def test_a_repeated_goaway_repeats_the_first_last_id() -> None:
    """The agent's highest ID grows as it refuses HEADs after its GOAWAY; a second
    GOAWAY carrying it used to be a connection error for the server."""
    pair = opened_pair()
    pair.agent.goaway()
    pair.server.open_stream(GET)
    pair.to_agent()  # refused, but the agent's highest ID is now 1
    pair.agent.goaway(ErrorCode.NO_ERROR, "still leaving")
    events = pair.to_server()
    assert (
        ev.GoAwayReceived(
            last_stream_id=StreamId(0), code=ErrorCode.NO_ERROR, reason="still leaving"
        )
        in events
    )


def test_a_goaway_that_raises_its_last_id_is_an_error() -> None:
    pair = opened_pair()
    pair.server.receive_data(fr.encode(fr.GoAway(last_stream_id=StreamId(0))))
    with pytest.raises(RemoteProtocolError, match="raised"):
        pair.server.receive_data(fr.encode(fr.GoAway(last_stream_id=StreamId(1))))


def test_server_goaway_stops_it_opening_and_lets_streams_finish() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.server.goaway(ErrorCode.NO_ERROR, "restart")
    assert not pair.server.can_open_stream
    with pytest.raises(LocalProtocolError):
        pair.server.open_stream(GET)
    assert pair.to_agent() == [
        ev.GoAwayReceived(last_stream_id=stream_id, code=ErrorCode.NO_ERROR, reason="restart")
    ]
    assert pair.agent.is_going_away
    pair.agent.send_response(stream_id, OK)
    pair.agent.end_stream(stream_id)
    pair.server.end_stream(stream_id)
    pair.to_server()
    pair.to_agent()
    assert pair.server.stream_count == pair.agent.stream_count == 0


def test_the_last_stream_id_goes_out_with_a_goaway() -> None:
    """IDs are never reused: with the last one the server says GOAWAY, so the agent
    reconnects (a fresh ID space) while that last stream still finishes."""
    pair = opened_pair()
    pair.server._highest_stream_id = fr.MAX_STREAM_ID - 2  # four billion streams later
    assert pair.open() == fr.MAX_STREAM_ID - 1
    before_the_last = pair.server.can_open_stream
    last = pair.server.open_stream(GET)
    assert last == fr.MAX_STREAM_ID
    assert (before_the_last, pair.server.can_open_stream) == (True, False)
    assert pair.to_agent() == [
        ev.StreamOpened(stream_id=last, head=GET),
        ev.GoAwayReceived(
            last_stream_id=last, code=ErrorCode.NO_ERROR, reason="stream IDs used up: reconnect"
        ),
    ]
    pair.agent.send_response(last, OK)
    pair.agent.end_stream(last)
    assert pair.to_server() == [
        ev.ResponseReceived(stream_id=last, head=OK),
        ev.StreamEnded(stream_id=last),
    ]


def test_goaway_before_the_handshake_is_refused_and_after_close_ignored() -> None:
    server = Multiplexer(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.goaway()
    server.receive_data(
        fr.encode(fr.Hello(versions=(1,), client_id="", routes=(), window=1, connection_window=1))
    )
    server.reject("no")
    server.data_to_send()
    server.goaway()  # CLOSED: nobody to tell
    assert not server.has_data_to_send


def test_goaway_before_the_handshake_is_a_remote_error() -> None:
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="", routes=())
    with pytest.raises(RemoteProtocolError):
        agent.receive_data(fr.encode(fr.GoAway(last_stream_id=StreamId(0))))


def test_stream_ids_run_out_at_2_32_minus_1() -> None:
    pair = opened_pair()
    last = fr.MAX_STREAM_ID
    head = fr.Head(stream_id=StreamId(last), fields=tuple(GET.to_fields()))
    assert pair.agent.receive_data(fr.encode(head)) == [
        ev.StreamOpened(stream_id=StreamId(last), head=GET)
    ]
    # The server side: after the last ID, can_open_stream turns false.
    server = Multiplexer(Role.SERVER)
    server.receive_data(
        fr.encode(fr.Hello(versions=(1,), client_id="", routes=(), window=1, connection_window=1))
    )
    server.accept()
    server._highest_stream_id = last - 1  # 4 billion opens would take hours
    assert server.open_stream(GET) == last
    assert not server.can_open_stream
    with pytest.raises(LocalProtocolError):
        server.open_stream(GET)


# -- ping and output ------------------------------------------------------------------


def test_ping_is_answered_automatically() -> None:
    pair = opened_pair()
    pair.server.ping(b"12345678")
    assert pair.to_agent() == [ev.PingReceived(payload=b"12345678")]
    assert pair.to_server() == [ev.PongReceived(payload=b"12345678")]


def test_ping_is_answered_before_the_handshake_too() -> None:
    server = Multiplexer(Role.SERVER)
    assert server.receive_data(fr.encode(fr.Ping(payload=bytes(8)))) == [
        ev.PingReceived(payload=bytes(8))
    ]
    assert decode_all(server.data_to_send()) == [fr.Pong(payload=bytes(8))]


def test_nothing_to_send_is_an_empty_message() -> None:
    pair = opened_pair()
    assert pair.server.data_to_send() == b""
    assert pair.server.data_to_send(100) == b""


def _frame_bounds(data: bytes) -> list[int]:
    bounds, offset = [], 0
    while offset < len(data):
        offset += HEADER_SIZE + fr.HEADER.unpack_from(data, offset)[3]
        bounds.append(offset)
    assert offset == len(data)
    return bounds


@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=300),
            st.binary(min_size=10, max_size=10).map(lambda b: b"\x05" + b[1:]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 400),
)
def test_data_to_send_with_max_bytes_never_splits_a_frame(
    chunks: list[bytes], max_bytes: int
) -> None:
    """10-byte bodies starting with 0x05 look like DATA headers: they once made
    `data_to_send` take the next frame's header without its payload."""
    pair = opened_pair(agent_window=10_000)
    stream_id = pair.open()
    for chunk in chunks:
        pair.server.send_data(stream_id, chunk)
    pair.server.ping(b"pingpong")
    received: list[ev.Event] = []
    while pair.server.has_data_to_send:
        message = pair.server.data_to_send(max_bytes)
        bounds = _frame_bounds(message)  # whole frames only
        assert len(message) <= max_bytes or len(bounds) == 1
        received += pair.agent.receive_data(message)
    assert received == [
        *(ev.DataReceived(stream_id=stream_id, data=c) for c in chunks),
        ev.PingReceived(payload=b"pingpong"),
    ]


def test_data_to_send_takes_whole_frames_up_to_max_bytes() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    for _ in range(3):
        pair.server.send_data(stream_id, b"x" * 10)  # 20-byte frames
    assert len(pair.server.data_to_send(45)) == 40
    assert len(pair.server.data_to_send(5)) == 20  # at least one frame
    assert not pair.server.has_data_to_send


# -- hostile peers ----------------------------------------------------------------------


@given(
    st.sampled_from(Role), sts.hostile_streams(st.integers(1, 3).map(StreamId)).flatmap(sts.chunked)
)
def test_an_open_multiplexer_fed_anything_raises_only_remote_protocol_error(
    role: Role, chunks: list[bytes]
) -> None:
    pair = opened_pair(
        agent_window=64,
        server_window=64,
        agent_connection_window=96,
        server_connection_window=96,
        max_streams=2,
    )
    stream_id = pair.open()
    pair.agent.send_response(stream_id, OK)
    pair.to_server()
    mux = pair.server if role is Role.SERVER else pair.agent
    try:
        for chunk in chunks:
            mux.receive_data(chunk)
            decode_all(mux.data_to_send())  # whatever it answers is whole, valid frames
    except RemoteProtocolError:
        assert mux.state is ConnectionState.CLOSED
        return
    assert mux.stream_count <= (1 if role is Role.SERVER else 2)  # only the server opens
    assert mux.held_bytes <= mux.connection_window == 96  # never above the window
