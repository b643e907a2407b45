"""One multiplexer against a scripted peer that keeps or breaks the rules on purpose.

The peer knows only what went over the wire (`oracle.MuxView`): what each side
granted and spent at both credit levels, the halves of every stream, the IDs used,
GOAWAY. Between its own application's commands (open, respond, send within the
credit, end, reset, acknowledge, GOAWAY), the multiplexer is fed frames aimed at
the rules (`oracle.hostile_frames`), byte-level mutations of them and garbage, in
arbitrary chunks. Every frame within the rules must be accepted with exactly the
events the model predicts; the first that breaks one must be refused with its
error code, after which the multiplexer stays poisoned. `fuzz/` runs it for longer
as the ``mux-hostile`` target.
"""

from __future__ import annotations

from hypothesis import given, strategies as st

from pvtunnel._errors import ErrorCode
from pvtunnel._wire import frames as fr
from pvtunnel._wire.frames import FrameDecoder, StreamId
from pvtunnel._wire.mux import Multiplexer, Role
from tests import strategies as sts
from tests.wire.helpers import CONTINUE, GET, OK, decode_all
from tests.wire.oracle import HalfState, MuxView, hostile_frames, judge

MAX_STREAMS = 2
small_windows = st.one_of(st.integers(1, 64), st.just(1000))


def _local_command(mux: Multiplexer, view: MuxView, data: st.DataObject) -> None:
    """One command of the multiplexer's own application, legal by the model."""
    live = sorted(view.streams)
    choices = ["ping", "goaway", "acknowledge"]
    if view.role is Role.SERVER and mux.can_open_stream:
        choices.append("open")
    if live:
        choices += ["send", "end", "reset", "respond"]
    match data.draw(st.sampled_from(choices), label="command"):
        case "ping":
            mux.ping(b"pingpong")
        case "goaway":
            mux.goaway(ErrorCode.NO_ERROR, "leaving")
        case "acknowledge":
            mux.acknowledge_all(StreamId(data.draw(st.integers(1, view.highest + 1))))
        case "open":
            mux.open_stream(GET, end_stream=data.draw(st.booleans()))
        case command:
            stream_id = StreamId(data.draw(st.sampled_from(live), label="stream"))
            stream = view.streams[stream_id]
            if command == "reset":
                mux.reset_stream(stream_id, ErrorCode.CANCEL, "local")
            elif command == "respond" and view.role is Role.AGENT:
                if stream.local is HalfState.IDLE:
                    mux.send_response(stream_id, data.draw(st.sampled_from([CONTINUE, OK])))
            elif stream.local is HalfState.OPEN and command == "end":
                mux.end_stream(stream_id)
            elif stream.local is HalfState.OPEN:
                # What the model says may be sent is what the multiplexer says.
                credit = min(stream.send_credit, view.send_credit)
                assert mux.send_credit(stream_id) == credit
                assert mux.connection_credit == view.send_credit
                mux.send_data(stream_id, b"s" * data.draw(st.integers(0, credit)))


@given(
    role=st.sampled_from(Role),
    window=small_windows,
    connection_window=small_windows,
    peer_window=small_windows,
    peer_connection_window=small_windows,
    data=st.data(),
)
def test_a_multiplexer_does_what_the_rules_say_to_a_hostile_peer(
    role: Role,
    window: int,
    connection_window: int,
    peer_window: int,
    peer_connection_window: int,
    data: st.DataObject,
) -> None:
    mux = Multiplexer(
        role, window=window, connection_window=connection_window, max_streams=MAX_STREAMS
    )
    view = MuxView(role, window, connection_window, MAX_STREAMS)
    tap = FrameDecoder()  # sees every byte the multiplexer is fed

    def flush() -> None:
        for frame in decode_all(mux.data_to_send()):
            view.sent(frame)

    # The handshake, perhaps after frames that may not come before it; the peer
    # may offer no version we speak, choose one we did not offer, or reject us.
    early = data.draw(st.integers(0, 9), label="early") == 0
    if early and not judge(mux, view, tap, fr.encode(data.draw(hostile_frames(view)))):
        return
    if role is Role.SERVER:
        hello = fr.Hello(
            versions=data.draw(st.sampled_from([(1,), (0, 1), (2,), (7, 8)]), label="versions"),
            client_id="peer",
            routes=("app",),
            window=peer_window,
            connection_window=peer_connection_window,
        )
        if not judge(mux, view, tap, fr.encode(hello)):
            return
        mux.accept()
    else:
        mux.send_hello(client_id="agent", routes=("app",))
        flush()
        answer: fr.Frame = fr.Accept(
            version=data.draw(st.sampled_from([1, 1, 1, 2]), label="version"),
            refused=(),
            window=peer_window,
            connection_window=peer_connection_window,
        )
        if data.draw(st.integers(0, 9), label="reject") == 0:
            answer = fr.Reject(reason="no")
        if not judge(mux, view, tap, fr.encode(answer)):
            return
    flush()
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        # Mostly frames and commands: mutated bytes end a run at once, as a rule.
        steps = ["frame"] * 5 + ["command"] * 3 + ["bytes"]
        match data.draw(st.sampled_from(steps)):
            case "command":
                _local_command(mux, view, data)
                flush()
                continue
            case "frame":
                encoded = fr.encode(data.draw(hostile_frames(view), label="frame"))
            case _:
                frames = data.draw(st.lists(hostile_frames(view), min_size=1, max_size=3))
                valid = b"".join(map(fr.encode, frames))
                encoded = data.draw(
                    st.one_of(sts.mutated(valid), st.binary(max_size=40)), label="bytes"
                )
        for chunk in data.draw(sts.chunked(encoded), label="chunks"):
            if not judge(mux, view, tap, chunk):
                return
            flush()
