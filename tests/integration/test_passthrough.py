"""Beyond request/response: WebSocket upgrades, CONNECT pipes and server-sent events."""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import socket
from typing import TYPE_CHECKING, Any

import h11
import trio
import trio.testing
import trio_websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from pvtunnel import AgentTimeouts, Secret
from pvtunnel._trio.hangups import HANGUP_CHECK_S
from tests.integration.client import Client, connect_never_reading, fetch
from tests.integration.echo import TcpEcho, open_connect
from tests.integration.harness import (
    server_config,
    start_agent,
    start_server,
    start_upstream,
)
from tests.integration.listen import serve_on_loopback

if TYPE_CHECKING:
    import pytest

    from pvtunnel._config import ServerConfig
    from tests.integration.harness import Running

MIB = 1024 * 1024
LIMIT_S = 10


class EchoWebSocket:
    """A WebSocket echo service; "close-me" makes it close with code 4002."""

    def __init__(self) -> None:
        self.close_codes: list[int | None] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            ws_server = await nursery.start(
                functools.partial(
                    trio_websocket.serve_websocket,
                    self._handle,
                    "127.0.0.1",
                    0,
                    None,
                    max_message_size=4 * MIB,
                )
            )
            task_status.started(ws_server.port)

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and message == "close-me":
                    await ws.aclose(4002, "server bye")
                    return
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            self.close_codes.append(exc.reason.code if exc.reason else None)


async def open_pipe(
    nursery: trio.Nursery, target: bytes, config: ServerConfig | None = None, **agent: Any
) -> tuple[Running, TcpEcho, trio.SocketStream]:
    """A server, an agent routing "db" to a TCP echo, and a CONNECT to ``target``
    through them, answered 200: the server, the echo and the open pipe."""
    running = await start_server(nursery, config)
    echo = TcpEcho()
    echo_port = await nursery.start(echo.serve)
    await start_agent(nursery, running, {"db": echo_port}, **agent)
    stream, head = await open_connect(running, target)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return running, echo, stream


def websocket_session(port: int) -> dict[str, object]:
    """Runs in a thread: the `websockets` client, through the tunnel, Host "app"."""
    results: dict[str, object] = {}
    sock = socket.create_connection(("127.0.0.1", port))
    with ws_connect("ws://app/echo", sock=sock, max_size=None) as ws:
        rng = random.Random(1)
        for size in (1, 100, 65535, 65536, 300_000, MIB):
            text = "".join(rng.choice("abcxyzé€") for _ in range(min(size, 5000)))
            ws.send(text)
            assert ws.recv() == text
            blob = rng.randbytes(size)
            ws.send(blob)
            assert ws.recv() == blob
        pong = ws.ping(b"are you there")
        results["pong"] = pong.wait(5)
        ws.close(4001, "client bye")
        results["client_close"] = ws.close_code
    sock2 = socket.create_connection(("127.0.0.1", port))
    with ws_connect("ws://app/echo", sock=sock2) as ws:
        ws.send("close-me")
        try:
            ws.recv()
        except ConnectionClosed as exc:
            results["server_close"] = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
    return results


async def test_websocket_upgrade_passes_messages_pings_and_close_codes() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            echo = EchoWebSocket()
            echo_port = await nursery.start(echo.serve)
            await start_agent(nursery, running, {"app": echo_port})
            results = await trio.to_thread.run_sync(websocket_session, running.port)
            assert results["pong"] is True
            assert results["client_close"] == 4001
            assert results["server_close"] == (4002, "server bye")
            assert echo.close_codes[0] == 4001
            # The keep-alive HTTP path is untouched by upgrades.
            nursery.cancel_scope.cancel()


async def test_upgrade_refused_by_the_upstream_is_an_ordinary_response() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, port = await start_upstream(nursery, "plain")
            await start_agent(nursery, running, {"app": port})
            async with await Client.connect(running.port) as client:
                reply = await client.request(
                    b"GET",
                    b"/status/426",
                    headers=[(b"connection", b"upgrade"), (b"upgrade", b"websocket")],
                )
                assert reply.status == 426
                assert upstream.requests[-1].header(b"upgrade") == b"websocket"
                # The same connection keeps working as plain HTTP.
                assert (await client.request(b"GET", b"/after")).status == 200
            nursery.cancel_scope.cancel()


async def test_connect_pipes_fifty_mib_both_ways_to_the_routes_own_target() -> None:
    size = 50 * MIB
    payload = random.Random(5).randbytes(size)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # Port 1 is named in the request; the agent must dial the route's target.
            _, echo, stream = await open_pipe(nursery, b"db:1")
            received = hashlib.sha256()
            count = 0

            async def read_back() -> None:
                nonlocal count
                while data := await stream.receive_some(65536):
                    received.update(data)
                    count += len(data)

            async with trio.open_nursery() as io:
                io.start_soon(read_back)
                view = memoryview(payload)
                for start in range(0, size, 256 * 1024):
                    await stream.send_all(view[start : start + 256 * 1024])
                await stream.send_eof()  # half-close; the echo answers with its own EOF
            assert count == size
            assert received.digest() == hashlib.sha256(payload).digest()
            assert echo.connections == 1
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_a_pipe_is_logged_when_it_ends_with_the_bytes_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One access line per pipe, written at its end: its status, the bytes that
    crossed it each way (counted in /metrics too) and its whole duration."""
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _, stream = await open_pipe(nursery, b"db:1")
            await stream.send_all(b"x" * 1000)
            echoed = b""
            while len(echoed) < 1000:
                echoed += await stream.receive_some(65536)
            await trio.testing.wait_all_tasks_blocked()
            assert not [r for r in caplog.records if r.name == "pvtunnel.access"]  # open still
            await stream.send_all(b"y" * 500)
            await stream.send_eof()
            while chunk := await stream.receive_some(65536):
                echoed += chunk
            assert len(echoed) == 1500
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            (record,) = [r for r in caplog.records if r.name == "pvtunnel.access"]
            fields = vars(record)
            assert (fields["method"], fields["status"]) == ("CONNECT", 200)
            assert (fields["bytes_in"], fields["bytes_out"]) == (1500, 1500)
            figures = running.server.state.metrics.routes["db"]
            assert (figures.bytes_in, figures.bytes_out) == (1500, 1500)
            nursery.cancel_scope.cancel()


async def test_a_connect_pipe_outlives_upstream_response_s(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The response deadline ends with the 200; the pipe itself has none.

    The clock moves only when the test jumps it: past the deadline, short of a
    heartbeat.
    """
    config = server_config(timeouts={"upstream_response_s": 1.0})
    async with trio.open_nursery() as nursery:
        _, _, stream = await open_pipe(nursery, b"db:1", config)
        mock_clock.jump(3)
        await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(b"still there?")
        echoed = b""
        while len(echoed) < 12:
            chunk = await stream.receive_some(65536)
            assert chunk, echoed  # closed: the deadline outlived the 200
            echoed += chunk
        assert echoed == b"still there?"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_connect_access_control_and_upstream_failure() -> None:
    config = server_config(external={"token": Secret("ext-token")})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, config)
            closed = trio.socket.socket()
            await closed.bind(("127.0.0.1", 0))
            dead_port = closed.getsockname()[1]
            closed.close()
            await start_agent(nursery, running, {"db": dead_port})
            stream, head = await open_connect(running, b"db:5432")
            assert head.startswith(b"HTTP/1.1 407 ")
            await stream.aclose()
            stream, head = await open_connect(
                running, b"db:5432", b"Proxy-Authorization: Bearer ext-token\r\n"
            )
            assert head.startswith(b"HTTP/1.1 502 ")
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_server_sent_events_arrive_as_they_are_written() -> None:
    latencies: list[float] = []
    written: list[float] = []

    async def sse(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while (event := conn.next_event()) is h11.NEED_DATA or not isinstance(
            event, h11.EndOfMessage
        ):
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
        await stream.send_all(
            conn.send(
                h11.Response(status_code=200, headers=[(b"content-type", b"text/event-stream")])
            )
            or b""
        )
        for index in range(10):
            await trio.sleep(0.02)  # the upstream's own pace, not synchronisation
            written.append(trio.current_time())
            await stream.send_all(conn.send(h11.Data(data=b"data: %d\n\n" % index)) or b"")
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, sse, 0, host="127.0.0.1")
            )
            await start_agent(nursery, running, {"events": listeners[0].socket.getsockname()[1]})
            async with await Client.connect(running.port) as client:
                await client._send(
                    h11.Request(method=b"GET", target=b"/stream", headers=[(b"host", b"events")])
                )
                await client._send(h11.EndOfMessage())
                response = await client._next()
                assert isinstance(response, h11.Response)
                assert response.status_code == 200
                text = b""
                while text.count(b"\n\n") < 10:
                    event = await client._next()
                    assert isinstance(event, h11.Data)
                    text += event.data
                    latencies.append(trio.current_time() - written[text.count(b"\n\n") - 1])
            assert text == b"".join(b"data: %d\n\n" % i for i in range(10))
            # Generous bound (the issue asks for 50 ms); the note reports the real figure.
            assert max(latencies) < 0.5, latencies
            print(
                f"SSE latency: max {max(latencies) * 1000:.2f} ms, "
                f"mean {sum(latencies) / len(latencies) * 1000:.2f} ms"
            )
            assert (await fetch(running.port, b"GET", b"/x", host=b"nobody")).status == 404
            nursery.cancel_scope.cancel()


async def test_idle_pipe_outlives_the_http_timeouts() -> None:
    """A raw pipe has no idle limit of its own: heartbeats keep the agent link alive."""
    fast = {"heartbeat_s": 0.1, "heartbeat_timeout_s": 0.5}
    config = server_config(timeouts={"idle_s": 0.2, "request_head_s": 0.2, **fast})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, _, stream = await open_pipe(
                nursery, b"db:5432", config, timeouts=AgentTimeouts(**fast)
            )
            await trio.sleep(1.0)  # the scenario: an idle pipe, five times the HTTP limits
            await stream.send_all(b"still there?")
            assert await stream.receive_some(100) == b"still there?"
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_an_open_pipe_holds_its_place_under_the_stream_limit_until_it_ends() -> None:
    # A pipe is a request in flight for as long as it is open, idle or not: at a
    # limit of one, the next request is refused with 503 until the pipe ends.
    config = server_config(limits={"max_streams_per_agent": 1})
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running, _, pipe = await open_pipe(nursery, b"db:5432", config)
            refused, head = await open_connect(running, b"db:5432")
            assert head.startswith(b"HTTP/1.1 503 "), head
            await refused.aclose()
            await pipe.aclose()
            await running.server.state.idle.wait()
            served, head = await open_connect(running, b"db:5432")
            assert head.startswith(b"HTTP/1.1 200 "), head
            await served.send_all(b"ping")
            assert await served.receive_some(100) == b"ping"
            await served.aclose()
            nursery.cancel_scope.cancel()


async def test_a_101_the_client_takes_none_of_is_cut_after_idle_s(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The switch's head is written with no deadline left (a pipe may live for
    # days), so it is watched as a response's writes are: a client that takes none
    # of it is cut after idle_s, and the exchange logged.
    caplog.set_level(logging.INFO, logger="pvtunnel")
    mock_clock.autojump_threshold = 0
    config = server_config(timeouts={"idle_s": 4.0})
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery, config)
        echo_port = await nursery.start(EchoWebSocket().serve)
        await start_agent(nursery, running, {"app": echo_port})
        # The 101 can never be written.
        client, served = await connect_never_reading(nursery, running.server.state)
        await client.send_all(
            b"GET /echo HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        sent_at = trio.current_time()
        with trio.fail_after(60):
            await served.wait()
        assert 4.0 <= trio.current_time() - sent_at <= 4.0 + 2 * HANGUP_CHECK_S
        assert running.server.state.in_flight == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "pvtunnel.access"]
        assert any(" GET app /echo 101 0B " in line for line in lines), lines
        nursery.cancel_scope.cancel()


async def test_a_connect_with_content_is_refused_and_opens_nothing() -> None:
    # It got "200 Connection established", then a dead connection (and a log line
    # counting bytes the client never got); the target was dialled for it.
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            echo = TcpEcho()
            await start_agent(nursery, running, {"db": await nursery.start(echo.serve)})
            stream, head = await open_connect(running, b"db:1", b"Content-Length: 5\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), head
            await stream.aclose()
            assert echo.connections == 0
            nursery.cancel_scope.cancel()


async def test_a_101_without_an_upgrade_field_is_a_502() -> None:
    # It reached the client with the Upgrade the client had asked for, made up.
    async def bare_101(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n")
        await trio.sleep_forever()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            port = await nursery.start(serve_on_loopback, bare_101)
            await start_agent(nursery, running, {"app": port})
            async with await Client.connect(running.port) as client:
                upgrade = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
                reply = await client.request(b"GET", b"/ws", headers=upgrade)
            assert reply.status == 502
            nursery.cancel_scope.cancel()


async def test_a_client_that_leaves_before_its_101_frees_its_stream(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Nobody read its socket while the upgrade waited, so its stream (and its place
    # under max_streams_per_agent) was held until the upstream answered, to nobody.
    caplog.set_level(logging.INFO, logger="pvtunnel.access")
    mock_clock.autojump_threshold = 0
    async with trio.open_nursery() as nursery:
        running = await start_server(nursery)
        upstream, port = await start_upstream(nursery, "slow")
        await start_agent(nursery, running, {"app": port})
        stream = await trio.open_tcp_stream("127.0.0.1", running.port)
        await stream.send_all(
            b"GET /hold HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        await upstream.hold_started.wait()
        (session,) = running.server.sessions
        assert session.in_flight == 1
        await stream.aclose()
        while session.in_flight:
            await trio.sleep(HANGUP_CHECK_S)
        (line,) = [vars(r) for r in caplog.records if r.name == "pvtunnel.access"]
        assert line["status"] == 499
        nursery.cancel_scope.cancel()
