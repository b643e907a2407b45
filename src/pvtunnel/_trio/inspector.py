"""The inspector's Trio side: record each replayed stream, and replay a recorded one.

`Inspector.serve_stream` stands in for `Replay.run` when the inspector is on: the
same replay, over a `RecordingChannel` that shows every item passing through to
the stream's `Exchange`. With the inspector off the agent never builds one, so
the request path pays one attribute test (see `TunnelAgent._serve_stream`).

`Inspector.replay` sends a recorded request again, optionally edited, to its
route's upstream through the agent's own `Replay` and pool: the route's Host
rewrite and connection reuse apply as for any request. The request side is a
`LocalChannel` that hands over the body and throws away the answer (the
recording keeps its preview), and the new exchange names the one it replays.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final

import trio

from pvtunnel._errors import ReplayRefusedError, TunnelClosedError
from pvtunnel._inspect.capture import Capture, Exchange
from pvtunnel._inspect.edits import edited_request
from pvtunnel._logs import LogThrottle
from pvtunnel._trio.stream import END
from pvtunnel._trio.upstream import Replay
from pvtunnel._wire.frames import StreamId
from pvtunnel._wire.heads import RequestHead

if TYPE_CHECKING:
    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._errors import ErrorCode
    from pvtunnel._inspect.capture import Event
    from pvtunnel._inspect.edits import Edits
    from pvtunnel._metrics import AgentMetrics
    from pvtunnel._trio.channels import StreamChannel
    from pvtunnel._trio.stream import InboxItem
    from pvtunnel._trio.upstream import UpstreamPool
    from pvtunnel._wire.heads import ResponseHead

# A replay waits this long for its whole answer: the server's default for an
# upstream's response head, since a replay has no server to time it out.
REPLAY_DEADLINE_S: Final = 60.0
# Bodies go to the upstream in pieces of this size, as a tunnel stream's would.
_CHUNK_BYTES: Final = 65536
# Replays refused past `max_replays` are logged at most this often: a script that
# retries at once in a loop would otherwise write a line per try.
BUSY_LOG_EVERY_S: Final = 10.0


class RecordingChannel:
    """A stream channel that tells an `Exchange` what passes, and passes it on."""

    __slots__ = ("_channel", "_exchange")

    def __init__(self, channel: StreamChannel, exchange: Exchange) -> None:
        self._channel = channel
        self._exchange = exchange

    @property
    def stream_id(self) -> StreamId:
        return self._channel.stream_id

    async def receive(self) -> InboxItem:
        try:
            item = await self._channel.receive()
        except TunnelClosedError as exc:
            self._exchange.failed(str(exc))
            raise
        if isinstance(item, bytes):
            self._exchange.request_data(item)
        elif item is END:
            self._exchange.request_end()
        return item

    def consume(self, size: int) -> None:
        self._channel.consume(size)

    async def send_data(self, data: bytes) -> None:
        self._exchange.response_data(data)
        try:
            await self._channel.send_data(data)
        except TunnelClosedError as exc:
            self._exchange.failed(str(exc))  # the client went away, or the server did
            raise

    def send_response(self, head: ResponseHead) -> None:
        self._channel.send_response(head)
        self._exchange.response_head(head)

    def end(self) -> None:
        self._channel.end()

    def reset(self, code: ErrorCode, reason: str = "") -> None:
        self._exchange.failed(f"{code.name}: {reason}" if reason else code.name)
        self._channel.reset(code, reason)

    def connection_short(self) -> bool:
        return self._channel.connection_short()


class LocalChannel:
    """The channel of a replay: the body to send, and nowhere for the answer to go."""

    # Not a tunnel stream; logs about a replay name stream 0, which no tunnel uses.
    stream_id = StreamId(0)

    def __init__(self, body: bytes) -> None:
        self._items: collections.deque[InboxItem] = collections.deque(
            body[start : start + _CHUNK_BYTES] for start in range(0, len(body), _CHUNK_BYTES)
        )
        self._items.append(END)

    async def receive(self) -> InboxItem:
        await trio.lowlevel.checkpoint()
        # Replay reads until END and never after it, so the deque is never empty here.
        return self._items.popleft()

    def consume(self, size: int) -> None:
        """Nothing to give back: the body is all here."""

    async def send_data(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    def send_response(self, head: ResponseHead) -> None:
        """The recording keeps the head."""

    def end(self) -> None:
        """The recording's ``finish`` marks the end."""

    def reset(self, code: ErrorCode, reason: str = "") -> None:
        """The recording keeps the reason."""

    def connection_short(self) -> bool:
        """No tunnel connection, no window to run short of."""
        return False


class Inspector:
    """The agent's inspector: a `Capture`, and the means to replay what it holds.

    Args:
        config: The agent's configuration: ``[inspect]`` bounds, and the tokens
            no capture may hold.
        routes: The agent's routes by name (a replay goes to its route's target).
        pool: The agent's upstream pool.
        metrics: The agent's counters, which count the replays refused.
    """

    def __init__(
        self,
        config: AgentConfig,
        routes: dict[str, Route],
        pool: UpstreamPool,
        metrics: AgentMetrics,
    ) -> None:
        secrets = [config.server.token, config.admin.token if config.admin else None]
        self.capture = Capture(
            config.inspect,
            secrets=(secret.reveal().encode() for secret in secrets if secret is not None),
        )
        self._routes = routes
        self._pool = pool
        self.metrics = metrics
        # Replays in flight now, edits being read included; `inspect_http` refuses
        # one past `max_replays` rather than queue it.
        self.replays = 0
        self.max_replays = config.inspect.max_replays
        self.busy_log = LogThrottle(BUSY_LOG_EVERY_S)
        # Pages following the event stream now (the admin listener caps them).
        self.event_streams = 0
        # The last event the pages were sent, as they were sent it (`inspect_http`).
        self.last_event: tuple[Event | None, bytes] = (None, b"")

    async def serve_stream(self, channel: StreamChannel, head: RequestHead, route: Route) -> None:
        """Replay one stream from the server, recording it."""
        exchange = self.capture.begin(head)
        try:
            await Replay(RecordingChannel(channel, exchange), head, route, self._pool).run()
        except trio.Cancelled:
            # The server reset the stream (its client left) or the agent is stopping.
            exchange.failed("cancelled: the client or the tunnel went away")
            raise
        finally:
            exchange.finish()

    async def replay(self, exchange_id: int, edits: Edits) -> Exchange:
        """Send a recorded request again (edited), and record that as a new exchange.

        Returns:
            The new exchange, finished (or failed: an upstream error is recorded,
            not raised).

        Raises:
            KeyError: no such exchange (any more).
            ReplayRefusedError: its body was cut and no new one given, or its
                route is gone.
            EditError: the edits do not make a sendable request.
        """
        original = self.capture.get(exchange_id)
        if original is None:
            raise KeyError(exchange_id)
        if edits.body is None and not original.request_complete:
            # Cut at the preview's size, omitted, or broken off before its end:
            # replayed as it is, it would go out as a whole, shorter request.
            raise ReplayRefusedError(
                "the captured body is incomplete: give the body to send with the replay"
            )
        route = self._routes.get(original.route)
        if route is None:
            raise ReplayRefusedError(f"this agent no longer serves route {original.route!r}")
        recorded = RequestHead(
            route=original.route,
            method=original.method,
            target=original.target,
            headers=original.request_headers,
        )
        head, body = edited_request(recorded, bytes(original.request_body.data), edits)
        exchange = self.capture.begin(head, replay_of=original.id)
        recorder = RecordingChannel(LocalChannel(body), exchange)
        try:
            with trio.move_on_after(REPLAY_DEADLINE_S) as scope:
                await Replay(recorder, head, route, self._pool).run()
            if scope.cancelled_caught:
                exchange.failed(f"no complete answer within {REPLAY_DEADLINE_S:g}s")
        except trio.Cancelled:
            # Its client went away, or the agent is stopping: recorded as cut short.
            exchange.failed("cancelled before its answer ended")
            raise
        finally:
            exchange.finish()
        return exchange
