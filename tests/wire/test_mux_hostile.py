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

import pytest
from hypothesis import given, strategies as st

from pvtunnel._errors import ErrorCode, LocalProtocolError, StreamClosedError
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import MAX_FRAME_PAYLOAD, MAX_WINDOW, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role
from tests import strategies as sts
from tests.wire.helpers import CONTINUE, GET, OK, decode_all
from tests.wire.oracle import (
    HalfState,
    MuxView,
    Phase,
    Tap,
    check_queries,
    hostile_frames,
    judge,
)

MAX_STREAMS = 2
# Small windows run out; the largest are legal too (a mux grants up to 2^31-1).
windows = st.one_of(st.integers(1, 64), st.just(1000), st.just(MAX_WINDOW))
# A connection window above the stream window comes first (hypothesis starts from
# the first branch): only then does DATA past a stream's window leave the connection
# window alone, so that a missing stream-level check shows.
connection_windows = st.one_of(st.integers(100, 164), windows)
# Credit above one frame's payload makes a large send split into several frames.
peer_windows = st.one_of(st.integers(1, 64), st.just(1000), st.just(3 * MAX_FRAME_PAYLOAD))
COMMANDS = ["ping", "goaway", "acknowledge", "open", "open", "send", "send", "end", "reset"]
COMMANDS += ["respond", "respond", "acknowledge"]
COMMANDS += ["accept", "reject", "hello"]
# Statuses the server would refuse (outside 100-599), and the edges inside.
BAD_RESPONSES = [ResponseHead(status=99), ResponseHead(status=600)]
RESPONSES = st.sampled_from(
    [CONTINUE, OK, OK, ResponseHead(status=100), ResponseHead(status=599), *BAD_RESPONSES]
)
# A request head whose payload is exactly one frame's (the fields of GET and one
# header take 18 bytes besides the value), and heads the agent would refuse, which
# the server must not send: one byte over, a field over 65535 bytes, an empty method
# or target, a route that is not ASCII.
BIGGEST = RequestHead(
    route="app", method=b"GET", target=b"/", headers=((b"x", b"v" * (MAX_FRAME_PAYLOAD - 18)),)
)
BAD_REQUESTS = [
    RequestHead(route="app", method=b"GET", target=b"/", headers=((b"x", b"v" * 65519),)),
    RequestHead(route="app", method=b"GET", target=b"/", headers=((b"x" * 65536, b""),)),
    RequestHead(route="app", method=b"", target=b"/"),
    RequestHead(route="app", method=b"GET", target=b""),
    RequestHead(route="caf\u00e9", method=b"GET", target=b"/"),
]


class Application:
    """The multiplexer's own application: commands, legal or not, each predicted
    from the model (done, refused with `LocalProtocolError`, or `StreamClosedError`
    for a stream that is gone), and what it holds of each stream."""

    def __init__(self, mux: Multiplexer, view: MuxView) -> None:
        self.mux, self.view = mux, view
        self.held: dict[int, int] = {}  # received, not acknowledged nor released
        self.peak = 0  # the most it ever held
        self.unreturned: dict[int, int] = {}  # stream credit consumed, not yet returned
        self.windows: list[fr.Frame] = []  # the stream WINDOW a command must send
        self.bad_size = 0
        self.bad_request = GET
        self.response = OK

    def received(self, events: list[ev.Event]) -> None:
        for event in events:
            match event:
                case ev.DataReceived():
                    self.held[event.stream_id] = self.held.get(event.stream_id, 0) + len(event.data)
                case ev.StreamReset():  # what it held counts as consumed
                    self.held.pop(event.stream_id, None)
                case _:
                    pass
        held = sum(self.held.values())
        self.peak = max(self.peak, held)
        assert self.mux.held_bytes == held
        assert self.mux.peak_held_bytes == self.peak

    def command(self, data: st.DataObject) -> list[fr.Frame]:
        """Run one command; the frames it must queue (WINDOW frames aside, whose
        batching the model leaves to the machine) or, refused, none."""
        mux, view = self.mux, self.view
        name = data.draw(st.sampled_from(COMMANDS), label="command")
        ids = [*view.streams, view.highest, view.highest + 1, *self.held]
        stream_id = StreamId(data.draw(st.sampled_from([i for i in ids if i] or [1])))
        stream = view.streams.get(stream_id)
        local_open = stream is not None and stream.local is HalfState.OPEN
        refused: type[Exception] | None = None
        expected: list[fr.Frame] = []
        self.windows = []
        response = self.response = data.draw(RESPONSES, label="response")
        match name:
            case "ping":
                mux.ping(b"pingpong")
                expected = [fr.Ping(payload=b"pingpong")]
            case "goaway" if view.phase not in (Phase.OPEN, Phase.CLOSED):
                refused = LocalProtocolError
            case "goaway":
                mux.goaway(ErrorCode.NO_ERROR, "leaving")
                if view.phase is Phase.OPEN:  # once closed, a no-op
                    last = view.highest if view.goaway_sent is None else view.goaway_sent
                    expected = [fr.GoAway(last_stream_id=StreamId(last), reason="leaving")]
            case "accept" | "reject" | "hello":
                # The handshake is over: none of these is legal any more.
                refused = LocalProtocolError
            case "acknowledge":
                size = data.draw(st.integers(-1, self.held.get(stream_id, 0) + 1), label="size")
                if not 0 <= size <= self.held.get(stream_id, 0):
                    self.bad_size = size
                    refused = LocalProtocolError
                else:
                    mux.acknowledge_data(stream_id, size)
                    self.held[stream_id] = self.held.get(stream_id, 0) - size
                    # Stream credit comes back once a quarter window is due, while the
                    # peer's half is open (protocol.md section 7, "Batching").
                    if size and stream is not None and stream.remote is HalfState.OPEN:
                        due = self.unreturned.get(stream_id, 0) + size
                        self.unreturned[stream_id] = due
                        if due >= max(1, view.window // 4):
                            self.unreturned[stream_id] = 0
                            self.windows = [fr.Window(stream_id=stream_id, increment=due)]
            case "open":
                head = data.draw(st.sampled_from([GET, GET, BIGGEST, *BAD_REQUESTS]))
                if not mux.can_open_stream or head in BAD_REQUESTS:
                    refused = LocalProtocolError
                    self.bad_request = head
                else:
                    # The default is a request with a body to follow.
                    end = data.draw(st.sampled_from([None, False, True]), label="end")
                    if end is None:
                        opened = mux.open_stream(head)
                    else:
                        opened = mux.open_stream(head, end_stream=end)
                    assert opened == view.highest + 1
                    expected = [fr.Head(stream_id=opened, fields=tuple(head.to_fields()))]
                    expected += [fr.End(stream_id=opened)] if end else []
            case "reset":
                reason = data.draw(st.sampled_from([None, "local"]), label="reason")
                if reason is None:  # no reason by default
                    mux.reset_stream(stream_id, ErrorCode.CANCEL)
                else:
                    mux.reset_stream(stream_id, ErrorCode.CANCEL, reason)
                self.held.pop(stream_id, None)
                if stream is not None:
                    reset = fr.Reset(
                        stream_id=stream_id, code=ErrorCode.CANCEL, reason=reason or ""
                    )
                    expected = [reset]
            case "respond" if view.role is Role.SERVER:
                refused = LocalProtocolError
            case _ if stream is None:
                refused = StreamClosedError
            case "respond" if stream.local is not HalfState.IDLE:
                refused = LocalProtocolError
            case "respond" if response in BAD_RESPONSES:
                refused = LocalProtocolError
            case "respond":
                mux.send_response(stream_id, response)
                informational = response.is_informational
                fields = tuple(response.to_fields())
                expected = [
                    fr.Head(stream_id=stream_id, fields=fields, is_informational=informational)
                ]
            case "end" if local_open:
                mux.end_stream(stream_id)
                expected = [fr.End(stream_id=stream_id)]
            case "send" if local_open:
                credit = min(stream.send_credit, view.send_credit)
                size = data.draw(st.integers(0, credit + 1), label="size")
                if size > credit:
                    refused = LocalProtocolError
                else:
                    body = bytes(i % 251 for i in range(size))
                    mux.send_data(stream_id, body)
                    # Split into frames of at most one frame's payload, in order.
                    expected = [
                        fr.Data(stream_id=stream_id, data=body[i : i + MAX_FRAME_PAYLOAD])
                        for i in range(0, size, MAX_FRAME_PAYLOAD)
                    ]
            case _:  # END or DATA on a half that is not open
                refused = LocalProtocolError
        if refused is not None:
            with pytest.raises(refused):
                self.run_refused(name, stream_id)
            assert not mux.has_data_to_send, "a refused command changes nothing"
        return expected

    def run_refused(self, name: str, stream_id: StreamId) -> None:
        mux = self.mux
        match name:
            case "goaway":
                mux.goaway()
            case "accept":
                mux.accept()
            case "reject":
                mux.reject("late")
            case "hello":
                mux.send_hello(client_id="again", routes=())
            case "acknowledge":
                mux.acknowledge_data(stream_id, self.bad_size)
            case "open":
                mux.open_stream(self.bad_request)
            case "respond":
                mux.send_response(stream_id, self.response)
            case "end":
                mux.end_stream(stream_id)
            case _:
                credit = self.mux.send_credit(stream_id)
                mux.send_data(stream_id, b"s" * (credit + 1))


@given(
    role=st.sampled_from(Role),
    window=windows,
    connection_window=connection_windows,
    peer_window=peer_windows,
    peer_connection_window=peer_windows,
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
    for bad in (0, MAX_WINDOW + 1):  # windows are 1 to 2^31-1 bytes
        with pytest.raises(ValueError, match="window"):
            Multiplexer(role, window=bad)
        with pytest.raises(ValueError, match="window"):
            Multiplexer(role, connection_window=bad)
    mux = Multiplexer(
        role, window=window, connection_window=connection_window, max_streams=MAX_STREAMS
    )
    view = MuxView(role, window, connection_window, MAX_STREAMS)
    tap = Tap()  # sees every byte the multiplexer is fed
    application = Application(mux, view)
    check_queries(mux, view)  # nothing granted, nothing open before the handshake

    def flush() -> list[fr.Frame]:
        sent = decode_all(mux.data_to_send())
        for frame in sent:
            view.sent(frame)
        return sent

    # The handshake, perhaps after frames that may not come before it; the peer
    # may offer no version we speak, choose one we did not offer, or reject us.
    early = data.draw(st.integers(0, 9), label="early") == 0
    if early and judge(mux, view, tap, fr.encode(data.draw(hostile_frames(view)))) is None:
        return
    if role is Role.SERVER:
        hello = fr.Hello(
            versions=data.draw(st.sampled_from([(1,)] * 6 + [(0, 1), (2,), (7, 8)])),
            client_id="peer",
            routes=("app",),
            window=peer_window,
            connection_window=peer_connection_window,
        )
        if judge(mux, view, tap, fr.encode(hello)) is None:
            return
        mux.accept()
    else:
        mux.send_hello(client_id="agent", routes=("app",))
        flush()
        answer: fr.Frame = fr.Accept(
            version=data.draw(st.sampled_from([1] * 8 + [2])),
            refused=(),
            window=peer_window,
            connection_window=peer_connection_window,
        )
        if data.draw(st.integers(0, 15), label="reject") == 0:
            answer = fr.Reject(reason="no")
        if judge(mux, view, tap, fr.encode(answer)) is None:
            return
    flush()
    for _ in range(data.draw(st.integers(10, 40), label="steps")):
        # Mostly frames and commands: mutated bytes end a run at once, as a rule.
        steps = ["frame"] * 5 + ["command"] * 3 + ["bytes"]
        match data.draw(st.sampled_from(steps)):
            case "command":
                expected = application.command(data)
                sent = flush()
                # Connection credit (WINDOW on stream 0) is batched over all streams
                # and dropped DATA: the machine checks it; stream credit is here.
                assert [f for f in sent if not isinstance(f, fr.Window)] == expected
                windows = [f for f in sent if isinstance(f, fr.Window) and f.stream_id]
                assert windows == application.windows
                check_queries(mux, view)
                continue
            case "frame":
                encoded = fr.encode(data.draw(hostile_frames(view, steady=True), label="frame"))
            case _:
                frames = data.draw(st.lists(hostile_frames(view), min_size=1, max_size=3))
                valid = b"".join(map(fr.encode, frames))
                encoded = data.draw(
                    st.one_of(sts.mutated(valid), st.binary(max_size=40)), label="bytes"
                )
        # Whole frames as a rule: cutting them spends hypothesis's choices, which
        # bound how long a run can be (the codec targets cut bytes everywhere).
        cut = data.draw(st.integers(0, 3), label="cut") == 0
        chunks = data.draw(sts.chunked(encoded), label="chunks") if cut else [encoded]
        for chunk in chunks:
            events = judge(mux, view, tap, chunk)
            if events is None:
                return
            application.received(events)
            flush()
            check_queries(mux, view)


def test_credit_a_gone_stream_returns_can_be_spent_by_the_next_frame_of_the_same_chunk() -> None:
    """Found by a long ``mux-hostile`` run (a fault of the model, not of the
    multiplexer): DATA for a stream that is gone returns its connection credit the
    moment it arrives, so the next DATA in the same WebSocket message may spend it.
    The model now learns what the multiplexer sends after every frame."""
    mux = Multiplexer(Role.AGENT, window=1000, connection_window=1000)
    view, tap = MuxView(Role.AGENT, 1000, 1000, 4096), Tap()
    mux.send_hello(client_id="agent", routes=("app",))
    view.sent(*decode_all(mux.data_to_send()))
    accept = fr.Accept(version=1, refused=(), window=1000, connection_window=1000)
    assert judge(mux, view, tap, fr.encode(accept)) == [ev.Accepted(refused=())]
    late = fr.encode(fr.Data(stream_id=StreamId(1), data=b"\xaa" * 1000))
    opening = fr.Head(stream_id=StreamId(16777217), fields=tuple(GET.to_fields()))
    events = judge(mux, view, tap, fr.encode(opening) + late + late)
    assert events == [ev.StreamOpened(stream_id=StreamId(16777217), head=GET)]
    assert mux.connection_credit == 1000
