"""The agent's figures for its admin listener: ``/ready``, ``/metrics`` and ``/status``.

`AgentAdmin` is the agent's `pvtunnel._http.admin.AdminSource`. It reads the
agent through `AgentFigures`, the few things it shows, so that it sits beside
`TunnelAgent` without either module importing the other's classes: the agent
builds its admin source, and the admin listener knows only `AdminSource`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol, TypedDict

import trio

from pvtunnel._metrics import ServerLinkFigures, render_agent
from pvtunnel._status import AgentRouteEntry, AgentServerEntry, AgentStatusDocument, iso_utc

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._errors import HandshakeRefusedError
    from pvtunnel._metrics import AgentMetrics
    from pvtunnel._trio.upstream import UpstreamPool


class LinkFigures(Protocol):
    """One server link as the admin listener shows it (`pvtunnel._trio.links.ServerLink`)."""

    @property
    def url(self) -> str: ...
    @property
    def address(self) -> str | None: ...
    @property
    def connected(self) -> bool: ...
    @property
    def connected_at(self) -> float: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def refusal(self) -> HandshakeRefusedError | None: ...
    @property
    def refused_routes(self) -> Mapping[str, str]: ...
    @property
    def server_id(self) -> str | None: ...
    @property
    def same_server_as(self) -> str | None: ...


class AgentFigures(Protocol):
    """What the admin listener shows of an agent (`pvtunnel.TunnelAgent` has all of it)."""

    @property
    def config(self) -> AgentConfig: ...
    @property
    def metrics(self) -> AgentMetrics: ...
    @property
    def pool(self) -> UpstreamPool: ...
    @property
    def routes(self) -> Mapping[str, Route]: ...
    @property
    def links(self) -> Sequence[LinkFigures]: ...
    @property
    def connected(self) -> bool: ...
    @property
    def connected_at(self) -> float: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def draining(self) -> bool: ...


class AgentAdmin:
    """The agent's figures, read from the agent at each request."""

    def __init__(self, agent: AgentFigures) -> None:
        self._agent = agent

    def is_ready(self) -> bool:
        # One registered link is enough: each server only routes to agents it holds.
        return self._agent.connected and not self._agent.draining

    def metrics_text(self) -> str:
        agent = self._agent
        return render_agent(
            agent.metrics,
            connected=agent.connected,
            reconnects=agent.reconnects,
            active_streams=agent.in_flight,
            idle_connections={name: agent.pool.idle_count(name) for name in agent.routes},
            servers=[
                ServerLinkFigures(
                    url=link.url,
                    connected=link.connected,
                    reconnects=link.reconnects,
                    address=link.address,
                )
                for link in agent.links
            ],
            inspector=agent.config.inspect.enabled,
        )

    def status(self) -> AgentStatusDocument:
        agent = self._agent
        metrics = agent.metrics
        # The agent keeps trio's clock (tests may run it on a fake one); wall time here.
        now, wall_now = trio.current_time(), time.time()
        routes = [
            AgentRouteEntry(
                name=name,
                target=_target(route.value, route.port),
                streams=metrics.streams.get(name, 0),
                idle_connections=agent.pool.idle_count(name),
                connect_errors=metrics.upstream_connect_errors.get(name, 0),
                refused_by={
                    link.url: link.refused_routes[name]
                    for link in agent.links
                    if name in link.refused_routes
                },
            )
            for name, route in sorted(agent.routes.items())
        ]
        servers = [
            AgentServerEntry(
                url=link.url,
                address=link.address,
                connected=link.connected,
                **_since(now - link.connected_at if link.connected else None, wall_now),
                reconnects=link.reconnects,
                in_flight=link.in_flight,
                refused=None if link.refusal is None else str(link.refusal),
                server_id=link.server_id,
                same_server_as=link.same_server_as,
            )
            for link in agent.links
        ]
        return AgentStatusDocument(
            kind="agent",
            client_id=agent.config.client_id,
            server=", ".join(agent.config.server.urls),
            ready=self.is_ready(),
            connected=agent.connected,
            draining=agent.draining,
            **_since(now - agent.connected_at if agent.connected else None, wall_now),
            reconnects=agent.reconnects,
            in_flight=agent.in_flight,
            routes=routes,
            servers=servers,
        )


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Since(TypedDict):
    connected_since: str | None
    connected_for_s: float | None


def _since(connected_for_s: float | None, wall_now: float) -> _Since:
    """Both fields from one reading of each clock, so every entry agrees on "now"."""
    if connected_for_s is None:
        return _Since(connected_since=None, connected_for_s=None)
    return _Since(
        connected_since=iso_utc(wall_now - connected_for_s),
        connected_for_s=round(connected_for_s, 3),
    )
