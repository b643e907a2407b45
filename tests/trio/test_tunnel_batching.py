"""How queued frames leave a `Tunnel`: whole batches, early under load, never cut short.

Each test runs one end as a real `Tunnel` on a WebSocket over an in-memory stream
pair, and the other end as a bare WebSocket and `Multiplexer`, so it sees exactly
which frames arrived in which message.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from pvtunnel._errors import TunnelClosedError, WebSocketClosed
from pvtunnel._trio.batching import EARLY_SEND_PIECES
from pvtunnel._trio.tunnel import FRAMES_PER_STEP, StreamHandler, Tunnel
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.frames import StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role
from tests.trio.helpers import LIMIT_S, Pair, open_pair

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pvtunnel._trio.stream import Channel
    from pvtunnel._trio.websocket import WebSocket

GET = RequestHead(route="app", method=b"GET", target=b"/", headers=())
OK = ResponseHead(status=200, reason=b"OK")
# A GET without a body is two frames, its HEAD and its END; so is such an answer.
PIECES_PER_GET = 2
# Requests that make one early send's worth of frames.
EARLY_BATCH = EARLY_SEND_PIECES // PIECES_PER_GET


@asynccontextmanager
async def server_and_bare_agent() -> AsyncIterator[tuple[Tunnel, WebSocket, Multiplexer]]:
    """A running server `Tunnel`, and the agent's WebSocket and multiplexer, past HELLO."""
    async with open_pair() as pair, trio.open_nursery() as nursery:
        agent_mux = Multiplexer(Role.AGENT)
        agent_mux.send_hello(client_id="agent-1", routes=("app",))
        await pair.client.send(agent_mux.data_to_send())
        server = Tunnel(pair.server, Multiplexer(Role.SERVER), label="server")
        assert isinstance(await server.receive_handshake(), ev.HelloReceived)
        server.mux.accept()
        await server.flush()
        assert agent_mux.receive_data(await pair.client.receive_some()) == [ev.Accepted(refused=())]
        await nursery.start(server.run)
        await trio.testing.wait_all_tasks_blocked()  # the writer is waiting
        yield server, pair.client, agent_mux
        nursery.cancel_scope.cancel()


async def _answer(channel: Channel, head: RequestHead) -> None:
    """An agent's stream handler: 200 OK, no body."""
    channel.send_response(OK)
    channel.end()


async def _agent_past_hello(pair: Pair, handler: StreamHandler) -> tuple[Tunnel, Multiplexer]:
    """An agent `Tunnel` on ``pair.client`` with ``handler``, accepted by a bare server
    multiplexer on ``pair.server`` (not yet running: the caller starts `Tunnel.run`)."""
    agent = Tunnel(pair.client, Multiplexer(Role.AGENT), on_stream=handler, label="agent")
    agent.mux.send_hello(client_id="agent-1", routes=("app",))
    await agent.flush()
    server_mux = Multiplexer(Role.SERVER)
    server_mux.receive_data(await pair.server.receive_some())
    server_mux.accept()
    await pair.server.send(server_mux.data_to_send())
    assert await agent.receive_handshake() == ev.Accepted(refused=())
    return agent, server_mux


async def _per_message(
    ws: WebSocket, mux: Multiplexer, kind: type[ev.Event], total: int
) -> list[int]:
    """Read messages until ``total`` events of ``kind`` came; how many each message held."""
    counts: list[int] = []
    while sum(counts) < total:
        events = mux.receive_data(await ws.receive_some())
        counts.append(sum(isinstance(event, kind) for event in events))
    return counts


async def _request_and_wait(server: Tunnel) -> None:
    channel = server.open_stream(GET, end_stream=True)
    await channel.receive()


async def _requests_per_message(requests: int) -> list[int]:
    """With one unanswered stream already in flight (so no request is ever alone on
    the connection), start ``requests`` tasks that each open a stream and wait, all
    in one scheduler pass; how many requests each message to the agent held."""
    with trio.fail_after(LIMIT_S):
        async with (
            server_and_bare_agent() as (server, agent_ws, agent_mux),
            trio.open_nursery() as nursery,
        ):
            server.open_stream(GET, end_stream=True)
            assert await _per_message(agent_ws, agent_mux, ev.StreamOpened, 1) == [1]
            for _ in range(requests):
                nursery.start_soon(_request_and_wait, server)
            counts = await _per_message(agent_ws, agent_mux, ev.StreamOpened, requests)
            nursery.cancel_scope.cancel()
    return counts


async def test_frames_queued_in_one_pass_leave_as_one_message() -> None:
    """Below the early-send size, with other streams in flight, the writer sends
    the pass's frames together."""
    requests = EARLY_BATCH - 1
    assert await _requests_per_message(requests) == [requests]


async def test_a_big_batch_leaves_before_the_pass_ends() -> None:
    """The task that brings the queue to the early-send size sends it, so the agent
    gets the first requests while later ones are still being queued, not all in
    one lump after the pass."""
    counts = await _requests_per_message(3 * EARLY_BATCH)
    assert counts[0] == EARLY_BATCH
    assert len(counts) > 1


async def test_the_agent_sends_a_big_batch_of_answers_early() -> None:
    """The agent's side of the same: stream tasks that each answer and finish in
    one pass; the one that brings the queue to the early-send size sends it."""
    requests = 3 * EARLY_BATCH

    with trio.fail_after(LIMIT_S):
        async with open_pair() as pair, trio.open_nursery() as nursery:
            agent, server_mux = await _agent_past_hello(pair, _answer)
            await nursery.start(agent.run)
            await trio.testing.wait_all_tasks_blocked()  # the writer is waiting
            for _ in range(requests):
                server_mux.open_stream(GET, end_stream=True)
            await pair.server.send(server_mux.data_to_send())  # one reader pass
            counts = await _per_message(pair.server, server_mux, ev.ResponseReceived, requests)
            nursery.cancel_scope.cancel()
    assert counts[0] == EARLY_BATCH
    assert len(counts) > 1


@pytest.mark.parametrize(
    "requests",
    [
        # A request alone on the connection: nothing to batch with, so its task
        # sends it rather than waking the writer for one more scheduler pass.
        pytest.param(1, id="alone"),
        pytest.param(EARLY_BATCH, id="a-full-batch"),
    ],
)
async def test_a_task_cancelled_during_its_early_send_finishes_the_message(
    monkeypatch: pytest.MonkeyPatch, requests: int
) -> None:
    """The early send is made by the request's own task, shielded: the task's
    cancellation waits for it, and the agent reads every frame intact (a message
    cut short would be garbage)."""
    gate = trio.Event()
    with trio.fail_after(LIMIT_S):
        async with server_and_bare_agent() as (server, agent_ws, agent_mux):
            _gate_sends(monkeypatch, server, gate)
            outcome: list[object] = []
            async with trio.open_nursery() as nursery:
                scope = await nursery.start(_open_and_wait, server, requests, outcome)
                await trio.testing.wait_all_tasks_blocked()
                assert server.mux.queued_pieces == 0  # taken by the task's early send
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []  # still sending, cancelled or not
                gate.set()
            assert outcome == ["cancelled"]
            counts = await _per_message(agent_ws, agent_mux, ev.StreamOpened, requests)
            assert counts == [requests]
            assert server.closed is None


async def test_closing_the_tunnel_ends_a_blocked_early_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send that never finishes (a peer that stopped reading) must not hold a
    shielded stream task forever: closing the tunnel (shutdown, or a heartbeat
    timeout, which closes the same way) cancels the send and fails the stream."""
    gate = trio.Event()  # never set
    with trio.fail_after(LIMIT_S):
        async with server_and_bare_agent() as (server, _, _):
            _gate_sends(monkeypatch, server, gate)
            outcome: list[object] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(_open_and_wait, server, EARLY_BATCH, outcome)
                await trio.testing.wait_all_tasks_blocked()
                assert server.mux.queued_pieces == 0
                await server.aclose("shutting down")
            assert outcome == ["shutting down"]
            assert server.closed is not None


async def test_cancelling_an_agent_tunnel_ends_a_blocked_early_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the agent the streams' tasks run inside `Tunnel.run`, so a shielded early
    send held up by a server that stopped reading would keep `run` from ending when
    it is cancelled (a shutdown after its grace period, a retired link): the
    agent would never exit. Cancelling `run` ends that send too."""
    gate = trio.Event()  # never set: the server reads nothing more

    with trio.fail_after(LIMIT_S):
        async with open_pair() as pair, trio.open_nursery() as nursery:
            agent, server_mux = await _agent_past_hello(pair, _answer)
            _gate_sends(monkeypatch, agent, gate)
            with trio.CancelScope() as running:
                nursery.start_soon(_cancel_once_blocked, running)
                server_mux.open_stream(GET, end_stream=True)
                await pair.server.send(server_mux.data_to_send())
                await agent.run()
            assert running.cancelled_caught
            assert agent.closed is not None
            nursery.cancel_scope.cancel()


async def _cancel_once_blocked(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once every task waits: the stream's early send is then stuck."""
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


async def test_an_early_send_on_a_broken_connection_fails_every_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transport that broke under the early send ends the tunnel, as a failed
    send by the writer does: every stream fails, none waits for an answer."""

    async def broken_send(data: bytes) -> None:
        raise WebSocketClosed("the connection closed", 1006)

    with trio.fail_after(LIMIT_S):
        async with server_and_bare_agent() as (server, _, _):
            monkeypatch.setattr(server.ws, "send", broken_send)
            outcome: list[object] = []
            opened: list[Channel] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(_open_and_wait, server, EARLY_BATCH, outcome, opened)
            assert outcome == ["agent connection lost while sending"]
            assert server.closed is not None
            assert len(opened) == EARLY_BATCH
            assert all(isinstance(channel.failure, TunnelClosedError) for channel in opened)


async def _open_and_wait(
    server: Tunnel,
    requests: int,
    outcome: list[object],
    opened: list[Channel] | None = None,
    *,
    task_status: trio.TaskStatus[trio.CancelScope],
) -> None:
    """Open ``requests`` streams and wait for an answer, all in one step (so this
    task, not the writer, sends them); say how the wait ended."""
    with trio.CancelScope() as scope:
        task_status.started(scope)
        channels = [server.open_stream(GET, end_stream=True) for _ in range(requests)]
        if opened is not None:
            opened.extend(channels)
        try:
            await channels[-1].receive()
        except TunnelClosedError as exc:
            outcome.append(str(exc))
            return
    outcome.append("cancelled" if scope.cancelled_caught else "answered")


def _gate_sends(monkeypatch: pytest.MonkeyPatch, server: Tunnel, gate: trio.Event) -> None:
    real_send = server.ws.send

    async def gated_send(data: bytes) -> None:
        # Bounded here too: a shielded send is out of reach of the test's own deadline.
        with trio.move_on_after(LIMIT_S):
            await gate.wait()
            await real_send(data)
            return
        raise AssertionError("a send was held past the test's limit")

    monkeypatch.setattr(server.ws, "send", gated_send)


class _Steps(trio.abc.Instrument):
    """Counts the steps of the tasks running `Tunnel.run`."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Tunnel.run"):
            self.steps += 1


async def test_a_message_of_many_tiny_frames_is_taken_in_steps() -> None:
    # 5,000 frames in one message (14 bytes each: 70,000 fit in 1 MiB) were all
    # decoded and handled in one step of the reader, holding the event loop for it.
    frames = 5 * FRAMES_PER_STEP
    with trio.fail_after(LIMIT_S):
        async with server_and_bare_agent() as (server, agent_ws, _):
            credit = server.mux.connection_credit
            window = fr.encode(fr.Window(stream_id=StreamId(0), increment=1))
            steps = _Steps()
            trio.lowlevel.add_instrument(steps)
            try:
                await agent_ws.send(window * frames)
                await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(steps)
            assert steps.steps >= frames // FRAMES_PER_STEP
            # Every frame was taken, in order, and the connection is whole.
            assert server.mux.connection_credit == credit + frames
            assert server.closed is None
