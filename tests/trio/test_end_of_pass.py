"""`_trio.batching`: what a scheduler pass queues leaves together when the pass ends.

The tunnels here run over real socket pairs (the end-of-pass write needs a file
descriptor) with the agent's multiplexer decoding what arrives, so the tests see
exactly which frames went out, in which order, and in how many messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from pvtunnel._errors import TunnelClosedError
from pvtunnel._trio import batching
from pvtunnel._trio.tunnel import Tunnel
from pvtunnel._wire import events as ev
from pvtunnel._wire.heads import RequestHead
from tests.trio.helpers import handshaken_muxes
from tests.trio.test_websocket import open_pair

if TYPE_CHECKING:
    from pvtunnel._trio.websocket import WebSocket
    from pvtunnel._wire.mux import Multiplexer

LIMIT_S = 10
GET = RequestHead(route="app", method=b"GET", target=b"/", headers=())
POST = RequestHead(route="app", method=b"POST", target=b"/", headers=())


async def _events(ws: WebSocket, agent: Multiplexer, count: int) -> list[ev.Event]:
    """The next ``count`` events the agent decodes from what ``ws`` receives."""
    events: list[ev.Event] = []
    with trio.fail_after(LIMIT_S):
        while len(events) < count:
            data = await ws.receive_some()
            assert data, f"closed after {len(events)} events"
            events += agent.receive_data(data)
    return events


async def _close(*sockets: WebSocket) -> None:
    """Close both ends at once, so neither waits out its grace for the other."""
    async with trio.open_nursery() as nursery:
        for ws in sockets:
            nursery.start_soon(ws.aclose)


def _count_sends(monkeypatch: pytest.MonkeyPatch, ws: WebSocket) -> list[bool]:
    """Record each `send_nowait` result of ``ws``."""
    results: list[bool] = []
    send_nowait = ws.send_nowait

    def counted(data: bytes) -> bool:
        results.append(send_nowait(data))
        return results[-1]

    monkeypatch.setattr(ws, "send_nowait", counted)
    return results


async def test_frames_queued_in_one_pass_leave_together_with_no_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_ws, server_ws, _ = await open_pair(sockets=True)
    server, agent = handshaken_muxes()
    tunnel = Tunnel(server_ws, server)  # not running: there is no writer task at all
    sends = _count_sends(monkeypatch, server_ws)

    async def open_one() -> None:
        tunnel.open_stream(GET, end_stream=True)

    async with trio.open_nursery() as nursery:  # three tasks, one pass
        for _ in range(3):
            nursery.start_soon(open_one)
    events = await _events(agent_ws, agent, 6)
    assert sends == [True]
    assert [type(e) for e in events] == [ev.StreamOpened, ev.StreamEnded] * 3
    await _close(agent_ws, server_ws)


async def test_what_the_socket_cannot_take_at_once_the_writer_sends_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_ws, server_ws, _ = await open_pair(sockets=True)
    server, agent = handshaken_muxes()
    tunnel = Tunnel(server_ws, server)
    sends = _count_sends(monkeypatch, server_ws)
    body = bytes(range(256)) * 6 * 1024  # 1.5 MiB: more than the socket buffers hold
    received = bytearray()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(tunnel.run)
            await trio.testing.wait_all_tasks_blocked()  # the writer waits for work
            channel = tunnel.open_stream(POST, end_stream=False)
            await channel.send_data(body)
            channel.end()
            while True:
                data = await agent_ws.receive_some()
                events = agent.receive_data(data)
                received += b"".join(e.data for e in events if isinstance(e, ev.DataReceived))
                if any(isinstance(e, ev.StreamEnded) for e in events):
                    break
            nursery.cancel_scope.cancel()
    assert received == body
    assert False in sends  # the end of the pass left a part to the writer
    await _close(agent_ws, server_ws)


async def test_a_failure_at_the_end_of_a_pass_hands_the_frames_to_the_writer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    agent_ws, server_ws, _ = await open_pair(sockets=True)
    server, agent = handshaken_muxes()
    tunnel = Tunnel(server_ws, server)
    send_at_end_of_pass = tunnel.send_at_end_of_pass
    failures: list[str] = []

    def fail_once() -> None:
        if not failures:
            failures.append("boom")
            raise RuntimeError("boom")
        send_at_end_of_pass()

    monkeypatch.setattr(tunnel, "send_at_end_of_pass", fail_once)
    with trio.fail_after(LIMIT_S), caplog.at_level(logging.ERROR):
        async with trio.open_nursery() as nursery:
            await nursery.start(tunnel.run)
            await trio.testing.wait_all_tasks_blocked()  # the writer waits for work
            tunnel.open_stream(GET, end_stream=True)
            first = await _events(agent_ws, agent, 2)
            # Trio drops an instrument that raises; this one must still be there.
            tunnel.open_stream(GET, end_stream=True)
            second = await _events(agent_ws, agent, 2)
            nursery.cancel_scope.cancel()
    assert failures == ["boom"]
    assert [type(e) for e in first + second] == [ev.StreamOpened, ev.StreamEnded] * 2
    assert "sending at the end of a pass failed" in caplog.text
    await _close(agent_ws, server_ws)


async def test_a_socket_found_broken_at_the_end_of_a_pass_closes_the_tunnel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_ws, server_ws, _ = await open_pair(sockets=True)
    server, _agent = handshaken_muxes()
    tunnel = Tunnel(server_ws, server)
    assert isinstance(server_ws.stream, trio.SocketStream)
    server_ws.stream.socket.shutdown(trio.socket.SHUT_WR)
    # The failure wakes this task from the end of a pass, where the scheduler is
    # about to block until the next deadline: it must be told to look again (no
    # clock shows that wait, so the call is what the test checks).
    rescans: list[str] = []
    rescan = batching._rescan

    def recorded() -> None:
        rescans.append("rescan")
        rescan()

    monkeypatch.setattr(batching, "_rescan", recorded)
    channel = tunnel.open_stream(GET, end_stream=True)
    with trio.fail_after(LIMIT_S), pytest.raises(TunnelClosedError, match="lost while sending"):
        await channel.receive()
    assert tunnel.closed is not None
    assert rescans == ["rescan"]
    await _close(agent_ws, server_ws)
