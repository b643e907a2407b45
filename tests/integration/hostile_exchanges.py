"""Exchanges between a server and a hostile agent (`hostile.HostileAgent`), as tests run them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import h11
import trio

from tests.integration.harness import TOKEN, start_server
from tests.integration.hostile import END, HostileAgent, frame, response_head

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.integration.harness import Running

LIMIT_S: Final = 10


async def answer_requests(agent: HostileAgent, replies: Sequence[Sequence[bytes]]) -> None:
    """For each request HEAD in turn, send the frames ``replies`` holds for it.

    The frames are built for stream 0 and sent on the request's stream: each one's
    stream ID (bytes 2-6) is patched in here.
    """
    for frames in replies:
        request = await agent.receive_request()
        stream = request.stream_id.to_bytes(4, "big")
        await agent.send(b"".join(f[:2] + stream + f[6:] for f in frames))


def responses_in(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(status, reason, body) of every response in ``data``, parsed as a client would.

    Raises h11.RemoteProtocolError if the bytes are not a sequence of responses.
    """
    conn = h11.Connection(h11.CLIENT)
    found: list[tuple[int, bytes, bytes]] = []
    if data:  # b"" would mean the connection closed
        conn.receive_data(data)
    while True:
        # A request for each response, so h11 expects one; GET, keep-alive.
        conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"app")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = conn.next_event()
        if event is h11.NEED_DATA:
            return found
        assert isinstance(event, h11.Response), event
        body = bytearray()
        while not isinstance(item := conn.next_event(), h11.EndOfMessage):
            if item is h11.NEED_DATA:
                return found
            assert isinstance(item, h11.Data), item
            body += item.data
        found.append((event.status_code, event.reason, bytes(body)))
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return found
        conn.start_next_cycle()


async def exchange_keepalive(port: int, requests: int) -> bytes:
    """Send ``requests`` GETs on one connection, each once a response more has arrived.

    Returns every byte read, up to the server closing or the last request's answer
    (with two responses for one request, the second answers the next request, as it
    would for a real client). The caller's deadline bounds the wait.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    async with stream:
        for sent in range(1, requests + 1):
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
            while len(responses_in(bytes(received))) < sent:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    chunk = b""
                if not chunk:
                    return bytes(received)
                received += chunk
    return bytes(received)


async def hostile_agent(running: Running, client_id: str = "hostile") -> HostileAgent:
    return await HostileAgent.connect(running.addresses.internal, TOKEN, client_id=client_id)


def ok_head(body: bytes) -> bytes:
    return response_head(0, b"200", b"OK", [(b"content-length", b"%d" % len(body))])


def body_frames(body: bytes) -> list[bytes]:
    return [frame(0x05, 0, body), frame(END, 0)] if body else [frame(END, 0)]


async def through_hostile_agent(replies: Sequence[Sequence[bytes]]) -> bytes:
    """A server, a hostile agent answering with ``replies``; one GET each on one connection."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            async with await hostile_agent(running) as agent:
                nursery.start_soon(answer_requests, agent, replies)
                received = await exchange_keepalive(running.port, len(replies))
                nursery.cancel_scope.cancel()
    return received
