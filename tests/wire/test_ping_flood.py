"""PONGs the peer does not read are bounded (issue 20: the ping flood).

A peer may send PINGs without reading the answers; each one queues a PONG until
`data_to_send` takes it. Past `MAX_QUEUED_PONGS` waiting PONGs the peer is in
breach and the connection is closed, so the queue never grows without bound.
"""

from __future__ import annotations

import pytest

from pvtunnel._errors import RemoteProtocolError
from pvtunnel._wire import frames as fr
from pvtunnel._wire.mux import MAX_QUEUED_PONGS
from tests.wire.helpers import decode_all, opened_pair

PING = fr.encode(fr.Ping(payload=b"\x00" * 8))
PONG_BYTES = len(fr.encode(fr.Pong(payload=b"\x00" * 8)))


def test_pings_past_the_cap_of_unread_pongs_close_the_connection() -> None:
    pair = opened_pair()
    events = pair.server.receive_data(PING * MAX_QUEUED_PONGS)
    assert len(events) == MAX_QUEUED_PONGS
    with pytest.raises(RemoteProtocolError, match="PING flood"):
        pair.server.receive_data(PING)
    with pytest.raises(RemoteProtocolError):  # poisoned
        pair.server.receive_data(b"")


def test_pongs_taken_for_sending_make_room_again() -> None:
    pair = opened_pair()
    for _ in range(3):
        pair.server.receive_data(PING * MAX_QUEUED_PONGS)
        frames = decode_all(pair.server.data_to_send())
        assert frames == [fr.Pong(payload=b"\x00" * 8)] * MAX_QUEUED_PONGS


def test_a_partial_drain_frees_only_the_pongs_it_took() -> None:
    pair = opened_pair()
    stream_id = pair.open()
    pair.server.send_data(stream_id, b"x" * 100)  # a DATA frame ahead of the PONGs
    pair.server.receive_data(PING * MAX_QUEUED_PONGS)
    # Take the DATA frame and ten PONGs: ten PINGs more fit, the eleventh does not.
    taken = pair.server.data_to_send(fr.HEADER_SIZE + 100 + 10 * PONG_BYTES)
    assert decode_all(taken)[1:] == [fr.Pong(payload=b"\x00" * 8)] * 10
    pair.server.receive_data(PING * 10)
    with pytest.raises(RemoteProtocolError, match="PING flood"):
        pair.server.receive_data(PING)
