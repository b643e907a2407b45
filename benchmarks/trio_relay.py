#!/usr/bin/env python3
"""The ``trio-relay`` and ``h11-relay`` benchmark rows: the least a tunnel on Trio costs.

Why they exist: pvtunnel's speed bars (``docs/performance.md``) are ratios to
``ssh -R``, a tunnel in C. These rows measure, on the same machine in the same run,
what two Trio processes cost when they do nothing but what any such tunnel must:

- ``trio-relay`` (``--mode raw``) parses nothing. Each client connection is a stream
  of frames over one multiplexed TCP connection; the back opens one upstream
  connection per stream. What this row costs is the runtime's.
- ``h11-relay`` (``--mode http``) adds the h11 work any tunnel that parses HTTP must
  do per request, and nothing else: the front parses the request and serialises the
  response; the back serialises the request and parses the response. Heads cross
  as `marshal` tuples. A head is validated once, by the parser that read it: the
  events rebuilt on the other side pass h11's ``_parsed=True``, which skips the
  second run of its header regexes (framing headers are still normalised, and
  methods and targets still checked). The front writes what a pass of the tunnel
  reader delivered for a client in one send (a response head, a small body and
  its end together), and flushes at `FLUSH_BYTES` on the way, as pvtunnel's front
  does. What this row adds over ``trio-relay`` is h11's cost; what ``pvtunnel``
  adds over this row is its own (WebSocket, flow control, header rules, limits,
  routing, logs and metrics).

Both use pvtunnel's socket reads and writes (`fast_io`, which skips Trio's extra
scheduling round) and its heap settings (`_heap`), and send with an instrument of
their own (`_end_of_pass.py`: each scheduler pass's frames leave in one write when
the pass ends, or as soon as a batch of pvtunnel's early-send size is queued, as
pvtunnel's own do, so that under load the two processes work at once instead of
taking turns). Neither has timeouts, windows or error handling beyond closing:
they are instruments, not tunnels. Frames are (stream id, kind, length, payload).

Usage (``run.py`` starts both)::

    python benchmarks/trio_relay.py front --listen PORT --tunnel TUNNEL_PORT [--mode http]
    python benchmarks/trio_relay.py back --tunnel TUNNEL_PORT --upstream PORT [--mode http]

The front accepts one back on TUNNEL_PORT, then opens PORT for clients. Both sides
stop on SIGINT or SIGTERM, or when the tunnel closes.
"""

from __future__ import annotations

import argparse
import contextlib
import marshal
import signal
import struct
import sys
from typing import TYPE_CHECKING, Final

import h11
import trio
from _end_of_pass import end_of_pass_sender

from pvtunnel._heap import tune_heap
from pvtunnel._trio.batching import EARLY_SEND_PIECES
from pvtunnel._trio.sockio import BROKEN, RECEIVE_SIZE, FastSocket, fast_io

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._trio.sockio import ByteStream

LOOPBACK: Final = "127.0.0.1"
HEADER: Final = struct.Struct("!IBI")  # stream id, kind, payload length
DATA, HEAD, END, CLOSE = range(4)  # kinds; HEAD and END only in http mode
TUNNEL_RECEIVE_SIZE: Final = 262144
# Senders wait while this much is queued for the tunnel: memory stays bounded for 100 MiB
# transfers, and small frames still leave in one write per scheduler pass.
HIGH_WATER: Final = 1 << 20
CONNECT_TIMEOUT_S: Final = 10.0
# A long body goes to the client in writes of this size at least (pvtunnel's front too).
FLUSH_BYTES: Final = 65536


class Tunnel:
    """One TCP connection carrying every stream.

    What a scheduler pass queues leaves when the pass ends (`_end_of_pass`), written
    without yielding as far as the socket takes it; the rest, and everything once
    the queue passes `HIGH_WATER`, goes to the writer task. TCP_NODELAY is Trio's
    default on every `trio.SocketStream`, here and for the local connections.
    """

    label = "relay tunnel"  # for `_end_of_pass`'s log line

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream: ByteStream = fast_io(stream)
        self.pending = bytearray()
        self.queued = trio.Event()
        self.drained = trio.Event()
        self._sender = end_of_pass_sender() if isinstance(self.stream, FastSocket) else None
        self._writing = False
        self._frames = 0  # queued since the last write

    async def send(self, stream_id: int, kind: int, data: bytes | bytearray = b"") -> None:
        self.pending += HEADER.pack(stream_id, kind, len(data))
        self.pending += data
        self._frames += 1
        if self._sender is None:
            self.queued.set()
        elif self._frames >= EARLY_SEND_PIECES and not self._writing:
            # As pvtunnel does: a batch this big leaves now, so the other side starts
            # on it while this one goes on, instead of the two taking turns.
            self.send_at_end_of_pass()
        else:
            self._sender.waiting[self] = None
        while len(self.pending) >= HIGH_WATER:
            self.queued.set()
            await self.drained.wait()

    def send_at_end_of_pass(self) -> bool:
        """Called by `_end_of_pass.EndOfPassSender`: True when it woke the writer task."""
        if self._writing or not isinstance(self.stream, FastSocket):
            return self.wake_writer_task()
        try:
            written = self.stream.try_send(self.pending)
        except BROKEN:
            return self.wake_writer_task()  # the writer meets the error and ends
        del self.pending[:written]
        self._frames = 0
        return self.wake_writer_task() if self.pending else False

    def wake_writer_task(self) -> bool:
        self.queued.set()
        return True

    async def write_forever(self) -> None:
        """Until the tunnel breaks (its reader then sees the end too)."""
        with contextlib.suppress(*BROKEN):
            while True:
                await self.queued.wait()
                self.queued = trio.Event()
                while self.pending:
                    data, self.pending = self.pending, bytearray()
                    self._frames = 0
                    self._writing = True
                    try:
                        await self.stream.send_all(data)
                    finally:
                        self._writing = False
                self.drained.set()
                self.drained = trio.Event()

    async def read_frames(
        self,
        deliver: Callable[[int, int, bytes], Awaitable[None]],
        after_read: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Until the tunnel closes or breaks; ``after_read`` runs once the frames of
        each read are delivered."""
        with contextlib.suppress(*BROKEN):
            await self._read_frames(deliver, after_read)

    async def _read_frames(
        self,
        deliver: Callable[[int, int, bytes], Awaitable[None]],
        after_read: Callable[[], Awaitable[None]] | None,
    ) -> None:
        buffer = bytearray()
        while chunk := await self.stream.receive_some(TUNNEL_RECEIVE_SIZE):
            buffer += chunk
            start = 0
            while len(buffer) - start >= HEADER.size:
                stream_id, kind, length = HEADER.unpack_from(buffer, start)
                end = start + HEADER.size + length
                if end > len(buffer):
                    break
                with memoryview(buffer) as view:
                    payload = bytes(view[start + HEADER.size : end])
                await deliver(stream_id, kind, payload)
                start = end
            del buffer[:start]
            if after_read is not None:
                await after_read()


class Local:
    """A client or upstream connection: the stream to close, and its fast reads and writes."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.io: ByteStream = fast_io(stream)

    async def receive(self) -> bytes:
        data = await self.io.receive_some(RECEIVE_SIZE)
        return data if isinstance(data, bytes) else bytes(data)

    async def write(self, data: bytes | bytearray) -> None:
        if not data:
            return  # e.g. the end of a message with a Content-Length: nothing to send
        with contextlib.suppress(*BROKEN):
            await self.io.send_all(data)

    async def close(self) -> None:
        await self.stream.aclose()


class Side:
    """One end of a stream: its local connection, and the tunnel it crosses."""

    def __init__(self, local: Local, tunnel: Tunnel, stream_id: int) -> None:
        self.local = local
        self.tunnel = tunnel
        self.stream_id = stream_id

    async def pump(self) -> None:
        """The local connection's side of the stream into the tunnel, until it ends."""
        raise NotImplementedError

    async def deliver(self, kind: int, payload: bytes) -> None:
        """One frame of the stream from the tunnel, onto the local connection."""
        raise NotImplementedError


# --------------------------------------------------------------------------- raw mode


class RawStream(Side):
    """A stream of the raw relay: bytes in both directions, unparsed."""

    async def pump(self) -> None:
        """This connection's bytes into the tunnel, then the end of the stream."""
        with contextlib.suppress(*BROKEN):
            while data := await self.local.io.receive_some(RECEIVE_SIZE):
                await self.tunnel.send(self.stream_id, DATA, data)
        await self.tunnel.send(self.stream_id, CLOSE)

    async def deliver(self, kind: int, payload: bytes) -> None:
        if kind == CLOSE:
            await self.local.close()
        else:
            await self.local.write(payload)


# --------------------------------------------------------------------------- http mode


async def send_event(tunnel: Tunnel, stream_id: int, event: object) -> int | None:
    """An h11 message event into the tunnel as a frame: its kind (None: not one)."""
    if isinstance(event, h11.Request):
        head: tuple[bytes | int | list[tuple[bytes, bytes]], ...] = (
            event.method,
            event.target,
            list(event.headers.raw_items()),
        )
    elif isinstance(event, h11.InformationalResponse | h11.Response):
        head = (event.status_code, event.reason, list(event.headers.raw_items()))
    elif isinstance(event, h11.Data):
        await tunnel.send(stream_id, DATA, event.data)
        return DATA
    elif isinstance(event, h11.EndOfMessage):
        await tunnel.send(stream_id, END)
        return END
    else:
        return None
    await tunnel.send(stream_id, HEAD, marshal.dumps(head))
    return HEAD


class HttpSide(Side):
    """One end of a stream in http mode: h11 messages in, frames out, and back."""

    role: type[h11.CLIENT] | type[h11.SERVER]

    def __init__(self, local: Local, tunnel: Tunnel, stream_id: int) -> None:
        super().__init__(local, tunnel, stream_id)
        self.conn = h11.Connection(self.role)

    async def _next_event(self) -> object:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(await self.local.receive())
        return event

    async def _message_sent(self) -> None:
        """Between one message into the tunnel and the next."""

    async def pump(self) -> None:
        conn, tunnel, stream_id = self.conn, self.tunnel, self.stream_id
        with contextlib.suppress(*BROKEN, h11.ProtocolError):
            while True:
                kind = await send_event(tunnel, stream_id, await self._next_event())
                if kind == END:
                    await self._message_sent()
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        break
                    conn.start_next_cycle()
                elif kind is None:
                    break
        await tunnel.send(stream_id, CLOSE)
        await self.local.close()


class HttpClientSide(HttpSide):
    """The front's end: pvtunnel's server-side h11 work (requests in, responses out)."""

    role = h11.SERVER

    def __init__(self, local: Local, tunnel: Tunnel, stream_id: int) -> None:
        super().__init__(local, tunnel, stream_id)
        self.answered = trio.Event()
        self.pending = bytearray()  # serialised, not yet written

    async def _message_sent(self) -> None:
        # One request at a time: the next is read once this one's response went out.
        await self.answered.wait()
        self.answered = trio.Event()

    async def flush(self) -> None:
        """Write what is pending in one send."""
        if self.pending:
            data, self.pending = self.pending, bytearray()
            await self.local.write(data)

    async def deliver(self, kind: int, payload: bytes) -> None:
        conn = self.conn
        if kind == HEAD:
            status, reason, headers = marshal.loads(payload)
            kind_of_response = h11.InformationalResponse if status < 200 else h11.Response
            # Parsed and validated by the back's h11 a moment ago.
            response = kind_of_response(
                status_code=status, reason=reason, headers=headers, _parsed=True
            )
            self.pending += conn.send(response) or b""
        elif kind == DATA:
            self.pending += conn.send(h11.Data(data=payload)) or b""
            if len(self.pending) >= FLUSH_BYTES:
                await self.flush()
        elif kind == END:
            self.pending += conn.send(h11.EndOfMessage()) or b""
            await self.flush()
            self.answered.set()
        else:
            await self.flush()
            await self.local.close()
            self.answered.set()


class HttpUpstreamSide(HttpSide):
    """The back's end: pvtunnel's agent-side h11 work (requests out, responses in)."""

    role = h11.CLIENT

    async def deliver(self, kind: int, payload: bytes) -> None:
        conn = self.conn
        try:
            if kind == HEAD:
                method, target, headers = marshal.loads(payload)
                # Parsed and validated by the front's h11 a moment ago.
                request = h11.Request(method=method, target=target, headers=headers, _parsed=True)
                await self.local.write(conn.send(request) or b"")
            elif kind == DATA:
                await self.local.write(conn.send(h11.Data(data=payload)) or b"")
            elif kind == END:
                await self.local.write(conn.send(h11.EndOfMessage()) or b"")
            else:
                await self.local.close()
        except h11.ProtocolError:
            await self.local.close()  # `pump` then ends the stream: the client is told


# --------------------------------------------------------------------------- the two ends


async def front(listen_port: int, tunnel_port: int, http: bool) -> None:
    listeners = await trio.open_tcp_listeners(tunnel_port, host=LOOPBACK)
    tunnel_stream = await listeners[0].accept()
    await listeners[0].aclose()
    tunnel = Tunnel(tunnel_stream)
    clients: dict[int, Side] = {}
    next_id = 1

    unflushed: dict[HttpClientSide, None] = {}

    async def deliver(stream_id: int, kind: int, payload: bytes) -> None:
        if (client := clients.get(stream_id)) is not None:
            await client.deliver(kind, payload)
            if isinstance(client, HttpClientSide) and client.pending:
                unflushed[client] = None

    async def flush_all() -> None:
        """What one read delivered for each client leaves in one send."""
        while unflushed:
            client = next(iter(unflushed))
            del unflushed[client]
            await client.flush()

    async def serve_client(stream: trio.SocketStream) -> None:
        nonlocal next_id
        stream_id, next_id = next_id, next_id + 1
        side: type[Side] = HttpClientSide if http else RawStream
        client = clients[stream_id] = side(Local(stream), tunnel, stream_id)
        try:
            await client.pump()
        finally:
            del clients[stream_id]
            await stream.aclose()

    async with trio.open_nursery() as nursery:

        async def read_until_closed() -> None:
            await tunnel.read_frames(deliver, flush_all if http else None)
            nursery.cancel_scope.cancel()  # the back left: so do the clients

        nursery.start_soon(tunnel.write_forever)
        nursery.start_soon(read_until_closed)
        await trio.serve_tcp(serve_client, listen_port, host=LOOPBACK)


async def back(tunnel_port: int, upstream_port: int, http: bool) -> None:
    with trio.fail_after(CONNECT_TIMEOUT_S):
        while True:  # the front may not listen yet
            try:
                tunnel_stream = await trio.open_tcp_stream(LOOPBACK, tunnel_port)
                break
            except OSError:
                await trio.sleep(0.05)
    tunnel = Tunnel(tunnel_stream)
    upstreams: dict[int, Side] = {}

    async with trio.open_nursery() as nursery:

        async def deliver(stream_id: int, kind: int, payload: bytes) -> None:
            upstream = upstreams.pop(stream_id, None) if kind == CLOSE else upstreams.get(stream_id)
            if upstream is None:
                if kind == CLOSE:
                    return
                stream = await trio.open_tcp_stream(LOOPBACK, upstream_port)
                side: type[Side] = HttpUpstreamSide if http else RawStream
                upstream = upstreams[stream_id] = side(Local(stream), tunnel, stream_id)
                nursery.start_soon(upstream.pump)
            await upstream.deliver(kind, payload)

        nursery.start_soon(tunnel.write_forever)
        await tunnel.read_frames(deliver)
        nursery.cancel_scope.cancel()


async def run_until_signalled(role: Callable[..., Awaitable[None]], *args: object) -> None:
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
    parser.add_argument("--mode", choices=("raw", "http"), default="raw")
    args = parser.parse_args(argv)
    tune_heap()  # as the pvtunnel CLI does
    http = args.mode == "http"
    if args.role == "front":
        if args.listen is None:
            parser.error("front needs --listen")
        trio.run(run_until_signalled, front, args.listen, args.tunnel, http)
    else:
        if args.upstream is None:
            parser.error("back needs --upstream")
        trio.run(run_until_signalled, back, args.tunnel, args.upstream, http)
    return 0


if __name__ == "__main__":
    sys.exit(main())
