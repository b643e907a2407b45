"""The agent facing a server that breaks the protocol: frames made by hand.

The server is the more trusted end, but what it sends must still not reach an
upstream in a shape that desynchronises a pooled connection, and the agent must
say that the server broke the protocol the way protocol.md says (close 1002), not
that it was asked to leave.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio
import trio_websocket

from pvtunnel._config import AgentConfig, Route, RouteType, Secret, ServerEndpoint
from pvtunnel._errors import ErrorCode
from pvtunnel._trio.agent import TunnelAgent
from tests.integration.harness import TOKEN, start_upstream
from tests.integration.hostile import ACCEPT, END, HEAD, RESET, fields, frame

if TYPE_CHECKING:
    from collections.abc import Sequence

LIMIT_S: Final = 20
_HEADER: Final = struct.Struct(">BBII")
_ACCEPT: Final = frame(
    ACCEPT,
    0,
    json.dumps(
        {"version": 1, "refused": {}, "window": 1 << 20, "connection_window": 16 << 20}
    ).encode(),
)


def request_head(stream_id: int, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    items = [item for pair in headers for item in pair]
    return frame(HEAD, stream_id, fields(b"app", b"POST", b"/", *items))


@attrs.define
class Seen:
    """What the hand-made server saw of the agent."""

    frames: list[tuple[int, int, int, bytes]] = attrs.field(factory=list)
    close_code: int | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


async def agent_against(sent: Sequence[bytes], upstream_port: int) -> Seen:
    """An agent connected to a server that ACCEPTs, then sends ``sent`` (one message
    each) and reads until the agent closes or answers with a RESET."""
    seen = Seen()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        if seen.done.is_set():
            await request.reject(503)  # the agent's reconnect: one session is the test
            return
        ws = await request.accept()
        try:
            await ws.get_message()  # HELLO
            await ws.send_message(_ACCEPT)
            for message in sent:
                await ws.send_message(message)
            while True:
                data = await ws.get_message()
                assert isinstance(data, bytes)
                offset = 0
                while offset < len(data):
                    kind, flags, stream_id, length = _HEADER.unpack_from(data, offset)
                    payload = data[offset + _HEADER.size : offset + _HEADER.size + length]
                    seen.frames.append((kind, flags, stream_id, payload))
                    offset += _HEADER.size + length
                if any(kind == RESET for kind, *_ in seen.frames):
                    break
        except trio_websocket.ConnectionClosed as closed:
            seen.close_code = closed.reason.code if closed.reason is not None else None
        seen.done.set()

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            agent = TunnelAgent(agent_config(server.port, upstream_port))
            nursery.start_soon(agent.serve)
            await seen.done.wait()
            nursery.cancel_scope.cancel()
    return seen


def agent_config(server_port: int, upstream_port: int) -> AgentConfig:
    return AgentConfig(
        client_id="agent",
        server=ServerEndpoint(urls=(f"ws://127.0.0.1:{server_port}",), token=Secret(TOKEN)),
        routes=(Route(name="app", value="127.0.0.1", port=upstream_port, type=RouteType.IP),),
    )


async def test_a_server_breaking_the_protocol_is_told_so_with_1002() -> None:
    async with trio.open_nursery() as nursery:
        _, port = await start_upstream(nursery, "svc")
        # A reserved flag on END (protocol.md section 2) after a valid request head.
        head = request_head(1, [(b"Host", b"app"), (b"Content-Length", b"0")])
        seen = await agent_against([head + frame(END, 1, flags=0x04)], port)
        assert seen.close_code == 1002
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        (
            [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")],
            b"both Content-Length and Transfer-Encoding",
        ),
        ([(b"X-A", b"1\r\nContent-Length: 5")], b"an invalid header value"),
        ([(b"X-A", b" leading blank")], b"an invalid header value"),
        ([(b"X A", b"1")], b"an invalid header name"),
        ([(b"", b"1")], b"an invalid header name"),
    ],
)
async def test_a_head_no_client_could_send_never_reaches_the_upstream(
    fields: list[tuple[bytes, bytes]], why: bytes
) -> None:
    """Heads the server's h11 would have refused from a client: the agent checks
    them again before they reach a pooled upstream connection."""
    async with trio.open_nursery() as nursery:
        upstream, port = await start_upstream(nursery, "svc")
        seen = await agent_against([request_head(1, [(b"Host", b"app"), *fields])], port)
        resets = [payload for kind, _, stream, payload in seen.frames if kind == RESET]
        assert len(resets) == 1
        (code,) = struct.unpack_from(">I", resets[0])
        assert code == ErrorCode.PROTOCOL_ERROR
        assert why in resets[0]
        assert upstream.connections == 0
        assert upstream.requests == []
        nursery.cancel_scope.cancel()
