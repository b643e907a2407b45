#!/usr/bin/env python3
"""What the request inspector costs the agent: sequential requests with it off and on.

Usage::

    python benchmarks/inspector_cost.py               # 3 rounds of 2000
    python benchmarks/inspector_cost.py --requests 500 --rounds 1

Runs a server, an agent and an h11 upstream in one Trio process on 127.0.0.1, and
one keep-alive client that sends GETs with 1 KiB answers through the tunnel, one
after another. Each round measures the agent with the inspector off, then on, on
fresh tunnels; rounds alternate so a neighbour's load falls on both. Off, the agent
tests one attribute per stream (``TunnelAgent._serve_stream``), so "off" is the
tunnel as it is; the on/off ratio is what recording each exchange costs.
A system benchmark with wrk belongs to ``run.py``; this is the quick look.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Final

import h11
import trio

from pvtunnel._config import (
    AgentConfig,
    InspectConfig,
    InternalConfig,
    Route,
    RouteType,
    Secret,
    ServerConfig,
    ServerEndpoint,
)
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.demo import read_request, send_response
from pvtunnel._trio.server import ServerAddresses, TunnelServer

TOKEN: Final = "inspector-cost-token-0123456789"
PAYLOAD: Final = b"x" * 1024


async def upstream_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while await read_request(stream, conn) is not None:
            await send_response(stream, conn, PAYLOAD)
            conn.start_next_cycle()


async def serve_upstream(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, upstream_connection, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def sequential(port: int, requests: int) -> float:
    """Requests per second of one keep-alive client."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"app")])
    began = time.perf_counter()
    async with stream:
        for _ in range(requests):
            await stream.send_all(
                (conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            )
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
            conn.start_next_cycle()
    return requests / (time.perf_counter() - began)


async def one_run(requests: int, *, inspect: bool) -> float:
    async with trio.open_nursery() as nursery:
        upstream_port = await nursery.start(serve_upstream)
        server = TunnelServer(
            ServerConfig(host="127.0.0.1", internal=InternalConfig(port=0, token=Secret(TOKEN)))
        )
        addresses: ServerAddresses = await nursery.start(server.serve)
        host, port = addresses.internal
        agent = TunnelAgent(
            AgentConfig(
                client_id="cost",
                server=ServerEndpoint(urls=(f"ws://{host}:{port}",), token=Secret(TOKEN)),
                routes=(
                    Route(name="app", value="127.0.0.1", port=upstream_port, type=RouteType.IP),
                ),
                inspect=InspectConfig(enabled=inspect),
            )
        )
        await nursery.start(agent.serve)
        rate = await sequential(addresses.external[1], requests)
        nursery.cancel_scope.cancel()
    return rate


async def main_async(requests: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for label in ("off", "on"):
            rates[label].append(await one_run(requests, inspect=label == "on"))
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"{requests} sequential requests x {rounds} rounds (median req/s)")
    print(f"inspector off: {off:8.0f} req/s   {[round(r) for r in rates['off']]}")
    print(f"inspector on:  {on:8.0f} req/s   {[round(r) for r in rates['on']]}")
    print(f"on / off: {on / off:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.requests <= 100000 or not 1 <= args.rounds <= 20:
        parser.error("--requests in [1, 100000], --rounds in [1, 20]")
    trio.run(main_async, args.requests, args.rounds)


if __name__ == "__main__":
    main()
