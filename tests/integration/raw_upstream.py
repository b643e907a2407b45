"""An upstream that answers with exactly the bytes a test gives, broken framing included."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from tests.integration.harness import start_agent, start_server
from tests.integration.listen import serve_on_loopback

if TYPE_CHECKING:
    from tests.integration.harness import Running


class RawUpstream:
    """An upstream that answers request heads with raw bytes, framing and all.

    The n-th head (over all connections) gets ``answers[n]``, the last one repeating;
    an answer of None hangs up instead. After its first answer, the first
    connection waits for ``send_late`` and then writes ``late`` (stray bytes
    between two responses) before reading on, or with ``hang_up`` closes instead.
    """

    def __init__(self, *answers: bytes | None, late: bytes = b"", hang_up: bool = False) -> None:
        self.answers = answers
        self.late = late
        self.hang_up = hang_up
        self.send_late = trio.Event()
        self.late_sent = trio.Event()
        self.heads: list[bytes] = []
        self.connections = 0
        self.ended = 0  # connections closed, by either side
        # Set by a test to have answers wait for it (each head is in `heads` by then).
        self.hold: trio.Event | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_loopback(self._connection, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        is_first = self.connections == 1
        buffer = bytearray()
        async with stream:
            try:
                while True:
                    while b"\r\n\r\n" not in buffer:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        buffer += data
                    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                    self.heads.append(head)
                    buffer = bytearray(rest)
                    answer = self.answers[min(len(self.heads), len(self.answers)) - 1]
                    if answer is None:
                        return
                    if self.hold is not None:
                        await self.hold.wait()
                    await stream.send_all(answer)
                    if is_first and (self.late or self.hang_up):
                        is_first = False
                        await self.send_late.wait()
                        if self.hang_up:
                            await stream.aclose()
                            self.late_sent.set()
                            return
                        await stream.send_all(self.late)
                        self.late_sent.set()
            except trio.BrokenResourceError:
                return
            finally:
                self.ended += 1


async def start_raw_upstream(
    nursery: trio.Nursery, *answers: bytes | None, late: bytes = b"", hang_up: bool = False
) -> tuple[RawUpstream, int]:
    upstream = RawUpstream(*answers, late=late, hang_up=hang_up)
    port: int = await nursery.start(upstream.serve)
    return upstream, port


async def start_raw_tunnel(
    nursery: trio.Nursery, *answers: bytes | None, late: bytes = b"", hang_up: bool = False
) -> tuple[Running, RawUpstream]:
    """A server, and an agent routing "app" to a `RawUpstream` giving ``answers``."""
    running = await start_server(nursery)
    upstream, port = await start_raw_upstream(nursery, *answers, late=late, hang_up=hang_up)
    await start_agent(nursery, running, {"app": port})
    return running, upstream
