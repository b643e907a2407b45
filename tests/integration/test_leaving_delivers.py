"""An agent that leaves mid-response still delivers the whole response.

A stream finishes on the agent once its last frames are queued, and up to a
window of its answer may still wait to be sent. Every way the agent leaves a
server (its own drain before it exits, the server's GOAWAY, the server's
address leaving DNS) must wait until the server has read it all before the
connection closes. The agent's link to the server goes through a relay that
delays each read, so the queue is long when the agent starts to leave.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio
import trio.testing

from pvtunnel._config import AgentTimeouts
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.discovery import LEFT_DNS
from tests.integration.client import Client
from tests.integration.harness import Running, agent_config, server_config, start_server
from tests.integration.listen import serve_on_loopback
from tests.integration.relay import Relay

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._trio.links import AgentStatus

SIZE: Final = 24 << 20
LIMIT_S: Final = 60


class BigUpstream:
    """Answers one request with `SIZE` bytes in one write, once ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.asked = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_loopback(self._handle, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                if not (chunk := await stream.receive_some(65536)):
                    return
                data += chunk
            self.asked.set()
            await self.release.wait()
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
            await stream.send_all(b"x" * SIZE)
            await trio.sleep_forever()


@attrs.define
class Setup:
    running: Running
    agent: TunnelAgent
    agent_scope: trio.CancelScope
    upstream: BigUpstream


async def start_slow_link(nursery: trio.Nursery, *, heartbeat_s: float = 5.0) -> Setup:
    # Windows big enough that the whole answer is queued on the agent at once.
    limits = {"stream_window_bytes": 32 << 20, "connection_window_bytes": 64 << 20}
    running = await start_server(nursery, server_config(limits=limits))
    relay = Relay(running.addresses.internal[1])
    relay.delay_s = 0.002
    relay_port = await nursery.start(relay.serve)
    upstream = BigUpstream()
    port = await nursery.start(upstream.serve)
    config = agent_config(
        running.addresses, {"app": port}, timeouts=AgentTimeouts(heartbeat_s=heartbeat_s)
    )
    config = attrs.evolve(
        config, server=attrs.evolve(config.server, urls=(f"ws://127.0.0.1:{relay_port}",))
    )
    agent = TunnelAgent(config)
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[AgentStatus] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await agent.serve(task_status=task_status)

    await nursery.start(run)
    return Setup(running, agent, scope, upstream)


async def fetch_big(port: int, received: list[tuple[int, int]]) -> None:
    async with await Client.connect(port) as client:
        reply = await client.request(b"GET", b"/big")
    received.append((reply.status, len(reply.body)))


async def agent_drains_and_exits(setup: Setup) -> None:
    """What `pvtunnel agent` does on SIGTERM: drain, then cancel everything."""
    await setup.agent.drain()
    setup.agent_scope.cancel()


async def server_says_goaway(setup: Setup) -> None:
    await setup.running.server.drain()


async def address_leaves_dns(setup: Setup) -> None:
    (link,) = setup.agent.links
    await setup.agent._retire_link(link, trio.CancelScope(), LEFT_DNS)


@pytest.mark.parametrize(
    ("leave", "heartbeat_s"),
    [
        pytest.param(agent_drains_and_exits, 5.0, id="agent-drains"),
        pytest.param(server_says_goaway, 5.0, id="server-goaway"),
        # A heartbeat PONG for a PING queued before the answer's last bytes must
        # not pass for the round trip that says the server has them all.
        pytest.param(address_leaves_dns, 0.01, id="address-left-dns"),
    ],
)
async def test_an_agent_leaving_mid_response_delivers_all_of_it(
    leave: Callable[[Setup], Awaitable[None]], heartbeat_s: float
) -> None:
    received: list[tuple[int, int]] = []
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            setup = await start_slow_link(nursery, heartbeat_s=heartbeat_s)
            async with trio.open_nursery() as client:
                client.start_soon(fetch_big, setup.running.port, received)
                await setup.upstream.asked.wait()
                nursery.start_soon(leave, setup)
                # The leaving has begun (it waits for the stream) before the answer comes.
                await trio.testing.wait_all_tasks_blocked()
                setup.upstream.release.set()
            nursery.cancel_scope.cancel()
    assert received == [(200, SIZE)]
