"""An agent with a valid token that does what protocol.md allows and HTTP does not (issue 20).

The agent here is `tests.integration.hostile.HostileAgent`: wsproto and frames made
by hand, so nothing in it is checked by pvtunnel's own encoder. The client reads raw
bytes and counts the responses in them with a fresh h11 parser.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trio.testing

from pvtunnel._config import ScopedToken, Secret
from pvtunnel._logs import TextFormatter
from tests.integration.client import fetch
from tests.integration.harness import (
    TOKEN,
    server_config,
    start_agent,
    start_server,
    start_upstream,
    wait_for_sessions,
)
from tests.integration.hostile import (
    GOAWAY,
    PING,
    PONG,
    RESET,
    HandshakeRejectedError,
    HostileAgent,
    frame,
    response_head,
)
from tests.integration.hostile_exchanges import (
    answer_requests,
    body_frames,
    hostile_agent,
    ok_head,
    responses_in,
    through_hostile_agent,
)

if TYPE_CHECKING:
    from pvtunnel._trio.state import AgentSession
    from tests.integration.harness import Running

LIMIT_S: Final = 10
TEAM_A_TOKEN: Final = "team-a-secret-4c1f08"
SPLIT_REASON: Final = (
    b"OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforge"
)


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pvtunnel.access"]


@pytest.mark.parametrize(
    "bad_head",
    [
        pytest.param(response_head(0, b"200", SPLIT_REASON), id="final-reason"),
        pytest.param(
            response_head(0, b"103", SPLIT_REASON, informational=True), id="informational-reason"
        ),
        pytest.param(response_head(0, b"200", b"OK\nX: y"), id="bare-lf-reason"),
    ],
)
async def test_a_reason_phrase_cannot_split_the_response(
    bad_head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 1: CRLF in the reason became a second response that answered the next request."""
    caplog.set_level(logging.INFO, "pvtunnel")
    rest = [bad_head] if bad_head[1] == 0 else [bad_head, ok_head(b"")]
    received = await through_hostile_agent(
        [[*rest, *body_frames(b"")], [ok_head(b"second"), *body_frames(b"second")]]
    )
    responses = responses_in(received)
    assert [(status, reason) for status, reason, _ in responses] == [
        (502, b"Bad Gateway"),
        (200, b"OK"),
    ]
    assert responses[1][2] == b"second"
    assert b"forge" not in received
    assert any(" 502 " in line for line in access_lines(caplog))


@pytest.mark.parametrize(
    "heads",
    [
        pytest.param([response_head(0, b"200", b"OK", [(b"bad name", b"x")])], id="final-name"),
        pytest.param(
            [response_head(0, b"200", b"OK", [(b"x-a", b"v\r\nx-b: w")])], id="final-value"
        ),
        pytest.param([response_head(0, b"200", b"OK", [(b"x-a", b"\x01")])], id="final-control"),
        pytest.param(
            [
                response_head(
                    0, b"200", b"OK", [(b"content-length", b"1"), (b"content-length", b"2")]
                )
            ],
            id="final-length",
        ),
        pytest.param(
            [
                response_head(0, b"103", b"Early", [(b"bad name", b"x")], informational=True),
                ok_head(b""),
            ],
            id="informational-name",
        ),
    ],
)
async def test_an_invalid_head_from_the_agent_is_a_logged_502(
    heads: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Also fix: an empty close logged as 200 (final) or a 500 with a traceback (1xx)."""
    caplog.set_level(logging.INFO, "pvtunnel")
    received = await through_hostile_agent(
        [[*heads, *body_frames(b"")], [ok_head(b"next"), *body_frames(b"next")]]
    )
    assert [status for status, _, _ in responses_in(received)] == [502, 200], received
    assert any(" 502 " in line for line in access_lines(caplog)), access_lines(caplog)
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


async def test_another_teams_token_cannot_evict_an_agent_by_its_client_id() -> None:
    """Defect 2: team A's token with the root agent's client_id dropped the root agent."""
    config = server_config(
        internal={"tokens": (ScopedToken(token=Secret(TEAM_A_TOKEN), routes=("*.team-a.test",)),)}
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            _, port = await start_upstream(nursery, "billing")
            await start_agent(nursery, running, {"billing": port}, client_id="main")
            await wait_for_sessions(running, 1)
            (victim,) = running.server.sessions
            for attempt in range(3):
                route = f"x{attempt}.team-a.test"
                async with await HostileAgent.connect(
                    running.addresses.internal, TEAM_A_TOKEN, client_id="main", routes=[route]
                ):
                    while not any(route in s.routes for s in running.server.sessions):
                        await running.server.state.wait_sessions_changed()
                    assert victim in running.server.sessions
                    reply = await fetch(running.port, b"GET", b"/", host=b"billing")
                    assert reply.status == 200
            assert victim in running.server.sessions
            nursery.cancel_scope.cancel()


async def test_the_same_scope_still_takes_over_its_client_id() -> None:
    """A reconnect with the same token still replaces the stale connection."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            first = await hostile_agent(running, client_id="edge")
            async with first:
                await wait_for_sessions(running, 1)
                (stale,) = running.server.sessions
                async with await hostile_agent(running, client_id="edge"):
                    while stale in running.server.sessions:
                        await running.server.state.wait_sessions_changed()
                    assert len(running.server.sessions) == 1
            nursery.cancel_scope.cancel()


async def test_an_agent_sending_interim_heads_without_end_is_stopped() -> None:
    """Interim heads take no credit: an agent sending them in a loop to a client
    that does not read them would grow the server's memory. The 33rd for one
    request resets its stream, and the client gets a 502."""
    hint = response_head(0, b"103", b"Early Hints", [(b"link", b"</a>")], informational=True)
    replies = [[hint] * 40 + [ok_head(b"ok"), *body_frames(b"ok")]]
    received = await through_hostile_agent(replies)
    assert received.count(b"HTTP/1.1 103 ") <= 32
    assert [(status, body) for status, _, body in responses_in(received)][-1][0] == 502


async def test_a_refused_upgrade_whose_stream_is_reset_at_once_is_relayed_cut_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upgrade answered 400 and reset in the same message (an upstream that cut
    its answer short): the client gets the head and the body that came, cut short,
    not a 500 with a traceback in the server's log."""
    caplog.set_level(logging.INFO, "pvtunnel")
    cut = frame(RESET, 0, (2).to_bytes(4, "big") + b"the upstream cut its answer short")
    refusal = response_head(0, b"400", b"Bad Request", [(b"content-length", b"100")])
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            async with await hostile_agent(running) as agent:
                nursery.start_soon(
                    answer_requests, agent, [[refusal, frame(0x05, 0, b"part"), cut]]
                )
                stream = await trio.open_tcp_stream("127.0.0.1", running.port)
                async with stream:
                    await stream.send_all(
                        b"GET /ws HTTP/1.1\r\nHost: app\r\n"
                        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                    )
                    received = bytearray()
                    while chunk := await stream.receive_some(65536):
                        received += chunk
                nursery.cancel_scope.cancel()
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n"), bytes(received)
    assert received.endswith(b"\r\n\r\npart"), bytes(received)
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert any(" GET app /ws 400 4B " in line for line in access_lines(caplog)), access_lines(
        caplog
    )


async def test_an_agent_registering_as_a_drain_begins_is_told_goaway() -> None:
    """The drain tells the agents it finds; one whose HELLO comes just after (its
    upgrade came before) is told too, and never routed, instead of holding on to a
    server that is about to close."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            state = running.server.state
            agent = await HostileAgent.connect(
                running.addresses.internal,
                TOKEN,
                client_id="late",
                before_hello=running.server.drain,
            )
            async with agent:
                assert state.draining
                received = await agent.receive_frame()
                while received is not None and received.kind != GOAWAY:
                    received = await agent.receive_frame()
                assert received is not None, "closed without GOAWAY"
                assert b"shutting down" in received.payload
                assert [s.client_id for s in running.server.sessions] == ["late"]
                assert state.router.lookup("app") is None
            nursery.cancel_scope.cancel()


FORGED_LINE: Final = (
    "\n2026-12-06 04:00:00 INFO    pvtunnel.server: agent FAKE connected from 10.9.9.9"
)


@pytest.mark.parametrize(
    "client_id",
    [
        pytest.param("edge" + FORGED_LINE, id="newline"),
        pytest.param("edge\x1b[2K\rFAKE", id="escape"),
        pytest.param("edge FAKE", id="space"),
        pytest.param("e" * 256, id="too-long"),
        pytest.param("", id="empty"),
    ],
)
async def test_a_client_id_that_could_forge_log_lines_is_rejected(
    client_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 6: a client_id with a newline and ESC was written raw to the text log."""
    caplog.set_level(logging.DEBUG, "pvtunnel")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            with pytest.raises(HandshakeRejectedError, match="client_id must be"):
                await hostile_agent(running, client_id=client_id)
            assert not running.server.sessions
            nursery.cancel_scope.cancel()
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    for record in caplog.records:
        line = formatter.format(record)
        assert "\n" not in line, line
        assert "\x1b" not in line, line
        assert "FAKE connected" not in record.getMessage()


def test_the_text_log_escapes_what_a_peer_wrote() -> None:
    """Whatever else from a peer reaches a log line stays on that one line."""
    record = logging.makeLogRecord(
        {"msg": "stream reset: %s", "args": ("x\r\nFAKE\x1b[31m\u2028\x85",), "levelname": "INFO"}
    )
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == "INFO stream reset: x\\r\\nFAKE\\x1b[31m\\u2028\\x85"


PINGS_PER_MESSAGE: Final = 500
MAX_FLOOD_MESSAGES: Final = 1000


async def flood_pings(agent: HostileAgent, *, read: bool) -> int:
    """Send messages of PINGs until the server drops us (or the bound); how many went."""
    pings = frame(PING, 0, b"\x00" * 8) * PINGS_PER_MESSAGE
    async with trio.open_nursery() as nursery:
        if read:
            nursery.start_soon(drain_frames, agent)
        for sent in range(MAX_FLOOD_MESSAGES):
            try:
                await agent.send(pings)
            except trio.BrokenResourceError:
                nursery.cancel_scope.cancel()
                return sent
        nursery.cancel_scope.cancel()
    return MAX_FLOOD_MESSAGES


async def drain_frames(agent: HostileAgent) -> None:
    while await agent.receive_frame() is not None:
        pass


async def non_reading_agent(running: Running) -> tuple[HostileAgent, AgentSession]:
    """A registered agent with a 4 KiB receive buffer (it will read nothing), and
    its session on the server."""
    agent = await HostileAgent.connect(running.addresses.internal, TOKEN, receive_buffer_bytes=4096)
    await wait_for_sessions(running, 1)
    (session,) = running.server.sessions
    return agent, session


async def test_a_ping_flood_that_never_reads_its_pongs_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 3: PONGs queued without bound (33 to 441 MiB in 30 s) for a peer that never read."""
    caplog.set_level(logging.WARNING, "pvtunnel")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            agent, session = await non_reading_agent(running)
            async with agent:
                sent = await flood_pings(agent, read=False)
                while session in running.server.sessions:
                    await running.server.state.wait_sessions_changed()
            # Dropped once the socket buffers were full and the PONG queue reached its
            # cap, long before the bound on this test's flood.
            assert sent < MAX_FLOOD_MESSAGES, sent
            # What the server still holds for us is a bounded queue of PONGs.
            assert session.tunnel.mux.queued_pieces <= 2048
            assert any("PING flood" in r.getMessage() for r in caplog.records)
            nursery.cancel_scope.cancel()


async def test_an_agent_that_stops_reading_is_dropped(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An agent that sends (PONGs keep it "heard") but never reads would have all
    the server queues for it pile up: once one send to it has taken nothing for
    the heartbeat timeout (15 s), the connection is declared dead."""
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery)
        agent, session = await non_reading_agent(running)
        async with agent:
            clients: list[trio.SocketStream] = []
            head = b"GET / HTTP/1.1\r\nHost: app\r\nX-Pad: " + b"p" * 30000 + b"\r\n\r\n"
            while not session.tunnel._sending:  # until a send to the agent stalls
                assert len(clients) < 1000
                client = await trio.open_tcp_stream("127.0.0.1", running.port)
                await client.send_all(head)
                clients.append(client)
                await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                await agent.send(frame(PONG, 0, b"\x00" * 8))  # heard, reading nothing
                mock_clock.jump(5)
                await trio.testing.wait_all_tasks_blocked()
            assert session in running.server.sessions  # 10 s stalled: not yet
            await agent.send(frame(PONG, 0, b"\x00" * 8))
            mock_clock.jump(5)
            await trio.testing.wait_all_tasks_blocked()
            assert session not in running.server.sessions
            assert session.tunnel.declared_dead
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()


async def test_pings_whose_pongs_are_read_keep_the_link() -> None:
    """The cap is on PONGs not read, not on PINGs: a peer that reads may ping a lot."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            async with await hostile_agent(running) as agent:
                await wait_for_sessions(running, 1)
                (session,) = running.server.sessions
                pings = frame(PING, 0, b"\x00" * 8) * PINGS_PER_MESSAGE
                for _ in range(40):
                    await agent.send(pings)
                    answered = 0
                    while answered < PINGS_PER_MESSAGE:
                        received = await agent.receive_frame()
                        assert received is not None, "the server dropped a peer that reads"
                        answered += received.kind == PONG
                assert session in running.server.sessions
            nursery.cancel_scope.cancel()
