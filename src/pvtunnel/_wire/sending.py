"""The multiplexer's commands: what this end sends (protocol.md sections 5-7 and 9).

Commands move this end's side of the machines of states.py: the connection on its
own HELLO, ACCEPT or REJECT (section 5), and this end's half of a stream (section
6: IDLE -HEAD-> OPEN -END-> CLOSED, a 1xx head leaves it IDLE, RESET drops both
halves). A command that would break protocol.md is refused with
`LocalProtocolError` and changes nothing, so the peer never sees the mistake; one
on a stream that is gone raises `StreamClosedError`. DATA spends the peer's credit
on the stream and on the connection (section 7), never more than either.

Frames are queued as they are made and leave by `data_to_send`, whole, in messages
the caller sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pvtunnel._errors import ErrorCode, LocalProtocolError, StreamClosedError
from pvtunnel._wire import frames as fr
from pvtunnel._wire.endpoint import Endpoint
from pvtunnel._wire.frames import HEADER, MAX_FRAME_PAYLOAD, FrameType, StreamId
from pvtunnel._wire.states import (
    ConnectionInput,
    ConnectionState,
    Half,
    Move,
    Role,
    StreamState,
    move_half,
)

if TYPE_CHECKING:
    from pvtunnel._wire.heads import RequestHead, ResponseHead

_HEAD: Final = FrameType.HEAD
_DATA: Final = FrameType.DATA
_END: Final = FrameType.END
_PONG: Final = FrameType.PONG
_pack_header = HEADER.pack


class Sender(Endpoint):
    """The commands of a `Multiplexer` (mux.py), checked against the state they
    share with the peer's frames and queued as frames."""

    # -- connection commands -------------------------------------------------------

    def send_hello(self, *, client_id: str, routes: tuple[str, ...]) -> None:
        """Agent: introduce this agent and the names it serves.

        Raises:
            ValueError: the names do not fit in one frame; nothing changed.
        """
        frame = fr.encode(
            fr.our_hello(
                client_id=client_id,
                routes=routes,
                window=self._window,
                connection_window=self._connection_window,
            )
        )
        self._move_connection(ConnectionInput.SEND_HELLO, local=True)
        self._queue(frame)

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

    # -- helpers -------------------------------------------------------------------

    def _stream_for_sending(self, stream_id: StreamId) -> StreamState:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(f"stream {stream_id} is closed")
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
