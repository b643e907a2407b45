"""One agent connection on either end: a WebSocket, a Multiplexer, and its streams.

Thin by design: one reader task feeds WebSocket messages to the multiplexer and
hands each event to its stream. Frames queued by any stream's task wake the writer
task, which runs once the current pass of Trio's scheduler is over and sends
everything queued by then as one WebSocket message (so the frames of many streams
share a message). Under load a pass queues many frames; once `EARLY_SEND_PIECES`
are waiting, the stream task that is about to wait sends them itself (shielded:
a stream's task may be cancelled at any moment, and a send cut short halfway
through a frame would leave the peer reading garbage), so the peer starts on them
while this side goes on. A stream alone on the connection has nothing to share a
message with, and its task sends at once too, saving the writer's scheduler pass.
One sender at a time keeps the frames in queue order.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio

from pvtunnel._errors import (
    ErrorCode,
    ProtocolError,
    RemoteProtocolError,
    StreamResetError,
    TunnelClosedError,
    WebSocketClosed,
)
from pvtunnel._http.framing import MAX_INTERIM_BYTES, MAX_INTERIM_RESPONSES, interim_cost
from pvtunnel._trio.batching import EARLY_SEND_PIECES, MAX_MESSAGE_BYTES
from pvtunnel._trio.sockio import BROKEN
from pvtunnel._trio.stream import END, Channel
from pvtunnel._trio.websocket import CLOSE_GRACE_S, WebSocket
from pvtunnel._wire import events as ev
from pvtunnel._wire.heads import RequestHead

if TYPE_CHECKING:
    from pvtunnel._wire.frames import StreamId
    from pvtunnel._wire.mux import Multiplexer

# The side's own logger: a tunnel's lines belong with the rest of its program's.
_SERVER_LOG = logging.getLogger("pvtunnel.server")
_AGENT_LOG = logging.getLogger("pvtunnel.agent")

# Frames decoded and handled at a time before the reader lets other tasks run.
FRAMES_PER_STEP: Final = 1024
_PING: Final = struct.Struct(">Q")
_CLOSED: Final = (WebSocketClosed, *BROKEN)


StreamHandler = Callable[[Channel, RequestHead], Awaitable[None]]


class Tunnel:
    """An agent connection once the handshake is over; owns the channels of its streams.

    Args:
        ws: the open WebSocket.
        mux: the multiplexer, past its handshake.
        on_stream: agent side: called in a new task (inside ``channel.cancel_scope``)
            for each request the server opens.
        label: who is on the other end, for logs.
    """

    def __init__(
        self,
        ws: WebSocket,
        mux: Multiplexer,
        *,
        on_stream: StreamHandler | None = None,
        label: str = "",
        heartbeat_s: float | None = None,
        heartbeat_timeout_s: float = math.inf,
    ) -> None:
        self.ws = ws
        self.mux = mux
        self.label = label
        self._log = _SERVER_LOG if on_stream is None else _AGENT_LOG
        self._heartbeat_s = heartbeat_s
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self.last_heard = trio.current_time()
        # Messages sent whole: a count that stands still under a send that does not
        # end is a peer that stopped reading (`_heartbeat`).
        self._sends = 0
        self.rtt_s: float | None = None
        self.declared_dead = False
        self._on_stream = on_stream
        self._channels: dict[int, Channel] = {}
        # Channels parked in `Channel.send_data` for credit: connection credit wakes them.
        self.credit_waiters: set[Channel] = set()
        self._write_lot = trio.lowlevel.ParkingLot()
        # Streams waiting for the send backlog to shrink (`Channel.send_data`).
        self.sent_lot = trio.lowlevel.ParkingLot()
        # Frames that came in the same read as the handshake's answer, for `run`.
        self._early: list[ev.Event] = []
        self._finished_lot = trio.lowlevel.ParkingLot()
        # `wait_round_trip`'s PINGs by payload: only its own PONG ends a wait (a
        # heartbeat's, sent before the last data, would end it too early).
        self._round_trips: dict[bytes, trio.Event] = {}
        self._last_ping_ns = 0
        self.closed: TunnelClosedError | None = None
        self.going_away = trio.Event()
        # Called once, at once, when the connection starts to leave (the peer's
        # GOAWAY, or the close): the server takes the agent out of its router there
        # and then, so no request picks a connection that can no longer carry it.
        self.on_leaving: Callable[[], None] | None = None
        # A send under way (the writer's or an early one): an early send waits for none.
        self._sending = False
        self._early_scope: trio.CancelScope | None = None

    @property
    def in_flight(self) -> int:
        return len(self._channels)

    def wake_writer(self) -> None:
        """See that queued frames go out: the writer sends them after this pass."""
        if self._write_lot:
            self._write_lot.unpark_all()

    def _lost_while_sending(self) -> None:
        self._close_all(TunnelClosedError("agent connection lost while sending"))

    def open_stream(self, head: RequestHead, *, end_stream: bool) -> Channel:
        """Server: send a request head on a new stream.

        Raises:
            TunnelClosedError: the connection is closed or going away.
        """
        if self.closed is not None:
            raise self.closed
        if not self.mux.can_open_stream:
            raise TunnelClosedError("agent connection is going away")
        stream_id = self.mux.open_stream(head, end_stream=end_stream)
        channel = Channel(self, stream_id)
        self._channels[stream_id] = channel
        self.wake_writer()
        if self.mux.is_going_away:
            # That was the last stream ID: the multiplexer said GOAWAY with it.
            self._log.info("%s: stream IDs used up; the agent is asked to reconnect", self.label)
            self._leaving()
        return channel

    def forget(self, stream_id: StreamId) -> None:
        """Drop a channel whose stream finished or was reset by us.

        Whatever the channel received and never consumed is acknowledged now, so an
        abandoned inbox cannot keep connection credit from the other streams.
        """
        if self._channels.pop(stream_id, None) is None:
            return
        self.mux.acknowledge_all(stream_id)
        if self.mux.has_data_to_send:
            self.wake_writer()
        if self._finished_lot:
            self._finished_lot.unpark_all()

    async def wait_round_trip(self) -> None:
        """PING and wait for its PONG (or the end): the peer has then read all sent before."""
        if self.closed is None:
            payload = self._ping()
            answered = self._round_trips[payload] = trio.Event()
            try:
                await answered.wait()
            finally:
                self._round_trips.pop(payload, None)

    def _ping(self) -> bytes:
        """Queue a PING carrying the clock (for the round-trip time), unique per PING."""
        self._last_ping_ns = max(time.monotonic_ns(), self._last_ping_ns + 1)
        payload = _PING.pack(self._last_ping_ns)
        self.mux.ping(payload)
        self.wake_writer()
        return payload

    async def wait_stream_finished(self) -> None:
        """Wait until some stream finishes (or the connection closes)."""
        if self.closed is None and self._channels:
            await self._finished_lot.park()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and write until the connection ends; returns normally on a clean close.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the WebSocket is closed
                with the reason first).
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                if self._heartbeat_s is not None:
                    nursery.start_soon(self._heartbeat, self._heartbeat_s, nursery.cancel_scope)
                task_status.started()
                try:
                    await self._reader(nursery)
                except ProtocolError as exc:
                    self._close_all(TunnelClosedError(f"protocol error: {exc}"))
                    raise
                finally:
                    # However the reader ends (the peer closed, an error, or `run`
                    # was cancelled): on the agent the streams' tasks run in this
                    # nursery, and one may be in a shielded early send that a peer
                    # no longer reading holds up forever. Closing cancels it, so
                    # the nursery can end; no send starts after it.
                    self._close_all(TunnelClosedError("agent connection closed"))
                nursery.cancel_scope.cancel()
        except* ProtocolError as group:
            error = group.exceptions[0]
            assert isinstance(error, ProtocolError)
            self._close_all(TunnelClosedError(f"protocol error: {error}"))
            await self._close_ws(1002, str(error)[:100])
            raise
        finally:
            self._close_all(TunnelClosedError("agent connection closed"))

    async def aclose(self, reason: str = "closing") -> None:
        """Close the WebSocket; in-flight streams fail with `TunnelClosedError`."""
        self._close_all(TunnelClosedError(reason))
        await self._close_ws(1000, reason)

    async def flush(self) -> None:
        """Send whatever is queued now, in as many messages as it takes (used around
        the handshake and on shutdown)."""
        while self.mux.has_data_to_send:
            await self._send_queued()

    @property
    def early_send_due(self) -> bool:
        """A batch is big enough to go now, or its stream is the only one (nothing
        else could join it), and nobody is sending (see `send_early`)."""
        # Asked at every wait of every stream: the plain attributes first.
        return (
            self.closed is None
            and not self._sending
            and self.mux.has_data_to_send
            and (self.mux.queued_pieces >= EARLY_SEND_PIECES or self.in_flight <= 1)
        )

    async def send_early(self) -> None:
        """Send what is queued from the calling stream task, before the scheduler's pass ends.

        The send is shielded: a stream's task may be cancelled at any moment, and a
        message cut short would leave the peer reading garbage. It is taken only when
        nobody else is sending, so it waits for no one, only (like the writer) for a
        full socket; the stream's own cancellation then waits for the send. Closing
        the tunnel (a dead peer's heartbeat timeout, shutdown) cancels the send and
        drops the transport, as it does the writer's. Call it only when
        `early_send_due` says so.
        """
        self._sending = True
        try:
            with trio.CancelScope(shield=True) as scope:
                self._early_scope = scope
                await self._send_queued()
        except _CLOSED:
            self._lost_while_sending()
        finally:
            self._sending = False
            self._early_scope = None
            if self.mux.has_data_to_send:
                # Queued meanwhile: the writer stood aside while this send ran.
                self.wake_writer()
        if scope.cancelled_caught:
            self._lost_while_sending()

    async def _send_queued(self) -> None:
        """Send what the multiplexer holds as one message.

        Nothing yields between taking the frames and handing them to the WebSocket,
        which sends what it is handed in that order, one writer at a time: so
        messages keep the multiplexer's order whoever sends them.
        """
        mux = self.mux
        if mux.has_data_to_send:
            await self.ws.send(mux.data_to_send(MAX_MESSAGE_BYTES))
            self._sends += 1
            if self.sent_lot:
                self.sent_lot.unpark_all()

    async def receive_handshake(self) -> ev.Event:
        """The first event from the peer (HELLO or its answer); later ones wait for `run`.

        Raises:
            TunnelClosedError: the connection closed first.
            RemoteProtocolError: the peer broke the protocol.
        """
        while True:
            data = await self.ws.receive_some()
            if not data:
                raise TunnelClosedError("the connection closed during the handshake")
            events = self.mux.receive_data(data)
            if events:
                self._early.extend(events[1:])
                return events[0]

    async def _close_ws(self, code: int, reason: str) -> None:
        # Bounded: a peer that stopped reading (a PING flood) would hold the flush forever.
        with trio.move_on_after(CLOSE_GRACE_S), contextlib.suppress(*_CLOSED):
            await self.flush()
        await self.ws.aclose(code, reason)

    def _close_all(self, error: TunnelClosedError) -> None:
        if self.closed is None:
            self.closed = error
        if self._early_scope is not None:
            self._early_scope.cancel()
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            channel.fail(error)
        self._leaving()
        self._finished_lot.unpark_all()
        self.sent_lot.unpark_all()
        for answered in self._round_trips.values():
            answered.set()

    async def _writer(self) -> None:
        mux = self.mux
        try:
            while True:
                if not mux.has_data_to_send or self._sending:
                    await self._write_lot.park()
                    continue
                self._sending = True
                try:
                    await self._send_queued()
                finally:
                    self._sending = False
        except _CLOSED:
            self._lost_while_sending()

    async def _heartbeat(self, interval_s: float, scope: trio.CancelScope) -> None:
        """PING every interval; a peer silent for the timeout is declared dead.

        Any message counts as a sign of life, so a busy connection needs no extra
        round trips to stay alive; the PONG's echoed clock gives the round-trip time.
        """
        sends_seen, stuck_since = -1, 0.0
        while True:
            await trio.sleep(interval_s)
            now = trio.current_time()
            silent_s = now - self.last_heard
            if self._sending and self._sends == sends_seen:
                # A peer that sends but never reads (its PONGs keep it "heard") would
                # have everything queued for it pile up here.
                stuck_s = now - stuck_since
                if stuck_s >= self._heartbeat_timeout_s:
                    self._declare_dead(f"a send taking nothing for {stuck_s:.1f}s")
                    scope.cancel()
                    return
            else:
                sends_seen, stuck_since = self._sends, now
            if silent_s >= self._heartbeat_timeout_s:
                self._declare_dead(f"nothing heard for {silent_s:.1f}s")
                scope.cancel()
                return
            self._ping()

    def _declare_dead(self, why: str) -> None:
        self._log.warning("%s: %s; declaring the connection dead", self.label, why)
        self.declared_dead = True
        self._close_all(TunnelClosedError(f"the peer stopped answering: {why}"))

    async def _reader(self, nursery: trio.Nursery) -> None:
        mux = self.mux
        receive = self.ws.receive_some
        early, self._early = self._early, []
        for event in early:
            self._dispatch(event, nursery)
        while True:
            data = await receive()
            if not data:
                return
            self.last_heard = trio.current_time()
            for event in mux.receive_data(data, FRAMES_PER_STEP):
                self._dispatch(event, nursery)
            while mux.has_frames_waiting:
                # A message of many tiny frames (up to 100,000 in 1 MiB) would hold
                # the event loop for its whole decoding: everyone else runs between
                # steps.
                if mux.has_data_to_send:
                    self.wake_writer()
                await trio.lowlevel.checkpoint()
                if self.closed is not None:
                    return
                for event in mux.receive_data(b"", FRAMES_PER_STEP):
                    self._dispatch(event, nursery)
            if mux.has_data_to_send:
                self.wake_writer()

    def _dispatch(self, event: ev.Event, nursery: trio.Nursery) -> None:
        match event:
            case ev.DataReceived():
                channel = self._channels.get(event.stream_id)
                if channel is not None:
                    channel.deliver_data(event.data)
                else:  # we forgot the channel: nobody will consume it, give it back now
                    # (all it holds: a RESET later in the same message may have freed it)
                    self.mux.acknowledge_all(event.stream_id)
            case ev.ResponseReceived():
                channel = self._channels.get(event.stream_id)
                if channel is not None:
                    head = event.head
                    if head.is_informational:
                        # They take no credit: an agent sending them in a loop, or
                        # sending big ones, to a client that does not read would
                        # grow the inbox.
                        channel.interim += 1
                        channel.interim_bytes += interim_cost(head.reason, head.headers)
                        if channel.interim > MAX_INTERIM_RESPONSES:
                            channel.reset(
                                ErrorCode.UPSTREAM_PROTOCOL_ERROR,
                                f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses",
                            )
                            return
                        if channel.interim_bytes > MAX_INTERIM_BYTES:
                            channel.reset(
                                ErrorCode.UPSTREAM_PROTOCOL_ERROR,
                                f"interim (1xx) responses over {MAX_INTERIM_BYTES} bytes",
                            )
                            return
                    channel.deliver(event.head)
            case ev.StreamEnded():
                channel = self._channels.get(event.stream_id)
                if channel is not None:
                    channel.deliver(END)
            case ev.StreamReset():
                channel = self._channels.get(event.stream_id)
                if channel is not None:
                    self.forget(event.stream_id)
                    channel.fail(StreamResetError(event.code, event.reason))
                    channel.cancel_scope.cancel()
            case ev.CreditGranted() if event.stream_id == 0:
                # Connection credit: every stream waiting for credit may go on.
                for waiting in list(self.credit_waiters):
                    waiting.credit_granted()
            case ev.CreditGranted():
                channel = self._channels.get(event.stream_id)
                if channel is not None:
                    channel.credit_granted()
            case ev.StreamOpened():
                self._start_stream(event, nursery)
            case ev.PongReceived():
                (sent_ns,) = _PING.unpack(event.payload)
                self.rtt_s = max(0.0, (time.monotonic_ns() - sent_ns) / 1e9)
                if (answered := self._round_trips.get(event.payload)) is not None:
                    answered.set()
            case ev.GoAwayReceived():
                self._leaving()
            case ev.PingReceived():
                pass
            case ev.HelloReceived() | ev.Accepted() | ev.Rejected():
                raise RemoteProtocolError("handshake frame after the handshake")

    def _leaving(self) -> None:
        if not self.going_away.is_set():
            self.going_away.set()
            if self.on_leaving is not None:
                self.on_leaving()

    def _start_stream(self, event: ev.StreamOpened, nursery: trio.Nursery) -> None:
        handler = self._on_stream
        if handler is None:
            raise RemoteProtocolError("the agent may not open streams")
        channel = Channel(self, event.stream_id)
        self._channels[event.stream_id] = channel
        nursery.start_soon(self._serve_stream, handler, channel, event.head)

    async def _serve_stream(
        self, handler: StreamHandler, channel: Channel, head: RequestHead
    ) -> None:
        # Boundary: one failing stream must never take down its neighbours.
        try:
            with channel.cancel_scope:
                await handler(channel, head)
            if self.early_send_due:
                await self.send_early()
        except Exception:
            self._log.exception("%s stream %d: internal error", self.label, channel.stream_id)
            channel.reset(ErrorCode.INTERNAL_ERROR, "agent internal error")
        finally:
            self.forget(channel.stream_id)
