"""`H11Stream.gather`: a body in tiny pieces is passed on in few, without holding the loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import h11
import trio
import trio.testing

from pvtunnel._trio.http11 import GATHER_PIECES, H11Stream
from pvtunnel._trio.stream import Channel
from pvtunnel._wire.frames import StreamId

if TYPE_CHECKING:
    from pvtunnel._trio.tunnel import Tunnel

PIECES = 2000


def tiny_chunked_request() -> bytes:
    head = b"POST /up HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"2\r\nab\r\n" * PIECES + b"0\r\n\r\n"


async def test_gather_joins_what_one_read_holds_and_yields_after_many_pieces() -> None:
    client, server = trio.testing.memory_stream_pair()
    http = H11Stream(h11.Connection(h11.SERVER), server)
    await client.send_all(tiny_chunked_request())
    assert isinstance(await http.next_event(), h11.Request)
    first = await http.next_event()
    assert isinstance(first, h11.Data)
    with trio.testing.assert_checkpoints():  # other tasks run while the pieces are joined
        data, pending = await http.gather(first.data)
    assert (data, pending) == (b"ab" * GATHER_PIECES, None)
    body = bytearray(data)
    batches = 1
    while True:
        event = pending if pending is not None else await http.next_event()
        if isinstance(event, h11.EndOfMessage):
            break
        assert isinstance(event, h11.Data)
        data, pending = await http.gather(event.data)
        body += data
        batches += 1
    assert bytes(body) == b"ab" * PIECES
    assert batches == -(-PIECES // GATHER_PIECES)


async def test_gather_of_a_lone_piece_passes_it_on_without_a_yield() -> None:
    client, server = trio.testing.memory_stream_pair()
    http = H11Stream(h11.Connection(h11.SERVER), server)
    await client.send_all(b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello")
    assert isinstance(await http.next_event(), h11.Request)
    event = await http.next_event()
    assert isinstance(event, h11.Data)
    with trio.testing.assert_no_checkpoints():
        data, following = await http.gather(event.data)
    assert (data, type(following)) == (b"hello", h11.EndOfMessage)


def test_small_body_pieces_wait_joined_and_come_out_as_bytes() -> None:
    """Credit counts payload bytes only: 2-byte DATA frames queued one by one would
    make the inbox hold some 25 times the window."""
    channel = Channel(cast("Tunnel", None), StreamId(1))
    for _ in range(1000):
        channel.deliver_data(b"ab")
    channel.deliver_data(b"x" * 8192)  # a big piece is queued as it is
    channel.deliver_data(b"cd")
    assert len(channel._inbox) == 3
    first = channel.receive_nowait()
    assert type(first) is bytes
    assert first == b"ab" * 1000
    assert channel.receive_nowait() == b"x" * 8192
    assert channel.receive_nowait() == b"cd"
