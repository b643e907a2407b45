"""The agent's side of a request: replay it to the route's target and stream the answer back.

Targets come only from the agent's own configuration: the server names a route,
never a host or port, so nothing it sends can make the agent dial elsewhere
(SECURITY.md, "What can reach what"). Upstream connections are kept alive and pooled per route; a
request that fails on a pooled connection before any answer, and had no body to
replay, is retried once on a fresh connection, since the upstream may have
closed the idle connection at the same moment we reused it; only idempotent
methods are, so one client request never becomes two (RFC 9110 section 9.2.2).
A connection goes back to the pool only if nothing follows the response, and is
dropped on reuse if anything arrived while it was idle: stray bytes would
otherwise answer another client's request (response splitting). That check is
the one read attempt a response needs anyway, made before the request goes out
rather than after: nothing can have answered a request not yet sent, so what it
finds arrived while the connection was idle.
"""

from __future__ import annotations

import collections
import logging
import os
import select
from typing import TYPE_CHECKING, Final

import h11
import trio

from pvtunnel._errors import ErrorCode, LocalProtocolError, TunnelClosedError, UpstreamError
from pvtunnel._http.framing import MAX_INTERIM_RESPONSES, field_problem, framing_problem
from pvtunnel._http.headers import end_to_end, header_value, is_chunked, response_end_to_end
from pvtunnel._logs import LogThrottle
from pvtunnel._metrics import AgentMetrics
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.http11 import H11Stream
from pvtunnel._trio.listeners import SHORTAGE_LOG_EVERY_S
from pvtunnel._trio.pipe import run_pipe
from pvtunnel._trio.sockio import BROKEN, out_of_descriptors, why_connect_failed
from pvtunnel._trio.stream import END
from pvtunnel._wire.heads import RequestHead, ResponseHead

if TYPE_CHECKING:
    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._trio.channels import StreamChannel

logger = logging.getLogger("pvtunnel.agent")

MAX_RESPONSE_HEAD_BYTES: Final = 60000
_BROKEN: Final = (*BROKEN, OSError)
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# How often `UpstreamPool.reap` looks over the idle connections (or `upstream_idle_s`,
# if shorter). Upstreams often close kept-alive connections after a few seconds
# (Node.js after 5, gunicorn after 2); each one they close stays a socket in
# CLOSE_WAIT here until it is looked at.
REAP_EVERY_S: Final = 5.0
# ...but never more often than this, however short `upstream_idle_s` is (the config
# takes any positive value; a reaper at 1 us would spin).
REAP_AT_MOST_EVERY_S: Final = 0.5


class UpstreamConnection(H11Stream[trio.SocketStream]):
    """One keep-alive HTTP/1.1 connection to a route's target."""

    __slots__ = ("idle_since",)

    def __init__(self, stream: trio.SocketStream) -> None:
        super().__init__(
            h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD_BYTES),
            stream,
        )
        self.idle_since = 0.0

    async def aclose(self) -> None:
        with trio.move_on_after(1, shield=True):
            await self.stream.aclose()

    def close_now(self) -> None:
        """Close without a checkpoint: a socket stream's close never waits."""
        self.stream.socket.close()


class UpstreamPool:
    """Idle keep-alive connections per route, newest first, at most ``size`` each."""

    def __init__(self, config: AgentConfig, metrics: AgentMetrics | None = None) -> None:
        self._config = config
        self._metrics = AgentMetrics() if metrics is None else metrics
        self._idle: dict[str, collections.deque[UpstreamConnection]] = {}
        # Routes whose upstream's last answer was HTTP/1.0: a client must not send
        # it Transfer-Encoding (RFC 9112 section 6.1), which it would not read.
        self.http_1_0: set[str] = set()
        # Dials that fail for want of descriptors here fail every request at once:
        # one line now and then says so (with a count), not one per request.
        self._short_log = LogThrottle(SHORTAGE_LOG_EVERY_S)

    @property
    def body_limit(self) -> int:
        """The most of a chunked body held whole for an HTTP/1.0 upstream: one
        stream window, what the server may send without credit coming back."""
        return self._config.stream_window_bytes

    def idle_count(self, route: str) -> int:
        return len(self._idle.get(route, ()))

    def idle_connections(self, route: str) -> tuple[UpstreamConnection, ...]:
        """The route's idle connections, oldest first (for embedders and tests)."""
        return tuple(self._idle.get(route, ()))

    def take_idle(self, route: Route) -> UpstreamConnection | None:
        """A pooled connection safe to send a request on, or None; never waits.

        Stale ones, and any the upstream closed or wrote to while idle, are closed.
        """
        idle = self._idle.get(route.name)
        if not idle:
            return None
        oldest = trio.current_time() - self._config.timeouts.upstream_idle_s
        while idle:
            connection = idle.pop()
            if connection.idle_since > oldest and _is_quiet(connection.stream):
                return connection
            connection.close_now()
        return None

    def close_stale(self) -> int:
        """Close the idle connections past ``upstream_idle_s``, or closed or written to
        by their upstream; returns how many."""
        oldest = trio.current_time() - self._config.timeouts.upstream_idle_s
        closed = 0
        for idle in self._idle.values():
            for _ in range(len(idle)):  # oldest first; the kept go back newest last
                connection = idle.popleft()
                if connection.idle_since > oldest and _is_quiet(connection.stream):
                    idle.append(connection)
                else:
                    connection.close_now()
                    closed += 1
        return closed

    async def reap(self) -> None:
        """`close_stale` every `REAP_EVERY_S` (never returns; run it beside the links).

        Without it an idle connection is looked at only when its route's next request
        comes, which may be never: the upstream's slot stays held past
        ``upstream_idle_s``, or the socket it closed stays open here.
        """
        while True:
            await trio.sleep(self.reap_every_s)
            self.close_stale()

    @property
    def reap_every_s(self) -> float:
        """How often `reap` looks (see `REAP_EVERY_S`, `REAP_AT_MOST_EVERY_S`)."""
        return max(REAP_AT_MOST_EVERY_S, min(REAP_EVERY_S, self._config.timeouts.upstream_idle_s))

    async def connect(self, route: Route) -> UpstreamConnection:
        """A fresh connection to the route's target (raises `UpstreamError`)."""
        try:
            with trio.fail_after(self._config.timeouts.upstream_connect_s):
                stream = await trio.open_tcp_stream(route.value, route.port)
        except trio.TooSlowError:
            self._metrics.upstream_connect_failed(route.name)
            raise UpstreamError(
                f"connecting to {route.value}:{route.port} timed out",
                ErrorCode.UPSTREAM_CONNECT_FAILED,
            ) from None
        except OSError as exc:
            why = f"cannot connect to {route.value}:{route.port}: {why_connect_failed(exc)}"
            if out_of_descriptors(exc):
                # The agent's own shortage, not the upstream's: not counted against
                # the route, and said so (a client still gets 502).
                why += " (the agent is out of file descriptors: raise its limit, ulimit -n)"
                self._log_shortage(route, why)
                raise UpstreamError(why, ErrorCode.UPSTREAM_CONNECT_FAILED, logged=True) from None
            self._metrics.upstream_connect_failed(route.name)
            raise UpstreamError(why, ErrorCode.UPSTREAM_CONNECT_FAILED) from None
        return UpstreamConnection(stream)

    def _log_shortage(self, route: Route, why: str) -> None:
        held = self._short_log.allow(trio.current_time())
        if held is not None:
            more = f"; {held} more requests failed so since the last line" if held else ""
            logger.warning("route %s: %s%s", route.name, why, more)

    def keep(self, route: Route, connection: UpstreamConnection) -> bool:
        """Pool the connection if both sides finished cleanly; False: the caller closes it."""
        conn = connection.conn
        if (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
        ):
            idle = self._idle.get(route.name)
            if idle is None:
                idle = self._idle[route.name] = collections.deque()
            if len(idle) < self._config.upstream_pool_size:
                conn.start_next_cycle()
                connection.idle_since = trio.current_time()
                idle.append(connection)
                return True
        return False

    async def aclose(self) -> None:
        pools = list(self._idle.values())
        self._idle.clear()
        for idle in pools:
            for connection in idle:
                await connection.aclose()


def _is_quiet(stream: trio.SocketStream) -> bool:
    """Whether an idle connection has nothing to read: neither stray bytes nor its close.

    A non-blocking read: what it takes is never used, the connection is dropped.
    """
    fd = stream.socket.fileno()
    if os.name == "posix":
        try:
            os.read(fd, 1)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False
    return not select.select([fd], [], [], 0)[0]  # sockets are not descriptors there


def upstream_request(head: RequestHead, route: Route) -> tuple[h11.Request, bool]:
    """The request to write to ``route``'s upstream for ``head``, and whether it has a body.

    Raises:
        h11.LocalProtocolError: a head that must not reach an upstream.
    """
    headers = head.headers
    # One pass for what the replay needs to know of the head.
    original: bytes | None = None
    length: bytes | None = None
    chunked = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"host":
            if original is None:
                original = value
        elif lower == b"content-length":
            if length is None:
                length = value
        elif lower == b"transfer-encoding":
            chunked = True
    if chunked and length is not None:
        # A head no client could have got past the server with: written on, it
        # would desynchronise a pooled upstream connection (RFC 9112 section 6.3).
        raise h11.LocalProtocolError("both Content-Length and Transfer-Encoding")
    host = route.upstream_host_header(original)
    if host != original:
        rewritten = [(n, v) for n, v in headers if n.lower() != b"host"]
        if host is not None:
            rewritten.insert(0, (b"Host", host))
        headers = tuple(rewritten)
    # The fields as the server sent them: its h11 parsed them from the client,
    # but a server is only as trusted as the network between us, so they are
    # checked as h11's constructor would, for a quarter of its cost (h11 still
    # checks the method and the target).
    problem = field_problem(headers)
    if problem is not None:
        raise h11.LocalProtocolError(problem)
    request = h11.Request(
        method=head.method, target=head.target, headers=list(headers), _parsed=True
    )
    if length is not None and not length.isdigit():
        # A list of equal lengths ("5, 5"): h11 took it and kept the one number.
        length = next(v for n, v in request.headers.raw_items() if n.lower() == b"content-length")
    # h11 has checked that the Content-Length is digits.
    return request, chunked or (length is not None and int(length) > 0)


def with_length(request: h11.Request, length: int) -> h11.Request:
    """``request`` framed by a Content-Length instead of chunked."""
    headers = [
        (name, value)
        for name, value in request.headers.raw_items()
        if name.lower() != b"transfer-encoding"
    ]
    headers.append((b"Content-Length", b"%d" % length))
    return h11.Request(method=request.method, target=request.target, headers=headers, _parsed=True)


class Replay:
    """Replays one request; a fresh object per stream."""

    def __init__(
        self, channel: StreamChannel, head: RequestHead, route: Route, pool: UpstreamPool
    ) -> None:
        self.channel = channel
        self.head = head
        self.route = route
        self.pool = pool
        self.head_sent = False
        self.has_body = False
        # Body bytes held whole (`_whole_body`) whose credit is not given back yet.
        self.held = 0

    async def run(self) -> None:
        channel = self.channel
        if self.head.method == b"CONNECT":
            await self._connect_tunnel()
            return
        try:
            request, self.has_body = upstream_request(self.head, self.route)
        except h11.LocalProtocolError as exc:
            channel.reset(ErrorCode.PROTOCOL_ERROR, f"unusable request head: {exc}")
            return
        has_body = self.has_body
        route = self.route
        pool = self.pool
        body: bytes | None = None
        if has_body and route.name in pool.http_1_0 and is_chunked(self.head.headers):
            body = await self._whole_body()
            if body is None:
                return
            request = with_length(request, len(body))
        for attempt in (1, 2):
            # The retry dials afresh: an upstream closing idle connections (its
            # keep-alive timeout) closes the other pooled ones at the same moment.
            connection = pool.take_idle(route) if attempt == 1 else None
            reused = connection is not None
            if connection is None:
                try:
                    connection = await pool.connect(route)
                except UpstreamError as exc:
                    if not exc.logged:
                        logger.warning("route %s stream %d: %s", route.name, channel.stream_id, exc)
                    channel.reset(exc.code, str(exc))
                    return
            received_before = connection.received
            try:
                if body is not None:
                    await self._send_whole(connection, request, body)
                elif has_body:
                    await self._exchange(connection, request)
                else:
                    await connection.send_message(request)
                    # Nothing can be unread: the connection was new, or `take_idle` found
                    # it quiet with nothing left from its last response.
                    await self._relay_response(connection, read_first=True)
            except (*_BROKEN, h11.RemoteProtocolError, h11.LocalProtocolError) as exc:
                await connection.aclose()
                if (
                    reused
                    and not has_body
                    and not self.head_sent
                    and connection.received == received_before  # not a single byte back
                    and request.method in _IDEMPOTENT
                    and attempt == 1
                ):
                    continue
                code = (
                    ErrorCode.UPSTREAM_PROTOCOL_ERROR
                    if isinstance(exc, h11.ProtocolError)
                    else ErrorCode.UPSTREAM_CLOSED
                )
                logger.warning(
                    "route %s stream %d: upstream failed: %s",
                    route.name,
                    channel.stream_id,
                    exc,
                )
                channel.reset(code, "upstream connection failed")
                return
            except TunnelClosedError:
                await connection.aclose()  # the server reset the stream, or left
                return
            except BaseException:
                await connection.aclose()
                raise
            if not pool.keep(route, connection):
                await connection.aclose()
            return

    async def _connect_tunnel(self) -> None:
        """CONNECT: a raw TCP pipe to the route's own target, never the requested port."""
        channel = self.channel
        try:
            connection = await self.pool.connect(self.route)
        except UpstreamError as exc:
            if not exc.logged:
                logger.warning("route %s stream %d: %s", self.route.name, channel.stream_id, exc)
            channel.reset(exc.code, str(exc))
            return
        try:
            channel.send_response(ResponseHead(status=200, reason=b"Connection established"))
            await run_pipe(connection.stream, channel, cut_stalled=True)
        except TunnelClosedError:
            pass
        finally:
            await connection.aclose()

    async def _whole_body(self) -> bytes | None:
        """A chunked request body, whole, for an upstream that reads no chunks; None
        when it is more than one stream window (the stream is reset, 411).

        Credit is not given back meanwhile, so what is held stays within the window
        the body had anyway; it goes back once the body is sent (or with the stream).
        """
        channel = self.channel
        limit = self.pool.body_limit
        pieces: list[bytes] = []
        size = 0
        while True:
            try:
                item = await channel.receive()
            except TunnelClosedError:
                return None
            if item is END:
                self.held = size
                return b"".join(pieces)
            assert isinstance(item, bytes)
            pieces.append(item)
            size += len(item)
            if size >= limit:
                channel.reset(
                    ErrorCode.LENGTH_REQUIRED,
                    "a chunked body too big to send with a length to an HTTP/1.0 upstream",
                )
                return None

    async def _send_whole(
        self, connection: UpstreamConnection, request: h11.Request, body: bytes
    ) -> None:
        """The request, its body and its end in one write, then the answer."""
        connection.queue(request)
        if body:
            connection.queue(h11.Data(data=body))
        connection.queue(h11.EndOfMessage())
        await connection.flush()
        if self.held:
            self.channel.consume(self.held)
            self.held = 0
        await self._relay_response(connection, read_first=True)

    async def _exchange(self, connection: UpstreamConnection, request: h11.Request) -> None:
        await connection.send(request)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_body, connection)
                await self._relay_response(connection)
                if connection.conn.our_state is not h11.DONE:
                    # The upstream answered before taking the whole body: stop sending.
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _switched(
        self, connection: UpstreamConnection, event: h11.InformationalResponse
    ) -> None:
        """The upstream accepted an Upgrade: relay its 101, then pipe raw bytes.

        h11 only reaches this for a request that asked to upgrade (anything else is
        a protocol error there). The connection is not reusable afterwards, which
        `UpstreamPool.keep` sees from h11's state.
        """
        raw = event.headers.raw_items()
        upgrade = header_value(raw, b"upgrade") or b""
        headers = (*end_to_end(raw), (b"Connection", b"upgrade"), (b"Upgrade", upgrade))
        self._forward_head(ResponseHead(status=101, reason=event.reason, headers=headers))
        self.head_sent = True
        initial, _ = connection.conn.trailing_data
        await run_pipe(connection.stream, self.channel, bytes(initial), cut_stalled=True)

    def _forward_head(self, head: ResponseHead) -> None:
        """Send the upstream's response head on. One the tunnel cannot carry (over one
        HEAD frame, which h11 lets through when it arrives in two reads; a status
        h11 takes but HTTP does not, 600 to 999) is the upstream's protocol error:
        a 502 for the client, as any other broken answer."""
        try:
            self.channel.send_response(head)
        except LocalProtocolError as exc:
            raise h11.RemoteProtocolError(f"unusable response head: {exc}") from None

    async def _pump_body(self, connection: UpstreamConnection) -> None:
        channel = self.channel
        while True:
            try:
                item = await channel.receive()
            except TunnelClosedError:
                return
            if item is END:
                await connection.send(h11.EndOfMessage())
                return
            assert isinstance(item, bytes)
            await connection.send(h11.Data(data=item))
            channel.consume(len(item))

    async def _relay_response(
        self, connection: UpstreamConnection, *, read_first: bool = False
    ) -> None:
        channel = self.channel
        event = await connection.next_event(read_first=read_first)
        interim = 0
        while True:
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    await self._switched(connection, event)
                    return
                interim += 1
                if interim > MAX_INTERIM_RESPONSES:
                    raise h11.RemoteProtocolError(
                        f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses"
                    )
                self._forward_head(
                    ResponseHead(
                        status=event.status_code,
                        reason=event.reason,
                        headers=tuple(end_to_end(event.headers.raw_items())),
                    )
                )
                event = await connection.next_event()
                continue
            if isinstance(event, h11.Response):
                break
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} from upstream")
        if event.http_version == b"1.0":
            self.pool.http_1_0.add(self.route.name)
        elif self.pool.http_1_0:
            self.pool.http_1_0.discard(self.route.name)
        # h11's sequence is slow to iterate, and lower-cases the names: the raw list
        # keeps the upstream's spelling for the client.
        headers = event.headers.raw_items()
        problem = framing_problem(headers, event.http_version)
        if problem is not None:
            raise h11.RemoteProtocolError(problem)  # a 502 for the client, never the bytes
        # Parse the body bytes already received (no I/O) before the head goes out: a
        # body broken from its start (a bad first chunk size) is then a 502 too.
        pending = connection.buffered_event()
        status = event.status_code
        self._forward_head(
            ResponseHead(
                status=status,
                reason=event.reason,
                headers=tuple(response_end_to_end(headers, status)),
            )
        )
        self.head_sent = True
        while True:
            # What came with the last read is taken without a read's coroutine round.
            event = pending if pending is not None else await connection.next_event()
            if isinstance(event, h11.Data):
                data, pending = await connection.gather(event.data)
                await channel.send_data(data)
            elif isinstance(event, h11.EndOfMessage):
                channel.end()
                return
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in body")
