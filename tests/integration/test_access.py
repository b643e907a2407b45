"""Who may use the tunnel: agent tokens, the external token, the whitelist, secrets.

Every test runs a server, an agent and an upstream on loopback, and checks the
rule at the port where a stranger would meet it.
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio
import trio.testing

from pvtunnel._config import AdminConfig, ScopedToken, Secret, ServerConfig, rules
from pvtunnel._errors import HandshakeRefusedError
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.agent_admin import AgentAdmin
from pvtunnel._trio.hangups import peer_address
from tests.integration.client import Client, exchange_one, fetch, raw_exchange, statuses
from tests.integration.harness import (
    TOKEN,
    agent_config,
    server_config,
    start_agent,
    start_server,
    start_tunnel,
    start_upstream,
    wait_for,
)

if TYPE_CHECKING:
    from tests.integration.harness import Running

LIMIT_S: Final = 10
EXTERNAL_TOKEN: Final = "ext-secret-6b0f2c9d41"
TEAM_A_TOKEN: Final = "team-a-secret-93e1d7"
WRONG_TOKEN: Final = "wrong-secret-5a8c33"


def _basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


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


async def status_line_of_head_in_pieces(port: int, head: bytes) -> bytes:
    """Send ``head`` a kilobyte at a time, each piece read by the server before the
    next (as a long head comes over a network, not whole as on loopback); return
    the answer's status line."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for start in range(0, len(head), 1024):
            await stream.send_all(head[start : start + 1024])
            await trio.testing.wait_all_tasks_blocked()
        received = b""
        while b"\r\n" not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, received
            received += chunk
        return received.partition(b"\r\n")[0]


async def test_the_longest_tokens_a_config_allows_pass_in_every_head_that_carries_them() -> None:
    internal, external, admin = (letter * rules.MAX_TOKEN_LENGTH for letter in "iea")
    config = attrs.evolve(
        server_config(internal={"token": Secret(internal)}, external={"token": Secret(external)}),
        admin=AdminConfig(port=0, token=Secret(admin)),
    )
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: server\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer %s\r\n\r\n" % internal.encode()
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            _, port = await start_upstream(nursery, "svc")
            await start_agent(nursery, running, {"app": port}, token=internal)
            assert running.addresses.admin is not None
            heads = (
                (running.addresses.internal[1], upgrade, b"HTTP/1.1 101 "),
                (
                    running.port,
                    b"GET / HTTP/1.1\r\nHost: app\r\nProxy-Authorization: %s\r\n\r\n"
                    % _basic(b"user", external.encode()),
                    b"HTTP/1.1 200 ",
                ),
                (
                    running.addresses.admin[1],
                    b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n"
                    % admin.encode(),
                    b"HTTP/1.1 200 ",
                ),
            )
            for port_number, head, status in heads:
                assert (await status_line_of_head_in_pieces(port_number, head)).startswith(status)
            nursery.cancel_scope.cancel()


async def test_the_longest_external_token_the_smallest_head_limit_allows_passes() -> None:
    # 359 characters: the longest external token a config with 1024-byte request
    # heads takes (pvtunnel check refuses 360); a curl request carrying it fits.
    token = b"e" * 359
    config = server_config(
        external={"token": Secret(token.decode())}, limits={"max_request_head_bytes": 1024}
    )
    headers = [
        (b"proxy-authorization", _basic(b"user", token)),
        (b"user-agent", b"curl/8.5.0"),
        (b"accept", b"*/*"),
    ]
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            reply = await fetch(running.port, b"GET", b"/", headers=headers)
            assert (reply.status, len(upstream.requests)) == (200, 1)
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
            answer = await raw_exchange(running.port, request)
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
                answer = await raw_exchange(
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
    tokens = [
        ScopedToken(
            token=Secret(TEAM_A_TOKEN),
            routes=("*.team-a.example.com", "billing", "*.team-a.example.com:8443"),
        )
    ]
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
            team_a_agent, status, _ = await start_agent(
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
                    # A pattern covers a port only where it names one: a port-qualified
                    # grant to one team is not shared with the host name's owner.
                    "api.team-a.example.com:8443": port_a,
                    "api.team-a.example.com:9000": port_a,
                    "billing:8080": port_a,
                },
                client_id="team-a-agent",
                token=TEAM_A_TOKEN,
            )
            covered = {"api.team-a.example.com", "billing", "api.team-a.example.com:8443"}
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
                    "api.team-a.example.com:9000",
                    "billing:8080",
                )
            )
            agent_lines = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.agent"]
            assert f"route api.team-b.example.com refused by the server: {reason}" in agent_lines
            # The agent's /status marks them too, not only its log.
            url = team_a_agent.config.server.urls[0]
            shown = {
                r["name"]: r["refused_by"] for r in AgentAdmin(team_a_agent).status()["routes"]
            }
            assert shown == {name: {} if name in covered else {url: reason} for name in shown}
            assert len(shown) == 10
            # Team A's names work; team B's name still reaches team B only.
            for host in (
                b"api.team-a.example.com",
                b"BILLING",
                b"billing:8080",
                b"api.team-a.example.com:8443",
            ):
                reply = await fetch(running.port, b"GET", b"/", host=host)
                assert reply.header(b"x-upstream") == b"team-a", host
            for _ in range(3):
                reply = await fetch(running.port, b"GET", b"/", host=b"api.team-b.example.com")
                assert reply.header(b"x-upstream") == b"team-b"
            for host in (b"team-a.example.com", b"billing.example.com"):
                assert (await fetch(running.port, b"GET", b"/", host=host)).status == 404
            assert len(team_b.requests) == 3
            assert len(team_a.requests) == 4
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


async def test_an_agent_the_server_rejects_stops_without_dialling_again() -> None:
    """More names outside its token's scope than an ACCEPT can list: the server
    answers REJECT, which is final; the agent ends rather than retrying."""
    routes = {f"svc-{index:04d}": 9 for index in range(2000)}
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, _scoped_config())
            agent = TunnelAgent(agent_config(running.addresses, routes, token=TEAM_A_TOKEN))
            refusals: list[HandshakeRefusedError] = []
            stopped = trio.Event()

            async def serve() -> None:
                try:
                    await agent.serve()
                except HandshakeRefusedError as exc:
                    refusals.append(exc)
                stopped.set()

            nursery.start_soon(serve)
            # The first of: the link ends for good, or the agent dials again.
            await wait_for(agent, lambda: agent.reconnects > 0 or agent.links[0].has_ended)
            assert agent.reconnects == 0
            await stopped.wait()
            (refusal,) = refusals
            assert str(refusal) == (
                "the server rejected this agent: 2000 routes refused: too many to list in an ACCEPT"
            )
            assert running.server.sessions == frozenset()
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
                answer = await raw_exchange(
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
