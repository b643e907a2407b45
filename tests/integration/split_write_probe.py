"""Requests through the tunnel to an upstream that writes head and body apart; prints stalls.

Run by `test_upstream_acks.py` inside a network namespace of its own, where the
kernel's TcpExt DelayedACKs counter (how often the delayed-ACK timer fired) counts
this probe's connections and nothing else on the machine. Prints one JSON object:
``{"requests": N, "stalls": N, "answers_ok": bool, "reused": bool}``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from tests.integration.harness import start_agent, start_server

if TYPE_CHECKING:
    from collections.abc import Iterator

LIMIT_S: Final = 20
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
    """How often this namespace's delayed-ACK timer has fired (TcpExt DelayedACKs)."""
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


async def probe(requests: int) -> dict[str, object]:
    with split_write_upstream() as upstream_port, trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            agent, _, _ = await start_agent(nursery, running, {"app": upstream_port})
            first = await get(running.port)  # opens the pool's connection
            before = delayed_acks()
            answers = [await get(running.port) for _ in range(requests)]
            stalls = delayed_acks() - before
            reused = agent.pool.idle_count("app") == 1
            nursery.cancel_scope.cancel()
    ok = all(a.startswith(b"HTTP/1.1 200 ") and a.endswith(BODY) for a in [first, *answers])
    return {"requests": requests, "stalls": stalls, "answers_ok": ok, "reused": reused}


if __name__ == "__main__":
    print(json.dumps(trio.run(probe, int(sys.argv[1]))))
