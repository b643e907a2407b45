"""`Tunnel.flush_if_batched`: a bounded batch goes out at once, a small one waits.

Sending as soon as a few dozen frames are queued lets the peer start on them while
this side goes on producing; leaving smaller batches to the writer keeps the
message count low. The WebSocket here is a recorder, so what is sent, and by whom,
is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from pvtunnel._trio.tunnel import EARLY_FLUSH_PIECES, Tunnel
from pvtunnel._wire.heads import RequestHead
from tests.trio.helpers import handshaken_muxes

if TYPE_CHECKING:
    from pvtunnel._trio.websocket import WebSocket
    from pvtunnel._wire.mux import Multiplexer

GET = RequestHead(route="app", method=b"GET", target=b"/", headers=())


class RecordingWebSocket:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.sending = False  # never busy: its sends complete at once

    async def send(self, message: bytes) -> None:
        self.sent.append(message)


def _tunnel() -> tuple[Tunnel, RecordingWebSocket, Multiplexer]:
    """A server-side tunnel (not running: no writer) and its agent's multiplexer."""
    ws = RecordingWebSocket()
    server, agent = handshaken_muxes()
    return Tunnel(cast("WebSocket", ws), server), ws, agent


async def test_a_small_batch_is_left_for_the_writer() -> None:
    tunnel, ws, _ = _tunnel()
    tunnel.open_stream(GET, end_stream=True)  # HEAD and END: two pieces
    await tunnel.flush_if_batched()
    assert ws.sent == []
    assert tunnel.mux.queued_pieces == 2


async def test_a_bounded_batch_goes_out_at_once_in_one_message() -> None:
    tunnel, ws, agent = _tunnel()
    streams = EARLY_FLUSH_PIECES // 2
    for _ in range(streams - 1):
        tunnel.open_stream(GET, end_stream=True)
    await tunnel.flush_if_batched()
    assert ws.sent == []
    tunnel.open_stream(GET, end_stream=True)
    await tunnel.flush_if_batched()
    assert len(ws.sent) == 1
    assert not tunnel.mux.has_data_to_send
    # Everything queued is in that message: the peer sees every stream open and end.
    events = agent.receive_data(ws.sent[0])
    assert len(events) == 2 * streams
