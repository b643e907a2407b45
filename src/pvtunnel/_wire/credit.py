"""Flow control on the receiving side (protocol.md section 7): one per multiplexer.

Flow control works at two levels, as in HTTP/2. Each side grants every stream an
initial window (its HELLO/ACCEPT ``window``) and the connection as a whole another
(``connection_window``); DATA spends both of the sender's credits, WINDOW on a
stream returns stream credit and WINDOW on stream 0 connection credit. Credit is
returned only when the application says it consumed the bytes, so what the
application holds can never exceed a stream's window on that stream, nor the
connection window over all streams, whoever is slow. Bytes nobody will consume
count as consumed at once: DATA for a stream that is gone, and what a reset stream
held. A stream forgotten after both halves closed keeps a residual (the bytes the
application still holds) until they are acknowledged.

The sending side stays in the multiplexer: two counters (per stream, per connection)
that WINDOW frames raise and `send_data` spends inline. WINDOW frames from here are
appended, encoded, to the send queue the multiplexer passes in (``frames``), so they
keep their place among its other frames (a RESET before the WINDOW that returns the
reset stream's bytes).
"""

from __future__ import annotations

from typing import Final

from pvtunnel._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from pvtunnel._wire.frames import HEADER, FrameType
from pvtunnel._wire.states import Half, Move, StreamState, move_half

_WINDOW: Final = FrameType.WINDOW
_pack_header = HEADER.pack


class ReceiveCredit:
    """What the peer may still send and what the application holds, at both levels.

    Stream-level counters live on each `StreamState`; the connection-level ones,
    and the residuals of forgotten streams, live here.

    Args:
        window: the credit granted the peer on every stream, in bytes.
        connection_window: the credit granted the peer over all streams, in bytes.
    """

    __slots__ = (
        "_allowed",
        "_connection_ack_threshold",
        "_residual",
        "_stream_ack_threshold",
        "_unreturned",
        "held",
        "peak_held",
    )

    def __init__(self, window: int, connection_window: int) -> None:
        self._stream_ack_threshold = max(1, window // 4)
        self._connection_ack_threshold = max(1, connection_window // 4)
        # What the peer may still send over all streams, what the application
        # holds, and what it consumed that no WINDOW returned yet.
        self._allowed = connection_window
        self.held = 0
        self.peak_held = 0
        self._unreturned = 0
        # Streams forgotten (both halves closed) whose bytes the application still
        # holds: stream ID -> bytes not yet acknowledged. Never above the window.
        self._residual: dict[int, int] = {}

    def receive(
        self, stream_id: int, stream: StreamState | None, size: int, frames: list[bytes]
    ) -> bool:
        """Spend the peer's credit on a DATA frame; True if the application gets it.

        The remote half moves here too, between the connection and the stream window
        checks: that order decides the code of a frame that breaks several rules.

        Raises:
            RemoteProtocolError: beyond either window (FLOW_CONTROL_ERROR), or DATA
                on a half that is not open. The multiplexer is poisoned then.
        """
        # Every DATA frame counts against the connection window, even for a stream
        # that is gone: the sender spent connection credit on it.
        self._allowed -= size
        if self._allowed < 0:
            raise RemoteProtocolError(
                "DATA beyond the granted connection window", ErrorCode.FLOW_CONTROL_ERROR
            )
        if stream is None:
            # Nobody will consume it: its credit goes back as if it were consumed now.
            self._return_credit(size, frames)
            return False
        if stream.remote is not Half.OPEN:  # DATA leaves an open half as it is
            move_half(stream, "remote", Move.DATA)  # raises
        stream.receive_allowed -= size
        if stream.receive_allowed < 0:
            raise RemoteProtocolError(
                f"stream {stream_id}: DATA beyond the granted window",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        stream.held += size
        held = self.held + size
        self.held = held
        if held > self.peak_held:
            self.peak_held = held
        return True

    def held_on(self, stream_id: int, stream: StreamState | None) -> int:
        """Bytes the application holds of the stream, live (``stream``) or forgotten."""
        return self._residual.get(stream_id, 0) if stream is None else stream.held

    def acknowledge(
        self, stream_id: int, stream: StreamState | None, size: int, frames: list[bytes]
    ) -> None:
        """``size`` bytes of the stream were consumed: see `Multiplexer.acknowledge_data`.

        Raises:
            LocalProtocolError: ``size`` is negative or more than the stream holds.
                Nothing changes then.
        """
        # held_on's lookup, inline: this runs for every chunk the application reads.
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
                if unreturned >= self._stream_ack_threshold:
                    stream.unreturned = 0
                    stream.receive_allowed += unreturned
                    frames.append(_pack_header(_WINDOW, 0, stream_id, 4) + unreturned.to_bytes(4))
                else:
                    stream.unreturned = unreturned
        self.held -= size
        self._return_credit(size, frames)

    def forget(self, stream_id: int, stream: StreamState) -> None:
        """The stream is dropped from the table: keep what the application still holds."""
        if stream.held:
            self._residual[stream_id] = stream.held

    def release_stream(
        self, stream_id: int, stream: StreamState | None, frames: list[bytes]
    ) -> None:
        """The stream was reset: what it held, live or forgotten, counts as consumed."""
        size = self._residual.pop(stream_id, 0) if stream is None else stream.held
        self.held -= size
        self._return_credit(size, frames)

    def _return_credit(self, size: int, frames: list[bytes]) -> None:
        """Connection credit for ``size`` bytes consumed or dropped, batched like stream
        credit: one WINDOW on stream 0 once a quarter of the connection window is due,
        carrying all of it."""
        if not size:
            return
        unreturned = self._unreturned + size
        if unreturned >= self._connection_ack_threshold:
            self._unreturned = 0
            self._allowed += unreturned
            frames.append(_pack_header(_WINDOW, 0, 0, 4) + unreturned.to_bytes(4))
        else:
            self._unreturned = unreturned
