"""The stream multiplexer: one per agent connection, on each end (protocol.md sections 5-7).

It drives the two state machines of states.py (the connection, section 5, and
each stream's two halves, section 6) and keeps the receiving side of flow control
(section 7) in a `ReceiveCredit` from credit.py.

`Multiplexer` is three classes, one on top of the other, so that each direction
reads on its own: `Endpoint` (endpoint.py) holds the state both directions share,
`Sender` (sending.py) the commands, and `Multiplexer` here what the peer's frames
do. An inherited method is found and called as cheaply as a class's own, so the
layers cost the per-frame path nothing.

Received frames move the peer's side of the machines: the connection on the
peer's HELLO, ACCEPT or REJECT, and the peer's half of a stream (IDLE -HEAD-> OPEN
-END-> CLOSED, a 1xx HEAD leaves it IDLE, RESET drops both halves). A frame the
tables do not allow is a connection error.

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

from pvtunnel._errors import ErrorCode, RemoteProtocolError
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.sending import Sender

# Role is re-exported: it is half of how callers build a Multiplexer.
from pvtunnel._wire.states import (
    ConnectionInput,
    ConnectionState,
    Half,
    Move,
    Role as Role,
    StreamState,
    move_half,
)

# PONGs queued and not yet taken by `data_to_send`. A peer that sends PINGs and does
# not read the answers would otherwise grow the queue without bound (the HTTP/2
# "ping flood", CVE-2019-9512); past this many the connection is closed. A PONG is
# 18 bytes, so the queue stays under 20 KiB, and an honest peer sends one PING per
# heartbeat.
MAX_QUEUED_PONGS: Final = 1024


_CONNECTION: Final = fr.CONNECTION_STREAM
_stream_opened = ev.stream_opened
_response_received = ev.response_received
_data_received = ev.data_received
_stream_ended = ev.stream_ended


class Multiplexer(Sender):
    """One end of an agent connection: handshake, streams and their credit.

    Args:
        role: which end this is; the server opens streams, the agent answers them.
        window: the initial credit this end grants the peer on every stream, in bytes.
        connection_window: the credit this end grants the peer over all streams
            together, in bytes: the most body bytes it will ever hold unconsumed.
        max_streams: streams the agent accepts at once; beyond it new ones are refused
            with RESET REFUSED_STREAM (the server enforces its own limit before opening).
    """

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

    def _require_role(self, role: Role, what: str) -> None:
        if self.role is not role:
            raise RemoteProtocolError(f"{what} sent to the {self.role.value}")

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise RemoteProtocolError(f"stream frame while the connection is {self.state.value}")

    def _stream_for_receiving(self, stream_id: StreamId) -> StreamState | None:
        """The stream, or None for one that is gone; an ID never used is an error."""
        self._require_open()
        stream = self._streams.get(stream_id)
        if stream is None and stream_id > self._highest_stream_id:
            raise RemoteProtocolError(f"frame for stream {stream_id}, which was never opened")
        return stream
