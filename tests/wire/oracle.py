"""What one multiplexer must do with each frame, judged from the frames it exchanged.

`MuxView` is a second, independent reading of protocol.md sections 5-7 and 9: it
watches the frames a `Multiplexer` sends (`sent`) and the frames its peer sends it
(`received`), and for each received frame says what must happen: the events it
reports, or a connection error with its code (`Refused`). It tracks what each side
granted and spent at both levels (stream and connection credit), both halves of
every stream, the stream IDs used, and GOAWAY, from the wire alone: what the
application holds is invisible to a peer and does not matter here, because credit
comes back only in WINDOW frames, which the view sees.

`hostile_frames` draws frames aimed at the rules from the view's state: DATA at and
one byte past either window, WINDOW increments at and past the 2^31-1 cap, frames
for streams that are gone or were never opened, reused stream IDs, heads and ENDs
on halves in the wrong state, a GOAWAY that raises its last stream ID, handshake
frames after the handshake. The fuzz targets `mux-machine` and `mux-hostile` feed
them to copies of live multiplexers and compare the outcome with the view's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import pytest
from hypothesis import strategies as st

from pvtunnel._errors import ErrorCode, RemoteProtocolError
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import (
    MAX_FRAME_PAYLOAD,
    MAX_STREAM_ID,
    MAX_WINDOW,
    FrameDecoder,
    StreamId,
)
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role
from pvtunnel._wire.states import ConnectionState

if TYPE_CHECKING:
    from collections.abc import Callable

PROTOCOL_VERSION = 1
_T = TypeVar("_T")


class HalfState(enum.Enum):
    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


class Phase(enum.Enum):
    START = "start"
    AWAIT_HELLO = "await-hello"
    HELLO_SENT = "hello-sent"
    HELLO_RECEIVED = "hello-received"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class Refused:
    """A connection error: the multiplexer must raise `RemoteProtocolError(code)`."""

    code: ErrorCode


PROTOCOL_ERROR = Refused(ErrorCode.PROTOCOL_ERROR)
FLOW_CONTROL_ERROR = Refused(ErrorCode.FLOW_CONTROL_ERROR)

Verdict = Refused | list[ev.Event]


@dataclass
class StreamView:
    local: HalfState  # the multiplexer's sending half
    remote: HalfState  # the peer's sending half
    receive_allowed: int  # DATA the peer may still send on the stream
    send_credit: int  # DATA the multiplexer may still send on the stream


@dataclass
class MuxView:
    """One multiplexer as its peer can know it: from the frames both sent.

    Args:
        role: the multiplexer's role.
        window: the stream window it announces (HELLO or ACCEPT).
        connection_window: the connection window it announces.
        max_streams: for an agent, the streams it accepts at once.
    """

    role: Role
    window: int
    connection_window: int
    max_streams: int
    phase: Phase = Phase.START
    peer_window: int = 0
    receive_allowed: int = 0  # connection DATA the peer may still send
    send_credit: int = 0  # connection DATA the multiplexer may still send
    streams: dict[int, StreamView] = field(default_factory=dict)
    highest: int = 0  # the highest stream ID used (opened by the server)
    goaway_sent: int | None = None
    goaway_received: int | None = None
    refused: Refused | None = None
    rejected: bool = False  # it answered a HELLO with no version of ours with REJECT
    refusing: list[int] = field(default_factory=list)  # request HEADs it must refuse

    def __post_init__(self) -> None:
        self.phase = Phase.AWAIT_HELLO if self.role is Role.SERVER else Phase.START
        self.receive_allowed = self.connection_window

    # -- frames the multiplexer sent -------------------------------------------------

    def sent(self, frame: fr.Frame) -> None:
        """Follow a frame the multiplexer produced; assert it was its to send."""
        match frame:
            case fr.Hello():
                assert self.role is Role.AGENT
                assert self.phase is Phase.START
                assert (frame.window, frame.connection_window) == (
                    self.window,
                    self.connection_window,
                )
                self.phase = Phase.HELLO_SENT
            case fr.Accept():
                assert self.role is Role.SERVER
                assert self.phase is Phase.HELLO_RECEIVED
                assert (frame.window, frame.connection_window) == (
                    self.window,
                    self.connection_window,
                )
                self.phase = Phase.OPEN
            case fr.Reject():
                assert self.role is Role.SERVER
                self.phase = Phase.CLOSED
            case fr.Head() if self.role is Role.SERVER:
                assert frame.stream_id == self.highest + 1, "server IDs go up by one"
                assert self.goaway_sent is None
                assert self.goaway_received is None
                self.highest = frame.stream_id
                self.streams[frame.stream_id] = StreamView(
                    HalfState.OPEN, HalfState.IDLE, self.window, self.peer_window
                )
            case fr.Head():
                stream = self.streams[frame.stream_id]
                assert stream.local is HalfState.IDLE, "a head after the final one"
                if not frame.is_informational:
                    stream.local = HalfState.OPEN
            case fr.Data():
                stream = self.streams[frame.stream_id]
                size = len(frame.data)
                assert stream.local is HalfState.OPEN
                assert size <= stream.send_credit, "DATA beyond the stream credit"
                assert size <= self.send_credit, "DATA beyond the connection credit"
                stream.send_credit -= size
                self.send_credit -= size
            case fr.End():
                stream = self.streams[frame.stream_id]
                assert stream.local is HalfState.OPEN
                stream.local = HalfState.CLOSED
                self._settle(frame.stream_id)
            case fr.Reset() if frame.stream_id in self.refusing:
                # A request HEAD the agent refused was never a stream there.
                assert frame.code is ErrorCode.REFUSED_STREAM
                self.refusing.remove(frame.stream_id)
            case fr.Reset():
                del self.streams[frame.stream_id]
            case fr.Window() if frame.stream_id == fr.CONNECTION_STREAM:
                self.receive_allowed += frame.increment
                assert self.receive_allowed <= self.connection_window, "credit not consumed"
            case fr.Window():
                stream = self.streams[frame.stream_id]
                assert stream.remote is HalfState.OPEN, "stream credit for an ended half"
                stream.receive_allowed += frame.increment
                assert stream.receive_allowed <= self.window, "credit not consumed"
            case fr.GoAway():
                if self.goaway_sent is None:
                    self.goaway_sent = frame.last_stream_id
                assert frame.last_stream_id == self.goaway_sent
            case fr.Ping() | fr.Pong():
                pass

    # -- frames the peer sent --------------------------------------------------------

    def received(self, frame: fr.Frame) -> Verdict:
        """What the multiplexer must do with ``frame`` from its peer, and follow it.

        After a refusal every later frame is refused the same way (the multiplexer is
        poisoned).
        """
        if self.refused is not None:
            return self.refused
        try:
            return self._receive(frame)
        except _Refusal as refusal:
            self.refused = refusal.verdict
            self.phase = Phase.CLOSED
            return refusal.verdict

    def _receive(self, frame: fr.Frame) -> list[ev.Event]:
        match frame:
            case fr.Ping():
                return [ev.PingReceived(payload=frame.payload)]
            case fr.Pong():
                return [ev.PongReceived(payload=frame.payload)]
            case fr.Hello():
                return self._hello(frame)
            case fr.Accept():
                if self.role is not Role.AGENT or self.phase is not Phase.HELLO_SENT:
                    raise _Refusal(PROTOCOL_ERROR)
                if frame.version != PROTOCOL_VERSION:
                    raise _Refusal(PROTOCOL_ERROR)
                self.phase = Phase.OPEN
                self.peer_window = frame.window
                self.send_credit = frame.connection_window
                return [ev.Accepted(refused=frame.refused)]
            case fr.Reject():
                if self.role is not Role.AGENT or self.phase is not Phase.HELLO_SENT:
                    raise _Refusal(PROTOCOL_ERROR)
                self.phase = Phase.CLOSED
                return [ev.Rejected(reason=frame.reason)]
        # Every other frame needs an open connection.
        if self.phase is not Phase.OPEN:
            raise _Refusal(PROTOCOL_ERROR)
        match frame:
            case fr.Head() if self.role is Role.AGENT:
                return self._request_head(frame)
            case fr.Head():
                return self._response_head(frame)
            case fr.Data():
                return self._data(frame)
            case fr.End():
                stream = self._stream(frame.stream_id)
                if stream is None:
                    return []
                if stream.remote is not HalfState.OPEN:
                    raise _Refusal(PROTOCOL_ERROR)
                stream.remote = HalfState.CLOSED
                self._settle(frame.stream_id)
                return [ev.StreamEnded(stream_id=frame.stream_id)]
            case fr.Window() if frame.stream_id == fr.CONNECTION_STREAM:
                self.send_credit += frame.increment
                if self.send_credit > MAX_WINDOW:
                    raise _Refusal(FLOW_CONTROL_ERROR)
                return [ev.CreditGranted(stream_id=frame.stream_id, increment=frame.increment)]
            case fr.Window():
                stream = self._stream(frame.stream_id)
                if stream is None:
                    return []
                stream.send_credit += frame.increment
                if stream.send_credit > MAX_WINDOW:
                    raise _Refusal(FLOW_CONTROL_ERROR)
                return [ev.CreditGranted(stream_id=frame.stream_id, increment=frame.increment)]
            case fr.Reset():
                if self._stream(frame.stream_id) is None:
                    return []
                del self.streams[frame.stream_id]
                return [
                    ev.StreamReset(stream_id=frame.stream_id, code=frame.code, reason=frame.reason)
                ]
            case fr.GoAway():
                return self._goaway(frame)
        raise AssertionError(f"unexpected frame {frame!r}")  # pragma: no cover

    def _hello(self, frame: fr.Hello) -> list[ev.Event]:
        if self.role is not Role.SERVER or self.phase is not Phase.AWAIT_HELLO:
            raise _Refusal(PROTOCOL_ERROR)
        self.phase = Phase.HELLO_RECEIVED
        if PROTOCOL_VERSION not in frame.versions:
            self.rejected = True
            raise _Refusal(PROTOCOL_ERROR)  # after queueing a REJECT
        self.peer_window = frame.window
        self.send_credit = frame.connection_window
        return [ev.HelloReceived(client_id=frame.client_id, routes=frame.routes)]

    def _request_head(self, frame: fr.Head) -> list[ev.Event]:
        # Only the server opens streams, each with an ID above every one used before.
        if frame.stream_id <= self.highest or frame.is_informational:
            raise _Refusal(PROTOCOL_ERROR)
        self.highest = frame.stream_id
        head = _parse(lambda: RequestHead.from_fields(frame.fields))
        if self.goaway_sent is not None or len(self.streams) >= self.max_streams:
            self.refusing.append(frame.stream_id)  # RESET REFUSED_STREAM follows
            return []
        self.streams[frame.stream_id] = StreamView(
            HalfState.IDLE, HalfState.OPEN, self.window, self.peer_window
        )
        return [ev.StreamOpened(stream_id=frame.stream_id, head=head)]

    def _response_head(self, frame: fr.Head) -> list[ev.Event]:
        stream = self._stream(frame.stream_id)
        if stream is None:
            return []
        head = _parse(
            lambda: ResponseHead.from_fields(frame.fields, is_informational=frame.is_informational)
        )
        if stream.remote is not HalfState.IDLE:
            raise _Refusal(PROTOCOL_ERROR)
        if not frame.is_informational:
            stream.remote = HalfState.OPEN
        return [ev.ResponseReceived(stream_id=frame.stream_id, head=head)]

    def _data(self, frame: fr.Data) -> list[ev.Event]:
        stream = self._stream(frame.stream_id)
        size = len(frame.data)
        # Every DATA frame spends connection credit, also on a stream that is gone.
        self.receive_allowed -= size
        if self.receive_allowed < 0:
            raise _Refusal(FLOW_CONTROL_ERROR)
        if stream is None:
            return []
        if stream.remote is not HalfState.OPEN:
            raise _Refusal(PROTOCOL_ERROR)
        stream.receive_allowed -= size
        if stream.receive_allowed < 0:
            raise _Refusal(FLOW_CONTROL_ERROR)
        return [ev.DataReceived(stream_id=frame.stream_id, data=frame.data)]

    def _goaway(self, frame: fr.GoAway) -> list[ev.Event]:
        last = frame.last_stream_id
        if self.goaway_received is not None and last > self.goaway_received:
            raise _Refusal(PROTOCOL_ERROR)
        self.goaway_received = last
        events: list[ev.Event] = [
            ev.GoAwayReceived(last_stream_id=last, code=frame.code, reason=frame.reason)
        ]
        if self.role is Role.SERVER:
            for stream_id in [s for s in self.streams if s > last]:
                del self.streams[stream_id]
                events.append(
                    ev.StreamReset(
                        stream_id=StreamId(stream_id),
                        code=ErrorCode.REFUSED_STREAM,
                        reason="agent is going away",
                    )
                )
        return events

    def _stream(self, stream_id: int) -> StreamView | None:
        """The stream, None if it is gone; an ID never used is a connection error."""
        stream = self.streams.get(stream_id)
        if stream is None and stream_id > self.highest:
            raise _Refusal(PROTOCOL_ERROR)
        return stream

    def _settle(self, stream_id: int) -> None:
        stream = self.streams[stream_id]
        if stream.local is HalfState.CLOSED and stream.remote is HalfState.CLOSED:
            del self.streams[stream_id]


class _Refusal(Exception):
    def __init__(self, verdict: Refused) -> None:
        super().__init__(verdict.code.name)
        self.verdict = verdict


def _parse(parse: Callable[[], _T]) -> _T:
    try:
        return parse()
    except RemoteProtocolError as exc:
        raise _Refusal(Refused(exc.code)) from None


# -- frames aimed at the rules ------------------------------------------------------------


def _sizes(*limits: int) -> st.SearchStrategy[int]:
    """DATA sizes at and one past each limit, and a few others, within a frame."""
    picks = {n for limit in limits for n in (limit, limit + 1) if 1 <= n <= MAX_FRAME_PAYLOAD}
    at_limits = st.sampled_from(sorted(picks or {1}))
    return st.one_of(at_limits, at_limits, st.integers(1, 300))


def _increments(credit: int) -> st.SearchStrategy[int]:
    """WINDOW increments at and one past the 2^31-1 cap, and small ones."""
    top = MAX_WINDOW - max(credit, 0)
    picks = {n for n in (top, top + 1) if 1 <= n <= MAX_WINDOW}
    return st.one_of(st.sampled_from(sorted(picks or {MAX_WINDOW})), st.integers(1, 1000))


_REQUEST = RequestHead(route="app", method=b"GET", target=b"/hostile")


@st.composite
def _head_fields(draw: st.DrawFn, role: Role) -> tuple[tuple[bytes, ...], bool]:
    """A head's fields and INFORMATIONAL flag, for a frame sent to ``role``: mostly
    valid, sometimes with a flag or status that contradicts the rules."""
    if role is Role.AGENT:
        fields = tuple(_REQUEST.to_fields())
        if draw(st.integers(0, 5)) == 0:
            fields = (b"app", b"", b"/")  # an empty method
        return fields, draw(st.integers(0, 5)) == 0
    status = draw(st.sampled_from([100, 103, 101, 200, 404, 599]))
    fields = tuple(ResponseHead(status=status, reason=b"R").to_fields())
    informational = 100 <= status < 200 and status != 101
    if draw(st.integers(0, 5)) == 0:
        informational = not informational
    if draw(st.integers(0, 7)) == 0:
        fields = (b"2x0", b"R")
    return fields, informational


def hostile_frames(view: MuxView, *, steady: bool = False) -> st.SearchStrategy[fr.Frame]:
    """Frames a peer could send ``view``'s multiplexer now, aimed at its rules.

    Two in three move the connection on or sit at a limit; with ``steady``, six in
    seven, so that a run against one multiplexer lasts long enough to reach deep
    states before the first refusal ends it.
    """
    live = sorted(view.streams)
    ids: list[st.SearchStrategy[int]] = []
    if view.highest < MAX_STREAM_ID:  # never opened
        ids += [st.just(view.highest + 1), st.integers(view.highest + 1, MAX_STREAM_ID)]
    if live:
        ids.append(st.sampled_from(live))
    if view.highest > len(live):  # gone
        ids.append(st.integers(1, view.highest).filter(lambda s: s not in view.streams))
    any_id = st.one_of(ids).map(StreamId)

    def data_on(stream_id: int) -> st.SearchStrategy[fr.Frame]:
        stream = view.streams.get(stream_id)
        limits = [view.receive_allowed]
        if stream is not None:
            limits.append(stream.receive_allowed)
        return _sizes(*limits).map(
            lambda n: fr.Data(stream_id=StreamId(stream_id), data=b"\xaa" * n)
        )

    def window_on(stream_id: int) -> st.SearchStrategy[fr.Frame]:
        stream = view.streams.get(stream_id)
        credit = view.send_credit if stream_id == 0 else stream.send_credit if stream else 0
        return _increments(credit).map(
            lambda n: fr.Window(stream_id=StreamId(stream_id), increment=n)
        )

    def head_on(stream_id: int) -> st.SearchStrategy[fr.Frame]:
        return _head_fields(view.role).map(
            lambda pair: fr.Head(
                stream_id=StreamId(stream_id), fields=pair[0], is_informational=pair[1]
            )
        )

    last_ids = st.integers(0, MAX_STREAM_ID)
    if view.goaway_received is not None:
        last_ids = st.one_of(
            st.sampled_from(sorted({max(view.goaway_received - 1, 0), view.goaway_received})),
            st.just(view.goaway_received + 1).filter(lambda s: s <= MAX_STREAM_ID),
        )
    elif view.highest:
        last_ids = st.one_of(st.integers(0, view.highest + 1), last_ids)
    # Frames that move a stream on (a request HEAD on a new ID for the agent, a
    # response head on a half that waits for one for the server) and DATA on halves
    # that take it, at the limits of each window: the rules that matter most are only
    # reached through them, so they come as often as all the others together.
    on_track: list[st.SearchStrategy[fr.Frame]] = []
    receiving = [s for s, stream in view.streams.items() if stream.remote is HalfState.OPEN]
    if receiving:  # the flow-control checks, the rules that matter most
        on_track += [st.sampled_from(receiving).flatmap(data_on)] * 3
    waiting = [s for s, stream in view.streams.items() if stream.remote is HalfState.IDLE]
    if view.role is Role.AGENT and view.highest < MAX_STREAM_ID:
        request = fr.Head(stream_id=StreamId(view.highest + 1), fields=tuple(_REQUEST.to_fields()))
        on_track += [st.just(request)] * 2
    elif view.role is Role.SERVER and waiting:
        response = st.tuples(st.sampled_from(waiting), st.sampled_from([200, 100, 200, 404]))
        on_track += [
            response.map(
                lambda pair: fr.Head(
                    stream_id=StreamId(pair[0]),
                    fields=tuple(ResponseHead(status=pair[1]).to_fields()),
                    is_informational=pair[1] == 100,
                )
            )
        ] * 2
    anything = st.one_of(
        any_id.flatmap(data_on),
        st.one_of(st.just(StreamId(0)), any_id).flatmap(window_on),
        any_id.flatmap(head_on),
        any_id.map(lambda s: fr.End(stream_id=s)),
        any_id.map(lambda s: fr.Reset(stream_id=s, code=ErrorCode.CANCEL, reason="hostile")),
        last_ids.map(
            lambda last: fr.GoAway(
                last_stream_id=StreamId(last), code=ErrorCode.NO_ERROR, reason="hostile"
            )
        ),
        st.sampled_from(
            [
                fr.Hello(
                    versions=(PROTOCOL_VERSION,),
                    client_id="again",
                    routes=(),
                    window=1,
                    connection_window=1,
                ),
                fr.Accept(version=PROTOCOL_VERSION, refused=(), window=1, connection_window=1),
                fr.Reject(reason="late"),
                fr.Ping(payload=b"hostile!"),
                fr.Pong(payload=b"hostile!"),
            ]
        ),
    )
    # Frames within the rules, which keep a run going into deeper states.
    on_track.append(
        st.sampled_from([0, *live]).map(lambda s: fr.Window(stream_id=StreamId(s), increment=7))
    )
    if receiving:
        on_track.append(st.sampled_from(receiving).map(lambda s: fr.End(stream_id=StreamId(s))))
    on_track.append(st.just(fr.Ping(payload=b"keepgoin")))
    return st.one_of([st.one_of(on_track)] * (6 if steady else 2) + [anything])


class Tap:
    """A decoder that sees every byte the multiplexer under test is fed, and cuts
    what comes next after each frame it completes."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self._carry = b""  # bytes of a frame begun and not complete

    def cut(self, data: bytes) -> list[bytes]:
        """``data`` in pieces that each end where a frame ends (by its length field;
        the rest in the last piece)."""
        buffer = self._carry + data
        start, pieces, position = -len(self._carry), [], 0
        while len(buffer) - position >= 10:
            end = position + 10 + int.from_bytes(buffer[position + 6 : position + 10])
            if end > len(buffer):
                break
            pieces.append(data[max(start, 0) : end - len(self._carry)])
            start, position = end - len(self._carry), end
        self._carry = buffer[position:]
        if max(start, 0) < len(data) or not pieces:
            pieces.append(data[max(start, 0) :])
        return pieces


def judge(mux: Multiplexer, view: MuxView, tap: Tap, data: bytes) -> list[ev.Event] | None:
    """Feed ``data`` to ``mux`` and check the outcome against ``view``'s verdicts.

    The bytes go in one frame at a time (`Tap.cut`), and what the multiplexer sends
    in answer goes to the view before the next frame is judged: DATA for a stream
    that is gone returns its connection credit at once, which the next frame may
    spend. Each frame must give the events the view predicts, or the first refusal
    the `RemoteProtocolError` with its code (a codec error included); a refused
    multiplexer is closed and poisoned (the next bytes raise the same error).
    Returns the events, or None after a refusal.
    """
    events: list[ev.Event] = []
    for piece in tap.cut(data):
        expected: Verdict = []
        try:
            frames = tap.decoder.feed(piece)
        except RemoteProtocolError as exc:  # the codec refuses: the multiplexer must too
            frames, expected = [], Refused(exc.code)
            view.refused = expected
        else:
            for frame in frames:
                verdict = view.received(frame)
                if isinstance(verdict, Refused):
                    expected = verdict
                    break
                assert isinstance(expected, list)
                expected += verdict
        if isinstance(expected, Refused):
            with pytest.raises(RemoteProtocolError) as refused:
                mux.receive_data(piece)
            assert refused.value.code is expected.code, f"{frames!r}: {refused.value}"
            assert mux.state is ConnectionState.CLOSED
            with pytest.raises(RemoteProtocolError) as again:
                mux.receive_data(fr.encode(fr.Ping(payload=bytes(8))))
            assert again.value is refused.value
            # What it queued before failing is whole, valid frames: a REJECT for an
            # agent that speaks no version of ours.
            queued = FrameDecoder().feed(mux.data_to_send())
            assert any(isinstance(f, fr.Reject) for f in queued) is view.rejected
            return None
        assert mux.receive_data(piece) == expected, f"{frames!r}: expected {expected}"
        events += expected
        for frame in FrameDecoder().feed(mux.data_to_send()):
            view.sent(frame)
    return events


def check_queries(mux: Multiplexer, view: MuxView) -> None:
    """What the multiplexer says of its state is what the model knows from the wire."""
    assert mux.state.value == view.phase.value
    assert mux.stream_count == len(view.streams)
    assert not view.refusing, "a refused request HEAD got no RESET REFUSED_STREAM"
    if view.phase is not Phase.CLOSED:  # no credit before the handshake
        assert mux.connection_credit == view.send_credit
    leaving = view.goaway_sent is not None or view.goaway_received is not None
    assert mux.is_going_away is leaving
    assert mux.can_open_stream is (
        view.role is Role.SERVER
        and view.phase is Phase.OPEN
        and not leaving
        and view.highest < MAX_STREAM_ID
    )
    for stream_id in {*view.streams, 1, view.highest, view.highest + 1} - {0}:
        stream = view.streams.get(stream_id)
        credit = 0
        if stream is not None and stream.local is HalfState.OPEN:
            credit = min(stream.send_credit, view.send_credit)
        assert mux.send_credit(StreamId(stream_id)) == credit
        assert mux.is_stream_open(StreamId(stream_id)) is (stream is not None)
