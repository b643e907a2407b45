"""One client message is at most one upstream request, and one response answers one request.

Every test runs a server, an agent and an upstream on loopback. The smuggling
table sends raw bytes to the external port and asks the recording upstream what
it received: one client message may become at most one upstream request, with
exactly the body the client framed. The upstream's side is held to the same
rule: a response that breaks its framing is a 502, and bytes it sends beyond
a response answer nobody.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trio.testing

from tests.integration.client import Reply, fetch, raw_exchange, statuses
from tests.integration.harness import start_agent, start_server, start_tunnel
from tests.integration.listen import serve_on_loopback
from tests.integration.raw_upstream import start_raw_tunnel

if TYPE_CHECKING:
    from tests.integration.raw_upstream import RawUpstream

LIMIT_S: Final = 10


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
        # Chunked is not the last coding: the body's length cannot be known, 400
        # (RFC 9112 section 6.3), where an unknown coding before chunked is 501.
        "xchunked",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: xchunked\r\n"
        b"Content-Length: 5\r\n\r\n"
        b"hello",
        400,
        None,
    ),
    (
        "chunked then gzip",
        b"POST /echo HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        400,
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
            answer = await raw_exchange(running.port, raw + last)
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
            answer = await raw_exchange(running.port, first + last)
            assert statuses(answer) == [200, 200]
            assert [(r.target, r.body) for r in upstream.requests] == [
                (b"/echo", b"line\r\n two"),
                (b"/last", b""),
            ]
            answer = await raw_exchange(running.port, first + folded + last)
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
            answer = await raw_exchange(
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
            running, upstream = await start_raw_tunnel(nursery, answer)
            received = await raw_exchange(
                running.port, b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert statuses(received) == [502]
            assert b"SMUGGLE" not in received
            assert received.endswith(
                b"\r\n\r\n502 Bad Gateway: the upstream service sent an invalid response\n"
            )
            assert len(upstream.heads) >= 1
            nursery.cancel_scope.cancel()


_FILLER: Final = b"".join(b"X-Filler-%03d: %s\r\n" % (i, b"f" * 1000) for i in range(90))
_BIG_HEAD: Final = b"HTTP/1.1 200 OK\r\n" + _FILLER + b"Content-Length: 7\r\n\r\nSMUGGLE"


@pytest.mark.parametrize(
    "parts",
    [
        # h11 caps a head only while it is incomplete: one that arrives in two
        # reads, each under the cap, may end up bigger than one HEAD frame.
        pytest.param([_BIG_HEAD[:40000], _BIG_HEAD[40000:]], id="head-over-one-frame"),
        # h11 takes any three digits; HTTP and the HEAD frame take 100-599.
        pytest.param([b"HTTP/1.1 999 Odd\r\nContent-Length: 7\r\n\r\nSMUGGLE"], id="status-999"),
    ],
)
async def test_a_response_head_the_tunnel_cannot_carry_is_the_upstreams_error(
    parts: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A head h11 accepted but the tunnel cannot carry is the upstream's error (a
    502, a warning), not the agent's (no error log, no traceback)."""
    caplog.set_level(logging.WARNING, "pvtunnel")

    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive_some(65536)
            for part in parts:
                # The agent has read what came before (everything waits for more)
                # when the next part arrives: no read of the head passes h11's cap.
                await trio.testing.wait_all_tasks_blocked()
                await stream.send_all(part)
            await trio.sleep_forever()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, upstream)
            await start_agent(nursery, running, {"app": port})
            received = await raw_exchange(
                running.port, b"GET /x HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert statuses(received) == [502]
            assert b"SMUGGLE" not in received
            nursery.cancel_scope.cancel()
    records = [r for r in caplog.records if r.name.startswith("pvtunnel")]
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == []
    assert any("unusable response head" in r.getMessage() for r in records)


async def test_extra_bytes_after_a_response_never_answer_another_request() -> None:
    """Response splitting: what follows a response must not be read as the next one."""
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_raw_tunnel(nursery, answer)
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
            running, upstream = await start_raw_tunnel(nursery, ok, late=late, hang_up=hang_up)
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
            # Second request: read, then hang up without a word; then answer again.
            running, upstream = await start_raw_tunnel(nursery, ok, None, ok)
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


async def test_a_retry_takes_a_fresh_connection_not_another_pooled_one() -> None:
    """Two pooled connections that the upstream closes at the same moment (its
    keep-alive timeout, say): the retry after the first fails must not meet the
    same fate on the second."""
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    both_warming = trio.Event()
    warming: list[int] = []
    acted_on: list[int] = []

    async def upstream(stream: trio.SocketStream) -> None:
        number = len(warming) + len(acted_on) + 1  # connections in the order they came
        answered = 0
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    if not (data := await stream.receive_some(65536)):
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                if b" /warm " in head:
                    # Both warm-ups in flight at once: the pool ends up with two.
                    warming.append(number)
                    if len(warming) == 2:
                        both_warming.set()
                    await both_warming.wait()
                else:
                    acted_on.append(number)
                    if answered:
                        return  # a connection that served before hangs up now
                await stream.send_all(ok)
                answered += 1

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, upstream)
            agent, _, _ = await start_agent(nursery, running, {"app": port})
            async with trio.open_nursery() as warm:
                for _ in range(2):
                    warm.start_soon(fetch, running.port, b"GET", b"/warm")
            assert agent.pool.idle_count("app") == 2
            reply = await fetch(running.port, b"GET", b"/act")
            assert (reply.status, reply.body) == (200, b"ok")
            assert len(acted_on) == 2
            assert acted_on[0] in warming
            assert acted_on[1] not in warming
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_an_upstream_reset_ends_a_body_read_until_close_as_truncated(
    version: bytes,
) -> None:
    """A body without a length ends at the upstream's close (RFC 9112 section 6.3);
    a reset is a failure, not that close: the client's response stays unfinished,
    never a whole-looking answer. An HTTP/1.1 client gets no last chunk; to an
    HTTP/1.0 client, whose body ends where the connection ends, the connection is
    reset rather than closed (RFC 9112 section 8)."""
    seen = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst part;")
        await seen.wait()
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # an abortive close: RST, not FIN

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, upstream)
            await start_agent(nursery, running, {"app": port})
            client = await trio.open_tcp_stream("127.0.0.1", running.port)
            await client.send_all(b"GET /report HTTP/%s\r\nHost: app\r\n\r\n" % version)
            received = b""
            while b"first part;" not in received:
                received += await client.receive_some(65536)
            seen.set()
            reset = False
            try:
                while chunk := await client.receive_some(65536):  # until the server closes
                    received += chunk
            except trio.BrokenResourceError:
                reset = True
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
            if version == b"1.1":
                assert b"transfer-encoding: chunked" in received.lower()
                assert not received.endswith(b"\r\n0\r\n\r\n")
                assert not reset
            else:
                assert b"transfer-encoding" not in received.lower()
                assert reset
            await client.aclose()
            nursery.cancel_scope.cancel()
