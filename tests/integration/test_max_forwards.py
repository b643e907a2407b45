"""Max-Forwards through the tunnel (RFC 9110 section 7.6.2), with a real agent and upstream.

An OPTIONS or TRACE whose Max-Forwards is 0 is answered by the server, the hop
that received it at 0; above 0 it goes on with one less. Other methods ignore it.
"""

from __future__ import annotations

from typing import Final

import trio

from pvtunnel._config import Secret
from tests.integration.client import Client, fetch
from tests.integration.harness import server_config, start_tunnel

LIMIT_S: Final = 10
TOKEN: Final = b"external-token-7f3a9c"


async def test_options_at_zero_is_answered_by_the_server() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            async with await Client.connect(running.port) as client:
                reply = await client.request(b"OPTIONS", b"*", headers=[(b"max-forwards", b"0")])
                assert reply.status == 200
                assert reply.body == b""
                assert reply.header(b"content-length") == b"0"
                # Kept alive: the next request on the connection is proxied.
                assert (await client.request(b"GET", b"/after")).status == 200
            assert [r.target for r in upstream.requests] == [b"/after"]
            nursery.cancel_scope.cancel()


async def test_trace_at_zero_reflects_the_request_less_credentials() -> None:
    config = server_config(external={"token": Secret(TOKEN.decode())})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            reply = await fetch(
                running.port,
                b"TRACE",
                b"/where?x=1",
                headers=[
                    (b"Max-Forwards", b"0"),
                    (b"X-Trace-Me", b"yes"),
                    (b"Cookie", b"session=s3cret"),
                    (b"Authorization", b"Bearer upstream-secret"),
                    (b"Proxy-Authorization", b"Bearer " + TOKEN),
                ],
            )
            assert reply.status == 200
            assert reply.header(b"content-type") == b"message/http"
            lines = reply.body.split(b"\r\n")
            assert lines[0] == b"TRACE /where?x=1 HTTP/1.1"
            assert b"X-Trace-Me: yes" in lines
            assert b"Max-Forwards: 0" in lines
            assert reply.body.endswith(b"\r\n\r\n")
            for secret in (b"s3cret", b"upstream-secret", TOKEN):
                assert secret not in reply.body
            assert upstream.requests == []
            nursery.cancel_scope.cancel()


async def test_trace_at_zero_still_needs_the_external_token_and_a_route() -> None:
    config = server_config(external={"token": Secret(TOKEN.decode())})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery, config)
            bare = await fetch(running.port, b"TRACE", b"/", headers=[(b"max-forwards", b"0")])
            assert bare.status == 407
            unrouted = await fetch(
                running.port,
                b"TRACE",
                b"/",
                host=b"nowhere",
                headers=[(b"max-forwards", b"0"), (b"proxy-authorization", b"Bearer " + TOKEN)],
            )
            assert unrouted.status == 404
            nursery.cancel_scope.cancel()


async def test_above_zero_goes_on_with_one_less_and_other_methods_ignore_it() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            sent = [
                (b"OPTIONS", [(b"Max-Forwards", b"3")]),
                (b"TRACE", [(b"max-forwards", b"1"), (b"max-forwards", b"9")]),
                (b"GET", [(b"max-forwards", b"0")]),
                (b"OPTIONS", [(b"max-forwards", b"two")]),
            ]
            for method, headers in sent:
                assert (await fetch(running.port, method, b"/", headers=headers)).status == 200
            seen = [
                [v for n, v in request.headers if n.lower() == b"max-forwards"]
                for request in upstream.requests
            ]
            assert seen == [[b"2"], [b"0"], [b"0"], [b"two"]]
            nursery.cancel_scope.cancel()
