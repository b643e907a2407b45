"""Clients that leave at the wrong moment or send heads at the edge of the limits (issue 20).

No token is needed for any of these: whatever an external client can do to the
server's stream slots or error paths, anyone can.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Final

import pytest
import trio
import trio.testing

from tests.integration.client import connect_never_reading, raw_exchange
from tests.integration.harness import server_config, start_agent, start_server, start_tunnel
from tests.integration.listen import serve_on_loopback

if TYPE_CHECKING:
    from tests.integration.upstream import Recorded

LIMIT_S: Final = 10


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    received = bytearray()
    while marker not in received:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before {marker!r}: {bytes(received)!r}"
        received += chunk
    return bytes(received)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"GET /trickle HTTP/1.1\r\nHost: app\r\n\r\n", id="bodiless"),
        pytest.param(
            b"POST /trickle HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nbody", id="with-body"
        ),
    ],
)
async def test_a_client_leaving_after_pipelining_frees_its_stream(first: bytes) -> None:
    """Defect 4: the pipelined bytes hid the hang-up, so the stream stayed in flight."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            await stream.send_all(first)
            # A long poll: the head and the first bytes came, the rest is held upstream.
            await read_until(stream, b"first")
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            await stream.aclose()
            await running.server.state.idle.wait()
            assert running.server.state.in_flight == 0
            assert upstream.holding == 1  # the upstream never finished: the server noticed
            nursery.cancel_scope.cancel()


async def test_a_head_that_grows_past_one_frame_on_the_way_is_431(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 5: X-Forwarded-Host copied a 32 KiB Host past one HEAD frame: a 500, a traceback."""
    caplog.set_level(logging.INFO, "pvtunnel")
    # A Host of "app:000…0" routes to "app" (the port is dropped), and fits the limit.
    host = b"app:" + b"0" * 32737
    head = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert len(head) == 32767  # the default max_request_head_bytes
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, server_config())
            answer = await raw_exchange(
                running.port, head + b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            # No body, so the connection stays: the next request is served.
            assert b"svc saw GET /" in answer
            assert len(upstream.requests) == 1
            nursery.cancel_scope.cancel()
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


async def test_a_target_that_is_neither_a_path_nor_an_http_url_is_400() -> None:
    """Routed by Host but read upstream as naming another host (``ftp://internal/``
    reached a virtual host no route exposes), or as nothing at all."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, server_config())
            for target in (b"ftp://internal/", b"xyz://internal/x", b"foo", b"app:80", b"*"):
                answer = await raw_exchange(
                    running.port,
                    b"GET " + target + b" HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
                )
                assert answer.startswith(b"HTTP/1.1 400 "), (target, answer[:100])
            ok = b"OPTIONS * HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            assert (await raw_exchange(running.port, ok)).startswith(b"HTTP/1.1 200 ")
            assert [r.target for r in upstream.requests] == [b"*"]
            nursery.cancel_scope.cancel()


async def test_a_pipelined_head_past_the_limit_is_431_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """h11 caps only heads that arrive incomplete: one that came whole behind the
    request before it (in the same read) is measured too, and logged."""
    caplog.set_level(logging.INFO, "pvtunnel.access")
    big = b"GET /big HTTP/1.1\r\nHost: app\r\nX-Pad: " + b"p" * 50000 + b"\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, server_config())
            answer = await raw_exchange(
                running.port, b"GET /small HTTP/1.1\r\nHost: app\r\n\r\n" + big
            )
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b"HTTP/1.1 431 " in answer
            assert [r.target for r in upstream.requests] == [b"/small"]
            nursery.cancel_scope.cancel()
    assert any(" GET app /big 431 " in r.getMessage() for r in caplog.records)


async def test_a_request_line_past_the_head_limit_is_414() -> None:
    """RFC 9112 section 3: a request-target longer than the server takes is 414 URI
    Too Long, not 431, whether the line comes in pieces (h11 refuses it) or whole
    behind another request (measured after parsing). A fragment is no part of a
    request target: 400."""
    long_line = b"GET /" + b"a" * 40000 + b" HTTP/1.1\r\nHost: app\r\n\r\n"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, server_config())
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                await stream.send_all(long_line[:20000])
                await trio.testing.wait_all_tasks_blocked()
                await stream.send_all(long_line[20000:])
                in_pieces = await stream.receive_some(65536)
            assert in_pieces.startswith(b"HTTP/1.1 414 "), in_pieces[:100]
            behind = await raw_exchange(
                running.port, b"GET /small HTTP/1.1\r\nHost: app\r\n\r\n" + long_line
            )
            assert behind.startswith(b"HTTP/1.1 200 ")
            assert b"HTTP/1.1 414 " in behind
            # Measured as a line, target and all, however it came: 32,774 bytes.
            edge = b"GET /" + b"e" * 32759 + b" HTTP/1.1\r\nHost: app\r\n\r\n"
            whole = await raw_exchange(
                running.port, b"GET /small HTTP/1.1\r\nHost: app\r\n\r\n" + edge
            )
            assert b"HTTP/1.1 414 " in whole
            fragment = await raw_exchange(
                running.port, b"GET /a#frag HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            assert fragment.startswith(b"HTTP/1.1 400 "), fragment
            assert [r.target for r in upstream.requests] == [b"/small", b"/small"]
            nursery.cancel_scope.cancel()


async def through_tunnel(*requests: bytes) -> tuple[list[bytes], list[Recorded]]:
    """Each raw request on its own connection; the answers, and what the upstream saw."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery)
            answers = [await raw_exchange(running.port, request) for request in requests]
            nursery.cancel_scope.cancel()
    return answers, upstream.requests


async def test_only_http_1_0_and_1_1_are_proxied() -> None:
    """Also fix: HTTP/1.2 was accepted where SECURITY.md says 400."""
    versions = (b"1.2", b"1.9", b"2.0")
    answers, seen = await through_tunnel(
        *(b"GET / HTTP/" + version + b"\r\nHost: app\r\n\r\n" for version in versions)
    )
    assert [answer[:13] for answer in answers] == [b"HTTP/1.1 400 "] * len(versions)
    assert seen == []


async def test_content_length_is_forwarded_as_parsed_and_capped_at_63_bits() -> None:
    """Also fix: "0005" and 2^64+5 were forwarded as written; a 64-bit parser wraps the second."""
    post = b"POST /echo HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: "
    answers, seen = await through_tunnel(
        post + b"0005\r\n\r\nhello",
        post + b"18446744073709551621\r\n\r\nx",
        post + b"9223372036854775808\r\n\r\nx",
    )
    assert [answer[:13] for answer in answers] == [
        b"HTTP/1.1 200 ",
        b"HTTP/1.1 400 ",
        b"HTTP/1.1 400 ",
    ]
    (forwarded,) = seen
    assert forwarded.header(b"content-length") == b"5"
    assert forwarded.body == b"hello"


async def test_forwarded_gets_our_hop_and_a_client_x_real_ip_is_dropped() -> None:
    """Also fix: Forwarded and X-Real-IP from the client passed through untouched."""
    answers, seen = await through_tunnel(
        b"GET / HTTP/1.1\r\nHost: app\r\nForwarded: for=203.0.113.9\r\n"
        b"X-Real-IP: 203.0.113.9\r\nConnection: close\r\n\r\n"
    )
    assert answers[0].startswith(b"HTTP/1.1 200 "), answers
    (forwarded,) = seen
    assert forwarded.header(b"forwarded") == b"for=203.0.113.9, for=127.0.0.1;proto=http"
    assert forwarded.header(b"x-real-ip") is None


async def test_a_slow_second_head_has_request_head_s_from_its_first_byte() -> None:
    """Also fix: a kept-alive connection's next head was bounded by idle_s only."""
    config = server_config(timeouts={"request_head_s": 0.5, "idle_s": 60})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery, config)
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                await read_until(stream, b"svc saw GET /")
                await stream.send_all(b"GET /sec")  # ... and nothing more
                # Closed after request_head_s (0.5 s), long before idle_s (60 s).
                with trio.fail_after(5):
                    while await stream.receive_some(65536):
                        pass
            nursery.cancel_scope.cancel()


async def test_a_long_upload_gets_the_response_timeout_after_its_body() -> None:
    """Also fix: upstream_response_s ran from the request's start: a slow upload got 504."""
    config = server_config(timeouts={"upstream_response_s": 0.3, "idle_s": 5})
    pieces = 6
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            async with stream:
                await stream.send_all(
                    b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % pieces
                )
                for _ in range(pieces):
                    await stream.send_all(b"x")
                    await trio.sleep(0.1)  # pacing a slow upload: 0.6 s in all, past 0.3 s
                answer = await read_until(stream, b"xxxxxx")
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert upstream.requests[-1].body == b"x" * pieces
            nursery.cancel_scope.cancel()


async def test_a_client_that_stops_sending_its_body_gets_408() -> None:
    """The body's idle bound: idle_s between pieces, not upstream_response_s in all."""
    config = server_config(timeouts={"upstream_response_s": 60, "idle_s": 0.5})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, upstream = await start_tunnel(nursery, config)
            answer = await raw_exchange(
                running.port,
                b"POST /echo HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\npart",
            )
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert upstream.requests == []
            nursery.cancel_scope.cancel()


async def test_an_upstream_that_stops_taking_the_body_gets_504() -> None:
    """The same bound while the agent grants no credit (its upstream reads nothing)."""
    config = server_config(
        timeouts={"upstream_response_s": 60, "idle_s": 0.5},
        limits={"stream_window_bytes": 65536},
    )
    size = 16 << 20

    async def deaf_upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            port = await nursery.start(serve_on_loopback, deaf_upstream)
            await start_agent(nursery, running, {"app": port})
            stream = await trio.open_tcp_stream("127.0.0.1", running.port)
            head = b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: %d\r\n\r\n" % size
            async with stream, trio.open_nursery() as sending:
                sending.start_soon(_send_ignoring_breakage, stream, head + bytes(size))
                answer = await read_until(stream, b"\r\n\r\n")
                sending.cancel_scope.cancel()
            assert answer.startswith(b"HTTP/1.1 504 "), answer
            nursery.cancel_scope.cancel()


async def _send_ignoring_breakage(stream: trio.SocketStream, data: bytes) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


async def test_an_upstreams_folded_header_reaches_the_client_as_one_line() -> None:
    """SECURITY.md: an upstream's obs-fold is replaced by a space (RFC 9112 section 5.2)."""

    async def folding_upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await read_until(stream, b"\r\n\r\n")
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n  second\r\nContent-Length: 2\r\n\r\nok"
            )

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, folding_upstream)
            await start_agent(nursery, running, {"app": port})
            answer = await raw_exchange(
                running.port, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"
            )
            head = answer.split(b"\r\n\r\n", 1)[0]
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert b"\r\nX-Folded: first second\r\n" in head + b"\r\n", head
            assert b"\r\n " not in head
            assert b"\r\n\t" not in head
            nursery.cancel_scope.cancel()


async def _upstream_answering_413_at_once(stream: trio.SocketStream) -> None:
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
            b"too large"
        )


@pytest.mark.parametrize(
    ("host", "status"),
    [(b"nobody", b"404"), (b"app", b"413")],
    ids=["refused-by-the-server", "refused-by-the-upstream"],
)
async def test_an_answer_before_the_body_reaches_a_client_that_sends_it_all_first(
    host: bytes, status: bytes
) -> None:
    """Many clients (Python's http.client among them) send a whole body before they
    read. Answered early and closed on with 8 MiB unread, such a client used to
    meet a reset that destroyed the answer; the server now half-closes, reads the
    rest away, and says in the answer that it closes."""
    body = bytes(8 << 20)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, _upstream_answering_413_at_once)
            await start_agent(nursery, running, {"app": port})
            async with await trio.open_tcp_stream("127.0.0.1", running.port) as stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (host, len(body))
                    + body
                )
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 %s " % status), answer[:200]
            assert b"\r\nconnection: close\r\n" in answer.lower()
            nursery.cancel_scope.cancel()


async def test_a_host_with_spaces_cannot_forge_fields_of_the_access_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The text access line separates its fields with spaces; a Host value may hold
    spaces (it is any field value), so they are escaped there."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    forged = b"x /fake 200 0B 1.0ms agent=admin route=billing stream=7"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _ = await start_tunnel(nursery)
            answer = await raw_exchange(
                running.port,
                b"GET /real HTTP/1.1\r\nConnection: close\r\nHost: " + forged + b"\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 400 ")  # not a host[:port] at all
            nursery.cancel_scope.cancel()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.access"]
    assert " x\\x20/fake\\x20200\\x200B" in line
    assert " agent=admin" not in line
    assert line.count(" route=") == 1


async def test_a_deadline_answer_to_a_client_that_reads_nothing_gives_up_after_idle_s(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A request its deadline ended is answered (504) after the connection's scope has
    ended: the write gets `idle_s` of its own, so a client that reads nothing (its
    buffers full of earlier answers) is let go then, and logged, rather than holding
    the connection and its place forever."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    mock_clock.autojump_threshold = 0
    config = server_config(timeouts={"upstream_response_s": 3.0, "idle_s": 4.0})
    async with trio.open_nursery() as nursery:
        running, _ = await start_tunnel(nursery, config)
        state = running.server.state
        client, served = await connect_never_reading(nursery, state)
        await client.send_all(b"GET /hold HTTP/1.1\r\nHost: app\r\n\r\n")
        sent_at = trio.current_time()
        with trio.fail_after(60):
            await served.wait()
        assert trio.current_time() - sent_at == pytest.approx(7.0, abs=0.5)
        assert state.client_connections == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.access"]
        assert any(" GET app /hold 504 " in line for line in lines), lines
        nursery.cancel_scope.cancel()
