"""The app the browser tests drive through the inspector, and how they reach it.

An upstream with a JSON API, an image and an echo, behind a server and an agent
with the inspector on; Chromium and Firefox load the same page against it.
"""

from __future__ import annotations

import http.client
import json
import struct
import zlib

import h11
import trio

from pvtunnel._config import AdminConfig, InspectConfig
from pvtunnel._trio.demo import read_request, send_response
from tests.integration.harness import start_agent, start_server
from tests.integration.listen import serve_on_loopback

WAIT_S = 15


def png(width: int, height: int) -> bytes:
    """A small RGB image, made here so the test ships no binary file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 16 % 256, y * 16 % 256, 160)) for x in range(width))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PIXEL = png(16, 16)


USERS = json.dumps([{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]).encode()


async def serve_showcase(stream: trio.SocketStream) -> None:
    """An upstream with a JSON API, an image and an echo that keeps the content type."""
    conn = h11.Connection(h11.SERVER)
    try:
        while (received := await read_request(stream, conn)) is not None:
            request, body = received
            path = request.target.partition(b"?")[0]
            content_type = dict(request.headers).get(b"content-type", b"text/plain")
            payload, kind = {
                b"/api/users": (USERS, b"application/json"),
                b"/pixel.png": (PIXEL, b"image/png"),
                b"/echo": (body, content_type),
            }.get(path, (b"hello from the service\n", b"text/plain; charset=utf-8"))
            await send_response(stream, conn, payload, headers=[(b"content-type", kind)])
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError):
        return
    finally:
        await stream.aclose()


def send(port: int, method: str, target: str, body: bytes | None = None, **headers: str) -> bytes:
    """One request through the tunnel (from the browser's thread), Host "app"."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        connection.request(method, target, body=body, headers={"Host": "app", **headers})
        response = connection.getresponse()
        assert response.status == 200, response.status
        return response.read()
    finally:
        connection.close()


async def start_inspected_tunnel(
    nursery: trio.Nursery, inspect: InspectConfig | None = None
) -> tuple[str, int]:
    """A server and an agent with the inspector on (``inspect``, else its defaults),
    serving `serve_showcase` as "app".

    Returns the inspector page's URL and the tunnel's external port.
    """
    running = await start_server(nursery)
    upstream_port = await nursery.start(serve_on_loopback, serve_showcase)
    _, status, _ = await start_agent(
        nursery,
        running,
        {"app": upstream_port},
        admin=AdminConfig(port=0),
        inspect=inspect or InspectConfig(enabled=True),
    )
    assert status.admin is not None
    return f"http://127.0.0.1:{status.admin[1]}/inspect", running.port
