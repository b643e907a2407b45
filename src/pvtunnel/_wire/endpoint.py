"""What one end of an agent connection keeps (protocol.md sections 5-7): the state
its commands (sending.py) and the peer's frames (mux.py) both read and move.

The two directions share nearly all of it: both move the connection's state, the
live streams (positions in the machines of states.py), both sides of flow control
and the send queue. So it lives in one place, with the queries on it and the steps
both directions take, and each direction reads on its own above it.

The connection starts in its role's state (the server in AWAIT_HELLO, the agent in
START) and `_move_connection` takes it a step by states.py's table, for a command
or for a frame. Flow control (section 7) is kept on both sides: the credit the peer
granted, per stream on each `StreamState` and per connection here, and what this
end granted and the application holds, in a `ReceiveCredit` from credit.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pvtunnel._wire import frames as fr
from pvtunnel._wire.credit import ReceiveCredit
from pvtunnel._wire.states import (
    ConnectionInput,
    ConnectionState,
    Half,
    Role,
    StreamState,
    move_connection,
)

if TYPE_CHECKING:
    from pvtunnel._errors import RemoteProtocolError
    from pvtunnel._wire.frames import StreamId

DEFAULT_WINDOW: Final = 2 * 1024 * 1024
DEFAULT_CONNECTION_WINDOW: Final = 16 * 1024 * 1024
DEFAULT_MAX_STREAMS: Final = 4096


class Endpoint:
    """The state of one end of an agent connection, for its commands and the peer's
    frames alike. Built as a `Multiplexer` (mux.py), whose docstring gives the
    arguments."""

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

    # -- helpers -------------------------------------------------------------------

    def _queue(self, frame_bytes: bytes) -> None:
        self._out.append(frame_bytes)

    def _forget(self, stream_id: int, stream: StreamState) -> None:
        """Drop a finished stream; the credit keeps what the application still holds."""
        del self._streams[stream_id]
        self._credit.forget(stream_id, stream)

    def _move_connection(self, what: ConnectionInput, *, local: bool) -> None:
        self.state = move_connection(self.state, what, local=local)
