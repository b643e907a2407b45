"""No stall behind upstreams that write a response in pieces (Nagle against delayed ACK).

Python's `http.server` with HTTP/1.1 writes a response's head in one send and its
body in a second, without TCP_NODELAY, and so do many frameworks. Its kernel holds
the body back (Nagle's algorithm) until the head is acknowledged, and ours would
delay that acknowledgement by ~40 ms, since the agent sends nothing back until the
response is whole: every request on a pooled keep-alive connection would wait out
the delayed-ACK timer. The kernel counts each time that timer fires (TcpExt
DelayedACKs in /proc/net/netstat), so the test counts stalls, not milliseconds.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from tests.integration.harness import start_agent, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator

LIMIT_S: Final = 20
REQUESTS: Final = 40
BODY: Final = b"x" * 100


class SplitWriteHandler(http.server.BaseHTTPRequestHandler):
    """Head and body in two sends on a keep-alive connection, as http.server does."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()  # flushes the head: the first send
        self.wfile.write(BODY)  # the second

    def log_message(self, format: str, *args: object) -> None:
        pass


class ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


def delayed_acks() -> int:
    """How often this machine's delayed-ACK timer has fired (TcpExt DelayedACKs)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(values.split()[names.split().index("DelayedACKs")])
    raise AssertionError("no TcpExt line in /proc/net/netstat")


@contextlib.contextmanager
def split_write_upstream() -> Iterator[int]:
    server = ThreadingServer(("127.0.0.1", 0), SplitWriteHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def get(port: int) -> bytes:
    """One request on a fresh client connection, read to the close."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        answer = bytearray()
        while chunk := await stream.receive_some(65536):
            answer += chunk
        return bytes(answer)


async def test_a_split_write_upstream_on_a_pooled_connection_does_not_stall() -> None:
    with split_write_upstream() as upstream_port, trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            agent, _, _ = await start_agent(nursery, running, {"app": upstream_port})
            assert (await get(running.port)).endswith(BODY)  # the pool's connection
            before = delayed_acks()
            for _ in range(REQUESTS):
                answer = await get(running.port)
                assert answer.startswith(b"HTTP/1.1 200 ")
                assert answer.endswith(BODY)
            stalls = delayed_acks() - before
            assert agent.pool.idle_count("app") == 1  # one pooled connection, reused
            nursery.cancel_scope.cancel()
    # Each request would wait out the timer once; a few may come from elsewhere.
    assert stalls < REQUESTS // 4, f"{stalls} delayed ACKs in {REQUESTS} requests"
