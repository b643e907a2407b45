"""Out of file descriptors: the server's listeners and the agent's upstream dials.

A process at its descriptor limit cannot accept or dial; what it must not do is
log a traceback per attempt (ten a second per listener) or a line per failed
request, and it must serve again once descriptors are free. Each test uses this
process's descriptors up deliberately (`descriptors_used_up`): the soft limit is
lowered to the highest descriptor open and the free numbers below it are filled,
so every accept and every socket fails with EMFILE until the block ends. POSIX
only (``resource``, ``/proc/self/fd``), as the CLI tests are.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import resource
from typing import TYPE_CHECKING

import attrs
import trio
import trio.testing

from pvtunnel._config import AdminConfig
from pvtunnel._trio.listeners import ACCEPT_RETRY_S, SHORTAGE_LOG_EVERY_S
from pvtunnel._trio.server import TunnelServer
from tests.integration.client import Client
from tests.integration.harness import server_config, start_tunnel

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pytest


@contextlib.contextmanager
def descriptors_used_up() -> Iterator[None]:
    """No descriptor can be opened inside the block; all is as it was after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    source = os.open(os.devnull, os.O_RDONLY)
    fillers: list[int] = []
    try:
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        try:
            while True:
                try:
                    fillers.append(os.dup(source))
                except OSError as exc:
                    if exc.errno != errno.EMFILE:
                        raise
                    break
            yield
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    finally:
        os.close(source)


async def _answer(sock: trio.socket.SocketType, request: bytes) -> bytes:
    stream = trio.SocketStream(sock)
    async with stream:
        await stream.send_all(request)
        with trio.fail_after(10):
            return await stream.receive_some(65536)


async def test_listeners_out_of_descriptors_log_now_and_then_and_serve_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = attrs.evolve(server_config(), admin=AdminConfig(port=0))
    server = TunnelServer(config)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve)
        assert addresses.admin is not None
        where = {
            "internal": addresses.internal,
            "external": addresses.external,
            "admin": addresses.admin,
        }
        clients = {what: trio.socket.socket() for what in where}
        caplog.clear()
        with descriptors_used_up():
            for what, sock in clients.items():
                await sock.connect(where[what])  # into the backlog: nothing is accepted
            await trio.sleep(3.5 * SHORTAGE_LOG_EVERY_S)
            during = list(caplog.records)
        answers = {
            "external": await _answer(
                clients["external"], b"GET / HTTP/1.1\r\nHost: nobody\r\nConnection: close\r\n\r\n"
            ),
            "admin": await _answer(
                clients["admin"], b"GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            ),
            "internal": await _answer(clients["internal"], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        }
        nursery.cancel_scope.cancel()
    assert answers["external"].startswith(b"HTTP/1.1 404 ")
    assert answers["admin"].startswith(b"HTTP/1.1 200 ")
    assert answers["internal"].startswith(b"HTTP/1.1 4")
    assert not [record for record in caplog.records if not record.name.startswith("pvtunnel.")]
    for what in where:
        logger = "pvtunnel.admin" if what == "admin" else "pvtunnel.server"
        lines = [
            record
            for record in during
            if record.name == logger and record.getMessage().startswith(f"the {what} listener")
        ]
        # The first failure at once, then one line per SHORTAGE_LOG_EVERY_S, each
        # with the count of those in between; no traceback.
        assert len(lines) == 4, [record.getMessage() for record in lines]
        assert all(record.exc_info is None for record in lines)
        first, *later = (record.getMessage() for record in lines)
        assert "EMFILE" in first
        assert "ulimit -n" in first
        assert "more failures" not in first
        per_line = round(SHORTAGE_LOG_EVERY_S / ACCEPT_RETRY_S)
        for message in later:
            held = re.search(r"\((\d+) more failures since the last line\)", message)
            assert held is not None, message
            # ten retries a second, their times sums of 0.1 (not exact in binary)
            assert int(held.group(1)) in (per_line - 1, per_line)
        again = [
            record.getMessage()
            for record in caplog.records
            if record.name == logger
            and f"the {what} listener" in record.getMessage()
            and "accepts connections again" in record.getMessage()
        ]
        assert len(again) == 1, again


async def test_upstream_dials_out_of_descriptors_are_logged_now_and_then(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery)
        # Connected before: the server needs no descriptor to take their requests.
        clients = [await Client.connect(running.port) for _ in range(6)]
        caplog.clear()
        with descriptors_used_up():
            burst = [(await client.request(b"GET", b"/")).status for client in clients[:4]]
            await trio.sleep(SHORTAGE_LOG_EVERY_S)
            later = (await clients[4].request(b"GET", b"/")).status
        after = (await clients[5].request(b"GET", b"/")).status
        for client in clients:
            await client.stream.aclose()
        nursery.cancel_scope.cancel()
    assert burst == [502] * 4
    assert later == 502
    assert after == 200
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name == "pvtunnel.agent" and "out of file descriptors" in record.getMessage()
    ]
    # One line for the burst, not one per request; the next says how many it held back.
    assert len(lines) == 2, lines
    assert "ulimit -n" in lines[0]
    assert "more requests" not in lines[0]
    assert lines[1].endswith("; 3 more requests failed so since the last line")
