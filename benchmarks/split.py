#!/usr/bin/env python3
"""An upstream that writes each response's head and body in two sends, on keep-alive.

Python's ``http.server`` with ``protocol_version = "HTTP/1.1"`` does this, and so do
Django's development server and many small services: ``end_headers()`` sends the
head, then the body goes out in a second ``send``, and the socket has Nagle's
algorithm on. The kernel holds the body back until the head is acknowledged, so a
tunnel whose upstream side delays that acknowledgement (a pooled keep-alive
connection that sends nothing back until the response is whole) pays the
delayed-ACK timer, about 40 ms, on every request.

``run.py`` uses this module for the split-write figures:

- :func:`split_upstream` starts the upstream (this file run as ``split.py serve``):
  a threaded ``http.server`` on 127.0.0.1, port 0, answering every ``GET`` with
  200 and a 1 KiB body, head and body in separate sends;
- :func:`measure_split`: :data:`SPLIT_REQUESTS` sequential ``GET`` requests, each on
  a fresh client connection (``Host: split``), timed from sending the request to
  the last byte of the response; p50 and p99 over all of them.

The rows reach it directly, through pvtunnel (a second agent route, ``split``) and
through ``ssh -R`` (a second ``-R`` forward). Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import _harness as h
import _httpclient as hc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

SCRIPT: Final = Path(__file__).resolve()
SPLIT_HOST: Final = "split"
SPLIT_REQUESTS: Final = 300
BODY: Final = b"s" * h.KIB
READY_WORD: Final = "split-write upstream ready"
REQUEST_TIMEOUT_S: Final = 10.0
# Bounds a row's whole measurement: 300 requests at the delayed-ACK timer's ~40 ms
# each take 12 s, so only a row far worse than a stall runs into it.
MEASURE_LIMIT_S: Final = 60.0


class SplitWriteHandler(http.server.BaseHTTPRequestHandler):
    """Head and body in two sends on a keep-alive connection, as http.server does."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()  # flushes the head: the first send
        self.wfile.write(BODY)  # the second

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would cost the upstream more than the request


class ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve() -> None:
    """Serve until SIGTERM or SIGINT."""
    server = ThreadingServer((h.LOOPBACK, 0), SplitWriteHandler)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"{READY_WORD} port={server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    server.server_close()


@contextlib.contextmanager
def split_upstream(children: h.Children, log_dir: Path) -> Iterator[int]:
    """Start the split-write upstream, wait for its ready line; yields its port."""
    child = children.start(
        "split-write upstream",
        [sys.executable, str(SCRIPT), "serve"],
        log_path=log_dir / "split-upstream.log",
        ready_word=READY_WORD,
    )
    try:
        line = child.wait_ready()
        yield int(line.rpartition("port=")[2].split()[0])
    finally:
        children.stop(child)


def agent_route_args(port: int) -> list[str]:
    """The agent flags that add the split route."""
    return ["--route", f"{SPLIT_HOST}={h.LOOPBACK}:{port}"]


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction), at least 1
    return ordered[int(rank) - 1]


@dataclass
class SplitResult:
    """Sequential requests to the split-write upstream, each on a fresh connection."""

    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def add(self, latencies_ms: list[float]) -> None:
        """Take in one round's latencies and recompute the figures over all of them."""
        self.latencies_ms += latencies_ms
        ordered = sorted(self.latencies_ms)
        self.requests = len(ordered)
        if ordered:
            self.p50_ms = percentile(ordered, 0.50)
            self.p99_ms = percentile(ordered, 0.99)
            self.max_ms = ordered[-1]


def one_request(port: int) -> float:
    """One GET on a fresh connection, checked; returns its latency in ms."""
    response = hc.http_request(
        port, "GET", "/", host_header=SPLIT_HOST, timeout_s=REQUEST_TIMEOUT_S
    )
    if response.status != 200 or response.body != BODY:
        raise h.BenchError(
            f"split-write upstream: status {response.status}, "
            f"{response.body_bytes} of {len(BODY)} body bytes"
        )
    return response.seconds * 1000


def measure_split(port: int, count: int) -> list[float]:
    """``count`` sequential requests on fresh connections: their latencies in ms."""
    deadline = time.monotonic() + MEASURE_LIMIT_S
    latencies: list[float] = []
    for _ in range(count):
        if time.monotonic() > deadline:
            raise h.BenchError(
                f"split-write: {len(latencies)} of {count} requests in {MEASURE_LIMIT_S:.0f} s"
            )
        latencies.append(one_request(port))
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("role", choices=("serve",))
    parser.parse_args(argv)
    serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
