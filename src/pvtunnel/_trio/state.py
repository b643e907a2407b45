"""What the server's client handlers and agent handlers share: sessions, routes, counts.

Its own module so that `front` (the client side) and `server` (which starts the
listeners and the agent side) both point down at it, and neither at the other.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from pvtunnel._http.routing import Router
from pvtunnel._logs import direct_access_handler
from pvtunnel._metrics import ServerMetrics
from pvtunnel._trio.deadlines import Deadlines
from pvtunnel._trio.holding import HeldRequests
from pvtunnel._trio.tunnel import Tunnel

if TYPE_CHECKING:
    import h11

    from pvtunnel._config import ServerConfig
    from pvtunnel._trio.stream import Channel

access_logger = logging.getLogger("pvtunnel.access")


class AwaitingClient(Protocol):
    """A client connection waiting for a response, as `watch_hangups` checks it."""

    address: str

    async def check_hangup(self, channel: Channel) -> bool:
        """Reset the stream if the client closed its connection; True once settled."""
        ...


@attrs.define(eq=False)
class AgentSession:
    """One connected agent: what the router balances over."""

    tunnel: Tunnel
    client_id: str
    address: str
    routes: tuple[str, ...]
    # The route patterns its token may claim (("*",) for the internal token): only a
    # connection with the same ones may replace this one (`_replace_same_client`).
    scopes: tuple[str, ...] = ("*",)
    connected_at: float = attrs.field(factory=time.time)
    requests: int = 0
    # Cancelled when a newer connection with the same client_id replaces this one.
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    @property
    def in_flight(self) -> int:
        return self.tunnel.in_flight


class ServerState:
    """What the client and agent handlers share."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.router: Router[AgentSession] = Router(domain=config.external.domain)
        self.sessions: set[AgentSession] = set()
        self._sessions_changed = trio.lowlevel.ParkingLot()
        self.in_flight = 0
        self.client_connections = 0
        # The scopes of kept-alive client connections waiting for a head: a drain
        # closes them at once, as nginx does, instead of answering their next
        # request with 503 (`close_idle_clients`).
        self.idle_clients: set[trio.CancelScope] = set()
        self.draining = False
        # Set once both listeners accept: /ready is false before that (and while draining).
        self.listening = False
        # Set when a drain begins with a delay: /ready is false, requests still served.
        self.withdrawn = False
        self.metrics = ServerMetrics()
        # The client connections' time limits (`Deadlines.run` runs beside the listeners).
        self.deadlines = Deadlines()
        self.held = HeldRequests(config, self.metrics)
        self.idle = trio.Event()
        self.idle.set()
        # Clients waiting for the response to a bodiless request, for `watch_hangups`.
        self.awaiting: dict[AwaitingClient, Channel] = {}
        self.awaiting_started = trio.lowlevel.ParkingLot()
        # Unparked after each round of checks (tests wait on it instead of the clock).
        self.hangups_checked = trio.lowlevel.ParkingLot()

    def close_idle_clients(self) -> None:
        """Close the kept-alive client connections waiting for a head (a drain began)."""
        for scope in list(self.idle_clients):
            scope.cancel()
        self.idle_clients.clear()

    @property
    def closing_connections(self) -> bool:
        """Whether answers end their connections: from the start of a drain (its
        delay too), so kept-alive clients, load balancers' pools among them, come
        back on a new connection, to another server, instead of meeting a 503."""
        return self.draining or self.withdrawn

    def add_session(self, session: AgentSession) -> None:
        self.sessions.add(session)
        self._sessions_changed.unpark_all()

    def discard_session(self, session: AgentSession) -> None:
        self.sessions.discard(session)
        self._sessions_changed.unpark_all()

    def route(self, session: AgentSession, names: tuple[str, ...]) -> None:
        """Route ``names`` to ``session``; requests held for them go to it now."""
        self.router.add(session, names)
        self.held.routes_arrived(names)

    def unroute(self, session: AgentSession) -> None:
        """Route nothing more to ``session``; names it alone served are remembered."""
        self.held.routes_left(self.router.remove(session))

    async def wait_sessions_changed(self) -> None:
        """Wait until an agent connects or leaves (for status pages and tests)."""
        await self._sessions_changed.park()

    def stream_started(self, session: AgentSession) -> None:
        session.requests += 1
        self.in_flight += 1
        if self.in_flight == 1:
            self.idle = trio.Event()

    def stream_finished(self, session: AgentSession) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def log_request(
        self,
        request: h11.Request,
        address: str,
        status: int,
        size: int,
        agent: str | None,
        started: float | None = None,
        *,
        route: str | None = None,
        bytes_in: int = 0,
        stream_id: int | None = None,
        waited_from: float | None = None,
    ) -> None:
        """Count and log one answered request: the single hook for /metrics and the access log.

        ``size`` is the response body bytes sent, ``bytes_in`` the request body bytes
        forwarded, ``started`` when the stream to the agent opened, or when a request
        that reached no agent began to wait for one (else None), ``waited_from`` when
        a request that then reached an agent began to wait. The log's duration is
        what the client waited; the duration histogram's, the agent's part alone.
        """
        now = trio.current_time()
        self.metrics.record_request(
            route,
            status,
            bytes_in,
            size,
            now - started if started is not None and agent is not None else None,
        )
        if waited_from is not None:
            started = waited_from
        duration_s = now - started if started is not None else None
        if not access_logger.isEnabledFor(logging.INFO):
            return
        host = next((v for n, v in request.headers if n == b"host"), b"-").decode("latin-1")
        method = request.method.decode("latin-1")
        target = request.target.decode("latin-1")
        self._write_line(
            address,
            method,
            host,
            target,
            status,
            size,
            duration_s,
            route,
            agent,
            bytes_in,
            stream_id,
        )

    def log_unreadable(self, address: str, status: int) -> None:
        """Count and log a request answered before its head could be read (h11 refused
        it): ``-`` for what only the head would have said, as nginx logs one."""
        self.metrics.record_request(None, status, 0, 0, None)
        if access_logger.isEnabledFor(logging.INFO):
            self._write_line(address, "-", "-", "-", status, 0, None, None, None, 0, None)

    @staticmethod
    def _write_line(
        address: str,
        method: str,
        host: str,
        target: str,
        status: int,
        size: int,
        duration_s: float | None,
        route: str | None,
        agent: str | None,
        bytes_in: int,
        stream_id: int | None,
    ) -> None:
        duration_ms = round(duration_s * 1000, 3) if duration_s is not None else 0.0
        # Keys of `--log-format json`; present on every request line, null if unknown.
        fields: dict[str, object] = {
            "client": address,
            "method": method,
            "host": host,
            "target": target,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": size,
            "duration_ms": duration_ms,
            "route": route,
            "agent": agent,
            "stream_id": stream_id,
        }
        args = (
            address,
            method,
            # The one field a client writes freely that may hold spaces: escaped in
            # the text line, where a space would start a field it could forge.
            host.replace(" ", "\\x20") if " " in host else host,
            target,
            status,
            size,
            duration_ms,
            agent or "-",
            route or "-",
            "-" if stream_id is None else stream_id,
        )
        handler = direct_access_handler()
        if handler is not None:
            handler.write_access(ACCESS_LINE % args, fields)
        else:
            access_logger.info(ACCESS_LINE, *args, extra=fields)


# One request's access-log line (text format); `log_request` fills it.
ACCESS_LINE = "%s %s %s %s %d %dB %.1fms agent=%s route=%s stream=%s"
