"""Run a pvtunnel agent inside your own Trio program.

The program serves a small HTTP app of its own on 127.0.0.1 and publishes it
through a pvtunnel server with an agent in the same nursery: no second process,
no agent.toml. The agent is configured with the same objects the CLI builds, and
``nursery.start`` returns once the server has accepted its routes.

    PVTUNNEL_TOKEN=... python examples/embedding.py ws://proxy.example.com:8081
    curl -H 'Host: embedded' http://proxy.example.com:8080/

It also opens the agent's admin listener on a free loopback port (``/metrics``,
``/status``, ``/live``, ``/ready``) and prints where. SIGINT or SIGTERM drains
the agent (GOAWAY, in-flight requests finish) and exits 0.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import h11
import trio

import pvtunnel

ROUTE = "embedded"
GREETING = b"Hello from a program that embeds a pvtunnel agent!\n"


async def serve_app(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """The program's own service: answers every request with `GREETING`."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_listeners, answer, listeners))
        task_status.started(listeners[0].socket.getsockname()[1])


async def answer(stream: trio.SocketStream) -> None:
    """One keep-alive connection: read each request whole, answer it."""
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            await _answer_requests(conn, stream)
        except (h11.ProtocolError, trio.BrokenResourceError):
            return  # a broken client only loses its own connection


async def _answer_requests(conn: h11.Connection, stream: trio.SocketStream) -> None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.EndOfMessage):
            headers = [
                (b"content-type", b"text/plain"),
                (b"content-length", b"%d" % len(GREETING)),
            ]
            data = conn.send(h11.Response(status_code=200, headers=headers))
            data += conn.send(h11.Data(data=GREETING)) + conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed | h11.PAUSED):
            return


async def main(server_url: str, token: str) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            app_port: int = await nursery.start(serve_app)
            agent = pvtunnel.TunnelAgent(
                pvtunnel.AgentConfig(
                    client_id="embedded-agent",
                    server=pvtunnel.ServerEndpoint(
                        urls=(server_url,), token=pvtunnel.Secret(token)
                    ),
                    routes=(
                        pvtunnel.Route(
                            name=ROUTE,
                            value="127.0.0.1",
                            port=app_port,
                            type=pvtunnel.RouteType.IP,
                        ),
                    ),
                    admin=pvtunnel.AdminConfig(port=0),
                )
            )
            status: pvtunnel.AgentStatus = await nursery.start(agent.serve)
            admin = f"http://{status.admin[0]}:{status.admin[1]}" if status.admin else "off"
            print(
                f"embedding: serving route {ROUTE!r} through {status.server_url}; admin {admin}",
                flush=True,
            )
            async for _signal in signals:
                break
            await agent.drain()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) != 2 or "PVTUNNEL_TOKEN" not in os.environ:
        sys.exit("usage: PVTUNNEL_TOKEN=... python examples/embedding.py ws://HOST:PORT")
    trio.run(main, sys.argv[1], os.environ["PVTUNNEL_TOKEN"])
