"""A small blocking HTTP/1.1 client on raw sockets, for the benchmark scripts.

It streams bodies in both directions without holding them (a 1 GiB transfer costs
the measuring process one block), counts what it does not keep, and decodes chunked
bodies as they come: the measurement must not be what runs out of memory or CPU.
Only loopback addresses are used.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import _harness as h

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


@dataclass
class Response:
    """A parsed HTTP/1.1 response head plus body bytes (or only their count)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    body_bytes: int
    seconds: float

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


class SocketReader:
    """Buffered reads from a socket into one reusable block."""

    def __init__(
        self, sock: socket.socket, block: int = h.IO_BLOCK, *, deadline: float | None = None
    ) -> None:
        self.sock = sock
        self.buffer = bytearray(block)
        self.view = memoryview(self.buffer)
        self.pending = b""
        self.deadline = deadline  # time.monotonic() value after which reads fail
        self._timeout = sock.gettimeout()

    def _check_deadline(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise h.BenchError("transfer exceeded its total time limit")
        self.sock.settimeout(left if self._timeout is None else min(left, self._timeout))

    def read_head(self, limit: int = 64 * h.KIB) -> bytes:
        data = self.pending
        while b"\r\n\r\n" not in data:
            if len(data) > limit:
                raise h.BenchError("response head too large")
            self._check_deadline()
            got = self.sock.recv(65536)
            if not got:
                raise h.BenchError(f"connection closed before a response head ({len(data)} bytes)")
            data += got
        head, _, rest = data.partition(b"\r\n\r\n")
        self.pending = rest
        return head

    def read_some(self) -> memoryview:
        """The next bytes: leftovers first, then one recv (empty view at EOF)."""
        if self.pending:
            data, self.pending = self.pending, b""
            return memoryview(data)
        self._check_deadline()
        count = self.sock.recv_into(self.buffer)
        return self.view[:count]


class ChunkedCounter:
    """Incremental ``Transfer-Encoding: chunked`` decoder that counts (and optionally
    keeps or checksums) the payload without copying it when it does not have to."""

    def __init__(self, *, keep: bool = False, on_data: Callable[[memoryview], None] | None = None):
        self.count = 0
        self.done = False
        self.kept = bytearray() if keep else None
        self._on_data = on_data
        self._line = b""
        self._remaining = 0
        self._state = "size"  # size -> data -> data_crlf -> size ... -> trailer

    def feed(self, data: memoryview) -> memoryview:
        """Consume ``data``; returns what follows the body (non-empty only when done)."""
        pos = 0
        end = len(data)
        while pos < end and not self.done:
            if self._state == "data":
                take = min(self._remaining, end - pos)
                piece = data[pos : pos + take]
                self.count += take
                if self.kept is not None:
                    self.kept += piece
                if self._on_data is not None:
                    self._on_data(piece)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = "data_crlf"
                continue
            newline = bytes(data[pos : min(end, pos + 1024)]).find(b"\n")
            if newline < 0:
                self._line += bytes(data[pos:end])
                if len(self._line) > 4096:
                    raise h.BenchError("chunked: line too long")
                pos = end
                break
            line = (self._line + bytes(data[pos : pos + newline])).rstrip(b"\r")
            self._line = b""
            pos += newline + 1
            if self._state == "size":
                size_text = line.split(b";", 1)[0].strip()
                try:
                    self._remaining = int(size_text, 16)
                except ValueError as exc:
                    raise h.BenchError(f"chunked: bad size line {line[:40]!r}") from exc
                self._state = "data" if self._remaining else "trailer"
            elif self._state == "data_crlf":
                if line:
                    raise h.BenchError("chunked: missing CRLF after chunk data")
                self._state = "size"
            elif not line:  # trailer section ends with an empty line
                self.done = True
        return data[pos:end]


def _parse_head(head: bytes) -> tuple[int, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise h.BenchError(f"bad status line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), headers


def read_response(
    reader: SocketReader,
    *,
    keep_body: bool,
    on_data: Callable[[memoryview], None] | None = None,
    is_head: bool = False,
) -> tuple[int, list[tuple[str, str]], bytes, int]:
    """Read one response; returns (status, headers, body or b"", body byte count)."""
    while True:
        status, headers = _parse_head(reader.read_head())
        if status >= 200:
            break  # skip 1xx interim responses
    fields = {k.lower(): v for k, v in headers}
    kept = bytearray()
    if is_head or status in (204, 304):
        return status, headers, b"", 0
    if "chunked" in fields.get("transfer-encoding", "").lower():
        decoder = ChunkedCounter(keep=keep_body, on_data=on_data)
        while True:
            data = reader.read_some()
            if not data:
                raise h.BenchError(f"connection closed inside a chunked body at {decoder.count} B")
            rest = decoder.feed(data)
            if decoder.done:
                reader.pending = bytes(rest)
                break
        return status, headers, bytes(decoder.kept or b""), decoder.count
    length_text = fields.get("content-length")
    remaining = int(length_text) if length_text is not None else -1
    count = 0
    while remaining != 0:
        data = reader.read_some()
        if not data:
            if remaining > 0:
                raise h.BenchError(f"connection closed after {count} of {length_text} body bytes")
            break
        if 0 < remaining < len(data):
            reader.pending = bytes(data[remaining:])
            data = data[:remaining]
        count += len(data)
        if remaining > 0:
            remaining -= len(data)
        if keep_body:
            kept += data
        if on_data is not None:
            on_data(data)
    return status, headers, bytes(kept), count


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    host_header: str = "app",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    body_source: Callable[[socket.socket], None] | None = None,
    keep_body: bool = True,
    on_data: Callable[[memoryview], None] | None = None,
    timeout_s: float = 60.0,
    total_timeout_s: float = 600.0,
    host: str = h.LOOPBACK,
) -> Response:
    """One request on a fresh connection; streams the body in and counts it out.

    ``body_source`` (if given) writes the request body itself after the head, so
    uploads of any size can be streamed. ``timeout_s`` bounds each socket call (a
    ``sendall`` as a whole), ``total_timeout_s`` the reading of the whole response.
    The timer starts after connecting and stops when the last response byte is read.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reader = SocketReader(sock, deadline=time.monotonic() + total_timeout_s)
        start = time.perf_counter()
        sock.sendall(head)
        if body is not None:
            sock.sendall(body)
        if body_source is not None:
            body_source(sock)
        status, response_headers, data, count = read_response(
            reader, keep_body=keep_body, on_data=on_data, is_head=method == "HEAD"
        )
        seconds = time.perf_counter() - start
    return Response(status, response_headers, data, count, seconds)


def send_repeated(
    block: bytes, total: int, *, chunked: bool, each_block: Callable[[], None] | None = None
) -> Callable[[socket.socket], None]:
    """A ``body_source`` that sends ``total`` bytes made of ``block`` repeated,
    either raw (for Content-Length) or as chunks of ``len(block)`` bytes.
    ``each_block`` runs before every block (e.g. a deadline check)."""
    view = memoryview(block)

    def source(sock: socket.socket) -> None:
        left = total
        while left:
            if each_block is not None:
                each_block()
            piece = view[: min(left, len(view))]
            if chunked:
                sock.sendall(b"%x\r\n" % len(piece))
                sock.sendall(piece)
                sock.sendall(b"\r\n")
            else:
                sock.sendall(piece)
            left -= len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")

    return source
