"""A small HTTP/1.1 client on h11 for tests: one connection, many requests (keep-alive)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs
import h11
import trio
import trio.testing

from pvtunnel._trio.front import handle_client

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from pvtunnel._trio.state import ServerState


@attrs.frozen(kw_only=True)
class Reply:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    informational: tuple[int, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> Client:
        return cls(await trio.open_tcp_stream(host, port))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stream.aclose()

    async def request(
        self,
        method: bytes,
        target: bytes,
        *,
        host: bytes | None = b"app",
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
        chunks: Sequence[bytes] | None = None,
    ) -> Reply:
        hdrs = list(headers)
        if host is not None:
            hdrs.insert(0, (b"host", host))
        if body is not None:
            hdrs.append((b"content-length", b"%d" % len(body)))
        if chunks is not None:
            hdrs.append((b"transfer-encoding", b"chunked"))
        await self._send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            await self._send(h11.Data(data=body))
        for chunk in chunks or ():
            await self._send(h11.Data(data=chunk))
        await self._send(h11.EndOfMessage())
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        informational = []
        while True:
            event = await self._next()
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
                continue
            assert isinstance(event, h11.Response), event
            break
        body = bytearray()
        while True:
            item = await self._next()
            if isinstance(item, h11.Data):
                body += item.data
            elif isinstance(item, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {item!r}")
        reply = Reply(
            status=event.status_code,
            headers=tuple(event.headers),
            body=bytes(body),
            informational=tuple(informational),
        )
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return reply

    async def _send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def _next(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            assert not isinstance(event, type)
            return event


async def fetch(port: int, method: bytes, target: bytes, **kwargs: object) -> Reply:
    async with await Client.connect(port) as client:
        return await client.request(method, target, **kwargs)  # type: ignore[arg-type]


async def raw_exchange(
    port: int, data: bytes, *, limit: int = 1 << 20, host: str = "127.0.0.1"
) -> bytes:
    """Send raw bytes, read until the server closes (or ``limit``): for malformed input."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        while len(received) < limit:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            received += chunk
        return bytes(received)


async def exchange_one(port: int, data: bytes) -> bytes:
    """Send ``data`` and read one response with a Content-Length body (the server may stay)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        while True:
            head, end, body = bytes(received).partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if end and length is not None and len(body) >= int(length.group(1)):
                return bytes(received)
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a whole response: {bytes(received)!r}"
            received += chunk


def statuses(received: bytes) -> list[int]:
    """Status codes of the responses in ``received`` (bodies here never hold status lines)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


async def connect_never_reading(
    nursery: trio.Nursery, state: ServerState
) -> tuple[trio.abc.Stream, trio.Event]:
    """A client connection the server serves (`handle_client`, as its listener would),
    whose client never reads: the client's end, and an event set once the server is
    done with the connection.

    The two ends are in lockstep: a send waits until the other end has read it all,
    so nothing the server writes to this client can ever finish.
    """
    client, server_end = trio.testing.lockstep_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        await handle_client(server_end, state)
        served.set()

    nursery.start_soon(serve)
    return client, served
