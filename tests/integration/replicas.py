"""Server replicas on 127.0.0.1, 127.0.0.2, ... sharing one internal port.

That is how the pods behind a headless Service look to an agent that discovers
them through DNS; the discovery tests and the dnsmasq test both start them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from tests.integration.client import Client, Reply
from tests.integration.harness import Running, server_config, start_server

if TYPE_CHECKING:
    import trio

    from pvtunnel._config import ServerConfig

NAME = "servers.pvtunnel.test"


def replica_config(address: str, internal_port: int, **internal: Any) -> ServerConfig:
    config = server_config(internal={"port": internal_port, **internal})
    return attrs.evolve(config, host=address)


async def start_replicas(nursery: trio.Nursery, count: int, **internal: Any) -> list[Running]:
    """``count`` servers on 127.0.0.1, 127.0.0.2, ... sharing one internal port."""
    first = await start_server(nursery, replica_config("127.0.0.1", 0, **internal))
    port = first.addresses.internal[1]
    replicas = [first]
    for index in range(2, count + 1):
        config = replica_config(f"127.0.0.{index}", port, **internal)
        replicas.append(await start_server(nursery, config))
    return replicas


async def get(running: Running, target: bytes) -> Reply:
    """GET ``target`` through a replica's external port (on its own address)."""
    async with await Client.connect(running.port, running.addresses.external[0]) as client:
        return await client.request(b"GET", target)
