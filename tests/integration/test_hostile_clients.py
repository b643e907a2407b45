"""Clients that leave at the wrong moment or send heads at the edge of the limits (issue 20).

No token is needed for any of these: whatever an external client can do to the
server's stream slots or error paths, anyone can.
"""

from __future__ import annotations

import logging
from typing import Final

import pytest
import trio

from tests.integration.client import raw_exchange
from tests.integration.harness import server_config, start_tunnel

LIMIT_S: Final = 10


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    received = bytearray()
    while marker not in received:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before {marker!r}: {bytes(received)!r}"
        received += chunk
    return bytes(received)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"GET /trickle HTTP/1.1\r\nHost: app\r\n\r\n", id="bodiless"),
        pytest.param(
            b"POST /trickle HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nbody", id="with-body"
        ),
    ],
)
async def test_a_client_leaving_after_pipelining_frees_its_stream(first: bytes) -> None:
    """Defect 4: the pipelined bytes hid the hang-up, so the stream stayed in flight."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            await stream.send_all(first)
            # A long poll: the head and the first bytes came, the rest is held upstream.
            await read_until(stream, b"first")
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            await stream.aclose()
            await running.server.state.idle.wait()
            assert running.server.state.in_flight == 0
            assert upstream.holding == 1  # the upstream never finished: the server noticed
            nursery.cancel_scope.cancel()


async def test_a_head_that_grows_past_one_frame_on_the_way_is_431(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 5: X-Forwarded-Host copied a 32 KiB Host past one HEAD frame: a 500, a traceback."""
    caplog.set_level(logging.INFO, "pvtunnel")
    # A Host of "app:000…0" routes to "app" (the port is dropped), and fits the limit.
    host = b"app:" + b"0" * 32737
    head = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert len(head) == 32767  # the default max_request_head_bytes
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, server_config())
            answer = await raw_exchange(
                running.port, head + b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            # No body, so the connection stays: the next request is served.
            assert b"svc saw GET /" in answer
            assert len(upstream.requests) == 1
            nursery.cancel_scope.cancel()
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
