"""`pvtunnel agent`: dial out to the servers, announce routes, replay what they send.

The agent holds one connection to each configured server URL at once (like
cloudflared's HA connections): servers behind a load balancer share no state, so
every one of them must hear from every agent. Each URL is a
`ServerLink` with its own reconnect loop and backoff; the upstream pool, the
routes and the metrics are shared.

Failures split in two: a refused token (HTTP 401 at the upgrade)
or a REJECT of the hello is final for that server and ends its link;
anything the network does (refused, reset, a server restart) is retried with
capped, jittered exponential backoff, forever. The agent raises
`HandshakeRefusedError` only once every link has ended that way: while one
server still takes it, the agent has work to do.

A server certificate that does not verify is configuration, not the network (a
missing ``ca_file``, a wrong host name): before a link has ever registered it is
final for that link (`ServerCertificateError`), so a mistake shows at once
instead of as a retry loop. Once registered, the server has proven itself with a
good certificate, so a later failure (a botched renewal) is logged as an error
and retried, and agents come back by themselves when the certificate is fixed.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from pvtunnel._backoff import Backoff
from pvtunnel._config import Discovery
from pvtunnel._errors import (
    ConfigError,
    ErrorCode,
    HandshakeError,
    HandshakeRefusedError,
    ProtocolError,
    RemoteProtocolError,
    ServerCertificateError,
    ServerUnreachableError,
    TunnelClosedError,
    WebSocketClosed,
)
from pvtunnel._metrics import AgentMetrics
from pvtunnel._trio.admin import serve_admin
from pvtunnel._trio.agent_admin import AgentAdmin
from pvtunnel._trio.dial import (
    client_ssl_context,
    describe_failure,
    dial,
    final_if_refused,
)
from pvtunnel._trio.discovery import DiscoveredServer, resolve_addresses, url_host_port
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.inspector import Inspector
from pvtunnel._trio.tunnel import Tunnel
from pvtunnel._trio.upstream import Replay, UpstreamPool
from pvtunnel._trio.websocket import ConnectionRejected, WebSocket, connect
from pvtunnel._wire import events as ev
from pvtunnel._wire.mux import Multiplexer, Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._trio.stream import Channel
    from pvtunnel._wire.heads import RequestHead

logger = logging.getLogger("pvtunnel.agent")

INITIAL_BACKOFF_S: Final = 0.5
# A session that lasted this long resets the backoff: it was not a crash loop.
STABLE_SESSION_S: Final = 10.0


@attrs.frozen(kw_only=True)
class AgentStatus:
    """What a started agent registered: the server and the routes it now serves.

    ``server_url`` is the server that accepted the agent first; with several URLs
    the others register on their own (see `TunnelAgent.links`).
    """

    server_url: str
    routes: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    admin: tuple[str, int] | None = None


class _LinkFailed(Protocol):
    """Where a failed session is reported, so discovery resolves again. ``unreachable``
    (no TCP connection was made, where a server that answered, even to refuse, was
    reached) is what discovery weighs before it gives up on an address family."""

    def __call__(self, link: ServerLink, /, *, unreachable: bool) -> None: ...


@attrs.define(eq=False)
class ServerLink:
    """The agent's connection to one server URL, as ``/status`` and `drain` read it.

    Live state, rewritten by the link's own reconnect loop: the tunnel while
    registered, and why the link ended if a refusal ended it for good. A link
    found by DNS discovery dials ``address`` and still speaks to the URL's host.
    """

    url: str
    address: str | None = None
    # Told when a session fails, so discovery resolves again (the replica may be gone).
    on_failure: _LinkFailed | None = attrs.field(default=None, repr=False)
    tunnel: Tunnel | None = None
    # trio.current_time() at the latest registration; /status turns it into wall time.
    connected_at: float = 0.0
    reconnects: int = 0
    # A server that once showed a good certificate gets retried after a bad one.
    has_registered: bool = False
    refusal: HandshakeRefusedError | None = None
    # The routes this server refused at the latest registration (name -> its reason).
    refused_routes: dict[str, str] = attrs.field(factory=dict)
    # The agent drains and this link is down: it dials no more until the agent stops.
    stood_down: bool = False

    @property
    def connected(self) -> bool:
        return self.tunnel is not None

    @property
    def has_ended(self) -> bool:
        """Refused for good: the link's loop has returned."""
        return self.refusal is not None

    @property
    def label(self) -> str:
        """The URL, and the address when discovery found it: how logs name the link."""
        return self.url if self.address is None else f"{self.url} ({self.address})"

    @property
    def in_flight(self) -> int:
        return self.tunnel.in_flight if self.tunnel is not None else 0


class _Reporter(Protocol):
    """Where a link reports its registration, and that a refusal ended it."""

    def registered(self, status: AgentStatus) -> None: ...

    def link_ended(self) -> None: ...


class _Startup:
    """Tells `serve`'s caller about the first registration, or that none can come.

    Counts one per configured URL: a URL found by DNS discovery ends once every
    link it holds has ended (`_DiscoveryReporter`).
    """

    def __init__(self, links: int) -> None:
        self.status: AgentStatus | None = None
        self.settled = trio.Event()
        self._links_left = links

    def registered(self, status: AgentStatus) -> None:
        if self.status is None:
            self.status = status
            self.settled.set()

    def link_ended(self) -> None:
        self._links_left -= 1
        if self._links_left == 0:
            self.settled.set()


@attrs.define(eq=False)
class _DiscoveryReporter:
    """A discovered URL's links report here; the URL ends when all its links have."""

    startup: _Startup
    server: DiscoveredServer[ServerLink]
    scope: trio.CancelScope

    def registered(self, status: AgentStatus) -> None:
        self.startup.registered(status)

    def link_ended(self) -> None:
        if self.server.has_ended and not self.scope.cancel_called:
            # The same token and hello go to every replica: none will take them.
            self.scope.cancel()
            self.startup.link_ended()


class TunnelAgent:
    """The agent side of pvtunnel, embeddable in any Trio program.

    Args:
        config: a finished `AgentConfig` with server URLs, a token and routes.
        resolve: With ``[server] discover = "dns"``: how a URL's host name becomes
            the servers' addresses, ``await resolve(host, port)``. The default asks
            the system resolver (``getaddrinfo``); a program may pass its own
            (a service registry), raising ``OSError`` when the name does not resolve.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        resolve: Callable[[str, int], Awaitable[tuple[str, ...]]] = resolve_addresses,
    ) -> None:
        problems = config.validate_runnable()
        if problems:
            raise ConfigError(problems)
        self.config = config
        self.routes: dict[str, Route] = {route.name: route for route in config.routes}
        self.metrics = AgentMetrics()
        self.pool = UpstreamPool(config, self.metrics)
        # None unless [inspect] is on: the request path then only tests for None.
        self.inspector = (
            Inspector(config, self.routes, self.pool, self.metrics)
            if config.inspect.enabled
            else None
        )
        # With DNS discovery, links come and go as the URLs' names resolve.
        self.discovers = config.server.discover is Discovery.DNS
        self.links: tuple[ServerLink, ...] = (
            () if self.discovers else tuple(ServerLink(url) for url in config.server.urls)
        )
        self.discovered: dict[str, DiscoveredServer[ServerLink]] = {}
        # Reconnects of discovered links that left with their address, all together:
        # the total only goes up as addresses leave DNS, and the agent keeps nothing
        # per address that left (in Kubernetes nearly every pod IP leaves for good).
        self.retired_reconnects = 0
        self._resolve = resolve
        self.draining = False
        self.admin_address: tuple[str, int] | None = None
        self._links_changed = trio.lowlevel.ParkingLot()

    @property
    def connected(self) -> bool:
        """Registered with at least one server: the agent can take requests."""
        return any(link.connected for link in self.links)

    @property
    def connected_at(self) -> float:
        """When the longest-standing registered link registered (trio's clock); 0 if none."""
        return min((link.connected_at for link in self.links if link.connected), default=0.0)

    @property
    def reconnects(self) -> int:
        return sum(link.reconnects for link in self.links) + self.retired_reconnects

    @property
    def in_flight(self) -> int:
        return sum(link.in_flight for link in self.links)

    async def wait_links_changed(self) -> None:
        """Wait until a link registers, disconnects, retries or ends (re-check, then call again)."""
        await self._links_changed.park()

    async def serve(
        self, *, task_status: trio.TaskStatus[AgentStatus] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Stay connected to every server until cancelled (startable).

        Returns to ``nursery.start`` once the first server registers the agent;
        the other links keep connecting and reconnecting on their own. With
        ``config.admin`` set, the admin listener starts first, so probes are
        answered (``/ready``: 503) while the agent is not yet registered.

        Raises:
            HandshakeRefusedError: every server refused the token, the hello or
                the certificate (with one URL: that server's refusal itself).
            OSError: the admin port cannot be bound.
        """
        admin = self.config.admin
        if admin is None:
            await self._serve_links(task_status)
            return
        try:
            async with trio.open_nursery() as nursery:
                self.admin_address = await nursery.start(
                    serve_admin, admin, AgentAdmin(self), self.inspector
                )
                await self._serve_links(task_status)
        except BaseExceptionGroup as group:
            # Callers catch HandshakeRefusedError itself, with or without the listener.
            raise first_error(group) from None

    async def _serve_links(self, task_status: trio.TaskStatus[AgentStatus]) -> None:
        """One reconnect loop per URL; returns (by raising) once every one has ended."""
        startup = _Startup(len(self.config.server.urls))
        try:
            async with trio.open_nursery() as beside:
                beside.start_soon(self.pool.reap)
                async with trio.open_nursery() as nursery:
                    if self.discovers:
                        for url in self.config.server.urls:
                            nursery.start_soon(self._discover, url, startup, nursery)
                    for link in self.links:
                        nursery.start_soon(self._serve_link, link, startup)
                    # Reported from this task, the one `nursery.start` is waiting on.
                    await startup.settled.wait()
                    if startup.status is not None:
                        task_status.started(startup.status)
                beside.cancel_scope.cancel()  # the links have all ended
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            await self.pool.aclose()
        raise self._refusal()

    async def _discover(self, url: str, startup: _Startup, nursery: trio.Nursery) -> None:
        """Hold a link to every address ``url``'s host resolves to, until they all end."""
        server: DiscoveredServer[ServerLink] = DiscoveredServer(
            url,
            interval_s=self.config.server.discover_interval_s,
            retry_max_s=self.config.timeouts.reconnect_max_s,
            resolve=self._resolve,
            linked_elsewhere=lambda address: self._linked_by_earlier_url(url, address),
        )
        self.discovered[url] = server
        with trio.CancelScope() as scope:
            reporter = _DiscoveryReporter(startup, server, scope)

            def new_link(address: str) -> ServerLink:
                link = ServerLink(url, address=address, on_failure=server.link_failed)
                self._set_links((*self.links, link))
                return link

            async def run_link(link: ServerLink) -> None:
                await self._serve_link(link, reporter)

            async def retire_link(link: ServerLink, scope: trio.CancelScope, reason: str) -> None:
                # The links left may all be refused ones: then the URL has ended
                # (as when the last of them is refused), whatever the retired did.
                reporter.link_ended()
                await self._retire_link(link, scope, reason)

            await server.serve(nursery, new_link, run_link, retire_link)

    def _linked_by_earlier_url(self, url: str, address: str) -> str | None:
        """The URL listed before ``url`` that links to ``address`` at its port, if any.

        Earlier ones win so that the agent settles on the same links whichever
        name resolves first: a later URL that got there first gives the address
        up at its next resolution (sooner, as its link is replaced by the twin).
        """
        urls = self.config.server.urls
        port = url_host_port(url)[1]
        for earlier in urls[: urls.index(url)]:
            other = self.discovered.get(earlier)
            link = None if other is None or other.port != port else other.links.get(address)
            # One refused for good no longer counts: this URL then hears the refusal too.
            if link is not None and not link.has_ended:
                return earlier
        return None

    async def _retire_link(self, link: ServerLink, scope: trio.CancelScope, reason: str) -> None:
        """Discovery no longer wants the link: GOAWAY, let in-flight requests finish, close.

        Both carry discovery's ``reason``: a link is let go for more than its
        address leaving DNS (another URL links the address, the agent turned to
        the other family), and the server is told which.
        """
        tunnel = link.tunnel
        if tunnel is not None:
            tunnel.mux.goaway(ErrorCode.NO_ERROR, reason)
            tunnel.wake_writer()
            with trio.move_on_after(self.config.timeouts.grace_s):
                await _wait_answers_delivered(tunnel)
                await tunnel.aclose(reason)
        scope.cancel()
        if link.reconnects:
            # The address may have come back while this link drained: the new link
            # for it then takes the count up, so the address's series, shown all the
            # while, does not go down. Otherwise its series ends here (its count
            # stays in the total); should the address come back, it starts at 0.
            key = (link.url, link.address)
            successor = next(
                (o for o in self.links if o is not link and (o.url, o.address) == key), None
            )
            if successor is not None:
                successor.reconnects += link.reconnects
            else:
                self.retired_reconnects += link.reconnects
        self._set_links(tuple(other for other in self.links if other is not link))

    def _set_links(self, links: tuple[ServerLink, ...]) -> None:
        self.links = links
        self._links_changed.unpark_all()

    async def _serve_link(self, link: ServerLink, startup: _Reporter) -> None:
        """Connect, serve until the connection ends, back off, reconnect: until refused."""
        backoff = Backoff(INITIAL_BACKOFF_S, self.config.timeouts.reconnect_max_s)
        while True:
            if self.draining:
                await self._stand_down(link)
            began = trio.current_time()
            unreachable = False
            try:
                await self._session(link, startup)
                logger.warning("the connection to %s ended", link.label)
            except ServerCertificateError as exc:
                if not link.has_registered:
                    self._end_link(link, exc, startup)
                    return
                logger.error("%s", exc)
            except HandshakeRefusedError as exc:
                self._end_link(link, exc, startup)
                return
            except (
                OSError,
                HandshakeError,
                ConnectionRejected,
                WebSocketClosed,
                TunnelClosedError,
                ProtocolError,
                trio.TooSlowError,
            ) as exc:
                if isinstance(exc, ProtocolError):
                    self.metrics.protocol_errors += 1
                unreachable = isinstance(exc, ServerUnreachableError)
                logger.warning("connection to %s failed: %s", link.label, describe_failure(exc))
            if link.on_failure is not None:
                link.on_failure(link, unreachable=unreachable)
            # Counted from the registration, not the dial: a dial or handshake
            # that times out takes `connect_s` (10 s by default) and must not pass
            # for a session that lasted.
            registered = link.has_registered and link.connected_at >= began
            if registered and trio.current_time() - link.connected_at > STABLE_SESSION_S:
                backoff.reset()
            delay = backoff.next_delay()
            logger.info("reconnecting to %s in %.1fs", link.label, delay)
            await trio.sleep(delay)
            if not self.draining:
                link.reconnects += 1
                self._links_changed.unpark_all()

    async def _stand_down(self, link: ServerLink) -> None:
        """Stay down until the agent is stopped (never returns).

        An agent on its way out takes no new work. A connection opened now would
        announce its routes before its GOAWAY, and the server would route to it
        at once, sending it the requests it holds for them, which the agent
        could only refuse. The drain ends with the agent cancelled, which ends this.
        """
        link.stood_down = True
        self._links_changed.unpark_all()
        await trio.sleep_forever()

    def _end_link(
        self, link: ServerLink, refusal: HandshakeRefusedError, startup: _Reporter
    ) -> None:
        """A refusal is final for its server: never retried, since retrying cannot fix it."""
        link.refusal = refusal
        if len(self.links) > 1:
            logger.error("giving up on %s: %s", link.label, refusal)
        # With one server the refusal is what `serve` raises: its caller says it.
        self._links_changed.unpark_all()
        startup.link_ended()

    def _refusal(self) -> HandshakeRefusedError:
        """What `serve` raises once no link is left: one server's refusal, or all of them."""
        refusals = [(link.label, link.refusal) for link in self.links if link.refusal is not None]
        assert len(refusals) == len(self.links), "links end only by refusal"
        if len(refusals) == 1:
            return refusals[0][1]
        every_certificate = all(isinstance(r, ServerCertificateError) for _, r in refusals)
        kind = ServerCertificateError if every_certificate else HandshakeRefusedError
        return kind(
            "every server refused this agent: "
            + "; ".join(str(r) if url in str(r) else f"{url}: {r}" for url, r in refusals)
        )

    async def drain(self) -> None:
        """Say GOAWAY to every server; wait (up to ``timeouts.grace_s``) for in-flight streams."""
        self.draining = True
        tunnels = [link.tunnel for link in self.links if link.tunnel is not None]
        for tunnel in tunnels:
            tunnel.mux.goaway(ErrorCode.NO_ERROR, "agent shutting down")
            tunnel.wake_writer()
        with trio.move_on_after(self.config.timeouts.grace_s):
            async with trio.open_nursery() as nursery:
                for tunnel in tunnels:
                    nursery.start_soon(_wait_answers_delivered, tunnel)

    async def _session(self, link: ServerLink, startup: _Reporter) -> None:
        try:
            await self._session_tasks(link, startup)
        except BaseExceptionGroup as group:
            # The session's nursery wraps even one failure; the retry loop and the
            # CLI decide on the leaf (network error: retry; refusal: exit).
            raise final_if_refused(first_error(group), link.label) from None
        except ConnectionRejected as exc:
            raise final_if_refused(exc, link.label) from None

    async def _session_tasks(self, link: ServerLink, startup: _Reporter) -> None:
        url = link.url
        target = urllib.parse.urlsplit(url)
        host, port = url_host_port(url)
        ssl_context = client_ssl_context(url, self.config)
        stream = await dial(
            host, port, ssl_context, link.address, timeout_s=self.config.timeouts.connect_s
        )
        # We own the transport, so it is closed however the session ends; the
        # WebSocket's reader task lives in ``connection`` and ends with it.
        async with stream, trio.open_nursery() as connection:
            try:
                with trio.fail_after(self.config.timeouts.connect_s):
                    ws = await self._handshake(connection, stream, host, port, target)
                try:
                    async with trio.open_nursery() as nursery:
                        try:
                            await self._register_and_run(ws, link, nursery, startup)
                        finally:
                            if link.tunnel is not None:
                                link.tunnel = None
                                self._links_changed.unpark_all()
                            nursery.cancel_scope.cancel()
                finally:
                    # Outside the cancelled nursery, so the close is said, not cut short.
                    await ws.aclose()
            finally:
                await trio.aclose_forcefully(stream)

    async def _handshake(
        self,
        nursery: trio.Nursery,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        host: str,
        port: int,
        target: urllib.parse.SplitResult,
    ) -> WebSocket:
        token = self.config.server.token
        assert token is not None
        default_port = 443 if target.scheme == "wss" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        resource = (target.path or "/") + (f"?{target.query}" if target.query else "")
        return await connect(
            nursery,
            stream,
            host_header,
            resource,
            [(b"authorization", b"Bearer " + token.reveal().encode())],
        )

    async def _register_and_run(
        self,
        ws: WebSocket,
        link: ServerLink,
        nursery: trio.Nursery,
        startup: _Reporter,
    ) -> None:
        config = self.config
        mux = Multiplexer(
            Role.AGENT,
            window=config.stream_window_bytes,
            connection_window=config.connection_window_bytes,
            max_streams=config.max_streams,
        )
        tunnel = Tunnel(
            ws,
            mux,
            on_stream=self._serve_stream,
            label=link.label,
            heartbeat_s=config.timeouts.heartbeat_s,
            heartbeat_timeout_s=config.timeouts.heartbeat_timeout_s,
        )
        mux.send_hello(client_id=config.client_id, routes=tuple(self.routes))
        with trio.fail_after(config.timeouts.connect_s):
            await tunnel.flush()
            accepted = await _receive_answer(tunnel)
        refused = accepted.refused
        server = "the server" if len(self.links) == 1 else link.label
        for name, reason in refused:
            logger.error("route %s refused by %s: %s", name, server, reason)
        served = tuple(r for r in self.routes if r not in dict(refused))
        if not served:
            raise HandshakeRefusedError("the server refused every route of this agent")
        link.tunnel = tunnel
        link.connected_at = trio.current_time()
        link.has_registered = True
        link.refused_routes = dict(refused)
        if self.draining:
            # The drain began while this link was registering (links that are down
            # stay down): it leaves like the others, so its server routes no new
            # requests to an agent on its way out.
            mux.goaway(ErrorCode.NO_ERROR, "agent shutting down")
        self._links_changed.unpark_all()
        logger.info("registered with %s: routes %s", link.label, ", ".join(served))
        startup.registered(
            AgentStatus(
                server_url=link.url, routes=served, refused=refused, admin=self.admin_address
            )
        )
        nursery.start_soon(self._leave_when_told, tunnel)
        await tunnel.run()

    @staticmethod
    async def _leave_when_told(tunnel: Tunnel) -> None:
        """After the server's GOAWAY, finish in-flight streams, then hang up and reconnect."""
        await tunnel.going_away.wait()
        if tunnel.closed is not None:
            # Not a GOAWAY: the connection ended, and `Tunnel.run` closes it with the
            # reason (1002 for the server's protocol error), which 1000 must not hide.
            return
        await _wait_answers_delivered(tunnel)
        await tunnel.aclose("the server asked this agent to go away")

    def _serve_stream(self, channel: Channel, head: RequestHead) -> Awaitable[None]:
        """What serves the stream: a coroutine the stream's task awaits.

        Not a coroutine itself, so the task's every resumption crosses one frame fewer.
        """
        route = self.routes.get(head.route)
        if route is None:
            channel.reset(ErrorCode.UNKNOWN_ROUTE, f"no route {head.route!r} here")
            return _nothing()
        self.metrics.stream_started(route.name)
        inspector = self.inspector
        if inspector is None:
            return Replay(channel, head, route, self.pool).run()
        return inspector.serve_stream(channel, head, route)


async def _nothing() -> None:
    pass


async def _wait_answers_delivered(tunnel: Tunnel) -> None:
    """Until every stream has finished and the server has read all of it.

    A stream finishes once its last frames are queued, and up to a window of its
    answer may still wait to be sent: closing then would cut the client's response
    short. Once a PING queued after them is answered, the server has them all.
    """
    while tunnel.in_flight and tunnel.closed is None:
        await tunnel.wait_stream_finished()
    await tunnel.wait_round_trip()


async def _receive_answer(tunnel: Tunnel) -> ev.Accepted:
    answer = await tunnel.receive_handshake()
    if isinstance(answer, ev.Rejected):
        raise HandshakeRefusedError(f"the server rejected this agent: {answer.reason}")
    if not isinstance(answer, ev.Accepted):
        raise RemoteProtocolError("the server's first frame must be ACCEPT or REJECT")
    return answer
