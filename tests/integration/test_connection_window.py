"""Connection-level flow control through a real server and agent (protocol.md section 7).

A connection window of a few stream windows makes many concurrent large bodies
compete for one shared credit in both directions: they must all complete intact
(no deadlock, every byte's credit comes back), and the server must never hold more
unconsumed body bytes from the agent than its connection window.
"""

from __future__ import annotations

import trio
import trio.testing

from tests.integration.client import fetch
from tests.integration.harness import (
    server_config,
    start_agent,
    start_server,
    start_upstream,
)
from tests.integration.upstream import PATTERN

LIMIT_S = 60
STREAM_WINDOW = 64 * 1024
CONNECTION_WINDOW = 256 * 1024  # four stream windows, shared by eight streams
DOWNLOAD = 3 * 1024 * 1024 + 123
UPLOAD = 2 * 1024 * 1024 + 45
STREAMS_EACH_WAY = 4


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


async def test_many_large_bodies_share_a_small_connection_window_both_ways() -> None:
    limits = {
        "stream_window_bytes": STREAM_WINDOW,
        "connection_window_bytes": CONNECTION_WINDOW,
    }
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_config(limits=limits))
            upstream, port = await start_upstream(nursery, "svc")
            await start_agent(
                nursery,
                running,
                {"app": port},
                stream_window_bytes=STREAM_WINDOW,
                connection_window_bytes=CONNECTION_WINDOW,
            )
            (session,) = running.server.sessions
            mux = session.tunnel.mux
            # Each side grants the other the configured connection window.
            assert mux.connection_credit == CONNECTION_WINDOW

            downloads: dict[int, bytes] = {}
            echoes: dict[int, bytes] = {}
            uploads = {i: bytes([65 + i]) * (UPLOAD + i) for i in range(STREAMS_EACH_WAY)}

            async def download(index: int) -> None:
                reply = await fetch(running.port, b"GET", b"/bytes/%d" % (DOWNLOAD + index))
                assert reply.status == 200
                downloads[index] = reply.body

            async def upload(index: int) -> None:
                reply = await fetch(running.port, b"POST", b"/echo", body=uploads[index])
                assert reply.status == 200
                echoes[index] = reply.body

            async with trio.open_nursery() as clients:
                for index in range(STREAMS_EACH_WAY):
                    clients.start_soon(download, index)
                    clients.start_soon(upload, index)

            for index in range(STREAMS_EACH_WAY):
                assert downloads[index] == pattern(DOWNLOAD + index)
                assert echoes[index] == uploads[index]
            assert sorted(r.body for r in upstream.requests if r.method == b"POST") == sorted(
                uploads.values()
            )
            # Every stream task has finished its bookkeeping (consume, forget).
            await trio.testing.wait_all_tasks_blocked()
            assert session.tunnel.in_flight == 0
            # The server never held more than its connection window of response bytes
            # (far less than the 8 bodies of 2-3 MiB), and holds nothing now: all the
            # credit came back, none leaked.
            assert 0 < mux.peak_held_bytes <= CONNECTION_WINDOW
            assert mux.held_bytes == 0
            # The agent consumed every upload byte before the upstream answered, so its
            # WINDOWs arrived ahead of the last response: the server's credit towards
            # the agent is back to the window, less at most one unsent batch.
            assert mux.connection_credit > CONNECTION_WINDOW - CONNECTION_WINDOW // 4
            nursery.cancel_scope.cancel()
