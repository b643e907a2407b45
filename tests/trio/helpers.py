"""Shared pieces of the Trio-layer tests."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import attrs
import trio
import trio.testing
import trio_websocket

from pvtunnel._trio.websocket import WebSocket, connect, read_upgrade
from pvtunnel._wire.mux import Multiplexer, Role

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence


LIMIT_S: Final = 10


def handshaken_muxes() -> tuple[Multiplexer, Multiplexer]:
    """A server multiplexer and its agent's, past the handshake (route "app")."""
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="a", routes=("app",))
    server = Multiplexer(Role.SERVER)
    server.receive_data(agent.data_to_send())
    server.accept()
    agent.receive_data(server.data_to_send())
    return server, agent


@attrs.frozen
class Pair:
    client: WebSocket
    server: WebSocket
    request: trio_websocket.WebSocketRequest


@asynccontextmanager
async def open_pair(
    resource: str = "/tunnel", headers: Sequence[tuple[bytes, bytes]] = ()
) -> AsyncIterator[Pair]:
    """Our client and our server over a memory stream pair; both readers end with the block."""
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        clients: list[WebSocket] = []

        async def dial() -> None:
            clients.append(await connect(nursery, client_end, "server.example", resource, headers))

        with trio.fail_after(LIMIT_S):
            async with trio.open_nursery() as handshake:
                handshake.start_soon(dial)
                request = await read_upgrade(nursery, server_end)
                assert request is not None
                connection = await request.accept()
        (client,) = clients
        server = WebSocket(connection, server_end, "agent")
        try:
            yield Pair(client, server, request)
        finally:
            await trio.aclose_forcefully(client_end)
            await trio.aclose_forcefully(server_end)
