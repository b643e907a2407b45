"""The stream multiplexer: one per agent connection, on each end (protocol.md sections 5-7).

Two state machines live here, both as tables from ``(state, input)`` to the next
state; a pair missing from a table is a protocol error.

* The connection (section 5): the agent sends HELLO, the server answers ACCEPT
  or REJECT; streams exist only once the connection is OPEN.
* Each stream is two independent halves, one per direction (section 6). A half
  goes IDLE -HEAD-> OPEN -END-> CLOSED, stays IDLE on an informational HEAD
  (1xx before the final response) and carries DATA only while OPEN. RESET drops
  both halves at once. A stream is forgotten as soon as both halves are CLOSED.

Only the server opens streams, with strictly increasing IDs, so a frame for an
unknown ID at or below the highest ever used belongs to a stream that is gone
(late data after a reset, a late WINDOW) and is ignored without keeping state.

Flow control (section 7) works at two levels, as in HTTP/2. Each side grants
every stream an initial window (its HELLO/ACCEPT ``window``) and the connection
as a whole another (``connection_window``); DATA spends both of the sender's
credits, WINDOW on a stream returns stream credit and WINDOW on stream 0
connection credit. Credit is returned only when the application says it consumed
the bytes, so what the application holds can never exceed a stream's window on
that stream, nor the connection window over all streams, whoever is slow. Bytes
nobody will consume count as consumed at once: DATA for a stream that is gone,
and what a reset stream held. A stream forgotten after both halves closed keeps
a residual (the bytes the application still holds) until they are acknowledged.

Pure: no trio, no sockets, no clock. Feed bytes with `receive_data`, drain bytes
with `data_to_send`; commands raise `LocalProtocolError` when they break the
protocol, and `receive_data` raises `RemoteProtocolError` when the peer did, after
which the multiplexer is poisoned and the connection must be closed.
"""

from __future__ import annotations

import enum
from typing import Final, assert_never

from pvtunnel._errors import (
    ErrorCode,
    LocalProtocolError,
    PvTunnelError,
    RemoteProtocolError,
)
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import HEADER, MAX_FRAME_PAYLOAD, FrameType, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead

DEFAULT_WINDOW: Final = 2 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW: Final = 16 * 1024 * 1024
DEFAULT_MAX_STREAMS: Final = 4096


class _StateEnum(enum.Enum):
    """Members hash by identity, in C: Enum's own ``__hash__`` is Python code, and
    the state tables below look members up for every frame sent or received."""

    __hash__ = object.__hash__


class Role(_StateEnum):
    SERVER = "server"
    AGENT = "agent"


class StreamClosedError(PvTunnelError):
    """The stream is gone (reset, or finished): a race, not a protocol violation."""


class ConnectionState(_StateEnum):
    START = "start"  # agent before its HELLO
    AWAIT_HELLO = "await-hello"  # server before the agent's HELLO
    HELLO_SENT = "hello-sent"
    HELLO_RECEIVED = "hello-received"
    OPEN = "open"
    CLOSED = "closed"


class _Input(_StateEnum):
    SEND_HELLO = "send-hello"
    RECEIVE_HELLO = "receive-hello"
    SEND_ACCEPT = "send-accept"
    RECEIVE_ACCEPT = "receive-accept"
    SEND_REJECT = "send-reject"
    RECEIVE_REJECT = "receive-reject"


_CONNECTION_TRANSITIONS: Final = {
    (ConnectionState.START, _Input.SEND_HELLO): ConnectionState.HELLO_SENT,
    (ConnectionState.AWAIT_HELLO, _Input.RECEIVE_HELLO): ConnectionState.HELLO_RECEIVED,
    (ConnectionState.HELLO_RECEIVED, _Input.SEND_ACCEPT): ConnectionState.OPEN,
    (ConnectionState.HELLO_RECEIVED, _Input.SEND_REJECT): ConnectionState.CLOSED,
    (ConnectionState.HELLO_SENT, _Input.RECEIVE_ACCEPT): ConnectionState.OPEN,
    (ConnectionState.HELLO_SENT, _Input.RECEIVE_REJECT): ConnectionState.CLOSED,
}


class Half(_StateEnum):
    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


class Move(_StateEnum):
    HEAD = "head"
    INFORMATIONAL_HEAD = "informational-head"
    DATA = "data"
    END = "end"


HALF_TRANSITIONS: Final = {
    (Half.IDLE, Move.HEAD): Half.OPEN,
    (Half.IDLE, Move.INFORMATIONAL_HEAD): Half.IDLE,
    (Half.OPEN, Move.DATA): Half.OPEN,
    (Half.OPEN, Move.END): Half.CLOSED,
}

_HEAD: Final = FrameType.HEAD
_DATA: Final = FrameType.DATA
_END: Final = FrameType.END
_WINDOW: Final = FrameType.WINDOW
_CONNECTION: Final = fr.CONNECTION_STREAM
_pack_header = HEADER.pack


class _Stream:
    """Per-stream bookkeeping; private and mutable, never handed out.

    ``held`` is DATA received and not yet acknowledged; ``unreturned`` is DATA
    acknowledged and not yet returned in a WINDOW.
    """

    __slots__ = ("held", "local", "receive_allowed", "remote", "send_credit", "unreturned")

    def __init__(self, local: Half, remote: Half, send_credit: int, receive_allowed: int) -> None:
        self.local = local
        self.remote = remote
        self.send_credit = send_credit
        self.receive_allowed = receive_allowed
        self.held = 0
        self.unreturned = 0


class Multiplexer:
    """One end of an agent connection: handshake, streams and their credit.

    Args:
        role: which end this is; the server opens streams, the agent answers them.
        window: the initial credit this end grants the peer on every stream, in bytes.
        connection_window: the credit this end grants the peer over all streams
            together, in bytes: the most body bytes it will ever hold unconsumed.
        max_streams: streams the agent accepts at once; beyond it new ones are refused
            with RESET REFUSED_STREAM (the server enforces its own limit before opening).
    """

    def __init__(
        self,
        role: Role,
        *,
        window: int = DEFAULT_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_streams: int = DEFAULT_MAX_STREAMS,
    ) -> None:
        if not 1 <= window <= fr.MAX_WINDOW:
            raise ValueError("window out of range")
        if not 1 <= connection_window <= fr.MAX_WINDOW:
            raise ValueError("connection window out of range")
        self.role = role
        self.state = ConnectionState.AWAIT_HELLO if role is Role.SERVER else ConnectionState.START
        self._window = window
        self._ack_threshold = max(1, window // 4)
        self._peer_window = 0
        # Connection level, sending: credit the peer granted over all streams.
        self._connection_credit = 0
        # Connection level, receiving: what the peer may still send, what the
        # application holds, and what it consumed that no WINDOW returned yet.
        self._connection_window = connection_window
        self._connection_ack_threshold = max(1, connection_window // 4)
        self._connection_receive_allowed = connection_window
        self._held = 0
        self._peak_held = 0
        self._connection_unreturned = 0
        # Streams forgotten (both halves closed) whose bytes the application still
        # holds: stream ID -> bytes not yet acknowledged. Never above the window.
        self._residual: dict[int, int] = {}
        self._max_streams = max_streams
        self._decoder = fr.FrameDecoder()
        self._out: list[bytes] = []
        self._streams: dict[int, _Stream] = {}
        self._highest_stream_id = 0
        self._goaway_sent_at: int | None = None
        self._goaway_received_at: int | None = None
        self._error: RemoteProtocolError | None = None

    # -- queries -----------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    @property
    def queued_pieces(self) -> int:
        """How much is queued, in frames (a DATA frame counts twice): a cheap batch size."""
        return len(self._out)

    @property
    def is_going_away(self) -> bool:
        """Either side said GOAWAY: no new streams on this connection."""
        return self._goaway_sent_at is not None or self._goaway_received_at is not None

    @property
    def can_open_stream(self) -> bool:
        return (
            self.role is Role.SERVER
            and self.state is ConnectionState.OPEN
            and not self.is_going_away
            and self._highest_stream_id < fr.MAX_STREAM_ID
        )

    def send_credit(self, stream_id: StreamId) -> int:
        """Bytes `send_data` may send now on the stream (0 if it is gone or ended).

        The smaller of the stream's credit and the connection's: a `CreditGranted`
        for the stream, or for stream 0 (the connection), may raise it.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.local is not Half.OPEN:
            return 0
        return min(stream.send_credit, self._connection_credit)

    @property
    def connection_credit(self) -> int:
        """Bytes `send_data` may send now over all streams together."""
        return self._connection_credit

    @property
    def held_bytes(self) -> int:
        """DATA bytes received and not yet acknowledged, over all streams (live or
        gone): what the application holds. Never above ``connection_window``."""
        return self._held

    @property
    def peak_held_bytes(self) -> int:
        """The most `held_bytes` has ever been on this connection."""
        return self._peak_held

    def is_stream_open(self, stream_id: StreamId) -> bool:
        return stream_id in self._streams

    # -- connection commands -------------------------------------------------------

    def send_hello(self, *, client_id: str, routes: tuple[str, ...]) -> None:
        """Agent: introduce this agent and the names it serves."""
        self._move_connection(_Input.SEND_HELLO, local=True)
        self._queue(
            fr.encode(
                fr.Hello(
                    versions=(fr.PROTOCOL_VERSION,),
                    client_id=client_id,
                    routes=routes,
                    window=self._window,
                    connection_window=self._connection_window,
                )
            )
        )

    def accept(self, *, refused: tuple[tuple[str, str], ...] = ()) -> None:
        """Server: take the agent; ``refused`` pairs route names with reasons."""
        self._move_connection(_Input.SEND_ACCEPT, local=True)
        self._queue(
            fr.encode(
                fr.Accept(
                    version=fr.PROTOCOL_VERSION,
                    refused=refused,
                    window=self._window,
                    connection_window=self._connection_window,
                )
            )
        )

    def reject(self, reason: str) -> None:
        """Server: refuse the agent for good; close the connection after sending."""
        self._move_connection(_Input.SEND_REJECT, local=True)
        self._queue(fr.encode(fr.Reject(reason=reason)))

    def ping(self, payload: bytes) -> None:
        """Queue a PING with 8 opaque bytes; the peer echoes them in a PONG."""
        self._queue(fr.encode(fr.Ping(payload=payload)))

    def goaway(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Announce that no new streams will be opened or accepted; open ones finish.

        A no-op once the connection is CLOSED (rejected, or failed): there is nobody
        left to tell, and a drain may race with the failure.

        Raises:
            LocalProtocolError: the handshake is not done (the peer would reject it).
        """
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"GOAWAY while the connection is {self.state.value}")
        if self._goaway_sent_at is None:
            self._goaway_sent_at = self._highest_stream_id
        # A repeated GOAWAY repeats the first last-stream-ID: the agent's highest ID
        # still grows as it refuses late HEADs, and the peer rejects a raised one.
        self._queue(
            fr.encode(
                fr.GoAway(last_stream_id=StreamId(self._goaway_sent_at), code=code, reason=reason)
            )
        )

    # -- stream commands -----------------------------------------------------------

    def open_stream(self, head: RequestHead, *, end_stream: bool = False) -> StreamId:
        """Server: send a request head on a new stream and return its ID.

        Raises:
            LocalProtocolError: not the server, not open, going away, or out of IDs;
                or a head the agent would refuse (empty method or target, a route
                that is not ASCII, more than one frame). Nothing changes then.
        """
        if not self.can_open_stream:
            raise LocalProtocolError("cannot open a stream on this connection now")
        if not head.method or not head.target or not head.route.isascii():
            raise LocalProtocolError(
                "request head with an empty method or target, or a route that is not ASCII"
            )
        payload = _head_payload(head.to_fields())
        self._highest_stream_id += 1
        stream_id = StreamId(self._highest_stream_id)
        stream = _Stream(Half.OPEN, Half.IDLE, self._peer_window, self._window)
        self._streams[stream_id] = stream
        self._out.append(_pack_header(_HEAD, 0, stream_id, len(payload)) + payload)
        if end_stream:
            self.end_stream(stream_id)
        return stream_id

    def send_response(self, stream_id: StreamId, head: ResponseHead) -> None:
        """Agent: send a response head (a 1xx one keeps the half IDLE).

        Raises:
            StreamClosedError: the stream was reset or is gone.
            LocalProtocolError: not the agent, a final head already sent, a status
                outside 100-599 or a head over one frame (the server would close
                the whole connection for it). Nothing changes then.
        """
        if self.role is not Role.AGENT:
            raise LocalProtocolError("only the agent sends response heads")
        stream = self._stream_for_sending(stream_id)
        if not 100 <= head.status <= 599:
            raise LocalProtocolError(f"response status {head.status} is not 100-599")
        payload = _head_payload(head.to_fields())
        informational = head.is_informational
        self._move_half(stream, "local", Move.INFORMATIONAL_HEAD if informational else Move.HEAD)
        self._out.append(
            _pack_header(_HEAD, 1 if informational else 0, stream_id, len(payload)) + payload
        )

    def send_data(self, stream_id: StreamId, data: bytes) -> None:
        """Queue body bytes, split into frames of at most MAX_FRAME_PAYLOAD.

        Raises:
            StreamClosedError: the stream was reset or is gone.
            LocalProtocolError: more bytes than the peer's credit on the stream or on
                the connection (`send_credit`), or the half is not open.
        """
        stream = self._stream_for_sending(stream_id)
        size = len(data)
        if stream.local is not Half.OPEN:
            raise LocalProtocolError(f"DATA on a {stream.local.value} stream")
        if size > stream.send_credit:
            raise LocalProtocolError(f"{size} bytes exceed the credit of {stream.send_credit}")
        if size > self._connection_credit:
            raise LocalProtocolError(
                f"{size} bytes exceed the connection credit of {self._connection_credit}"
            )
        stream.send_credit -= size
        self._connection_credit -= size
        out = self._out
        if size <= MAX_FRAME_PAYLOAD:
            if size:
                out.append(_pack_header(_DATA, 0, stream_id, size))
                out.append(data)
            return
        view = memoryview(data)
        for start in range(0, size, MAX_FRAME_PAYLOAD):
            chunk = view[start : start + MAX_FRAME_PAYLOAD]
            out.append(_pack_header(_DATA, 0, stream_id, len(chunk)))
            out.append(bytes(chunk))

    def end_stream(self, stream_id: StreamId) -> None:
        """Close this side's half: no more DATA from us on the stream."""
        stream = self._stream_for_sending(stream_id)
        self._move_half(stream, "local", Move.END)
        self._out.append(_pack_header(_END, 0, stream_id, 0))
        if stream.remote is Half.CLOSED:
            self._forget(stream_id, stream)

    def reset_stream(self, stream_id: StreamId, code: ErrorCode, reason: str = "") -> None:
        """Abort the stream both ways; what it held goes back to the connection window.

        The bytes received on the stream and not yet acknowledged count as consumed:
        after a reset the application must not acknowledge them again. On a stream
        that is already gone this only releases what the application still held of
        it (nothing is sent).
        """
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            self._release(self._residual.pop(stream_id, 0))
            return
        self._queue(fr.encode(fr.Reset(stream_id=stream_id, code=code, reason=reason)))
        self._release(stream.held)

    def acknowledge_data(self, stream_id: StreamId, size: int) -> None:
        """Say ``size`` received bytes were consumed, so the peer may send more.

        Credit goes back in batches of a quarter window, at each level, which keeps
        WINDOW frames rare while a steady stream never stalls waiting for them. A
        stream whose peer ended its half gets no more stream credit, but its bytes
        still return connection credit, also once the stream is gone (both halves
        closed while the application was still draining it).

        Raises:
            LocalProtocolError: ``size`` is negative or more than was received on the
                stream and not yet acknowledged, or released by a reset (the extra
                credit would break the memory bound).
        """
        stream = self._streams.get(stream_id)
        held = self._residual.get(stream_id, 0) if stream is None else stream.held
        if not 0 <= size <= held:
            raise LocalProtocolError(
                f"stream {stream_id}: acknowledging {size} bytes, more than it holds ({held})"
            )
        if not size:
            return
        if stream is None:
            if size == held:
                del self._residual[stream_id]
            else:
                self._residual[stream_id] = held - size
        else:
            stream.held = held - size
            if stream.remote is Half.OPEN:
                unreturned = stream.unreturned + size
                if unreturned >= self._ack_threshold:
                    stream.unreturned = 0
                    stream.receive_allowed += unreturned
                    self._out.append(
                        _pack_header(_WINDOW, 0, stream_id, 4) + unreturned.to_bytes(4)
                    )
                else:
                    stream.unreturned = unreturned
        self._release(size)

    def acknowledge_all(self, stream_id: StreamId) -> None:
        """Acknowledge every byte the stream holds: the application drops its channel.

        The same as `acknowledge_data` with all that is outstanding (nothing once the
        stream was reset); later DATA on a live stream must still be acknowledged.
        """
        stream = self._streams.get(stream_id)
        self.acknowledge_data(
            stream_id, self._residual.get(stream_id, 0) if stream is None else stream.held
        )

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """Drain queued frames as bytes for one WebSocket message (b"" when idle).

        With ``max_bytes``, whole frames are taken until the next would pass it (at
        least one), so messages stay near the size the transport handles best.
        """
        out = self._out
        if max_bytes is None or sum(map(len, out)) <= max_bytes:
            self._out = []
            return b"".join(out)
        # ``out`` holds whole frames, except that a DATA header and its payload are two
        # adjacent pieces. Walking from a frame boundary, a 10-byte piece of type DATA
        # can only be such a header (DATA is never empty), never a payload.
        total = 0
        count = 0
        while count < len(out):
            size = len(out[count])
            pieces = 2 if size == fr.HEADER_SIZE and out[count][0] == _DATA else 1
            if pieces == 2:
                size += len(out[count + 1])
            if count and total + size > max_bytes:
                break
            total += size
            count += pieces
        taken = out[:count]
        del out[:count]
        return b"".join(taken)

    # -- receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ev.Event]:
        """Feed bytes from the peer and return what it did.

        Raises:
            RemoteProtocolError: the peer broke the protocol; its ``code`` is the
                reason to close with. The multiplexer is poisoned afterwards.
        """
        if self._error is not None:
            raise self._error
        try:
            frames = self._decoder.feed(data)
            result: list[ev.Event] = []
            for frame in frames:
                self._handle(frame, result)
        except RemoteProtocolError as exc:
            self._error = exc
            self.state = ConnectionState.CLOSED
            raise
        return result

    def _handle(self, frame: fr.Frame, out: list[ev.Event]) -> None:
        match frame:
            case fr.Data():
                self._on_data(frame, out)
            case fr.Head():
                self._on_head(frame, out)
            case fr.End():
                self._on_end(frame, out)
            case fr.Window():
                self._on_window(frame, out)
            case fr.Reset():
                self._on_reset(frame, out)
            case fr.Ping():
                self._queue(fr.encode(fr.Pong(payload=frame.payload)))
                out.append(ev.PingReceived(payload=frame.payload))
            case fr.Pong():
                out.append(ev.PongReceived(payload=frame.payload))
            case fr.GoAway():
                self._on_goaway(frame, out)
            case fr.Hello():
                self._on_hello(frame, out)
            case fr.Accept():
                self._require_role(Role.AGENT, "ACCEPT")
                self._move_connection(_Input.RECEIVE_ACCEPT, local=False)
                if frame.version != fr.PROTOCOL_VERSION:
                    raise RemoteProtocolError(
                        f"ACCEPT chose version {frame.version}, which this agent did not offer"
                    )
                self._peer_window = frame.window
                self._connection_credit = frame.connection_window
                out.append(ev.Accepted(refused=frame.refused))
            case fr.Reject():
                self._require_role(Role.AGENT, "REJECT")
                self._move_connection(_Input.RECEIVE_REJECT, local=False)
                out.append(ev.Rejected(reason=frame.reason))
            case _:  # pragma: no cover  (a new frame class fails the type check here)
                assert_never(frame)

    def _on_hello(self, frame: fr.Hello, out: list[ev.Event]) -> None:
        self._require_role(Role.SERVER, "HELLO")
        self._move_connection(_Input.RECEIVE_HELLO, local=False)
        if fr.PROTOCOL_VERSION not in frame.versions:
            self.reject(
                f"unsupported protocol versions {list(frame.versions)}; "
                f"this server speaks {fr.PROTOCOL_VERSION}"
            )
            raise RemoteProtocolError("agent speaks no protocol version we know")
        self._peer_window = frame.window
        self._connection_credit = frame.connection_window
        out.append(ev.HelloReceived(client_id=frame.client_id, routes=frame.routes))

    def _on_data(self, frame: fr.Data, out: list[ev.Event]) -> None:
        stream = self._stream_for_receiving(frame.stream_id)
        size = len(frame.data)
        # Every DATA frame counts against the connection window, even for a stream
        # that is gone: the sender spent connection credit on it.
        self._connection_receive_allowed -= size
        if self._connection_receive_allowed < 0:
            raise RemoteProtocolError(
                "DATA beyond the granted connection window", ErrorCode.FLOW_CONTROL_ERROR
            )
        if stream is None:
            # Nobody will consume it: its credit goes back as if it were consumed now.
            self._return_credit(size)
            return
        self._move_half(stream, "remote", Move.DATA)
        stream.receive_allowed -= size
        if stream.receive_allowed < 0:
            raise RemoteProtocolError(
                f"stream {frame.stream_id}: DATA beyond the granted window",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        stream.held += size
        held = self._held + size
        self._held = held
        if held > self._peak_held:
            self._peak_held = held
        out.append(ev.DataReceived(stream_id=frame.stream_id, data=frame.data))

    def _on_head(self, frame: fr.Head, out: list[ev.Event]) -> None:
        stream_id = frame.stream_id
        if self.role is Role.SERVER:
            stream = self._stream_for_receiving(stream_id)
            if stream is None:
                return
            head = ResponseHead.from_fields(frame.fields, is_informational=frame.is_informational)
            self._move_half(
                stream, "remote", Move.INFORMATIONAL_HEAD if frame.is_informational else Move.HEAD
            )
            out.append(ev.ResponseReceived(stream_id=stream_id, head=head))
            return
        self._require_open()
        if stream_id <= self._highest_stream_id or frame.is_informational:
            raise RemoteProtocolError(f"request HEAD reuses stream {stream_id} or is 1xx")
        self._highest_stream_id = stream_id
        request = RequestHead.from_fields(frame.fields)
        if self._goaway_sent_at is not None or len(self._streams) >= self._max_streams:
            self._queue(
                fr.encode(
                    fr.Reset(
                        stream_id=stream_id,
                        code=ErrorCode.REFUSED_STREAM,
                        reason="agent is at its stream limit or leaving",
                    )
                )
            )
            return
        self._streams[stream_id] = _Stream(Half.IDLE, Half.OPEN, self._peer_window, self._window)
        out.append(ev.StreamOpened(stream_id=stream_id, head=request))

    def _on_end(self, frame: fr.End, out: list[ev.Event]) -> None:
        stream = self._stream_for_receiving(frame.stream_id)
        if stream is None:
            return
        self._move_half(stream, "remote", Move.END)
        if stream.local is Half.CLOSED:
            self._forget(frame.stream_id, stream)
        out.append(ev.StreamEnded(stream_id=frame.stream_id))

    def _on_window(self, frame: fr.Window, out: list[ev.Event]) -> None:
        if frame.stream_id == _CONNECTION:
            self._require_open()
            self._connection_credit += frame.increment
            if self._connection_credit > fr.MAX_WINDOW:
                raise RemoteProtocolError(
                    "connection credit above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR
                )
            out.append(ev.CreditGranted(stream_id=_CONNECTION, increment=frame.increment))
            return
        stream = self._stream_for_receiving(frame.stream_id)
        if stream is None:
            return
        stream.send_credit += frame.increment
        if stream.send_credit > fr.MAX_WINDOW:
            raise RemoteProtocolError(
                f"stream {frame.stream_id}: credit above 2^31-1", ErrorCode.FLOW_CONTROL_ERROR
            )
        out.append(ev.CreditGranted(stream_id=frame.stream_id, increment=frame.increment))

    def _on_reset(self, frame: fr.Reset, out: list[ev.Event]) -> None:
        stream = self._stream_for_receiving(frame.stream_id)
        if stream is None:
            return
        del self._streams[frame.stream_id]
        self._release(stream.held)
        out.append(ev.StreamReset(stream_id=frame.stream_id, code=frame.code, reason=frame.reason))

    def _on_goaway(self, frame: fr.GoAway, out: list[ev.Event]) -> None:
        self._require_open()
        last = frame.last_stream_id
        if self._goaway_received_at is not None and last > self._goaway_received_at:
            raise RemoteProtocolError("GOAWAY raised its last stream ID")
        self._goaway_received_at = last
        out.append(ev.GoAwayReceived(last_stream_id=last, code=frame.code, reason=frame.reason))
        if self.role is Role.SERVER:
            # Streams the agent never saw are refused: safe to retry elsewhere.
            for stream_id in [s for s in self._streams if s > last]:
                self._release(self._streams.pop(stream_id).held)
                out.append(
                    ev.StreamReset(
                        stream_id=StreamId(stream_id),
                        code=ErrorCode.REFUSED_STREAM,
                        reason="agent is going away",
                    )
                )

    # -- helpers -------------------------------------------------------------------

    def _queue(self, frame_bytes: bytes) -> None:
        self._out.append(frame_bytes)

    def _forget(self, stream_id: int, stream: _Stream) -> None:
        """Drop a finished stream, keeping what the application still holds of it."""
        del self._streams[stream_id]
        if stream.held:
            self._residual[stream_id] = stream.held

    def _release(self, size: int) -> None:
        """``size`` held bytes were consumed, or dropped by a reset."""
        self._held -= size
        self._return_credit(size)

    def _return_credit(self, size: int) -> None:
        """Connection credit for ``size`` bytes consumed or dropped, batched like stream
        credit: one WINDOW on stream 0 once a quarter of the connection window is due,
        carrying all of it."""
        if not size:
            return
        unreturned = self._connection_unreturned + size
        if unreturned >= self._connection_ack_threshold:
            self._connection_unreturned = 0
            self._connection_receive_allowed += unreturned
            self._out.append(_pack_header(_WINDOW, 0, 0, 4) + unreturned.to_bytes(4))
        else:
            self._connection_unreturned = unreturned

    def _require_role(self, role: Role, what: str) -> None:
        if self.role is not role:
            raise RemoteProtocolError(f"{what} sent to the {self.role.value}")

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise RemoteProtocolError(f"stream frame while the connection is {self.state.value}")

    def _move_connection(self, what: _Input, *, local: bool) -> None:
        next_state = _CONNECTION_TRANSITIONS.get((self.state, what))
        if next_state is None:
            message = f"{what.value} while the connection is {self.state.value}"
            raise LocalProtocolError(message) if local else RemoteProtocolError(message)
        self.state = next_state

    def _stream_for_sending(self, stream_id: StreamId) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(f"stream {stream_id} is closed")
        return stream

    def _stream_for_receiving(self, stream_id: StreamId) -> _Stream | None:
        """The stream, or None for one that is gone; an ID never used is an error."""
        self._require_open()
        stream = self._streams.get(stream_id)
        if stream is None and stream_id > self._highest_stream_id:
            raise RemoteProtocolError(f"frame for stream {stream_id}, which was never opened")
        return stream

    @staticmethod
    def _move_half(stream: _Stream, side: str, move: Move) -> None:
        current: Half = getattr(stream, side)
        next_half = HALF_TRANSITIONS.get((current, move))
        if next_half is None:
            message = f"{move.value} on a {current.value} half"
            raise LocalProtocolError(message) if side == "local" else RemoteProtocolError(message)
        setattr(stream, side, next_half)


def _head_payload(fields: list[bytes]) -> bytes:
    """A head's payload, refused before it can reach a peer that would reject it."""
    try:
        payload = fr.encode_fields(fields)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise LocalProtocolError(f"head of {len(payload)} bytes does not fit in one frame")
    return payload
