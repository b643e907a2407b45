"""Quick ACKs on pooled upstream connections, only where they are needed.

An upstream that writes a response's head and body apart (many frameworks do,
without TCP_NODELAY) meets Nagle's algorithm plus our delayed ACK on a reused
connection: about 40 ms per request. Quick ACKs avoid that, but setting them is a
system call per request, so the agent sets them again on reuse only for a
connection whose responses have come in pieces.
"""

from __future__ import annotations

import socket

import trio

from tests.integration.harness import start_agent, start_server
from tests.integration.listen import serve_on_loopback

LIMIT_S = 10
BODY = b"ok"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)


class PiecewiseUpstream:
    """Answers every request with HEAD and BODY: in one write, or apart when ``split``.

    Split, the body waits for ``go`` so the agent surely reads the head alone.
    """

    def __init__(self, *, split: bool) -> None:
        self.split = split
        self.go = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_loopback(self._connection, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                del buffer[: buffer.index(b"\r\n\r\n") + 4]
                if not self.split:
                    await stream.send_all(HEAD + BODY)
                    continue
                await stream.send_all(HEAD)
                await self.go.wait()
                self.go = trio.Event()
                await stream.send_all(BODY)


async def _get(port: int, host: bytes, upstream: PiecewiseUpstream) -> bytes:
    """One request on a new client connection; releases a split body once the head is in."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        answer = bytearray()
        while b"\r\n\r\n" not in answer:
            answer += await stream.receive_some(65536)
        upstream.go.set()
        while not answer.endswith(BODY):
            answer += await stream.receive_some(65536)
        return bytes(answer)


async def test_quick_acks_are_renewed_only_for_upstreams_that_answer_in_pieces() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            whole, split = PiecewiseUpstream(split=False), PiecewiseUpstream(split=True)
            ports = {
                "whole": await nursery.start(whole.serve),
                "split": await nursery.start(split.serve),
            }
            agent, _, _ = await start_agent(nursery, running, ports)
            for _ in range(3):  # the first on a fresh connection, then reused
                for name, upstream in (("whole", whole), ("split", split)):
                    answer = await _get(running.port, name.encode(), upstream)
                    assert answer.startswith(b"HTTP/1.1 200 ")
                    assert answer.endswith(BODY)
                    while agent.pool.idle_count(name) == 0:  # released after the answer
                        await trio.testing.wait_all_tasks_blocked()
            (kept_whole,) = agent.pool.idle_connections("whole")
            (kept_split,) = agent.pool.idle_connections("split")
            assert not kept_whole.split_writes
            assert kept_split.split_writes
            quickack = getattr(socket, "TCP_QUICKACK", None)
            if quickack is not None:  # Linux: set again when the connection went idle
                assert isinstance(kept_split.stream, trio.SocketStream)
                assert kept_split.stream.getsockopt(socket.IPPROTO_TCP, quickack) == 1
            nursery.cancel_scope.cancel()
