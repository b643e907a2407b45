"""Raw-byte exchanges with the external port, for tests that must see every byte.

A client library would normalise or refuse what these tests send (two
Content-Lengths, a bare LF, a body after a HEAD), and would hide what came back
(a second response where one was due).
"""

from __future__ import annotations

import re

import trio


async def exchange(port: int, data: bytes, *, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(data)
        received = bytearray()
        while True:
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
