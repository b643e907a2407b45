"""`Tunnel` and `Channel` with connection-level credit (protocol.md section 7).

A server-side and an agent-side `Tunnel` talk over a WebSocket on an in-memory
stream pair, so the Trio layer's bookkeeping can be watched exactly: who wakes when
connection credit comes back, and what happens to bytes a stream's task received
but never consumed (a reset, a forgotten channel).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from pvtunnel._errors import ErrorCode
from pvtunnel._trio.stream import END, Channel
from pvtunnel._trio.tunnel import Tunnel
from pvtunnel._wire import events as ev
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role
from tests.trio.helpers import open_pair

POST = RequestHead(route="app", method=b"POST", target=b"/", headers=())
OK = ResponseHead(status=200, reason=b"OK")
LIMIT_S = 10

Handler = Callable[[Channel, RequestHead], Awaitable[None]]


@asynccontextmanager
async def tunnel_pair(
    handler: Handler, *, agent_connection_window: int
) -> AsyncIterator[tuple[Tunnel, Tunnel]]:
    """(server, agent) tunnels past their handshake, running until the block ends."""
    async with open_pair() as pair, trio.open_nursery() as nursery:
        agent_ws, server_ws = pair.client, pair.server
        server = Tunnel(server_ws, Multiplexer(Role.SERVER), label="server")
        agent = Tunnel(
            agent_ws,
            # Stream windows far above the connection's: only the connection limits.
            Multiplexer(Role.AGENT, window=1 << 20, connection_window=agent_connection_window),
            on_stream=handler,
            label="agent",
        )
        agent.mux.send_hello(client_id="agent-1", routes=("app",))
        await agent.flush()
        assert await server.receive_handshake() == ev.HelloReceived(
            client_id="agent-1", routes=("app",)
        )
        server.mux.accept()
        await server.flush()
        assert await agent.receive_handshake() == ev.Accepted(refused=())
        await nursery.start(server.run)
        await nursery.start(agent.run)
        yield server, agent
        nursery.cancel_scope.cancel()


async def _drain_response(channel: Channel) -> None:
    assert await channel.receive() == OK
    assert await channel.receive() is END


async def test_connection_credit_wakes_a_stream_waiting_for_it() -> None:
    """Stream 2 has stream credit but no connection credit; only the agent consuming
    stream 1's bytes (a WINDOW on stream 0, none for a stream) lets it go on."""
    received: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    first_arrived = trio.Event()
    release_first = trio.Event()

    async def handler(channel: Channel, head: RequestHead) -> None:
        while (item := await channel.receive()) is not END:
            assert isinstance(item, bytes)
            received[channel.stream_id] += item
            if channel.stream_id == 1:
                first_arrived.set()
                await release_first.wait()
            channel.consume(len(item))
        channel.send_response(OK)
        channel.end()

    with trio.fail_after(LIMIT_S):
        async with tunnel_pair(handler, agent_connection_window=100) as (server, _):
            first = server.open_stream(POST, end_stream=False)
            await first.send_data(b"a" * 100)  # the whole connection window
            first.end()
            await first_arrived.wait()
            second = server.open_stream(POST, end_stream=False)
            assert server.mux.send_credit(second.stream_id) == 0
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second.send_data, b"b" * 60)
                await trio.testing.wait_all_tasks_blocked()
                assert received[2] == b""  # parked: no connection credit
                release_first.set()
            second.end()
            await _drain_response(first)
            await _drain_response(second)
            assert received == {1: b"a" * 100, 2: b"b" * 60}


async def test_bytes_a_stream_never_consumed_come_back_when_its_channel_is_forgotten() -> None:
    """The stream's task took the body off the inbox without consuming it and
    finished: the stream is gone on both ends, yet its credit must not leak."""

    async def handler(channel: Channel, head: RequestHead) -> None:
        while await channel.receive() is not END:
            pass  # dropped on the floor, never consumed
        channel.send_response(OK)
        channel.end()

    with trio.fail_after(LIMIT_S):
        async with tunnel_pair(handler, agent_connection_window=400) as (server, agent):
            channel = server.open_stream(POST, end_stream=False)
            await channel.send_data(b"x" * 300)
            channel.end()
            await _drain_response(channel)
            server.forget(channel.stream_id)
            await trio.testing.wait_all_tasks_blocked()
            assert agent.mux.stream_count == 0
            assert agent.mux.held_bytes == 0
            assert server.mux.connection_credit == 400


async def test_consuming_after_a_reset_is_a_no_op() -> None:
    """A reset already gave back what the stream held: consuming it again would
    hand out credit twice (and the multiplexer refuses that)."""
    got_data = trio.Event()
    outcome: list[object] = []

    async def handler(channel: Channel, head: RequestHead) -> None:
        item = await channel.receive()
        assert isinstance(item, bytes)
        got_data.set()
        try:
            await trio.sleep_forever()
        finally:  # cancelled by the reset
            try:
                channel.consume(len(item))
            except Exception as exc:  # the outcome is what is checked
                outcome.append(exc)
            else:
                outcome.append("consumed")

    with trio.fail_after(LIMIT_S):
        async with tunnel_pair(handler, agent_connection_window=400) as (server, agent):
            channel = server.open_stream(POST, end_stream=False)
            await channel.send_data(b"x" * 100)
            await got_data.wait()
            channel.reset(ErrorCode.CANCEL, "client left")
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["consumed"]
            assert agent.mux.held_bytes == 0
            assert server.mux.connection_credit == 400
