"""Access control and HTTP hygiene (issue 3, SECURITY.md), through a real server and agent.

Every test runs a server, an agent and an upstream on loopback. The smuggling
table sends raw bytes to the external port and asks the recording upstream what
it received: one client message may become at most one upstream request, with
exactly the body the client framed.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio

from pvtunnel._config import ScopedToken, Secret, ServerConfig
from pvtunnel._errors import HandshakeRefusedError
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.hangups import peer_address
from tests.integration.client import Client, Reply, fetch
from tests.integration.harness import (
    TOKEN,
    agent_config,
    server_config,
    start_agent,
    start_server,
    start_tunnel,
    start_upstream,
)
from tests.integration.raw_upstream import start_raw_upstream

if TYPE_CHECKING:
    from tests.integration.harness import Running
    from tests.integration.raw_upstream import RawUpstream

LIMIT_S: Final = 10
EXTERNAL_TOKEN: Final = "ext-secret-6b0f2c9d41"
TEAM_A_TOKEN: Final = "team-a-secret-93e1d7"
WRONG_TOKEN: Final = "wrong-secret-5a8c33"


def _basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


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


# ---------------------------------------------------------------- internal token


async def test_agent_with_a_wrong_or_missing_token_gets_401_and_stops() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "svc")
            host, internal_port = running.addresses.internal
            upgrade = (
                b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n" % (host.encode(), internal_port)
            )
            for credentials in (
                b"",
                b"Authorization: Bearer " + WRONG_TOKEN.encode() + b"\r\n",
                b"Authorization: Bearer " + TOKEN.encode() + b"x\r\n",
                b"Authorization: Bearer " + TOKEN[:-1].encode() + b"\r\n",
                # Only the bearer scheme carries an agent token.
                b"Authorization: " + _basic(b"agent", TOKEN.encode()) + b"\r\n",
            ):
                answer = await exchange_one(internal_port, upgrade + credentials + b"\r\n")
                assert statuses(answer) == [401], credentials
                assert TOKEN.encode() not in answer
            agent = TunnelAgent(agent_config(running.addresses, {"app": port}, token=WRONG_TOKEN))
            with pytest.raises(
                HandshakeRefusedError, match=r"refused this agent's token \(HTTP 401\)"
            ):
                await agent.serve()
            assert running.server.sessions == frozenset()
            # The right token still works, and the refused attempts left nothing behind.
            await start_agent(nursery, running, {"app": port})
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            assert len(upstream.requests) == 1
            nursery.cancel_scope.cancel()


async def test_a_silent_connection_to_the_agent_port_is_closed_and_harms_nothing(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A port scan: connected, never a byte. After handshake_s the server hangs up.

    The handler once read an unset variable after the timeout, and the error took the
    whole server down.
    """
    config = server_config(timeouts={"handshake_s": 1.0})
    async with trio.open_nursery() as nursery:
        running, upstream = await start_tunnel(nursery, config)
        host, internal_port = running.addresses.internal
        silent = await trio.open_tcp_stream(host, internal_port)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(2)  # past handshake_s, short of a heartbeat
        assert await silent.receive_some(1) == b""
        assert (await fetch(running.port, b"GET", b"/")).status == 200
        assert len(upstream.requests) == 1
        await silent.aclose()
        nursery.cancel_scope.cancel()


async def test_the_address_of_a_connection_reset_before_it_is_asked_is_unknown() -> None:
    """getpeername fails on a socket whose peer already reset it; that must not escape
    the listener (it took the server down, on either port)."""
    with trio.socket.socket() as unconnected:
        assert peer_address(trio.SocketStream(unconnected)) == "unknown"


# ---------------------------------------------------------------- external token


async def test_external_token_is_required_for_every_request_and_never_forwarded() -> None:
    config = server_config(external={"token": Secret(EXTERNAL_TOKEN)})
    token = EXTERNAL_TOKEN.encode()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            refused = (
                (),
                ((b"proxy-authorization", b"Bearer " + WRONG_TOKEN.encode()),),
                ((b"proxy-authorization", b"Bearer " + token + b"x"),),
                ((b"proxy-authorization", b"Bearer"),),
                ((b"proxy-authorization", _basic(b"user", WRONG_TOKEN.encode())),),
                ((b"proxy-authorization", _basic(token, b"")),),  # the token as user name
                ((b"proxy-authorization", b"Basic " + base64.b64encode(token)),),  # no colon
                ((b"proxy-authorization", b"Basic !!not-base64!!"),),
                ((b"proxy-authorization", b"Digest " + token),),
                # The origin's Authorization is not the proxy credential.
                ((b"authorization", b"Bearer " + token),),
            )
            accepted = (
                ((b"proxy-authorization", b"Bearer " + token),),
                ((b"proxy-authorization", b"bearer  " + token),),
                ((b"proxy-authorization", _basic(b"anyone", token)),),
                ((b"proxy-authorization", _basic(b"", token)),),
            )
            # One keep-alive connection: the credential is checked per request,
            # so an accepted request opens no door for the next one.
            async with await Client.connect(running.port) as client:
                for headers in (*accepted[:1], *refused, *accepted[1:], refused[0]):
                    reply = await client.request(b"GET", b"/", headers=headers)
                    if headers in refused:
                        assert reply.status == 407, headers
                        assert reply.header(b"proxy-authenticate") == b'Basic realm="pvtunnel"'
                        assert token not in reply.body
                    else:
                        assert reply.status == 200, headers
            assert len(upstream.requests) == len(accepted)
            for recorded in upstream.requests:
                names = {name for name, _ in recorded.headers}
                assert b"proxy-authorization" not in names
                assert not any(token in value for _, value in recorded.headers)
            # curl -x http://user:TOKEN@server:port http://app/ : absolute form plus Basic.
            reply = await fetch(
                running.port,
                b"GET",
                b"http://app/proxy-form",
                host=b"server.example:8080",
                headers=[(b"proxy-authorization", _basic(b"user", token))],
            )
            assert reply.status == 200
            assert upstream.requests[-1].target == b"/proxy-form"
            assert upstream.requests[-1].header(b"proxy-authorization") is None
            nursery.cancel_scope.cancel()


async def test_a_refused_request_with_a_body_is_not_forwarded_and_closes() -> None:
    config = server_config(external={"token": Secret(EXTERNAL_TOKEN)})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            request = (
                b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /after HTTP/1.1\r\nHost: app\r\nProxy-Authorization: Bearer "
                + EXTERNAL_TOKEN.encode()
                + b"\r\n\r\n"
            )
            answer = await exchange(running.port, request)
            # The unread body could hide a second request: answer once and close.
            assert statuses(answer) == [407]
            assert upstream.requests == []
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- whitelist


async def _expect_403_then_close(port: int, *, host: str = "127.0.0.1") -> None:
    """Read the server's answer before sending anything: it must not wait for a request."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        received = bytearray()
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert statuses(bytes(received)) == [403]
    assert received.endswith(b"403 Forbidden: your address may not use this tunnel\n")


async def test_whitelist_uses_the_tcp_peer_never_x_forwarded_for() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            outside_upstream, port = await start_upstream(nursery, "svc")
            outside = await start_server(
                nursery,
                server_config(external={"whitelisted_ips": ("203.0.113.7", "10.0.0.0/8")}),
            )
            await start_agent(nursery, outside, {"app": port})
            await _expect_403_then_close(outside.port)
            # A client claiming a whitelisted address in X-Forwarded-For is still refused.
            for header in (b"X-Forwarded-For: 203.0.113.7", b"X-Real-IP: 10.1.2.3"):
                answer = await exchange(
                    outside.port, b"GET / HTTP/1.1\r\nHost: app\r\n" + header + b"\r\n\r\n"
                )
                assert statuses(answer) == [403]
            assert outside_upstream.requests == []
            inside = await start_server(
                nursery,
                server_config(external={"whitelisted_ips": ("192.0.2.1", "127.0.0.0/8")}),
            )
            upstream, port = await start_upstream(nursery, "svc2")
            await start_agent(nursery, inside, {"app": port})
            reply = await fetch(
                inside.port, b"GET", b"/", headers=[(b"x-forwarded-for", b"1.2.3.4")]
            )
            assert reply.status == 200
            assert upstream.requests[-1].header(b"x-forwarded-for") == b"1.2.3.4, 127.0.0.1"
            nursery.cancel_scope.cancel()


async def test_whitelist_with_ipv6_clients() -> None:
    """Needs ::1, which every machine this project runs on (and CI) has."""

    def ipv6_config(whitelist: tuple[str, ...]) -> ServerConfig:
        return attrs.evolve(server_config(external={"whitelisted_ips": whitelist}), host="::1")

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, port = await start_upstream(nursery, "svc")
            allowed = await start_server(nursery, ipv6_config(("203.0.113.0/24", "::1/128")))
            await _start_agent_over_ipv6(nursery, allowed, {"app": port})
            async with await Client.connect(allowed.port, host="::1") as client:
                reply = await client.request(b"GET", b"/v6")
            assert reply.status == 200
            assert upstream.requests[-1].header(b"x-forwarded-for") == b"::1"
            refused = await start_server(nursery, ipv6_config(("2001:db8::/32", "127.0.0.1")))
            await _expect_403_then_close(refused.port, host="::1")
            nursery.cancel_scope.cancel()


async def _start_agent_over_ipv6(
    nursery: trio.Nursery, running: Running, routes: dict[str, int]
) -> None:
    bracketed = attrs.evolve(running.addresses, internal=("[::1]", running.addresses.internal[1]))
    await nursery.start(TunnelAgent(agent_config(bracketed, routes)).serve)


# ---------------------------------------------------------------- scoped agent tokens


def _scoped_config(*, with_team_b: bool = False) -> ServerConfig:
    tokens = [ScopedToken(token=Secret(TEAM_A_TOKEN), routes=("*.team-a.example.com", "billing"))]
    if with_team_b:
        tokens.append(ScopedToken(token=Secret("team-b-secret"), routes=("*.team-b.example.com",)))
    return server_config(internal={"tokens": tuple(tokens)})


async def test_scoped_token_claims_only_its_names(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, _scoped_config(with_team_b=True))
            team_b, port_b = await start_upstream(nursery, "team-b")
            team_a, port_a = await start_upstream(nursery, "team-a")
            await start_agent(
                nursery, running, {"api.team-b.example.com": port_b}, token="team-b-secret"
            )
            _, status, _ = await start_agent(
                nursery,
                running,
                {
                    "api.team-a.example.com": port_a,
                    "billing": port_a,
                    "api.team-b.example.com": port_a,  # another team's name
                    "team-a.example.com": port_a,  # "*." needs a label in front
                    "evilteam-a.example.com": port_a,
                    "x.team-a.example.com.evil.com": port_a,
                    "billing.example.com": port_a,
                },
                client_id="team-a-agent",
                token=TEAM_A_TOKEN,
            )
            covered = {"api.team-a.example.com", "billing"}
            assert set(status.routes) == covered
            reason = "this agent's token does not cover that name"
            assert sorted(status.refused) == sorted(
                (name, reason)
                for name in (
                    "api.team-b.example.com",
                    "team-a.example.com",
                    "evilteam-a.example.com",
                    "x.team-a.example.com.evil.com",
                    "billing.example.com",
                )
            )
            agent_lines = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.agent"]
            assert f"route api.team-b.example.com refused by the server: {reason}" in agent_lines
            # Team A's names work; team B's name still reaches team B only.
            for host in (b"api.team-a.example.com", b"BILLING", b"billing:8080"):
                reply = await fetch(running.port, b"GET", b"/", host=host)
                assert reply.header(b"x-upstream") == b"team-a", host
            for _ in range(3):
                reply = await fetch(running.port, b"GET", b"/", host=b"api.team-b.example.com")
                assert reply.header(b"x-upstream") == b"team-b"
            for host in (b"team-a.example.com", b"billing.example.com"):
                assert (await fetch(running.port, b"GET", b"/", host=host)).status == 404
            assert len(team_b.requests) == 3
            assert len(team_a.requests) == 3
            nursery.cancel_scope.cancel()


async def test_scoped_token_covering_no_route_stops_the_agent() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, _scoped_config())
            _, port = await start_upstream(nursery, "svc")
            agent = TunnelAgent(
                agent_config(
                    running.addresses,
                    {"app": port, "api.team-b.example.com": port},
                    token=TEAM_A_TOKEN,
                )
            )
            with pytest.raises(HandshakeRefusedError, match="refused every route"):
                await agent.serve()
            assert running.server.state.router.names() == {}
            nursery.cancel_scope.cancel()


async def test_unscoped_internal_token_may_claim_any_name() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, _scoped_config())
            _, port = await start_upstream(nursery, "svc")
            _, status, _ = await start_agent(
                nursery, running, {"api.team-a.example.com": port, "anything": port}
            )
            assert status.refused == ()
            assert set(status.routes) == {"api.team-a.example.com", "anything"}
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- request smuggling

# (name, raw request, expected status, body the upstream must see or None for no request)
SMUGGLING: Final = [
    (
        "CL.TE",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
        None,
    ),
    (
        "CL.TE with a whole smuggled request",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 44\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
        400,
        None,
    ),
    (
        "TE.CL",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 4\r\n\r\n2c\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n\r\n0\r\n\r\n",
        400,
        None,
    ),
    (
        "duplicate Content-Length, different values",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\n"
        b"helloGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
        400,
        None,
    ),
    (
        "Content-Length list",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5, 40\r\n\r\n"
        b"helloGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
        400,
        None,
    ),
    (
        "duplicate Content-Length, same value (RFC 9110 section 8.6)",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        200,
        b"hello",
    ),
    (
        "Content-Length with a sign",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: +5\r\n\r\nhello",
        400,
        None,
    ),
    (
        "Content-Length in hex",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 0x5\r\n\r\nhello",
        400,
        None,
    ),
    (
        "TE with odd casing is still chunked",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: ChUnKeD\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        200,
        b"hello",
    ),
    (
        "TE name in capitals, with Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTRANSFER-ENCODING: chunked\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
        None,
    ),
    (
        "TE after a tab, with Content-Length",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding:\tchunked\r\n\r\n"
        b"0\r\n\r\n",
        400,
        None,
    ),
    (
        "space before the colon",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding : chunked\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
        None,
    ),
    (
        "space at the start of the header name",
        b"POST /echo HTTP/1.1\r\nHost: app\r\n Transfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
        None,
    ),
    (
        "TE value with a vertical tab",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: \x0bchunked\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        400,
        None,
    ),
    (
        "unknown coding before chunked",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        501,
        None,
    ),
    (
        "xchunked",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: xchunked\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"hello",
        501,
        None,
    ),
    (
        "two TE lines",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        501,
        None,
    ),
    (
        "TE in HTTP/1.0",
        b"POST /echo HTTP/1.0\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n",
        400,
        None,
    ),
    (
        "obs-fold",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nX-Note: one\r\n two\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        400,
        None,
    ),
    (
        "obs-fold hiding Transfer-Encoding",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        400,
        None,
    ),
    (
        "obs-fold with a tab",
        b"GET / HTTP/1.1\r\nHost: app\r\nX-Note: one\r\n\ttwo\r\n\r\n",
        400,
        None,
    ),
    (
        "bare CR in a value",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nX-Note: a\rTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        400,
        None,
    ),
    (
        "bare CR ending a line",
        b"POST /echo HTTP/1.1\r\nHost: app\rContent-Length: 5\r\n\r\nhello",
        400,
        None,
    ),
    ("NUL in a value", b"GET / HTTP/1.1\r\nHost: app\r\nX-Note: a\x00b\r\n\r\n", 400, None),
    ("NUL in a name", b"GET / HTTP/1.1\r\nHost: app\r\nX-No\x00te: ab\r\n\r\n", 400, None),
    (
        "NUL in the TE value",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\x00\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        400,
        None,
    ),
    ("NUL in the target", b"GET /a\x00b HTTP/1.1\r\nHost: app\r\n\r\n", 400, None),
    (
        "invalid chunk size",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5x\r\nhello\r\n0\r\n\r\n",
        400,
        None,
    ),
    (
        "chunk longer than its size",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhelloGET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n0\r\n\r\n",
        400,
        None,
    ),
    (
        "chunk lines ended by bare LF",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        400,
        None,
    ),
    (
        "two Host headers",
        b"GET / HTTP/1.1\r\nHost: app\r\nHost: other.example\r\n\r\n",
        400,
        None,
    ),
    (
        "whitespace before the first header",
        b"GET / HTTP/1.1\r\n Host: app\r\n\r\n",
        400,
        None,
    ),
    (
        "a plain chunked body arrives whole",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n",
        200,
        b"hello!",
    ),
]


@pytest.mark.parametrize(
    ("raw", "status", "body"),
    [pytest.param(raw, status, body, id=name) for name, raw, status, body in SMUGGLING],
)
async def test_smuggling_shapes_never_make_a_second_upstream_request(
    raw: bytes, status: int, body: bytes | None
) -> None:
    # A last request on the same connection that asks the server to close: if the
    # server keeps the connection after the shape, it must reach this one next.
    last = b"GET /last HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            answer = await exchange(running.port, raw + last)
            assert b"smuggled" not in answer
            targets = [r.target for r in upstream.requests]
            if body is None:
                # Refused, and the connection closed without reading further.
                assert statuses(answer) == [status], answer
                assert targets == []
            else:
                assert statuses(answer) == [status, 200], answer
                assert targets == [b"/echo", b"/last"]
                assert upstream.requests[0].body == body
                assert answer.endswith(b"svc saw GET /last")
            # The server is unharmed: a clean request right after works.
            assert (await fetch(running.port, b"GET", b"/after")).status == 200
            nursery.cancel_scope.cancel()


async def test_pipelined_requests_are_checked_one_by_one() -> None:
    """Each pipelined head gets the same checks; a body that looks folded is just a body."""
    first = b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nline\r\n two"
    folded = b"GET /folded HTTP/1.1\r\nHost: app\r\nX-Note: a\r\n b\r\n\r\n"
    last = b"GET /last HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            answer = await exchange(running.port, first + last)
            assert statuses(answer) == [200, 200]
            assert [(r.target, r.body) for r in upstream.requests] == [
                (b"/echo", b"line\r\n two"),
                (b"/last", b""),
            ]
            answer = await exchange(running.port, first + folded + last)
            assert statuses(answer) == [200, 400]
            assert [r.target for r in upstream.requests[2:]] == [b"/echo"]
            nursery.cancel_scope.cancel()


async def test_an_abandoned_request_body_never_reaches_the_next_client() -> None:
    """Clients that break off mid-body; the next request must arrive alone and whole."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            # Warm the agent's pool so the next request reuses its upstream connection.
            assert (await fetch(running.port, b"GET", b"/warm")).status == 200
            # A chunk goes upstream, then the client's framing breaks.
            answer = await exchange(
                running.port,
                b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nfirst\r\nzz\r\nPOST /echo HTTP/1.1\r\n",
            )
            assert statuses(answer) == [400]
            await running.server.state.idle.wait()
            # Part of a Content-Length body, then the client hangs up.
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nsecond"
            )
            await stream.aclose()
            await running.server.state.idle.wait()
            for index in range(3):
                reply = await fetch(running.port, b"POST", b"/echo", body=b"%d" % index * 90)
                assert (reply.status, reply.body) == (200, b"%d" % index * 90)
            assert [(r.target, r.body) for r in upstream.requests] == [
                (b"/warm", b""),
                *((b"/echo", b"%d" % index * 90) for index in range(3)),
            ]
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- upstream response framing

BROKEN_RESPONSES: Final = [
    (
        "Content-Length and Transfer-Encoding",
        b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\nSMUGGLE\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nSMUGGLE\r\n0\r\n\r\n",
    ),
    (
        "conflicting Content-Lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\nSMUGGLE",
    ),
    (
        "invalid chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nSMUGGLE\r\n0\r\n\r\n",
    ),
    (
        "header split by a bare LF",
        b"HTTP/1.1 200 OK\r\nX-Note: a\nSMUGGLE\r\nContent-Length: 7\r\n\r\nSMUGGLE",
    ),
    (
        "bare CR in a header",
        b"HTTP/1.1 200 OK\r\nX-Note: a\rSet-Cookie: SMUGGLE\r\nContent-Length: 7\r\n\r\nSMUGGLE",
    ),
    (
        "NUL in a header",
        b"HTTP/1.1 200 OK\r\nX-Note: a\x00SMUGGLE\r\nContent-Length: 7\r\n\r\nSMUGGLE",
    ),
    (
        "head too long",
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(200))
        + b"Content-Length: 7\r\n\r\nSMUGGLE",
    ),
    ("not HTTP at all", b"SMUGGLE SMUGGLE SMUGGLE\r\n\r\n"),
    ("unsupported coding", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nSMUGGLE"),
]


@pytest.mark.parametrize(
    "answer", [pytest.param(answer, id=name) for name, answer in BROKEN_RESPONSES]
)
async def test_upstream_response_with_broken_framing_is_502(answer: bytes) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_raw_upstream(nursery, answer)
            await start_agent(nursery, running, {"app": port})
            received = await exchange(
                running.port, b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert statuses(received) == [502]
            assert b"SMUGGLE" not in received
            assert received.endswith(
                b"\r\n\r\n502 Bad Gateway: the agent could not reach the upstream service\n"
            )
            assert len(upstream.heads) >= 1
            nursery.cancel_scope.cancel()


async def test_extra_bytes_after_a_response_never_answer_another_request() -> None:
    """Response splitting: what follows a response must not be read as the next one."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_raw_upstream(nursery, answer)
            await start_agent(nursery, running, {"app": port})
            for index in range(3):
                reply = await fetch(running.port, b"GET", b"/%d" % index)
                assert (reply.status, reply.body) == (200, b"ok")
            assert len(upstream.heads) == 3
            assert upstream.connections == 3
            nursery.cancel_scope.cancel()


async def _after_the_idle_connection_changed(
    method: bytes, *, late: bytes = b"", hang_up: bool = False
) -> tuple[RawUpstream, Reply]:
    """GET /1, let the upstream act on the now idle pooled connection (send stray
    bytes or hang up), then send ``method`` /2: its reply, and the upstream."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_raw_upstream(nursery, ok, late=late, hang_up=hang_up)
            await start_agent(nursery, running, {"app": port})
            assert (await fetch(running.port, b"GET", b"/1")).body == b"ok"
            upstream.send_late.set()
            await upstream.late_sent.wait()
            reply = await fetch(running.port, method, b"/2")
            nursery.cancel_scope.cancel()
    return upstream, reply


async def test_stray_bytes_on_an_idle_upstream_connection_answer_nobody() -> None:
    """Bytes that arrive while a pooled connection is idle are never a response."""
    poison = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
    upstream, reply = await _after_the_idle_connection_changed(b"GET", late=poison)
    assert (reply.status, reply.body) == (200, b"ok")
    assert upstream.connections == 2


async def test_a_pooled_connection_the_upstream_closed_is_not_used() -> None:
    """An upstream's idle timeout closes pooled connections: a request that may not be
    retried (a POST) must go on a fresh connection, not fail on the closed one."""
    upstream, reply = await _after_the_idle_connection_changed(b"POST", hang_up=True)
    assert (reply.status, reply.body) == (200, b"ok")
    assert upstream.connections == 2
    assert len([head for head in upstream.heads if b" /2 " in head]) == 1


@pytest.mark.parametrize(("method", "retried"), [(b"GET", True), (b"POST", False)])
async def test_only_idempotent_requests_are_retried_after_a_pooled_connection_fails(
    method: bytes, retried: bool
) -> None:
    """An upstream that hangs up after reading a request may have acted on it."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            # Second request: read, then hang up without a word; then answer again.
            upstream, port = await start_raw_upstream(nursery, ok, None, ok)
            await start_agent(nursery, running, {"app": port})
            assert (await fetch(running.port, b"GET", b"/warm")).status == 200
            reply = await fetch(running.port, method, b"/act")
            acted = [head for head in upstream.heads if b" /act " in head]
            if retried:
                assert (reply.status, reply.body) == (200, b"ok")
                assert len(acted) == 2
            else:
                assert reply.status == 502
                assert len(acted) == 1
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- secrets


async def test_tokens_never_reach_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = server_config(
        external={"token": Secret(EXTERNAL_TOKEN)},
        internal={
            "tokens": (ScopedToken(token=Secret(TEAM_A_TOKEN), routes=("*.team-a.example.com",)),)
        },
    )
    secrets = (TOKEN, EXTERNAL_TOKEN, TEAM_A_TOKEN, WRONG_TOKEN)
    shown: list[str] = [repr(config), str(config)]
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            upstream, port = await start_upstream(nursery, "svc")
            for token in (WRONG_TOKEN, TEAM_A_TOKEN):
                agent = TunnelAgent(agent_config(running.addresses, {"app": port}, token=token))
                shown += [repr(agent), repr(agent.config)]
                with pytest.raises(HandshakeRefusedError) as refused:
                    await agent.serve()
                shown += [str(refused.value), repr(refused.value)]
            agent, _, _ = await start_agent(
                nursery, running, {"app": port, "x.team-a.example.com": port}
            )
            shown += [repr(agent), repr(agent.config), repr(running.server)]
            for credential in (
                b"",
                b"Proxy-Authorization: Bearer " + WRONG_TOKEN.encode() + b"\r\n",
                b"Proxy-Authorization: Bearer " + EXTERNAL_TOKEN.encode() + b"\r\n",
                b"Proxy-Authorization: " + _basic(b"u", EXTERNAL_TOKEN.encode()) + b"\r\n",
                # Malformed requests carrying a token: h11's messages quote header lines.
                b"Proxy-Authorization: Bearer " + EXTERNAL_TOKEN.encode() + b"\x00\r\n",
                b"X-Fold: a\r\n " + WRONG_TOKEN.encode() + b"\r\n",
            ):
                answer = await exchange(
                    running.port,
                    b"GET /s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n" + credential + b"\r\n",
                )
                shown.append(answer.decode("latin-1"))
            assert len(upstream.requests) == 2
            nursery.cancel_scope.cancel()
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert "bad or missing token" in caplog.text  # the logs did cover the failures
    for secret in secrets:
        assert secret not in logged
        for text in shown:
            assert secret not in text
