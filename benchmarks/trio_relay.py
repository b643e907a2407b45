#!/usr/bin/env python3
"""The ``trio-relay`` benchmark row: a reverse tunnel in Trio that parses nothing.

Why it exists: SPEC section 6 sets pvtunnel's bars as ratios to ``ssh -R``, a tunnel in
C. This row measures the least any two-process Trio tunnel can cost on the same
machine in the same run: no HTTP parsing, no WebSocket, no flow-control windows, no
timeouts and no routing; only bytes moved between sockets and one multiplexed
connection, framed as (stream id, length, payload). Its socket reads and writes are
pvtunnel's own (`fast_io`, which skips Trio's extra scheduling round), so the
difference between the two rows is pvtunnel's protocol work (HTTP, WebSocket,
multiplexing, limits), and what this row costs is the runtime's.

Usage (``run.py`` starts both)::

    python benchmarks/trio_relay.py front --listen PORT --tunnel TUNNEL_PORT
    python benchmarks/trio_relay.py back --tunnel TUNNEL_PORT --upstream UPSTREAM_PORT

The front accepts one back on TUNNEL_PORT, then opens PORT for clients. Each client
connection gets a stream id; the back opens one upstream connection per stream id.
A zero-length frame closes a stream. Both sides stop on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import struct
import sys
from typing import TYPE_CHECKING, Final

import trio

from pvtunnel._trio.sockio import fast_io

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._trio.sockio import ByteStream

LOOPBACK: Final = "127.0.0.1"
HEADER: Final = struct.Struct("!II")  # stream id, payload length (0: the stream ends)
RECEIVE_SIZE: Final = 65536
TUNNEL_RECEIVE_SIZE: Final = 262144
# Senders wait while this much is queued for the tunnel: memory stays bounded for 100 MiB
# transfers, and small frames still leave in one write per scheduler pass.
HIGH_WATER: Final = 1 << 20
CONNECT_TIMEOUT_S: Final = 10.0
GONE: Final = (trio.BrokenResourceError, trio.ClosedResourceError)  # the peer left


def _nodelay(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Tunnel:
    """One TCP connection carrying every stream; writes are coalesced by a writer task."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream: ByteStream = fast_io(stream)
        self.pending = bytearray()
        self.queued = trio.Event()
        self.drained = trio.Event()

    async def send(self, stream_id: int, data: bytes | bytearray) -> None:
        self.pending += HEADER.pack(stream_id, len(data))
        self.pending += data
        self.queued.set()
        while len(self.pending) >= HIGH_WATER:
            await self.drained.wait()

    async def write_forever(self) -> None:
        while True:
            await self.queued.wait()
            self.queued = trio.Event()
            while self.pending:
                data, self.pending = self.pending, bytearray()
                await self.stream.send_all(data)
            self.drained.set()
            self.drained = trio.Event()

    async def read_frames(self, deliver: Callable[[int, bytes], Awaitable[None]]) -> None:
        buffer = bytearray()
        while chunk := await self.stream.receive_some(TUNNEL_RECEIVE_SIZE):
            buffer += chunk
            start = 0
            while len(buffer) - start >= HEADER.size:
                stream_id, length = HEADER.unpack_from(buffer, start)
                end = start + HEADER.size + length
                if end > len(buffer):
                    break
                await deliver(stream_id, bytes(buffer[start + HEADER.size : end]))
                start = end
            del buffer[:start]


class Local:
    """A client or upstream connection: the stream to close, and its fast reads and writes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        _nodelay(stream)
        self.stream = stream
        self.io: ByteStream = fast_io(stream)

    async def copy_to(self, tunnel: Tunnel, stream_id: int) -> None:
        """This connection's bytes into the tunnel, then the end of the stream."""
        with contextlib.suppress(*GONE):
            while data := await self.io.receive_some(RECEIVE_SIZE):
                await tunnel.send(stream_id, data)
        await tunnel.send(stream_id, b"")

    async def write(self, data: bytes) -> None:
        """Bytes from the tunnel (none: the stream ended, so the connection closes)."""
        if not data:
            await self.stream.aclose()
            return
        with contextlib.suppress(*GONE):
            await self.io.send_all(data)


async def front(listen_port: int, tunnel_port: int) -> None:
    listeners = await trio.open_tcp_listeners(tunnel_port, host=LOOPBACK)
    tunnel_stream = await listeners[0].accept()
    await listeners[0].aclose()
    _nodelay(tunnel_stream)
    tunnel = Tunnel(tunnel_stream)
    clients: dict[int, Local] = {}
    next_id = 1

    async def deliver(stream_id: int, data: bytes) -> None:
        if (client := clients.get(stream_id)) is not None:
            await client.write(data)

    async def serve_client(stream: trio.SocketStream) -> None:
        nonlocal next_id
        stream_id, next_id = next_id, next_id + 1
        client = clients[stream_id] = Local(stream)
        try:
            await client.copy_to(tunnel, stream_id)
        finally:
            del clients[stream_id]
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel.write_forever)
        nursery.start_soon(tunnel.read_frames, deliver)
        await trio.serve_tcp(serve_client, listen_port, host=LOOPBACK)


async def back(tunnel_port: int, upstream_port: int) -> None:
    with trio.fail_after(CONNECT_TIMEOUT_S):
        while True:  # the front may not listen yet
            try:
                tunnel_stream = await trio.open_tcp_stream(LOOPBACK, tunnel_port)
                break
            except OSError:
                await trio.sleep(0.05)
    _nodelay(tunnel_stream)
    tunnel = Tunnel(tunnel_stream)
    upstreams: dict[int, Local] = {}

    async with trio.open_nursery() as nursery:

        async def deliver(stream_id: int, data: bytes) -> None:
            upstream = upstreams.pop(stream_id, None) if not data else upstreams.get(stream_id)
            if upstream is None:
                if not data:
                    return
                stream = await trio.open_tcp_stream(LOOPBACK, upstream_port)
                upstream = upstreams[stream_id] = Local(stream)
                nursery.start_soon(upstream.copy_to, tunnel, stream_id)
            await upstream.write(data)

        nursery.start_soon(tunnel.write_forever)
        await tunnel.read_frames(deliver)
        nursery.cancel_scope.cancel()


async def run_until_signalled(role: Callable[..., Awaitable[None]], *args: int) -> None:
    """Run ``role`` until SIGINT or SIGTERM, then cancel it: a clean exit, status 0."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_role() -> None:
                await role(*args)
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_role)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=("front", "back"))
    parser.add_argument("--listen", type=int, help="front: the port for clients")
    parser.add_argument("--tunnel", type=int, required=True, help="the tunnel's port")
    parser.add_argument("--upstream", type=int, help="back: the upstream's port")
    args = parser.parse_args(argv)
    if args.role == "front":
        if args.listen is None:
            parser.error("front needs --listen")
        trio.run(run_until_signalled, front, args.listen, args.tunnel)
    else:
        if args.upstream is None:
            parser.error("back needs --upstream")
        trio.run(run_until_signalled, back, args.tunnel, args.upstream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
