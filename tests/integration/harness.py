"""Start a real server, agents and upstreams on 127.0.0.1 (port 0) inside a test's nursery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from pvtunnel._config import (
    AgentConfig,
    ExternalConfig,
    InternalConfig,
    LimitsConfig,
    Route,
    RouteType,
    Secret,
    ServerConfig,
    ServerEndpoint,
    TimeoutsConfig,
)
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.server import ServerAddresses, TunnelServer
from tests.integration.upstream import RecordingUpstream

if TYPE_CHECKING:
    from collections.abc import Callable

    from pvtunnel._trio.links import AgentStatus

TOKEN = "test-internal-token-0123456789"


def server_config(
    *,
    external: dict[str, Any] | None = None,
    timeouts: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    internal: dict[str, Any] | None = None,
) -> ServerConfig:
    internal_fields: dict[str, Any] = {"port": 0, "token": Secret(TOKEN)}
    return ServerConfig(
        host="127.0.0.1",
        internal=InternalConfig(**(internal_fields | (internal or {}))),
        external=ExternalConfig(**({"port": 0} | (external or {}))),
        # Unknown names get 404 at once unless a test asks for the startup hold.
        timeouts=TimeoutsConfig(**({"startup_hold_s": 0.0} | (timeouts or {}))),
        limits=LimitsConfig(**(limits or {})),
    )


def internal_url(addresses: ServerAddresses) -> str:
    """The URL an agent dials for the server at ``addresses``."""
    host, port = addresses.internal
    return f"ws://{host}:{port}"


def agent_config(
    addresses: ServerAddresses,
    routes: dict[str, int],
    *,
    client_id: str = "agent-1",
    token: str = TOKEN,
    **changes: Any,
) -> AgentConfig:
    return AgentConfig(
        client_id=client_id,
        server=ServerEndpoint(urls=(internal_url(addresses),), token=Secret(token)),
        routes=tuple(
            Route(name=name, value="127.0.0.1", port=upstream_port, type=RouteType.IP)
            for name, upstream_port in routes.items()
        ),
        **changes,
    )


@attrs.define
class Running:
    server: TunnelServer
    addresses: ServerAddresses

    @property
    def port(self) -> int:
        return self.addresses.external[1]

    @property
    def url(self) -> str:
        """The URL an agent dials for this server."""
        return internal_url(self.addresses)


async def start_server(nursery: trio.Nursery, config: ServerConfig | None = None) -> Running:
    server = TunnelServer(config or server_config())
    addresses: ServerAddresses = await nursery.start(server.serve)
    return Running(server=server, addresses=addresses)


async def wait_for_sessions(running: Running, count: int) -> None:
    """Until the server holds ``count`` agent sessions."""
    while len(running.server.sessions) != count:
        await running.server.state.wait_sessions_changed()


async def wait_for(agent: TunnelAgent, condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds, checked each time the agent's links change."""
    while not condition():
        await agent.wait_links_changed()


async def start_agent(
    nursery: trio.Nursery, running: Running, routes: dict[str, int], **kwargs: Any
) -> tuple[TunnelAgent, AgentStatus, trio.CancelScope]:
    """Start an agent in its own cancel scope, so a test can kill it alone."""
    agent = TunnelAgent(agent_config(running.addresses, routes, **kwargs))
    scope_box: list[trio.CancelScope] = []

    async def run(*, task_status: trio.TaskStatus[AgentStatus] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            scope_box.append(scope)
            await agent.serve(task_status=task_status)

    status: AgentStatus = await nursery.start(run)
    return agent, status, scope_box[0]


async def start_upstream(nursery: trio.Nursery, name: str) -> tuple[RecordingUpstream, int]:
    upstream = RecordingUpstream(name)
    port: int = await nursery.start(upstream.serve)
    return upstream, port


async def start_tunnel(
    nursery: trio.Nursery, config: ServerConfig | None = None, *, route: str = "app"
) -> tuple[Running, RecordingUpstream]:
    """The common case: a server, one recording upstream "svc" and an agent serving it."""
    running = await start_server(nursery, config)
    upstream, port = await start_upstream(nursery, "svc")
    await start_agent(nursery, running, {route: port})
    return running, upstream


async def start_server_in_scope(
    nursery: trio.Nursery, config: ServerConfig
) -> tuple[Running, trio.CancelScope]:
    """A server a test can stop alone (and start again on the same ports)."""
    server = TunnelServer(config)
    scopes: list[trio.CancelScope] = []

    async def run(
        *, task_status: trio.TaskStatus[ServerAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await server.serve(task_status=task_status)

    addresses: ServerAddresses = await nursery.start(run)
    return Running(server=server, addresses=addresses), scopes[0]


def start_drain(nursery: trio.Nursery, running: Running) -> trio.Event:
    """Begin ``running``'s drain in ``nursery``; the event is set once it returns."""
    drained = trio.Event()

    async def drain() -> None:
        await running.server.drain()
        drained.set()

    nursery.start_soon(drain)
    return drained
