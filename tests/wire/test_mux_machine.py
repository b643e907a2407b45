"""Two connected multiplexers driven by random commands and random delivery.

A `RuleBasedStateMachine` opens streams, sends data (sometimes more than the credit
allows, expecting a refusal), acknowledges (also streams already gone), drops
streams, ends, resets, says GOAWAY and pings, while bytes cross in arbitrary chunks.
A model built only from the commands and from independent decoders tapping both
links checks, after every step, at the stream and at the connection level: nobody
sends beyond the credit it was granted; credit is conserved (granted = spent +
available); neither side has more bytes sent and not yet consumed than the
receiver's connection window; the receiver holds back less than a quarter window of
consumed credit; every byte arrives in order and, at END, complete; streams that are
finished or reset leave no state; GOAWAY lets open streams finish and refuses new
ones; and a starved connection window opens again once the data is acknowledged.

A second, independent model of each multiplexer (`oracle.MuxView`, fed only the
frames on the wire) judges every frame delivered: the events it must report, or the
connection error it must raise. `hostile_frame` plays a peer that breaks the rules on
purpose (DATA past a window, WINDOW overflow, frames on closed or never-opened
streams, reused IDs, a raised GOAWAY) against a copy of a live multiplexer, in
whatever state the run has brought it to, and checks the refusal and its code.
`fuzz/` runs the same machine for longer.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from pvtunnel._errors import ErrorCode, LocalProtocolError, StreamClosedError
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import FrameDecoder, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role
from tests.wire.oracle import MuxView, Tap, hostile_frames, judge

Side = Literal["server", "agent"]
SIDES: tuple[Side, Side] = ("server", "agent")
OTHER: dict[Side, Side] = {"server": "agent", "agent": "server"}
RESET_CODES = st.sampled_from(
    [ErrorCode.CANCEL, ErrorCode.UPSTREAM_TIMEOUT, ErrorCode.INTERNAL_ERROR]
)


@dataclass
class Direction:
    """One half of a stream, seen from both its sender and its receiver."""

    window: int  # the receiver's initial window
    sent: bytearray = field(default_factory=bytearray)  # given to send_data
    received: bytearray = field(default_factory=bytearray)  # from DataReceived
    acknowledged: int = 0
    released: int = 0  # held when the stream was reset: consumed by the reset
    unreturned: int = 0  # acknowledged, not yet sent back as WINDOW
    is_open_to_send: bool = False  # the sender's half is OPEN
    is_open_to_receive: bool = False  # the receiver's half is OPEN
    ended_sent: bool = False
    ended_received: bool = False
    # From the taps: what the bytes on the wire say, independent of both endpoints.
    wire_data: int = 0  # DATA bytes the sender produced
    delivered_data: int = 0  # DATA bytes delivered to the receiver
    granted_produced: int = 0  # WINDOW increments the receiver produced
    granted_delivered: int = 0  # WINDOW increments delivered to the sender

    @property
    def credit(self) -> int:
        """The sender's credit on the stream: granted minus spent."""
        return self.window + self.granted_delivered - len(self.sent)

    @property
    def held(self) -> int:
        """Received and neither acknowledged nor released: what the receiver holds."""
        return len(self.received) - self.acknowledged - self.released

    @property
    def consumed(self) -> int:
        """What the receiver counts as consumed: acknowledged, released by a reset, or
        delivered for a stream it had forgotten (no DataReceived, returned at once)."""
        return self.acknowledged + self.released + self.delivered_data - len(self.received)


@dataclass
class StreamModel:
    request: Direction  # server -> agent
    response: Direction  # agent -> server
    head: RequestHead
    server_live: bool = True
    agent_live: bool = False
    agent_opened: bool = False
    response_heads: list[ResponseHead] = field(default_factory=list)
    response_heads_received: int = 0
    reset_by: dict[Side, ErrorCode] = field(default_factory=dict)

    def sending(self, side: Side) -> Direction:
        return self.request if side == "server" else self.response

    def receiving(self, side: Side) -> Direction:
        return self.response if side == "server" else self.request

    def is_live(self, side: Side) -> bool:
        return self.server_live if side == "server" else self.agent_live

    def drop(self, side: Side) -> None:
        if side == "server":
            self.server_live = False
        else:
            self.agent_live = False

    def settle(self, side: Side) -> None:
        """Forget the stream on ``side`` once both of its halves are closed there."""
        if self.sending(side).ended_sent and self.receiving(side).ended_received:
            self.drop(side)


@dataclass
class Link:
    """Bytes one side produced and the other has not received yet, plus two taps."""

    pending: bytearray = field(default_factory=bytearray)
    produced: FrameDecoder = field(default_factory=FrameDecoder)
    delivered: FrameDecoder = field(default_factory=FrameDecoder)


def payload(stream_id: int, side: Side, offset: int, size: int) -> bytes:
    """Bytes that differ by stream, direction and position, so misordering shows."""
    base = stream_id * 7 + (0 if side == "server" else 101) + offset
    return bytes((base + i) % 251 for i in range(size))


class MuxMachine(RuleBasedStateMachine):
    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.mux: dict[Side, Multiplexer] = {}
        self.views: dict[Side, MuxView] = {}
        self.peak_held: dict[Side, int] = {"server": 0, "agent": 0}
        self.links: dict[Side, Link] = {"server": Link(), "agent": Link()}  # by sender
        self.model: dict[int, StreamModel] = {}
        self.windows: dict[Side, int] = {}
        self.connection_windows: dict[Side, int] = {}  # by receiver
        # Connection WINDOW increments: produced by the receiver, delivered to the sender.
        self.connection_granted_produced: dict[Side, int] = {"server": 0, "agent": 0}
        self.connection_granted_delivered: dict[Side, int] = {"server": 0, "agent": 0}
        self.max_streams = 0
        self.message_bytes: int | None = None
        self.goaway_sent: dict[Side, int | None] = {"server": None, "agent": None}
        self.goaway_received: dict[Side, bool] = {"server": False, "agent": False}
        self.agent_highest_seen = 0
        self.pings: dict[Side, deque[bytes]] = {"server": deque(), "agent": deque()}
        self.pongs_due: dict[Side, deque[bytes]] = {"server": deque(), "agent": deque()}
        self.ping_count = 0
        self.is_open = False

    # -- plumbing ------------------------------------------------------------------

    # Connection windows often below the sum of the stream windows (or below one), so
    # that streams compete for the connection's credit and it runs dry.
    @initialize(
        server_window=st.one_of(st.integers(1, 40), st.just(1000)),
        agent_window=st.one_of(st.integers(1, 40), st.just(1000)),
        # Above the stream windows first: DATA past a stream's window then leaves
        # the connection window alone, so a missing stream-level check shows.
        server_connection_window=st.one_of(st.integers(41, 100), st.integers(1, 60), st.just(1000)),
        agent_connection_window=st.one_of(st.integers(41, 100), st.integers(1, 60), st.just(1000)),
        max_streams=st.sampled_from([1, 2, 3, 8]),
        message_bytes=st.sampled_from([None, 1, 30, 200]),
    )
    def connect(
        self,
        server_window: int,
        agent_window: int,
        server_connection_window: int,
        agent_connection_window: int,
        max_streams: int,
        message_bytes: int | None,
    ) -> None:
        self.windows = {"server": server_window, "agent": agent_window}
        self.connection_windows = {
            "server": server_connection_window,
            "agent": agent_connection_window,
        }
        self.max_streams = max_streams
        self.message_bytes = message_bytes
        self.mux = {
            "server": Multiplexer(
                Role.SERVER, window=server_window, connection_window=server_connection_window
            ),
            "agent": Multiplexer(
                Role.AGENT,
                window=agent_window,
                connection_window=agent_connection_window,
                max_streams=max_streams,
            ),
        }
        self.views = {
            "server": MuxView(Role.SERVER, server_window, server_connection_window, 0),
            "agent": MuxView(Role.AGENT, agent_window, agent_connection_window, max_streams),
        }
        self.mux["agent"].send_hello(client_id="machine", routes=("app",))
        self.flush("agent")
        assert self.deliver_everything("agent") == [
            ev.HelloReceived(client_id="machine", routes=("app",))
        ]
        self.mux["server"].accept()
        self.flush("server")
        assert self.deliver_everything("server") == [ev.Accepted(refused=())]
        self.is_open = True

    def flush(self, side: Side) -> list[fr.Frame]:
        """Move what ``side`` queued onto its link, as messages of whole frames."""
        mux, link = self.mux[side], self.links[side]
        produced: list[fr.Frame] = []
        messages: list[int] = []
        while mux.has_data_to_send:
            message = mux.data_to_send(self.message_bytes)
            frames = link.produced.feed(message)
            assert link.produced.buffered_bytes == 0, "a message split a frame"
            produced += frames
            link.pending += message
            messages.append(len(message))
        # Each message takes whole frames until the next would pass the size asked
        # (at least one frame); without a size, one message takes everything.
        sizes = [len(fr.encode(frame)) for frame in produced]
        limit = sum(sizes) if self.message_bytes is None else self.message_bytes
        expected: list[int] = []
        for size in sizes:
            if expected and expected[-1] + size <= limit:
                expected[-1] += size
            else:
                expected.append(size)
        assert messages == expected
        for frame in produced:
            self.views[side].sent(frame)
            match frame:
                case fr.Data():
                    self.model[frame.stream_id].sending(side).wire_data += len(frame.data)
                case fr.Window() if frame.stream_id == 0:
                    self.connection_granted_produced[side] += frame.increment
                case fr.Window():
                    self.model[frame.stream_id].receiving(side).granted_produced += frame.increment
                case _:
                    pass
        return produced

    def deliver(self, sender: Side, size: int) -> list[ev.Event]:
        link = self.links[sender]
        chunk = bytes(link.pending[:size])
        del link.pending[:size]
        receiver = OTHER[sender]
        delivered = link.delivered.feed(chunk)
        # The independent model's verdict on each frame, in order, is what happens.
        expected: list[ev.Event] = []
        for frame in delivered:
            verdict = self.views[receiver].received(frame)
            assert isinstance(verdict, list), f"{frame} must be refused: {verdict}"
            expected += verdict
        for frame in delivered:
            match frame:
                case fr.Data():
                    self.model[frame.stream_id].sending(sender).delivered_data += len(frame.data)
                case fr.Window() if frame.stream_id == 0:
                    self.connection_granted_delivered[receiver] += frame.increment
                case fr.Window():
                    self.model[frame.stream_id].receiving(
                        sender
                    ).granted_delivered += frame.increment
                case fr.Head() if receiver == "agent":
                    self.agent_highest_seen = max(self.agent_highest_seen, frame.stream_id)
                case _:
                    pass
        events = self.mux[receiver].receive_data(chunk)
        assert events == expected
        for event in events:
            self.on_event(receiver, event)
            # What the receiver holds grows only here (a reset in the same chunk
            # may release it at once): its peak is reached here.
            if isinstance(event, ev.DataReceived):
                held = sum(stream.receiving(receiver).held for stream in self.model.values())
                self.peak_held[receiver] = max(self.peak_held[receiver], held)
        self.flush(receiver)
        return events

    def deliver_everything(self, sender: Side) -> list[ev.Event]:
        return self.deliver(sender, len(self.links[sender].pending))

    # -- the model's reading of events ---------------------------------------------

    def on_event(self, side: Side, event: ev.Event) -> None:
        match event:
            case ev.StreamOpened():
                assert side == "agent"
                stream = self.model[event.stream_id]
                assert event.head == stream.head
                assert not stream.agent_opened
                assert self.goaway_sent["agent"] is None
                assert self.mux["agent"].stream_count <= self.max_streams
                stream.agent_opened = stream.agent_live = True
                stream.request.is_open_to_receive = True
            case ev.ResponseReceived():
                stream = self.live(side, event.stream_id)
                assert event.head == stream.response_heads[stream.response_heads_received]
                stream.response_heads_received += 1
                stream.response.is_open_to_receive = not event.head.is_informational
            case ev.DataReceived():
                direction = self.live(side, event.stream_id).receiving(side)
                direction.received += event.data
                assert direction.sent.startswith(direction.received), "bytes out of order"
            case ev.StreamEnded():
                stream = self.live(side, event.stream_id)
                direction = stream.receiving(side)
                assert direction.ended_sent
                assert direction.received == direction.sent, "END before all the bytes"
                direction.ended_received = True
                direction.is_open_to_receive = False
                stream.settle(side)
            case ev.StreamReset():
                stream = self.live(side, event.stream_id)
                if event.code is ErrorCode.REFUSED_STREAM:
                    assert side == "server"
                    assert not stream.agent_opened
                else:
                    assert stream.reset_by.get(OTHER[side]) is event.code
                self.release(stream.receiving(side))
                stream.drop(side)
            case ev.CreditGranted() if event.stream_id == 0:
                pass  # the connection: checked by connection_credit_is_conserved
            case ev.CreditGranted():
                self.live(side, event.stream_id)
            case ev.PingReceived():
                assert self.pings[OTHER[side]].popleft() == event.payload
                self.pongs_due[OTHER[side]].append(event.payload)
            case ev.PongReceived():
                assert self.pongs_due[side].popleft() == event.payload
            case ev.GoAwayReceived():
                assert event.last_stream_id == self.goaway_sent[OTHER[side]]
                self.goaway_received[side] = True
            case ev.HelloReceived() | ev.Accepted() | ev.Rejected():
                assert not self.is_open, f"handshake event after the handshake: {event}"

    def live(self, side: Side, stream_id: int) -> StreamModel:
        stream = self.model[stream_id]
        assert stream.is_live(side), f"event for stream {stream_id}, gone on the {side}"
        return stream

    @staticmethod
    def release(direction: Direction) -> None:
        """A reset: what the receiver held counts as consumed now."""
        direction.released += direction.held

    def connection_credit(self, side: Side) -> int:
        """``side``'s connection credit by the model: granted minus spent."""
        spent = sum(len(stream.sending(side).sent) for stream in self.model.values())
        return (
            self.connection_windows[OTHER[side]] + self.connection_granted_delivered[side] - spent
        )

    def credit(self, side: Side, direction: Direction) -> int:
        """What ``side`` may send on the stream now: the smaller of the two credits."""
        return min(direction.credit, self.connection_credit(side))

    def connection_due(self, side: Side) -> int:
        """Consumed by ``side`` as a receiver and not yet returned in a WINDOW on 0."""
        consumed = sum(stream.receiving(side).consumed for stream in self.model.values())
        return consumed - self.connection_granted_produced[side]

    # -- rules ---------------------------------------------------------------------

    # A few streams at a time: always enabled, this rule would crowd out the rest.
    @precondition(lambda self: sum(s.server_live for s in self.model.values()) < 4)
    @rule(
        target=streams, end_stream=st.booleans(), method=st.sampled_from([b"GET", b"POST", b"PUT"])
    )
    def open_stream(self, end_stream: bool, method: bytes) -> object:
        server = self.mux["server"]
        head = RequestHead(route="app", method=method, target=b"/%d" % len(self.model))
        if self.goaway_sent["server"] is not None or self.goaway_received["server"]:
            with pytest.raises(LocalProtocolError):
                server.open_stream(head, end_stream=end_stream)
            return multiple()
        stream_id = server.open_stream(head, end_stream=end_stream)
        assert stream_id == len(self.model) + 1
        self.model[stream_id] = StreamModel(
            request=Direction(
                window=self.windows["agent"], is_open_to_send=not end_stream, ended_sent=end_stream
            ),
            response=Direction(window=self.windows["server"]),
            head=head,
        )
        self.flush("server")
        return stream_id

    # Each command is carried out by a ``do_*`` method that predicts the outcome from
    # the model alone: done, or refused with the documented error. Focused rules call
    # them on streams where the command makes sense; `act_on_any_stream` calls them on
    # any stream of the bundle, gone or not, to check the refusals.

    def do_respond(self, stream_id: StreamId, status: int) -> None:
        stream, agent = self.model[stream_id], self.mux["agent"]
        head = ResponseHead(status=status, reason=b"R")
        if not stream.agent_live:
            with pytest.raises(StreamClosedError):
                agent.send_response(stream_id, head)
            return
        if stream.response.is_open_to_send or stream.response.ended_sent:
            with pytest.raises(LocalProtocolError):
                agent.send_response(stream_id, head)
            return
        agent.send_response(stream_id, head)
        stream.response_heads.append(head)
        stream.response.is_open_to_send = not head.is_informational
        self.flush("agent")

    def do_send_data(self, side: Side, stream_id: StreamId, data: st.DataObject) -> None:
        stream, mux = self.model[stream_id], self.mux[side]
        direction = stream.sending(side)
        if not stream.is_live(side):
            with pytest.raises(StreamClosedError):
                mux.send_data(stream_id, b"x")
            return
        if not direction.is_open_to_send:
            with pytest.raises(LocalProtocolError):
                mux.send_data(stream_id, b"x")
            return
        credit = self.credit(side, direction)
        assert mux.send_credit(stream_id) == credit
        # A third of the attempts overshoot: a refusal the model expects is what
        # catches a missing credit check, and with a large window it would otherwise be
        # rare. When the connection's credit is the smaller, an overshoot within the
        # stream's own credit is what catches a missing connection-level check. A
        # third spend all the credit there is, which starves the connection often.
        size = data.draw(
            st.one_of(
                st.integers(0, min(credit, 200)),
                st.just(credit),
                st.integers(credit + 1, credit + 64),
            ),
            label="size",
        )
        chunk = payload(stream_id, side, len(direction.sent), size)
        if size > credit:
            with pytest.raises(LocalProtocolError):
                mux.send_data(stream_id, chunk)
            return
        mux.send_data(stream_id, chunk)
        direction.sent += chunk
        self.flush(side)

    def do_end_stream(self, side: Side, stream_id: StreamId) -> None:
        stream, mux = self.model[stream_id], self.mux[side]
        direction = stream.sending(side)
        if not stream.is_live(side):
            with pytest.raises(StreamClosedError):
                mux.end_stream(stream_id)
            return
        if not direction.is_open_to_send:
            with pytest.raises(LocalProtocolError):
                mux.end_stream(stream_id)
            return
        mux.end_stream(stream_id)
        direction.is_open_to_send, direction.ended_sent = False, True
        stream.settle(side)
        self.flush(side)

    def do_acknowledge(
        self, side: Side, stream_id: StreamId, data: st.DataObject | None = None
    ) -> None:
        """Acknowledge some of what ``side`` holds of the stream, or with ``data`` None
        all of it (`acknowledge_all`: the application drops the stream). Live or gone,
        the stream's bytes return connection credit; only a live stream whose peer
        has not ended its half gets stream credit back."""
        stream, mux = self.model[stream_id], self.mux[side]
        direction = stream.receiving(side)
        outstanding = direction.held
        if data is None:
            size = outstanding
            mux.acknowledge_all(stream_id)
        else:
            size = data.draw(st.integers(0, outstanding + 1), label="size")
            if size > outstanding:
                with pytest.raises(LocalProtocolError):
                    mux.acknowledge_data(stream_id, size)
                assert not mux.has_data_to_send  # a refusal changes nothing
                return
            mux.acknowledge_data(stream_id, size)
        due = self.connection_due(side)
        direction.acknowledged += size
        expected: list[fr.Frame] = []
        if stream.is_live(side) and direction.is_open_to_receive:
            direction.unreturned += size
            if direction.unreturned >= max(1, self.windows[side] // 4):
                expected.append(fr.Window(stream_id=stream_id, increment=direction.unreturned))
                direction.unreturned = 0
        if size and due + size >= max(1, self.connection_windows[side] // 4):
            expected.append(fr.Window(stream_id=StreamId(0), increment=due + size))
        assert self.flush(side) == expected

    def candidates(self, action: str) -> list[tuple[Side, StreamId]]:
        """(side, stream) pairs where ``action`` is allowed right now."""
        found = []
        for stream_id, stream in self.model.items():
            for side in SIDES:
                if not stream.is_live(side):
                    continue
                sending, receiving = stream.sending(side), stream.receiving(side)
                allowed = {
                    "respond": side == "agent"
                    and not sending.is_open_to_send
                    and not sending.ended_sent,
                    "send": sending.is_open_to_send and self.credit(side, sending) > 0,
                    "end": sending.is_open_to_send,
                    "acknowledge": receiving.held > 0,
                }[action]
                if allowed:
                    found.append((side, StreamId(stream_id)))
            # A stream both ends forgot may still be held, until it is acknowledged.
            if action == "acknowledge":
                found += [
                    (side, StreamId(stream_id))
                    for side in SIDES
                    if not stream.is_live(side) and stream.receiving(side).held > 0
                ]
        return found

    @precondition(lambda self: bool(self.candidates("respond")))
    @rule(data=st.data(), status=st.sampled_from([100, 103, 101, 200, 200, 404]))
    def respond(self, data: st.DataObject, status: int) -> None:
        _, stream_id = data.draw(st.sampled_from(self.candidates("respond")))
        self.do_respond(stream_id, status)

    @precondition(lambda self: bool(self.candidates("send")))
    @rule(data=st.data())
    def send_data(self, data: st.DataObject) -> None:
        side, stream_id = data.draw(st.sampled_from(self.candidates("send")))
        self.do_send_data(side, stream_id, data)

    @precondition(lambda self: bool(self.candidates("end")))
    @rule(data=st.data())
    def end_stream(self, data: st.DataObject) -> None:
        side, stream_id = data.draw(st.sampled_from(self.candidates("end")))
        self.do_end_stream(side, stream_id)

    @precondition(lambda self: bool(self.candidates("acknowledge")))
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        side, stream_id = data.draw(st.sampled_from(self.candidates("acknowledge")))
        self.do_acknowledge(side, stream_id, data)

    @rule(
        side=st.sampled_from(SIDES),
        stream_id=streams,
        data=st.data(),
        action=st.sampled_from(["respond", "send", "end", "acknowledge", "drop"]),
    )
    def act_on_any_stream(
        self, side: Side, stream_id: StreamId, data: st.DataObject, action: str
    ) -> None:
        match action:
            case "respond":
                self.do_respond(stream_id, 200)
            case "send":
                self.do_send_data(side, stream_id, data)
            case "end":
                self.do_end_stream(side, stream_id)
            case "acknowledge":
                self.do_acknowledge(side, stream_id, data)
            case _:
                self.do_acknowledge(side, stream_id)

    @rule(side=st.sampled_from(SIDES), stream_id=streams, code=RESET_CODES)
    def reset(self, side: Side, stream_id: StreamId, code: ErrorCode) -> None:
        stream = self.model[stream_id]
        self.mux[side].reset_stream(stream_id, code, "machine")
        # Live or forgotten, what the stream still held counts as consumed now.
        self.release(stream.receiving(side))
        if stream.is_live(side):
            stream.reset_by[side] = code
            stream.drop(side)
        self.flush(side)

    # Not before a few streams exist: GOAWAY ends the opening of streams for good.
    @precondition(lambda self: len(self.model) >= 3)
    @rule(side=st.sampled_from(SIDES))
    def goaway(self, side: Side) -> None:
        if self.goaway_sent[side] is None:
            self.goaway_sent[side] = (
                len(self.model) if side == "server" else self.agent_highest_seen
            )
        self.mux[side].goaway(ErrorCode.NO_ERROR, "machine")
        self.flush(side)

    @precondition(lambda self: self.ping_count < 4)  # cheap, so it would crowd out the rest
    @rule(side=st.sampled_from(SIDES))
    def ping(self, side: Side) -> None:
        self.ping_count += 1
        opaque = self.ping_count.to_bytes(8)
        self.mux[side].ping(opaque)
        self.pings[side].append(opaque)
        self.flush(side)

    @precondition(lambda self: self.is_open)
    @rule(receiver=st.sampled_from(SIDES), data=st.data())
    def hostile_frame(self, receiver: Side, data: st.DataObject) -> None:
        """A peer sends a frame aimed at the rules, kept or broken, once all in flight
        has arrived: a copy of the receiver must do what the independent model says
        (the events, or the connection error with its code). The run goes on with the
        real receiver, untouched."""
        self.deliver_everything(OTHER[receiver])
        view = copy.deepcopy(self.views[receiver])
        mux = copy.deepcopy(self.mux[receiver])
        frame = data.draw(hostile_frames(view), label="hostile frame")
        judge(mux, view, Tap(), fr.encode(frame))

    @rule(sender=st.sampled_from(SIDES), size=st.integers(1, 120))
    def deliver_some(self, sender: Side, size: int) -> None:
        self.deliver(sender, size)

    @rule(sender=st.sampled_from(SIDES))
    def deliver_all(self, sender: Side) -> None:
        self.deliver_everything(sender)

    def acknowledge_everything(self, receiver: Side) -> None:
        """Deliver all the peer sent, then acknowledge all ``receiver`` holds."""
        self.deliver_everything(OTHER[receiver])
        for stream_id, stream in self.model.items():
            if stream.receiving(receiver).held:
                self.do_acknowledge(receiver, StreamId(stream_id))

    def assert_unblocked(self, sender: Side) -> None:
        """With everything consumed and returned, at most the batch remainder is
        missing from the sender's connection credit: it can send again."""
        receiver = OTHER[sender]
        window = self.connection_windows[receiver]
        assert all(stream.sending(sender).held == 0 for stream in self.model.values())
        assert self.mux[receiver].held_bytes == 0
        assert self.mux[sender].connection_credit >= window - max(1, window // 4) + 1 > 0

    @precondition(lambda self: any(self.mux[s].connection_credit == 0 for s in self.mux))
    @rule()
    def unstarve(self) -> None:
        """A connection window spent to the last byte opens once the data is consumed."""
        (sender, *_) = [s for s in SIDES if self.mux[s].connection_credit == 0]
        self.acknowledge_everything(OTHER[sender])
        self.deliver_everything(OTHER[sender])
        self.assert_unblocked(sender)

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def nobody_exceeds_credit(self) -> None:
        for stream_id, stream in self.model.items():
            for direction in (stream.request, stream.response):
                # The sender never put more on the wire than it had been granted...
                assert direction.wire_data == len(direction.sent)
                assert direction.wire_data <= direction.window + direction.granted_delivered
                # ...so the receiver never got more than it granted.
                assert direction.delivered_data <= direction.window + direction.granted_produced
            for side in SIDES:
                direction = stream.sending(side)
                if stream.is_live(side) and direction.is_open_to_send:
                    mux = self.mux[side]
                    assert mux.send_credit(StreamId(stream_id)) == self.credit(side, direction)
                    # Stream credit alone is not public; reading it (never writing) is
                    # how to see that granted = spent + available at this level too.
                    assert mux._streams[stream_id].send_credit == direction.credit

    @invariant()
    def connection_credit_is_conserved(self) -> None:
        for sender in self.mux:
            receiver = OTHER[sender]
            window = self.connection_windows[receiver]
            directions = [stream.sending(sender) for stream in self.model.values()]
            sent = sum(len(d.sent) for d in directions)
            granted = window + self.connection_granted_delivered[sender]
            # granted = spent + available, on the sender.
            assert self.mux[sender].connection_credit == granted - sent >= 0
            # The wire carried no more than was granted, nor more than was produced.
            assert sum(d.delivered_data for d in directions) <= sent <= granted
            assert (
                self.connection_granted_delivered[sender]
                <= self.connection_granted_produced[receiver]
            )
            # Bytes sent and not yet consumed (queued, in flight or held) never
            # exceed the receiver's connection window, whatever the stream count.
            consumed = sum(d.consumed for d in directions)
            held = sum(d.held for d in directions)
            assert self.mux[receiver].held_bytes == held
            assert held <= sent - consumed <= window
            assert self.mux[receiver].peak_held_bytes == self.peak_held[receiver] <= window
            # The receiver returns what was consumed, holding back less than a batch.
            assert 0 <= self.connection_due(receiver) < max(1, window // 4)

    @invariant()
    def finished_and_reset_streams_leave_no_state(self) -> None:
        if not self.mux:
            return
        for side in SIDES:
            live = [s for s, stream in self.model.items() if stream.is_live(side)]
            assert self.mux[side].stream_count == len(live)
            assert all(self.mux[side].is_stream_open(StreamId(s)) for s in live)
        assert self.mux["agent"].stream_count <= self.max_streams

    @invariant()
    def goaway_stops_new_streams(self) -> None:
        if self.mux:
            server_leaving = (
                self.goaway_sent["server"] is not None or self.goaway_received["server"]
            )
            assert self.mux["server"].can_open_stream is not server_leaving
            assert self.mux["agent"].is_going_away is (
                self.goaway_sent["agent"] is not None or self.goaway_received["agent"]
            )

    def teardown(self) -> None:
        if not self.mux:
            return
        while self.links["server"].pending or self.links["agent"].pending:
            self.deliver_everything("server")
            self.deliver_everything("agent")
        # Everything consumed: both connection windows are open again.
        for receiver in SIDES:
            self.acknowledge_everything(receiver)
        while self.links["server"].pending or self.links["agent"].pending:
            self.deliver_everything("server")
            self.deliver_everything("agent")
        for sender in SIDES:
            self.assert_unblocked(sender)
        assert not any(self.pings.values()), "a PING was never answered"
        assert not any(self.pongs_due.values()), "a PONG never arrived"
        for stream in self.model.values():
            if stream.reset_by:
                continue
            for direction in (stream.request, stream.response):
                if direction.ended_sent and stream.agent_opened:
                    assert direction.ended_received
                    assert direction.received == direction.sent


TestMuxMachine = MuxMachine.TestCase
