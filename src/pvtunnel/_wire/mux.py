"""The stream multiplexer: one per agent connection, on each end (protocol.md sections 5-7).

It drives the two state machines of states.py (the connection, section 5, and
each stream's two halves, section 6) and keeps the receiving side of flow control
(section 7) in a `ReceiveCredit` from credit.py.

Only the server opens streams, with strictly increasing IDs, so a frame for an
unknown ID at or below the highest ever used belongs to a stream that is gone
(late data after a reset, a late WINDOW) and is ignored without keeping state.

Pure: no trio, no sockets, no clock. Feed bytes with `receive_data`, drain bytes
with `data_to_send`; commands raise `LocalProtocolError` when they break the
protocol, and `receive_data` raises `RemoteProtocolError` when the peer did, after
which the multiplexer is poisoned and the connection must be closed.
"""

from __future__ import annotations

import sys
from typing import Final, assert_never

from pvtunnel._errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.credit import ReceiveCredit
from pvtunnel._wire.frames import HEADER, MAX_FRAME_PAYLOAD, FrameType, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead

# Role is re-exported: it is half of how callers build a Multiplexer.
from pvtunnel._wire.states import (
    ConnectionInput,
    ConnectionState,
    Half,
    Move,
    Role as Role,
    StreamState,
    move_connection,
    move_half,
)

DEFAULT_WINDOW: Final = 2 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW: Final = 16 * 1024 * 1024
DEFAULT_MAX_STREAMS: Final = 4096
# PONGs queued and not yet taken by `data_to_send`. A peer that sends PINGs and does
# not read the answers would otherwise grow the queue without bound (the HTTP/2
# "ping flood", CVE-2019-9512); past this many the connection is closed. A PONG is
# 18 bytes, so the queue stays under 20 KiB, and an honest peer sends one PING per
# heartbeat.
MAX_QUEUED_PONGS: Final = 1024


_HEAD: Final = FrameType.HEAD
_DATA: Final = FrameType.DATA
_END: Final = FrameType.END
_PONG: Final = FrameType.PONG
_CONNECTION: Final = fr.CONNECTION_STREAM
_pack_header = HEADER.pack
_stream_opened = ev.stream_opened
_response_received = ev.response_received
_data_received = ev.data_received
_stream_ended = ev.stream_ended


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
        self._connection_window = connection_window
        self._peer_window = 0
        # Connection level, sending: credit the peer granted over all streams. The
        # receiving side (what we granted, what the application holds) is _credit's.
        self._connection_credit = 0
        self._credit = ReceiveCredit(window, connection_window)
        self._max_streams = max_streams
        self._decoder = fr.FrameDecoder()
        self._out: list[bytes] = []
        self._queued_pongs = 0
        self._streams: dict[int, StreamState] = {}
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
    def queued_bytes(self) -> int:
        """How much is queued, in bytes (added up at each call: ask when pieces pile up)."""
        return sum(map(len, self._out))

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
    def connection_window(self) -> int:
        """The credit this end grants the peer over all streams (its HELLO/ACCEPT's)."""
        return self._connection_window

    @property
    def held_bytes(self) -> int:
        """DATA bytes received and not yet acknowledged, over all streams (live or
        gone): what the application holds. Never above ``connection_window``."""
        return self._credit.held

    @property
    def peak_held_bytes(self) -> int:
        """The most `held_bytes` has ever been on this connection."""
        return self._credit.peak_held

    def is_stream_open(self, stream_id: StreamId) -> bool:
        return stream_id in self._streams

    # -- connection commands -------------------------------------------------------

    def send_hello(self, *, client_id: str, routes: tuple[str, ...]) -> None:
        """Agent: introduce this agent and the names it serves."""
        self._move_connection(ConnectionInput.SEND_HELLO, local=True)
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
        """Server: take the agent; ``refused`` pairs route names with reasons.

        Raises:
            ValueError: the refusals do not fit in one frame; nothing changed, so
                the server may still `reject`.
        """
        frame = fr.encode(
            fr.Accept(
                version=fr.PROTOCOL_VERSION,
                refused=refused,
                window=self._window,
                connection_window=self._connection_window,
            )
        )
        self._move_connection(ConnectionInput.SEND_ACCEPT, local=True)
        self._queue(frame)

    def reject(self, reason: str) -> None:
        """Server: refuse the agent for good; close the connection after sending."""
        self._move_connection(ConnectionInput.SEND_REJECT, local=True)
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
        payload = _head_payload(head)
        stream_id = self._highest_stream_id + 1
        self._highest_stream_id = stream_id
        out = self._out
        out.append(_pack_header(_HEAD, 0, stream_id, len(payload)) + payload)
        if end_stream:
            # `end_stream` inline: the stream is new, so its half is OPEN and the
            # peer's IDLE, and there is nothing to forget.
            self._streams[stream_id] = StreamState(
                Half.CLOSED, Half.IDLE, self._peer_window, self._window
            )
            out.append(_pack_header(_END, 0, stream_id, 0))
        else:
            self._streams[stream_id] = StreamState(
                Half.OPEN, Half.IDLE, self._peer_window, self._window
            )
        if stream_id == fr.MAX_STREAM_ID:
            # IDs are never reused: the agent is told to reconnect, which starts a
            # fresh ID space (protocol.md section 6), and this stream still finishes.
            self.goaway(ErrorCode.NO_ERROR, "stream IDs used up: reconnect")
        return StreamId(stream_id)

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
        payload = _head_payload(head)
        informational = head.is_informational
        # The common moves inline; `move_half` for the rest, and to raise.
        if stream.local is Half.IDLE and not informational:
            stream.local = Half.OPEN
        else:
            move_half(stream, "local", Move.INFORMATIONAL_HEAD if informational else Move.HEAD)
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
        if stream.local is Half.OPEN:
            stream.local = Half.CLOSED
        else:
            move_half(stream, "local", Move.END)  # raises
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
        if stream is not None:
            self._queue(fr.encode(fr.Reset(stream_id=stream_id, code=code, reason=reason)))
        self._credit.release_stream(stream_id, stream, self._out)

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
        self._credit.acknowledge(stream_id, self._streams.get(stream_id), size, self._out)

    def acknowledge_all(self, stream_id: StreamId) -> None:
        """Acknowledge every byte the stream holds: the application drops its channel.

        The same as `acknowledge_data` with all that is outstanding (nothing once the
        stream was reset); later DATA on a live stream must still be acknowledged.
        """
        self.acknowledge_data(
            stream_id, self._credit.held_on(stream_id, self._streams.get(stream_id))
        )

    def data_to_send(self, max_bytes: int | None = None) -> bytes:
        """Drain queued frames as bytes for one WebSocket message (b"" when idle).

        With ``max_bytes``, whole frames are taken until the next would pass it (at
        least one), so messages stay near the size the transport handles best.
        """
        out = self._out
        if max_bytes is None or sum(map(len, out)) <= max_bytes:
            self._out = []
            self._queued_pongs = 0
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
            if out[count][0] == _PONG:  # a whole frame: a DATA payload is skipped above
                self._queued_pongs -= 1
            total += size
            count += pieces
        taken = out[:count]
        del out[:count]
        return b"".join(taken)

    # -- receiving -----------------------------------------------------------------

    @property
    def has_frames_waiting(self) -> bool:
        """The last `receive_data` stopped at its ``max_frames``: call it again (with
        b"" or more) for the rest."""
        return self._decoder.stopped_early

    def receive_data(self, data: bytes, max_frames: int = sys.maxsize) -> list[ev.Event]:
        """Feed bytes from the peer and return what it did, from at most ``max_frames``
        frames (see `has_frames_waiting`).

        Raises:
            RemoteProtocolError: the peer broke the protocol; its ``code`` is the
                reason to close with. The multiplexer is poisoned afterwards.
        """
        if self._error is not None:
            raise self._error
        try:
            frames = self._decoder.feed(data, max_frames)
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
                # Inline rather than a method: DATA is the frame that comes by the thousand.
                stream_id = frame.stream_id
                stream = self._stream_for_receiving(stream_id)
                if self._credit.receive(stream_id, stream, len(frame.data), self._out):
                    out.append(_data_received(stream_id, frame.data))
            case fr.Head():
                self._on_head(frame, out)
            case fr.End():
                self._on_end(frame, out)
            case fr.Window():
                self._on_window(frame, out)
            case fr.Reset():
                self._on_reset(frame, out)
            case fr.Ping():
                if self._queued_pongs >= MAX_QUEUED_PONGS:
                    raise RemoteProtocolError(
                        f"PING flood: {MAX_QUEUED_PONGS} PONGs queued that the peer has not read"
                    )
                self._queued_pongs += 1
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
                self._move_connection(ConnectionInput.RECEIVE_ACCEPT, local=False)
                if frame.version != fr.PROTOCOL_VERSION:
                    raise RemoteProtocolError(
                        f"ACCEPT chose version {frame.version}, which this agent did not offer"
                    )
                self._peer_window = frame.window
                self._connection_credit = frame.connection_window
                out.append(ev.Accepted(refused=frame.refused))
            case fr.Reject():
                self._require_role(Role.AGENT, "REJECT")
                self._move_connection(ConnectionInput.RECEIVE_REJECT, local=False)
                out.append(ev.Rejected(reason=frame.reason))
            case _:  # pragma: no cover  (a new frame class fails the type check here)
                assert_never(frame)

    def _on_hello(self, frame: fr.Hello, out: list[ev.Event]) -> None:
        self._require_role(Role.SERVER, "HELLO")
        self._move_connection(ConnectionInput.RECEIVE_HELLO, local=False)
        if fr.PROTOCOL_VERSION not in frame.versions:
            self.reject(
                f"unsupported protocol versions {list(frame.versions)}; "
                f"this server speaks {fr.PROTOCOL_VERSION}"
            )
            raise RemoteProtocolError("agent speaks no protocol version we know")
        self._peer_window = frame.window
        self._connection_credit = frame.connection_window
        out.append(ev.HelloReceived(client_id=frame.client_id, routes=frame.routes))

    def _on_head(self, frame: fr.Head, out: list[ev.Event]) -> None:
        stream_id = frame.stream_id
        if self.role is Role.SERVER:
            stream = self._stream_for_receiving(stream_id)
            if stream is None:
                return
            informational = frame.is_informational
            head = ResponseHead.from_fields(frame.fields, is_informational=informational)
            # The common move inline; `move_half` for the rest, and to raise.
            if stream.remote is Half.IDLE and not informational:
                stream.remote = Half.OPEN
            else:
                move_half(stream, "remote", Move.INFORMATIONAL_HEAD if informational else Move.HEAD)
            out.append(_response_received(stream_id, head))
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
        self._streams[stream_id] = StreamState(
            Half.IDLE, Half.OPEN, self._peer_window, self._window
        )
        out.append(_stream_opened(stream_id, request))

    def _on_end(self, frame: fr.End, out: list[ev.Event]) -> None:
        stream_id = frame.stream_id
        stream = self._stream_for_receiving(stream_id)
        if stream is None:
            return
        if stream.remote is Half.OPEN:
            stream.remote = Half.CLOSED
        else:
            move_half(stream, "remote", Move.END)  # raises
        if stream.local is Half.CLOSED:
            self._forget(stream_id, stream)
        out.append(_stream_ended(stream_id))

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
        self._credit.release_stream(frame.stream_id, stream, self._out)
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
                self._credit.release_stream(stream_id, self._streams.pop(stream_id), self._out)
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

    def _forget(self, stream_id: int, stream: StreamState) -> None:
        """Drop a finished stream; the credit keeps what the application still holds."""
        del self._streams[stream_id]
        self._credit.forget(stream_id, stream)

    def _require_role(self, role: Role, what: str) -> None:
        if self.role is not role:
            raise RemoteProtocolError(f"{what} sent to the {self.role.value}")

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise RemoteProtocolError(f"stream frame while the connection is {self.state.value}")

    def _move_connection(self, what: ConnectionInput, *, local: bool) -> None:
        self.state = move_connection(self.state, what, local=local)

    def _stream_for_sending(self, stream_id: StreamId) -> StreamState:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(f"stream {stream_id} is closed")
        return stream

    def _stream_for_receiving(self, stream_id: StreamId) -> StreamState | None:
        """The stream, or None for one that is gone; an ID never used is an error."""
        self._require_open()
        stream = self._streams.get(stream_id)
        if stream is None and stream_id > self._highest_stream_id:
            raise RemoteProtocolError(f"frame for stream {stream_id}, which was never opened")
        return stream


def _head_payload(head: RequestHead | ResponseHead) -> bytes:
    """A head's payload, refused before it can reach a peer that would reject it."""
    try:
        payload = head.encode()
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise LocalProtocolError(f"head of {len(payload)} bytes does not fit in one frame")
    return payload
