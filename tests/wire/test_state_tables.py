"""Every (state, input) pair of both state machines in states.py, through the public API.

Each pair either moves to the state protocol.md sections 5 and 6 name, or raises the
documented error and changes nothing (a local command) or poisons the connection (a
received frame). The expected tables are written out here, and also read out of
protocol.md and compared with the code's, so neither can change alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from pvtunnel._errors import LocalProtocolError, RemoteProtocolError
from pvtunnel._wire import frames as fr
from pvtunnel._wire.frames import StreamId
from pvtunnel._wire.mux import Multiplexer, Role
from pvtunnel._wire.states import (
    CONNECTION_TRANSITIONS,
    HALF_TRANSITIONS,
    ConnectionState,
    Half,
    Move,
)
from tests.wire.golden import PROTOCOL_MD
from tests.wire.helpers import CONTINUE, OK, MuxPair, opened_pair

C = ConnectionState
CONNECTION_TABLE = {
    (C.START, "send HELLO"): C.HELLO_SENT,
    (C.AWAIT_HELLO, "receive HELLO"): C.HELLO_RECEIVED,
    (C.HELLO_RECEIVED, "send ACCEPT"): C.OPEN,
    (C.HELLO_RECEIVED, "send REJECT"): C.CLOSED,
    (C.HELLO_SENT, "receive ACCEPT"): C.OPEN,
    (C.HELLO_SENT, "receive REJECT"): C.CLOSED,
}
HALF_TABLE = {
    (Half.IDLE, Move.HEAD): Half.OPEN,
    (Half.IDLE, Move.INFORMATIONAL_HEAD): Half.IDLE,
    (Half.OPEN, Move.DATA): Half.OPEN,
    (Half.OPEN, Move.END): Half.CLOSED,
}


def _doc_rows(heading: str) -> list[tuple[str, str, str]]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| ([A-Z_]+) \| ([^|]+?) \| ([A-Z_]+) \|$", section, re.MULTILINE)
    assert rows, f"no state table under {heading}"
    return rows


def test_protocol_md_connection_table_is_the_codes() -> None:
    documented = {
        (ConnectionState[state], move): ConnectionState[to]
        for state, move, to in _doc_rows("## 5. Connection")
    }
    assert documented == CONNECTION_TABLE
    # The code's inputs are spelled "send-hello"; the document's "send HELLO".
    code: dict[tuple[ConnectionState, str], ConnectionState] = {}
    for (state, what), to in CONNECTION_TRANSITIONS.items():
        verb, frame = what.value.split("-")
        code[state, f"{verb} {frame.upper()}"] = to
    assert code == CONNECTION_TABLE


def test_protocol_md_half_table_is_the_codes() -> None:
    moves = {
        "HEAD": Move.HEAD,
        "INFORMATIONAL HEAD": Move.INFORMATIONAL_HEAD,
        "DATA": Move.DATA,
        "END": Move.END,
    }
    documented = {
        (Half[state], moves[move]): Half[to] for state, move, to in _doc_rows("## 6. Streams")
    }
    assert documented == HALF_TABLE == HALF_TRANSITIONS


# -- the connection machine -----------------------------------------------------------

HELLO = fr.encode(
    fr.Hello(versions=(1,), client_id="a", routes=(), window=10, connection_window=20)
)
ACCEPT = fr.encode(fr.Accept(version=1, refused=(), window=10, connection_window=20))
REJECT = fr.encode(fr.Reject(reason="no"))


def _agent(*steps: Callable[[Multiplexer], object]) -> Callable[[], Multiplexer]:
    def build() -> Multiplexer:
        mux = Multiplexer(Role.AGENT)
        for step in steps:
            step(mux)
        return mux

    return build


def _server(*steps: Callable[[Multiplexer], object]) -> Callable[[], Multiplexer]:
    def build() -> Multiplexer:
        mux = Multiplexer(Role.SERVER)
        for step in steps:
            step(mux)
        return mux

    return build


def _hello(mux: Multiplexer) -> None:
    mux.send_hello(client_id="a", routes=())


def _broken(mux: Multiplexer) -> None:
    with pytest.raises(RemoteProtocolError):
        mux.receive_data(b"\xff" * 10)


# Every state each role can reach, and how.
REACHABLE: dict[str, tuple[ConnectionState, Callable[[], Multiplexer]]] = {
    "agent-start": (C.START, _agent()),
    "agent-hello-sent": (C.HELLO_SENT, _agent(_hello)),
    "agent-open": (C.OPEN, _agent(_hello, lambda m: m.receive_data(ACCEPT))),
    "agent-rejected": (C.CLOSED, _agent(_hello, lambda m: m.receive_data(REJECT))),
    "agent-broken": (C.CLOSED, _agent(_broken)),
    "server-await-hello": (C.AWAIT_HELLO, _server()),
    "server-hello-received": (C.HELLO_RECEIVED, _server(lambda m: m.receive_data(HELLO))),
    "server-open": (C.OPEN, _server(lambda m: m.receive_data(HELLO), lambda m: m.accept())),
    "server-rejected": (
        C.CLOSED,
        _server(lambda m: m.receive_data(HELLO), lambda m: m.reject("no")),
    ),
}
INPUTS: dict[str, Callable[[Multiplexer], object]] = {
    "send HELLO": _hello,
    "send ACCEPT": lambda m: m.accept(),
    "send REJECT": lambda m: m.reject("no"),
    "receive HELLO": lambda m: m.receive_data(HELLO),
    "receive ACCEPT": lambda m: m.receive_data(ACCEPT),
    "receive REJECT": lambda m: m.receive_data(REJECT),
}


def test_every_state_is_reachable() -> None:
    assert {state for state, _ in REACHABLE.values()} == set(ConnectionState)


@pytest.mark.parametrize("what", sorted(INPUTS))
@pytest.mark.parametrize("where", sorted(REACHABLE))
def test_connection_pair(where: str, what: str) -> None:
    state, build = REACHABLE[where]
    mux = build()
    assert mux.state is state
    mux.data_to_send()
    expected = CONNECTION_TABLE.get((state, what))
    if expected is not None:
        INPUTS[what](mux)
        assert mux.state is expected
    elif what.startswith("send"):
        with pytest.raises(LocalProtocolError):
            INPUTS[what](mux)
        assert mux.state is state  # a refused command changes nothing
        assert not mux.has_data_to_send
    else:
        with pytest.raises(RemoteProtocolError):
            INPUTS[what](mux)
        assert mux.state is ConnectionState.CLOSED


# -- the half machine -----------------------------------------------------------------

Setup = Callable[[MuxPair, StreamId], None]


def _nothing(pair: MuxPair, stream_id: StreamId) -> None:
    pass


def _respond(pair: MuxPair, stream_id: StreamId) -> None:
    pair.agent.send_response(stream_id, OK)
    pair.to_server()


def _respond_and_end(pair: MuxPair, stream_id: StreamId) -> None:
    pair.agent.send_response(stream_id, OK)
    pair.agent.end_stream(stream_id)
    pair.to_server()


def _end_request(pair: MuxPair, stream_id: StreamId) -> None:
    pair.server.end_stream(stream_id)
    pair.to_agent()


# (side, half state) -> how to get there while the stream's other half stays open, so
# that no move can finish the stream and hide the half's state.
HALVES: dict[tuple[str, Half], Setup] = {
    ("agent-local", Half.IDLE): _nothing,
    ("agent-local", Half.OPEN): _respond,
    ("agent-local", Half.CLOSED): _respond_and_end,
    ("server-local", Half.OPEN): _nothing,
    ("server-local", Half.CLOSED): _end_request,
    ("server-remote", Half.IDLE): _nothing,
    ("server-remote", Half.OPEN): _respond,
    ("server-remote", Half.CLOSED): _respond_and_end,
    ("agent-remote", Half.OPEN): _nothing,
    ("agent-remote", Half.CLOSED): _end_request,
}


def _local_move(pair: MuxPair, side: str, stream_id: StreamId, move: Move) -> None:
    mux = pair.agent if side == "agent-local" else pair.server
    match move:
        case Move.HEAD:
            mux.send_response(stream_id, OK)
        case Move.INFORMATIONAL_HEAD:
            mux.send_response(stream_id, CONTINUE)
        case Move.DATA:
            mux.send_data(stream_id, b"x")
        case Move.END:
            mux.end_stream(stream_id)


def _remote_move(pair: MuxPair, side: str, stream_id: StreamId, move: Move) -> None:
    mux = pair.agent if side == "agent-remote" else pair.server
    frame: fr.Frame
    match move:
        case Move.HEAD:
            frame = fr.Head(stream_id=stream_id, fields=tuple(OK.to_fields()))
        case Move.INFORMATIONAL_HEAD:
            frame = fr.Head(
                stream_id=stream_id, fields=tuple(CONTINUE.to_fields()), is_informational=True
            )
        case Move.DATA:
            frame = fr.Data(stream_id=stream_id, data=b"x")
        case Move.END:
            frame = fr.End(stream_id=stream_id)
    mux.receive_data(fr.encode(frame))


def _half(pair: MuxPair, side: str, stream_id: StreamId) -> Half:
    # Reading the private stream record is the only way to see a half's state; the
    # test never writes to it.
    mux = pair.agent if side.startswith("agent") else pair.server
    stream = mux._streams[stream_id]
    return stream.local if side.endswith("local") else stream.remote


def test_every_half_state_is_reachable_on_every_side_that_has_it() -> None:
    assert {half for _, half in HALVES} == set(Half)


@pytest.mark.parametrize("move", list(Move))
@pytest.mark.parametrize(("side", "half"), sorted(HALVES, key=str))
def test_half_pair(side: str, half: Half, move: Move) -> None:
    pair = opened_pair()
    stream_id = pair.open()
    HALVES[side, half](pair, stream_id)
    assert _half(pair, side, stream_id) is half
    expected = HALF_TABLE.get((half, move))
    is_local = side.endswith("local")
    if expected is not None:
        (_local_move if is_local else _remote_move)(pair, side, stream_id, move)
        assert _half(pair, side, stream_id) is expected
    elif is_local:
        with pytest.raises(LocalProtocolError):
            _local_move(pair, side, stream_id, move)
        assert _half(pair, side, stream_id) is half
    else:
        with pytest.raises(RemoteProtocolError):
            _remote_move(pair, side, stream_id, move)
