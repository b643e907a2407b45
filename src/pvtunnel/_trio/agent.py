"""`pvtunnel agent`: dial out to the servers, announce routes, replay what they send.

The agent holds one connection to each configured server URL at once (like
cloudflared's HA connections): servers behind a load balancer share no state, so
every one of them must hear from every agent. Each URL is a
`ServerLink` with its own reconnect loop and backoff (`pvtunnel._trio.links`); the
upstream pool, the routes and the metrics are shared.

A link ends only when its server refuses the agent for good. The agent raises
`HandshakeRefusedError` only once every link has ended that way: while one
server still takes it, the agent has work to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from pvtunnel._config import Discovery
from pvtunnel._errors import (
    ConfigError,
    ErrorCode,
    HandshakeRefusedError,
    ServerCertificateError,
)
from pvtunnel._metrics import AgentMetrics
from pvtunnel._trio.admin import serve_admin
from pvtunnel._trio.agent_admin import AgentAdmin
from pvtunnel._trio.discovery import DiscoveredServer, resolve_addresses, url_host_port
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.inspector import Inspector
from pvtunnel._trio.links import AgentStatus, ServerLink, serve_link, wait_answers_delivered
from pvtunnel._trio.upstream import Replay, UpstreamPool

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._trio.stream import Channel
    from pvtunnel._wire.heads import RequestHead


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
        self._served = False
        self.admin_address: tuple[str, int] | None = None
        self._links_lot = trio.lowlevel.ParkingLot()

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
        await self._links_lot.park()

    def _links_changed(self) -> None:
        """Wake whoever waits in `wait_links_changed`: a link's loop says so (`LinkOwner`)."""
        self._links_lot.unpark_all()

    async def serve(
        self, *, task_status: trio.TaskStatus[AgentStatus] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Stay connected to every server until cancelled (startable).

        Returns to ``nursery.start`` once the first server registers the agent;
        the other links keep connecting and reconnecting on their own. With
        ``config.admin`` set, the admin listener starts first, so probes are
        answered (``/ready``: 503) while the agent is not yet registered.

        A `TunnelAgent` serves once: its links and their state are that one
        run's. To serve again, create a new one.

        Raises:
            HandshakeRefusedError: every server refused the token, the hello or
                the certificate (with one URL: that server's refusal itself).
            OSError: the admin port cannot be bound.
            RuntimeError: this agent has served (or is serving) already.
        """
        if self._served:
            raise RuntimeError("a TunnelAgent serves once: create a new TunnelAgent to serve again")
        self._served = True
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
                        nursery.start_soon(serve_link, self, link, startup)
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
                await serve_link(self, link, reporter)

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
                await wait_answers_delivered(tunnel)
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
        self._links_lot.unpark_all()

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
                    nursery.start_soon(wait_answers_delivered, tunnel)

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
