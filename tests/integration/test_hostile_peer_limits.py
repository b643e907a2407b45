"""What a hostile peer on the tunnel can make the other end hold, and how it is stopped.

A peer holding a valid token must not be able to grow the other end's memory past
its own bounds, freeze its event loop, or make a message that carries nothing read
as the end of the connection.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio
import trio.testing

from pvtunnel._http.framing import MAX_INTERIM_BYTES
from pvtunnel._trio.batching import SEND_BACKLOG_BYTES
from pvtunnel._trio.http11 import GATHER_BYTES
from tests.integration.harness import TOKEN, start_server, wait_for_sessions
from tests.integration.hostile import (
    ACCEPT,
    REJECT,
    HandshakeRejectedError,
    HostileAgent,
    response_head,
)
from tests.integration.hostile_exchanges import (
    body_frames,
    exchange_keepalive,
    ok_head,
    responses_in,
    through_hostile_agent,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pytest

LIMIT_S = 20


async def test_interim_heads_past_their_byte_budget_end_the_request_with_a_502() -> None:
    # Few heads, each of many empty fields: a count limit alone let one HEAD frame
    # hold a megabyte of Python objects, and 32 of them per stream.
    fields = [(b"x-%d" % index, b"") for index in range(200)]
    hint = response_head(0, b"103", b"Early Hints", fields, informational=True)
    replies = [[hint] * 8 + [ok_head(b"ok"), *body_frames(b"ok")]]
    received = await through_hostile_agent(replies)
    sent_hints = received.count(b"HTTP/1.1 103 ")
    assert 1 <= sent_hints < 8
    assert sent_hints * 200 * 128 <= MAX_INTERIM_BYTES
    assert [status for status, _, _ in responses_in(received)][-1] == 502


async def test_early_hints_of_ordinary_size_still_pass() -> None:
    links = [(b"link", b"</style-%d.css>; rel=preload; as=style" % index) for index in range(20)]
    hint = response_head(0, b"103", b"Early Hints", links, informational=True)
    replies = [[hint] * 4 + [ok_head(b"ok"), *body_frames(b"ok")]]
    received = await through_hostile_agent(replies)
    assert received.count(b"HTTP/1.1 103 ") == 4
    assert [(status, body) for status, _, body in responses_in(received)][-1] == (200, b"ok")


async def test_an_empty_message_from_the_agent_is_no_end() -> None:
    # Message boundaries mean nothing (protocol.md section 1): an empty message
    # carries nothing, where it was read as the close and failed the request (502).
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            async with await HostileAgent.connect(running.addresses.internal, TOKEN) as agent:

                async def answer() -> None:
                    request = await agent.receive_request()
                    stream = request.stream_id.to_bytes(4, "big")
                    for piece in (ok_head(b"ok"), *body_frames(b"ok")):
                        await agent.send(b"")
                        await agent.send(piece[:2] + stream + piece[6:])

                nursery.start_soon(answer)
                received = await exchange_keepalive(running.port, 1)
                assert [(status, body) for status, _, body in responses_in(received)] == [
                    (200, b"ok")
                ]
            nursery.cancel_scope.cancel()


async def test_an_agent_announcing_a_huge_window_and_reading_nothing_holds_little() -> None:
    # The peer's window is no bound on what the server holds for it: an upload to an
    # agent that announced 2^31-1 and reads nothing piled up in the send queue.
    huge = 2**31 - 1
    body = 16 * 1024 * 1024
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            agent = await HostileAgent.connect(
                running.addresses.internal,
                TOKEN,
                receive_buffer_bytes=4096,
                window=huge,
                connection_window=huge,
            )
            await wait_for_sessions(running, 1)
            (session,) = running.server.sessions
            async with agent:
                client = await trio.open_tcp_stream("127.0.0.1", running.port)
                head = b"PUT /up HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % body

                async def upload() -> None:
                    await client.send_all(head)
                    chunk = b"u" * 65536
                    for _ in range(body // len(chunk)):
                        await client.send_all(chunk)

                nursery.start_soon(upload)
                # Once the server's send to the agent stalls and the upload stops.
                while not session.tunnel._sending:
                    await trio.testing.wait_all_tasks_blocked()
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                queued = session.tunnel.mux.queued_bytes
                # The backlog, and the one piece of body that found it short of full.
                assert 0 < queued <= SEND_BACKLOG_BYTES + GATHER_BYTES + 65536, queued
                assert queued < 2 * 1024 * 1024  # where the whole upload (16 MiB) piled up
                nursery.cancel_scope.cancel()
        await client.aclose()


async def hello_answer(routes: Sequence[str]) -> tuple[int, bytes]:
    """HELLO with ``routes``: the answer's frame type, and REJECT's reason."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            try:
                agent = await HostileAgent.connect(running.addresses.internal, TOKEN, routes=routes)
            except HandshakeRejectedError as rejected:
                answer = (REJECT, rejected.reason.encode())
            else:
                async with agent:
                    answer = (ACCEPT, b"")
            nursery.cancel_scope.cancel()
    return answer


async def test_many_refused_routes_are_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "pvtunnel")
    kind, _ = await hello_answer(["app", *(f"bad name {i}" for i in range(300))])
    assert kind == ACCEPT
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "300 route(s) refused" in refusals[0]
    assert "and 290 more" in refusals[0]


async def test_refusals_too_many_for_one_accept_get_a_reject(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 5,000 invalid names fit in a HELLO; listed with their reasons, they do not fit
    # in an ACCEPT, which failed the handshake as an internal error with a traceback.
    caplog.set_level(logging.WARNING, "pvtunnel")
    kind, reason = await hello_answer([f"!{index}" for index in range(5000)])
    assert kind == REJECT
    assert b"5000 routes refused" in reason
    assert not [record for record in caplog.records if record.exc_info]
