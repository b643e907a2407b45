"""A TCP echo target and a CONNECT client, for tests of raw pipes through the tunnel."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from tests.integration.listen import serve_on_loopback

if TYPE_CHECKING:
    from tests.integration.harness import Running


class TcpEcho:
    """A TCP server that echoes every byte back, counting the connections it took."""

    def __init__(self) -> None:
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_loopback(self._echo, task_status=task_status)

    async def _echo(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()  # half-close: answer the client's EOF with ours


async def open_connect(
    running: Running, target: bytes, headers: bytes = b""
) -> tuple[trio.SocketStream, bytes]:
    """A CONNECT to ``target`` through the tunnel: the open stream and the answer's head."""
    stream = await trio.open_tcp_stream("127.0.0.1", running.port)
    await stream.send_all(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, target, headers))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(1)
        assert chunk, head
        head += chunk
    return stream, head
