"""The admin listener: ``/metrics``, ``/live``, ``/ready`` and ``/status`` over HTTP/1.1.

A separate port from the tunnel's, loopback by default, so that
probes and scrapes never compete with proxied traffic and the figures are not
exposed where clients connect. One request per connection, then close: scrapers
and probes ask every few seconds, and a short-lived connection under one deadline
needs no idle-timeout bookkeeping. What to answer is decided by
`pvtunnel._http.admin.respond`; `ServerAdmin` and `AgentAdmin` read the figures.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Final, TypedDict

import h11
import trio

from pvtunnel._http.admin import AdminResponse, AdminSource, respond
from pvtunnel._http.inspect import is_inspect_path
from pvtunnel._metrics import ServerLinkFigures, render_agent, render_server
from pvtunnel._status import (
    AgentRouteEntry,
    AgentServerEntry,
    AgentStatusDocument,
    ServerAgentEntry,
    ServerRouteEntry,
    ServerStatusDocument,
    iso_utc,
)
from pvtunnel._trio.http11 import H11Stream
from pvtunnel._trio.inspect_http import answer_inspect
from pvtunnel._trio.sockio import BROKEN

if TYPE_CHECKING:
    from pvtunnel._config import AdminConfig, Secret
    from pvtunnel._trio.agent import TunnelAgent
    from pvtunnel._trio.inspector import Inspector
    from pvtunnel._trio.server import TunnelServer

logger = logging.getLogger("pvtunnel.admin")

# A probe or a scrape is one small request: a client still busy after this is stuck.
CONNECTION_DEADLINE_S: Final = 10.0
MAX_HEAD_BYTES: Final = 16384


async def serve_admin(
    config: AdminConfig,
    source: AdminSource,
    inspector: Inspector | None = None,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints until cancelled (startable: ``started`` gets the address).

    Args:
        config: Where to listen, and the token ``/metrics`` and ``/status`` require.
        source: The server or agent whose figures to show.
        inspector: The agent's request inspector, served at ``/inspect``.

    Raises:
        OSError: The port cannot be bound (taken, or no such address).
    """
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    sockname = listeners[0].socket.getsockname()
    address = (str(sockname[0]), int(sockname[1]))
    handler = functools.partial(
        _serve_connection, source=source, inspector=inspector, token=config.token
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_listeners, handler, listeners))
        logger.info("admin listener on %s:%d", *address)
        task_status.started(address)


async def _serve_connection(
    stream: trio.abc.Stream,
    *,
    source: AdminSource,
    inspector: Inspector | None,
    token: Secret | None,
) -> None:
    http = H11Stream(h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES), stream)
    inspect: h11.Request | None = None
    try:
        with trio.move_on_after(CONNECTION_DEADLINE_S):
            try:
                event = await http.next_event()
            except h11.RemoteProtocolError as exc:
                answer = AdminResponse(status=exc.error_status_hint, body=b"malformed request\n")
                await _send(http, answer, head_only=False)
                return
            if isinstance(event, h11.Request):
                if is_inspect_path(event.target):
                    inspect = event
                else:
                    answer = respond(source, token, event.method, event.target, event.headers)
                    await _send(http, answer, head_only=event.method == b"HEAD")
        if inspect is not None:
            # Served past the deadline: its event stream lasts as long as the page.
            answer_or_none = await answer_inspect(http, inspect, inspector, token)
            if answer_or_none is not None:
                with trio.move_on_after(CONNECTION_DEADLINE_S):
                    await _send(http, answer_or_none, head_only=inspect.method == b"HEAD")
    except (*BROKEN, h11.RemoteProtocolError):
        pass
    except Exception:
        # Boundary: a failing figure must not take the listener (or its owner) down.
        logger.exception("admin request failed")
        await _send(http, AdminResponse(status=500, body=b"internal error\n"), head_only=False)
    finally:
        with trio.move_on_after(1, shield=True):
            await stream.aclose()


async def _send(http: H11Stream, answer: AdminResponse, *, head_only: bool) -> None:
    if http.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", b"%d" % len(answer.body)),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
        *answer.headers,
    ]
    try:
        await http.send(h11.Response(status_code=answer.status, headers=headers))
        if not head_only:
            await http.send(h11.Data(data=answer.body))
        await http.send(h11.EndOfMessage())
    except (*BROKEN, h11.LocalProtocolError):
        return


class ServerAdmin:
    """The server's figures, read from its live state at each request."""

    def __init__(self, server: TunnelServer) -> None:
        self._server = server

    def is_ready(self) -> bool:
        state = self._server.state
        return state.listening and not state.draining and not state.withdrawn

    def metrics_text(self) -> str:
        state = self._server.state
        return render_server(
            state.metrics,
            active_streams=state.in_flight,
            connected_agents=len(state.sessions),
            held_requests=state.held.waiting,
        )

    def status(self) -> ServerStatusDocument:
        state = self._server.state
        now = time.time()
        sessions = sorted(state.sessions, key=lambda s: (s.client_id, s.connected_at))
        agents = [
            ServerAgentEntry(
                client_id=session.client_id,
                address=session.address,
                connected_since=iso_utc(session.connected_at),
                connected_for_s=round(now - session.connected_at, 3),
                routes=list(session.routes),
                in_flight=session.in_flight,
                requests=session.requests,
            )
            for session in sessions
        ]
        routes = [
            ServerRouteEntry(name=name, agents=sorted(session.client_id for session in serving))
            for name, serving in sorted(state.router.names().items())
        ]
        return ServerStatusDocument(
            kind="server",
            ready=self.is_ready(),
            draining=state.draining,
            in_flight=state.in_flight,
            agents=agents,
            routes=routes,
        )


class AgentAdmin:
    """The agent's figures, read from the agent at each request."""

    def __init__(self, agent: TunnelAgent) -> None:
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
