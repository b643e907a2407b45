"""Requests through a real server and agent to real upstreams, all on 127.0.0.1."""

from __future__ import annotations

import logging
import re
import socket
from typing import TYPE_CHECKING

import attrs
import h11
import trio
import trio.testing

from pvtunnel._config import Route, RouteType
from pvtunnel._trio.agent import TunnelAgent
from tests.integration.client import Client, fetch, raw_exchange
from tests.integration.harness import (
    agent_config,
    server_config,
    start_agent,
    start_server,
    start_tunnel,
    start_upstream,
)
from tests.integration.listen import refused_port, serve_on_loopback
from tests.integration.raw_upstream import start_raw_tunnel

if TYPE_CHECKING:
    import pytest

    from tests.integration.harness import Running

LIMIT_S = 10


async def read_until(stream: trio.SocketStream, suffix: bytes) -> bytes:
    """What the server sends until it ends with ``suffix`` (failing if it closes first)."""
    received = b""
    while not received.endswith(suffix):
        chunk = await stream.receive_some(65536)
        assert chunk, received
        received += chunk
    return received


async def start_agent_with(nursery: trio.Nursery, running: Running, *routes: Route) -> TunnelAgent:
    """An agent serving ``routes`` as given (``start_agent`` makes plain IP routes)."""
    agent = TunnelAgent(attrs.evolve(agent_config(running.addresses, {}), routes=routes))
    await nursery.start(agent.serve)
    return agent


async def test_seed_timeline_two_agents_each_request_reaches_its_own() -> None:
    """The seed's T1-T7: one server, agents A1 and B1 with different routes."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream_a, port_a = await start_upstream(nursery, "service-a")
            upstream_b, port_b = await start_upstream(nursery, "service-b")
            _, status_a, _ = await start_agent(nursery, running, {"route1": port_a}, client_id="A1")
            _, status_b, _ = await start_agent(
                nursery, running, {"localhost:8085": port_b}, client_id="B1"
            )
            assert status_a.routes == ("route1",)
            assert status_b.routes == ("localhost:8085",)
            reply_a = await fetch(running.port, b"GET", b"/a", host=b"route1")
            reply_b = await fetch(running.port, b"GET", b"/b", host=b"localhost:8085")
            assert reply_a.body == b"service-a saw GET /a"
            assert reply_b.body == b"service-b saw GET /b"
            assert [r.target for r in upstream_a.requests] == [b"/a"]
            assert [r.target for r in upstream_b.requests] == [b"/b"]
            nursery.cancel_scope.cancel()


async def test_methods_bodies_queries_and_headers_arrive_intact() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                for method in (b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
                    body = b"payload for " + method if method != b"GET" else None
                    reply = await client.request(
                        method,
                        b"/echo?q=1&x=%20y",
                        headers=[(b"x-custom", b"Value With  Spaces"), (b"accept", b"*/*")],
                        body=body,
                    )
                    assert reply.status == 200
                    assert reply.body == (body or b"")
                    recorded = upstream.requests[-1]
                    assert recorded.method == method
                    assert recorded.target == b"/echo?q=1&x=%20y"
                    assert recorded.header(b"x-custom") == b"Value With  Spaces"
                    assert recorded.header(b"accept") == b"*/*"
                    assert recorded.body == (body or b"")
                head = await client.request(b"HEAD", b"/bytes/5000")
                assert head.status == 200
                assert head.header(b"content-length") == b"5000"
                assert head.body == b""
            nursery.cancel_scope.cancel()


async def test_upstream_statuses_pass_through() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                for status in (200, 201, 204, 301, 304, 400, 404, 418, 500, 503):
                    reply = await client.request(b"GET", b"/status/%d" % status)
                    assert reply.status == status
                    expected = b"" if status in (204, 304) else b"status %d\n" % status
                    assert reply.body == expected
            nursery.cancel_scope.cancel()


async def test_chunked_request_and_response_bodies() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                reply = await client.request(
                    b"POST", b"/echo", chunks=[b"one,", b"two,", b"x" * 100_000]
                )
                assert reply.body == b"one,two," + b"x" * 100_000
                assert upstream.requests[-1].header(b"transfer-encoding") == b"chunked"
                chunked = await client.request(b"GET", b"/chunked?parts=5")
                assert chunked.body == b"part 0;part 1;part 2;part 3;part 4;"
                assert chunked.header(b"transfer-encoding") == b"chunked"
            nursery.cancel_scope.cancel()


async def test_twenty_requests_on_one_keep_alive_connection() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                for index in range(20):
                    reply = await client.request(b"GET", b"/n/%d" % index)
                    assert reply.body == b"svc saw GET /n/%d" % index
            assert len(upstream.requests) == 20
            # The agent pools its upstream connection: one is enough for 20 in a row.
            assert upstream.connections == 1
            nursery.cancel_scope.cancel()


async def test_two_hundred_concurrent_requests_share_one_agent() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            results: dict[int, bytes] = {}

            async def one(index: int) -> None:
                size = 1000 + index * 37
                reply = await fetch(
                    running.port, b"POST", b"/echo", body=bytes([index % 256]) * size
                )
                assert reply.status == 200
                results[index] = reply.body

            async with trio.open_nursery() as clients:
                for index in range(200):
                    clients.start_soon(one, index)
            assert len(results) == 200
            for index, body in results.items():
                assert body == bytes([index % 256]) * (1000 + index * 37)
            assert len(upstream.requests) == 200
            nursery.cancel_scope.cancel()


async def test_unknown_host_is_404_and_upstream_down_is_502() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            closed_port = await refused_port()
            await start_agent(nursery, running, {"app": closed_port})
            async with await Client.connect(running.port) as client:
                missing = await client.request(b"GET", b"/", host=b"nobody.example")
                assert missing.status == 404
                assert missing.header(b"content-type") == b"text/plain; charset=utf-8"
                assert b"no agent serves this host" in missing.body
                down = await client.request(b"GET", b"/")
                assert down.status == 502
                assert b"could not reach the upstream" in down.body
            nursery.cancel_scope.cancel()


async def test_an_upstream_name_that_does_not_resolve_is_a_502_like_a_refused_connect(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Both are the agent failing to reach its upstream: the client gets the same
    answer, and the route's connect errors count both. A name under ``.invalid``
    never resolves (RFC 6761)."""
    caplog.set_level(logging.WARNING, logger="pvtunnel")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            closed_port = await refused_port()
            agent = await start_agent_with(
                nursery,
                running,
                Route(name="refused", value="127.0.0.1", port=closed_port, type=RouteType.IP),
                Route(name="unresolved", value="upstream.invalid", port=80),
            )
            refused = await fetch(running.port, b"GET", b"/", host=b"refused")
            unresolved = await fetch(running.port, b"GET", b"/", host=b"unresolved")
            assert (refused.status, unresolved.status) == (502, 502)
            assert b"the agent could not reach the upstream service" in unresolved.body
            assert unresolved.body == refused.body
            assert agent.metrics.upstream_connect_errors == {"refused": 1, "unresolved": 1}
            said = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.agent"]
            assert any(
                line.startswith("route unresolved stream ")
                and "cannot connect to upstream.invalid:80: " in line
                for line in said
            ), said
            nursery.cancel_scope.cancel()


async def test_absolute_form_target_routes_by_its_authority() -> None:
    """`curl -x http://server:port http://app/path`: proxy mode."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                reply = await client.request(
                    b"GET", b"http://APP:80/path?x=1", host=b"ignored.example"
                )
            assert reply.status == 200
            recorded = upstream.requests[-1]
            assert recorded.target == b"/path?x=1"
            assert recorded.header(b"host") == b"APP:80"
            nursery.cancel_scope.cancel()


async def test_routing_by_case_port_and_domain_suffix() -> None:
    config = server_config(external={"domain": "tunnel.example.com"})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            _, port_a = await start_upstream(nursery, "a")
            _, port_b = await start_upstream(nursery, "b")
            await start_agent(nursery, running, {"app": port_a, "app:9000": port_b})
            for host, expected in (
                (b"APP", b"a"),
                (b"app:1234", b"a"),
                (b"app:9000", b"b"),
                (b"app.tunnel.example.com", b"a"),
                (b"App.Tunnel.Example.Com:8080", b"a"),
            ):
                reply = await fetch(running.port, b"GET", b"/", host=host)
                assert reply.header(b"x-upstream") == expected, host
            assert (await fetch(running.port, b"GET", b"/", host=b"x.app.example")).status == 404
            nursery.cancel_scope.cancel()


async def test_the_longest_route_name_a_config_allows_is_served() -> None:
    # A host name of 253 characters and the longest port: pvtunnel check allows it,
    # and the server once refused it as invalid, so the agent served nothing.
    host = ".".join(letter * 63 for letter in "abc") + "." + "d" * 61
    name = f"{host}:65535"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            _, port = await start_upstream(nursery, "long")
            await start_agent(nursery, running, {name: port})
            reply = await fetch(running.port, b"GET", b"/", host=name.upper().encode())
            assert (reply.status, reply.header(b"x-upstream")) == (200, b"long")
            nursery.cancel_scope.cancel()


async def test_forwarding_headers_added_and_hop_by_hop_removed() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            reply = await fetch(
                running.port,
                b"GET",
                b"/",
                headers=[
                    (b"connection", b"keep-alive, x-private"),
                    (b"x-private", b"secret"),
                    (b"keep-alive", b"timeout=5"),
                    (b"te", b"trailers"),
                    (b"proxy-authorization", b"Basic abc"),
                    (b"x-forwarded-for", b"198.51.100.9"),
                    (b"via", b"1.0 corp-proxy"),
                ],
            )
            assert reply.status == 200
            assert reply.header(b"via") == b"1.1 pvtunnel"
            recorded = upstream.requests[-1]
            names = {name for name, _ in recorded.headers}
            assert not names & {b"x-private", b"keep-alive", b"te", b"proxy-authorization"}
            # The agent's own connection header is fine; the client's tokens are gone.
            assert recorded.header(b"connection") in (None, b"keep-alive")
            assert recorded.header(b"x-forwarded-for") == b"198.51.100.9, 127.0.0.1"
            assert recorded.header(b"x-forwarded-host") == b"app"
            assert recorded.header(b"x-forwarded-proto") == b"http"
            assert recorded.header(b"via") == b"1.0 corp-proxy, 1.1 pvtunnel"
            assert recorded.header(b"host") == b"app"
            nursery.cancel_scope.cancel()


async def test_the_upstream_gets_the_host_header_its_route_asks_for() -> None:
    """``host_header``: "preserve" (the default) passes the client's on, "rewrite"
    sends the route's own target, and any other value is sent as written."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "svc")
            routes = {
                "preserved": "preserve",
                "rewritten": "rewrite",
                "fixed": "Internal.Example.com:8443",
            }
            await start_agent_with(
                nursery,
                running,
                *(
                    Route(
                        name=name,
                        value="127.0.0.1",
                        port=port,
                        type=RouteType.IP,
                        host_header=host_header,
                    )
                    for name, host_header in routes.items()
                ),
            )
            for name in routes:
                reply = await fetch(running.port, b"GET", b"/" + name.encode(), host=name.encode())
                assert reply.status == 200, name
            received = {r.target: r.header(b"host") for r in upstream.requests}
            assert received == {
                b"/preserved": b"preserved",
                b"/rewritten": b"127.0.0.1:%d" % port,
                b"/fixed": b"Internal.Example.com:8443",
            }
            # One Host field each, whatever it says.
            for recorded in upstream.requests:
                assert [name for name, _ in recorded.headers].count(b"host") == 1
            nursery.cancel_scope.cancel()


async def test_via_names_the_version_the_client_spoke() -> None:
    """RFC 9110 section 7.6.3: a Via entry says which protocol the hop received."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            answer = await raw_exchange(running.port, b"GET /old HTTP/1.0\r\nHost: app\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert upstream.requests[-1].header(b"via") == b"1.0 pvtunnel"
            assert (await fetch(running.port, b"GET", b"/new")).status == 200
            assert upstream.requests[-1].header(b"via") == b"1.1 pvtunnel"
            nursery.cancel_scope.cancel()


async def test_header_names_keep_their_spelling_both_ways() -> None:
    """Names are case-insensitive (RFC 9110 section 5.1), yet some applications match
    their exact bytes: both heads arrive spelled as sent, less hop-by-hop fields
    matched in any case."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Request-ID: r1\r\nSet-Cookie: a=b\r\n"
        b"CONNECTION: X-Hop\r\nX-HOP: gone\r\nKeep-Alive: timeout=5\r\nVia: 1.1 edge\r\n\r\nok"
    )
    request = (
        b"GET /x HTTP/1.1\r\nHost: app\r\nX-Api-Key: k\r\nuser-AGENT: t\r\n"
        b"Connection: close, X-Hop\r\nX-HOP: 1\r\nKEEP-ALIVE: 5\r\nX-Forwarded-FOR: 10.0.0.1\r\n"
        b"PROXY-AUTHORIZATION: Basic abc\r\n\r\n"
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_raw_tunnel(nursery, answer)
            received = await raw_exchange(running.port, request)
            assert upstream.heads[0].split(b"\r\n") == [
                b"GET /x HTTP/1.1",
                b"Host: app",
                b"X-Api-Key: k",
                b"user-AGENT: t",
                b"X-Forwarded-FOR: 10.0.0.1, 127.0.0.1",
                b"X-Forwarded-Host: app",
                b"X-Forwarded-Proto: http",
                b"Via: 1.1 pvtunnel",
            ]
            head, _, body = received.partition(b"\r\n\r\n")
            assert body == b"ok"
            lines = head.split(b"\r\n")
            # The upstream sent no Date: the server adds the one it received it at.
            assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", lines[5])
            assert lines[:5] + lines[6:] == [
                b"HTTP/1.1 200 OK",
                b"Content-Length: 2",
                b"X-Request-ID: r1",
                b"Set-Cookie: a=b",
                b"Via: 1.1 edge, 1.1 pvtunnel",
                b"Connection: close",
            ]
            nursery.cancel_scope.cancel()


async def test_expect_100_continue_is_relayed() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                body = b"u" * 2_000_000
                await client._send(
                    h11.Request(
                        method=b"POST",
                        target=b"/echo",
                        headers=[
                            (b"host", b"app"),
                            (b"expect", b"100-continue"),
                            (b"content-length", b"%d" % len(body)),
                        ],
                    )
                )
                # The client waits for 100 before sending its body, as curl does.
                event = await client._next()
                assert getattr(event, "status_code", None) == 100
                await client._send(h11.Data(data=body))
                await client._send(h11.EndOfMessage())
                reply = await client.read_reply()
            assert reply.status == 200
            assert reply.body == body
            assert upstream.requests[-1].header(b"expect") == b"100-continue"
            nursery.cancel_scope.cancel()


async def test_a_100_after_early_hints_still_reaches_the_client_waiting_for_it() -> None:
    """An upstream may send 103 Early Hints before it reads the body: the 100 that
    follows must still reach the client, which sends nothing until it comes."""

    async def upstream(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while not isinstance(event := conn.next_event(), h11.Request):
            conn.receive_data(await stream.receive_some(65536))
        hints = h11.InformationalResponse(status_code=103, headers=[(b"link", b"</a.css>")])
        await stream.send_all(
            conn.send(hints) + conn.send(h11.InformationalResponse(status_code=100, headers=[]))
        )
        body = b""
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Data):
                body += event.data
        answer = h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(body))])
        await stream.send_all(conn.send(answer) + conn.send(h11.Data(data=body)))
        await stream.aclose()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, upstream)
            await start_agent(nursery, running, {"app": port})
            async with await Client.connect(running.port) as client:
                await client._send(
                    h11.Request(
                        method=b"PUT",
                        target=b"/",
                        headers=[
                            (b"host", b"app"),
                            (b"expect", b"100-continue"),
                            (b"content-length", b"4"),
                        ],
                    )
                )
                statuses = [getattr(await client._next(), "status_code", None) for _ in "ab"]
                assert statuses == [103, 100]
                await client._send(h11.Data(data=b"body"))
                await client._send(h11.EndOfMessage())
                reply = await client.read_reply()
            assert (reply.status, reply.body) == (200, b"body")
            nursery.cancel_scope.cancel()


async def test_empty_lines_before_a_request_line_are_ignored() -> None:
    """RFC 9112 section 2.2: some clients send CRLF after a POST body, or before a
    request; a server ignores it, at the start of a connection and between requests,
    whether it comes with the bytes around it or on its own."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            first = b"\r\n\r\nGET /a HTTP/1.1\r\nHost: app\r\n\r\n"
            posted = b"POST /b HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc\r\n"
            last = b"GET /c HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            answers = await raw_exchange(running.port, first + posted + last)
            assert answers.count(b"HTTP/1.1 200 ") == 3, answers
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                client = Client(stream)
                assert (await client.request(b"POST", b"/d", body=b"xyz")).status == 200
                await stream.send_all(b"\r")  # on its own, and split in two
                await stream.send_all(b"\n")
                assert (await client.request(b"GET", b"/e")).status == 200
            seen = [(r.method, r.target, r.body) for r in upstream.requests]
            assert seen == [
                (b"GET", b"/a", b""),
                (b"POST", b"/b", b"abc"),
                (b"GET", b"/c", b""),
                (b"POST", b"/d", b"xyz"),
                (b"GET", b"/e", b""),
            ]
            nursery.cancel_scope.cancel()


async def test_a_204_goes_out_without_the_content_length_an_upstream_gave_it() -> None:
    """RFC 9110 section 8.6: a server never sends Content-Length in a 204."""
    answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 11\r\nX-Kept: yes\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, answer)
            reply = await fetch(running.port, b"GET", b"/")
            assert (reply.status, reply.body) == (204, b"")
            assert reply.header(b"content-length") is None
            assert reply.header(b"x-kept") == b"yes"
            nursery.cancel_scope.cancel()


async def test_malformed_and_oversized_heads() -> None:
    config = server_config(limits={"max_request_head_bytes": 4096})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            bad = await raw_exchange(running.port, b"GET / HTTP/1.1\r\nHost app\r\n\r\n")
            assert bad.startswith(b"HTTP/1.1 400 ")
            big = await raw_exchange(
                running.port, b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
            )
            assert big.startswith(b"HTTP/1.1 431 ")
            assert upstream.requests == []
            nursery.cancel_scope.cancel()


async def test_upstream_too_slow_is_504() -> None:
    config = server_config(timeouts={"upstream_response_s": 0.5})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery, config)
            reply = await fetch(running.port, b"GET", b"/never")
            assert reply.status == 504
            assert b"took too long" in reply.body
            nursery.cancel_scope.cancel()


async def test_upstream_response_s_bounds_the_head_not_the_body(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A body may take longer than upstream_response_s once its head is here.

    The clock stands still unless the test moves it, so the only time that
    passes is the jump, which lies past the deadline but short of a heartbeat.
    """
    config = server_config(timeouts={"upstream_response_s": 1.0})
    async with trio.open_nursery() as nursery:
        running, upstream = await start_tunnel(nursery, config)
        stream = await trio.open_tcp_stream("127.0.0.1", running.port)
        await stream.send_all(b"GET /trickle HTTP/1.1\r\nHost: app\r\n\r\n")
        received = await read_until(stream, b"first")
        mock_clock.jump(3)
        await trio.testing.wait_all_tasks_blocked()
        upstream.release.set()
        received += await read_until(stream, b"-rest")  # not cut: the deadline was the head's
        assert received.startswith(b"HTTP/1.1 200 ")
        # Still a keep-alive connection, whose next request gets a deadline again.
        await stream.send_all(b"GET /never HTTP/1.1\r\nHost: app\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(3)
        answer = await stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 504 "), answer
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_response_body_that_stalls_is_cut_after_idle_s(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An upstream that stops mid-body loses the client, and frees its stream, after
    `idle_s` without a byte: it would otherwise hold both until the upstream ends."""
    caplog.set_level(logging.INFO, logger="pvtunnel")
    config = server_config(timeouts={"idle_s": 2.0})
    async with trio.open_nursery() as nursery:
        running, upstream = await start_tunnel(nursery, config)
        stream = await trio.open_tcp_stream("127.0.0.1", running.port)
        await stream.send_all(b"GET /trickle HTTP/1.1\r\nHost: app\r\n\r\n")
        await read_until(stream, b"first")
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1.5)
        await trio.testing.wait_all_tasks_blocked()
        assert running.server.state.in_flight == 1  # not yet
        mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert running.server.state.in_flight == 0
        assert await stream.receive_some(65536) == b""  # cut: a truncated body
        assert upstream.holding == 1
        said = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.server"]
        assert any("body stalled for 2.0s after 5 bytes" in line for line in said), said
        (line,) = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.access"]
        assert " GET app /trickle 200 5B " in line  # logged once, with what went out
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_the_last_write_after_a_body_wait_is_not_bound_by_that_wait(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A wait for more of a body has `idle_s`; the write that follows it is watched as
    any write is (`idle_s` from its own start, for a client that takes nothing), not
    cut by the wait's deadline."""
    rest = b"r" * 60000  # under one flush: it goes out with the end of the response
    released = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        while b"\r\n\r\n" not in await stream.receive_some(65536):
            pass
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 60005\r\n\r\nfirst")
        await released.wait()
        await stream.send_all(rest)

    config = server_config(timeouts={"idle_s": 10.0})
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, config)
        port = await nursery.start(serve_on_loopback, upstream)
        await start_agent(nursery, running, {"app": port})
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", running.port))
        client.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        await trio.testing.wait_all_tasks_blocked()  # the server waits for the rest
        mock_clock.jump(8.0)
        released.set()
        await trio.testing.wait_all_tasks_blocked()  # its write waits for the client
        mock_clock.jump(3.0)  # past the wait's idle_s, not the write's
        await trio.testing.wait_all_tasks_blocked()
        client.setblocking(False)
        received = b""
        for _ in range(10_000):  # reads, or passes of the server's loop meanwhile
            if received.endswith(rest):
                break
            try:
                chunk = client.recv(1 << 20)
            except BlockingIOError:
                await trio.testing.wait_all_tasks_blocked()
                continue
            assert chunk, received[:200]  # cut short
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 ")
        assert received.endswith(rest), len(received)
        client.close()
        nursery.cancel_scope.cancel()


async def test_server_at_its_stream_limit_answers_503() -> None:
    config = server_config(limits={"max_streams_per_agent": 2})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            replies: list[int] = []

            async def held() -> None:
                replies.append((await fetch(running.port, b"GET", b"/hold")).status)

            async with trio.open_nursery() as clients:
                clients.start_soon(held)
                clients.start_soon(held)
                while upstream.holding < 2:
                    upstream.hold_started = trio.Event()
                    await upstream.hold_started.wait()
                busy = await fetch(running.port, b"GET", b"/")
                assert busy.status == 503
                upstream.release.set()
            assert replies == [200, 200]
            nursery.cancel_scope.cancel()


async def test_upstream_dropping_mid_body_truncates_the_client_response() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery)
            raw = await raw_exchange(running.port, b"GET /close HTTP/1.1\r\nHost: app\r\n\r\n")
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"content-length: 1000" in head.lower()
            assert body == b"partial"  # then the server closed: truncated, not spliced
            # Other requests are not disturbed.
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            nursery.cancel_scope.cancel()


async def test_agent_killed_mid_request_gives_502_quickly() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_config(timeouts={"hold_s": 0.2}))
            upstream, port = await start_upstream(nursery, "svc")
            _, _, agent_scope = await start_agent(nursery, running, {"app": port})
            outcome: list[int | str] = []

            async def client() -> None:
                try:
                    outcome.append((await fetch(running.port, b"GET", b"/hold")).status)
                except (h11.RemoteProtocolError, trio.BrokenResourceError):
                    outcome.append("closed")

            async with trio.open_nursery() as clients:
                clients.start_soon(client)
                await upstream.hold_started.wait()
                with trio.fail_after(5):
                    agent_scope.cancel()
            assert outcome[0] in (502, "closed")
            with trio.fail_after(5):  # the server's per-agent state drops back to zero
                while running.server.sessions:
                    await running.server.state.wait_sessions_changed()
                await running.server.state.idle.wait()
            assert running.server.state.in_flight == 0
            # Its route is remembered: a new request waits (briefly here), then 503.
            assert (await fetch(running.port, b"GET", b"/")).status == 503
            nursery.cancel_scope.cancel()


EARLY_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
)


async def test_1xx_answers_reach_http_1_1_clients_only() -> None:
    """RFC 9110 section 15.2: a server must not send a 1xx to an HTTP/1.0 client."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, EARLY_HINTS)
            old = await raw_exchange(running.port, b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
            assert old.startswith(b"HTTP/1.1 200 "), old
            assert b" 103 " not in old
            new = await raw_exchange(
                running.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert new.startswith(b"HTTP/1.1 103 Early Hints\r\n"), new
            assert b"\r\n\r\nHTTP/1.1 200 " in new
            nursery.cancel_scope.cancel()


async def test_every_interim_answer_reaches_an_http_1_1_client() -> None:
    """RFC 9110 section 15.2: a proxy forwards 1xx answers it did not ask for itself:
    a 100 to a request without Expect, a second 100; the client reads past them."""
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\nX-Second: yes\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, answer)
            received = await raw_exchange(
                running.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            heads = [part for part in received.split(b"\r\n\r\n") if part.startswith(b"HTTP/")]
            assert [head.split(b" ")[1] for head in heads] == [b"100", b"100", b"200"]
            assert b"X-Second: yes" in heads[1]
            assert received.endswith(b"\r\n\r\nok")
            nursery.cancel_scope.cancel()


async def test_length_fields_leave_interim_answers_and_a_426_keeps_its_upgrade() -> None:
    """RFC 9110 section 8.6: no Content-Length on a 1xx; section 7.8: a 426 names
    the protocols it wants in Upgrade, hop-by-hop as that field is elsewhere."""
    answers = (
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: h3\r\nConnection: Upgrade\r\n"
        b"Content-Length: 0\r\n\r\n",
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, *answers)
            close = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            hinted = await raw_exchange(running.port, close)
            interim, _, final = hinted.partition(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 103 Early Hints\r\n"), hinted
            assert b"content-length" not in interim.lower()
            assert final.startswith(b"HTTP/1.1 200 ")
            required = await raw_exchange(running.port, close)
            head = required.partition(b"\r\n\r\n")[0].lower()
            assert head.startswith(b"http/1.1 426 ")
            assert b"\r\nupgrade: h3\r\n" in head
            assert b"upgrade" in hdr_values(head, b"connection")
            nursery.cancel_scope.cancel()


def hdr_values(head: bytes, name: bytes) -> bytes:
    """The values of ``name`` in a lower-cased raw head, joined by commas."""
    return b",".join(
        line.partition(b":")[2].strip()
        for line in head.split(b"\r\n")
        if line.partition(b":")[0] == name
    )


async def test_an_upstream_sending_interim_answers_without_end_gets_a_502() -> None:
    """Interim answers take no flow-control credit: an upstream writing them in a
    loop would grow memory without bound. A request gets at most 32; the 33rd ends
    it as the upstream's error (502), before the final answer."""
    hint = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    request = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, hint * 32 + final, hint * 33 + final)
            enough = await raw_exchange(running.port, request)
            assert enough.count(b"HTTP/1.1 103 ") == 32
            assert b"\r\n\r\nHTTP/1.1 200 OK\r\n" in enough
            flood = await raw_exchange(running.port, request)
            assert flood.count(b"HTTP/1.1 103 ") <= 32
            assert b"HTTP/1.1 502 Bad Gateway\r\n" in flood
            assert b"HTTP/1.1 200 " not in flood
            nursery.cancel_scope.cancel()


async def test_an_upgrade_with_a_body_is_an_ordinary_request() -> None:
    """RFC 9110 section 7.8 lets a server ignore Upgrade: the pipe would start after
    a body the switch has no room for. The upstream sees an ordinary request, so
    it cannot agree to a switch the client would then be refused (a 502)."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            reply = await fetch(
                running.port,
                b"POST",
                b"/echo",
                headers=[(b"connection", b"upgrade"), (b"upgrade", b"x-proto")],
                body=b"hello",
            )
            assert (reply.status, reply.body) == (200, b"hello")
            recorded = upstream.requests[-1]
            assert recorded.header(b"upgrade") is None
            assert recorded.header(b"connection") in (None, b"keep-alive")
            nursery.cancel_scope.cancel()


async def test_an_upgrade_in_an_http_1_0_request_is_ignored() -> None:
    """RFC 9110 section 7.8: the request goes on as an ordinary one, without its
    Upgrade and Connection lines, and the client gets the ordinary answer."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_raw_tunnel(nursery, ok)
            answer = await raw_exchange(
                running.port,
                b"GET /ws HTTP/1.0\r\nHost: app\r\n"
                b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert answer.endswith(b"\r\n\r\nok")
            (head,) = upstream.heads
            assert b"upgrade" not in head.lower()
            nursery.cancel_scope.cancel()


async def test_answers_carry_a_date_and_an_upstreams_own_is_kept() -> None:
    """RFC 9110 section 6.6.1: the server's own answers carry Date, and a response
    forwarded without one gets one; an upstream's Date goes through as it is."""
    dated = b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, dated)
            relayed = await raw_exchange(
                running.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert relayed.lower().count(b"\r\ndate: ") == 1
            assert b"\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n" in relayed
            refused = await raw_exchange(
                running.port, b"GET / HTTP/1.1\r\nHost: nobody\r\nConnection: close\r\n\r\n"
            )
            assert refused.startswith(b"HTTP/1.1 404 ")
            assert re.search(rb"\r\ndate: \w{3}, \d\d \w{3} \d{4} [\d:]{8} GMT\r\n", refused)
            nursery.cancel_scope.cancel()


TINY_CHUNKS = 30000


async def test_bodies_in_tiny_chunks_pass_whole_both_ways() -> None:
    """A body of 2-byte chunks is passed on in few pieces (`H11Stream.gather`), and
    the parts that follow it (the end, the next request) still come in order."""
    tiny = b"2\r\nab\r\n" * TINY_CHUNKS + b"0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tiny
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_raw_tunnel(nursery, answer)
            reply = await fetch(running.port, b"GET", b"/tiny")
            assert reply.status == 200
            assert reply.body == b"ab" * TINY_CHUNKS
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            upload = b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
            after = b"GET /after HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            answers = await raw_exchange(running.port, upload + tiny + after)
            assert answers.count(b"HTTP/1.1 200 ") == 2
            assert [r.target for r in upstream.requests] == [b"/echo", b"/after"]
            assert upstream.requests[0].body == b"ab" * TINY_CHUNKS
            nursery.cancel_scope.cancel()


async def test_a_chunked_body_reaches_an_http_1_0_upstream_with_a_length() -> None:
    """RFC 9112 section 6.1: a client must not send Transfer-Encoding to a server it
    knows only speaks HTTP/1.0 (from its last answer); such a server reads no chunks
    and would take the body as empty. The agent holds a chunked body whole and sends
    it with a Content-Length; one of a stream window or more is refused with 411."""
    seen: list[tuple[bytes, bytes]] = []

    async def old_server(stream: trio.SocketStream) -> None:
        # HTTP/1.0 as http.server speaks it by default: a body is Content-Length bytes.
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            while length is not None and len(body) < int(length[1]):
                body += await stream.receive_some(65536)
            seen.append((head, body))
            await stream.send_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )

    def chunked_post(body: bytes) -> bytes:
        return (
            b"POST /up HTTP/1.1\r\nHost: app\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, old_server)
            await start_agent(nursery, running, {"app": port}, stream_window_bytes=16384)
            # The first answer says HTTP/1.0; from then on no chunks go there.
            assert (await fetch(running.port, b"GET", b"/")).status == 200
            answer = await raw_exchange(running.port, chunked_post(b"hello world"))
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert answer.endswith(b"\r\n\r\nhello world")
            head, body = seen[-1]
            assert b"transfer-encoding" not in head.lower()
            assert b"\r\nContent-Length: 11" in head
            assert body == b"hello world"
            too_big = await raw_exchange(running.port, chunked_post(b"x" * 20000))
            assert too_big.startswith(b"HTTP/1.1 411 "), too_big[:200]
            assert len(seen) == 2
            nursery.cancel_scope.cancel()
