"""The multiplexer's two state machines (protocol.md sections 5 and 6).

Both are tables from ``(state, input)`` to the next state; a pair missing from a
table is a protocol error.

* The connection (section 5): the agent sends HELLO, the server answers ACCEPT
  or REJECT; streams exist only once the connection is OPEN.
* Each stream is two independent halves, one per direction (section 6). A half
  goes IDLE -HEAD-> OPEN -END-> CLOSED, stays IDLE on an informational HEAD
  (1xx before the final response) and carries DATA only while OPEN. RESET drops
  both halves at once. A stream is forgotten as soon as both halves are CLOSED.

Who moves which machine when is the multiplexer's business (sending.py for its
commands, mux.py for the peer's frames); the helpers here only look the move up
and say which side broke the protocol.
"""

from __future__ import annotations

import enum
from typing import Final

from pvtunnel._errors import LocalProtocolError, RemoteProtocolError


class _StateEnum(enum.Enum):
    """Members hash by identity, in C: Enum's own ``__hash__`` is Python code, and
    the state tables below look members up for every frame sent or received."""

    __hash__ = object.__hash__


class Role(_StateEnum):
    SERVER = "server"
    AGENT = "agent"


class ConnectionState(_StateEnum):
    START = "start"  # agent before its HELLO
    AWAIT_HELLO = "await-hello"  # server before the agent's HELLO
    HELLO_SENT = "hello-sent"
    HELLO_RECEIVED = "hello-received"
    OPEN = "open"
    CLOSED = "closed"


class ConnectionInput(_StateEnum):
    SEND_HELLO = "send-hello"
    RECEIVE_HELLO = "receive-hello"
    SEND_ACCEPT = "send-accept"
    RECEIVE_ACCEPT = "receive-accept"
    SEND_REJECT = "send-reject"
    RECEIVE_REJECT = "receive-reject"


CONNECTION_TRANSITIONS: Final = {
    (ConnectionState.START, ConnectionInput.SEND_HELLO): ConnectionState.HELLO_SENT,
    (ConnectionState.AWAIT_HELLO, ConnectionInput.RECEIVE_HELLO): ConnectionState.HELLO_RECEIVED,
    (ConnectionState.HELLO_RECEIVED, ConnectionInput.SEND_ACCEPT): ConnectionState.OPEN,
    (ConnectionState.HELLO_RECEIVED, ConnectionInput.SEND_REJECT): ConnectionState.CLOSED,
    (ConnectionState.HELLO_SENT, ConnectionInput.RECEIVE_ACCEPT): ConnectionState.OPEN,
    (ConnectionState.HELLO_SENT, ConnectionInput.RECEIVE_REJECT): ConnectionState.CLOSED,
}


class Half(_StateEnum):
    IDLE = "idle"
    OPEN = "open"
    CLOSED = "closed"


class Move(_StateEnum):
    HEAD = "head"
    INFORMATIONAL_HEAD = "informational-head"
    DATA = "data"
    END = "end"


HALF_TRANSITIONS: Final = {
    (Half.IDLE, Move.HEAD): Half.OPEN,
    (Half.IDLE, Move.INFORMATIONAL_HEAD): Half.IDLE,
    (Half.OPEN, Move.DATA): Half.OPEN,
    (Half.OPEN, Move.END): Half.CLOSED,
}


class StreamState:
    """Per-stream bookkeeping; private and mutable, never handed out.

    ``held`` is DATA received and not yet acknowledged; ``unreturned`` is DATA
    acknowledged and not yet returned in a WINDOW.
    """

    __slots__ = ("held", "local", "receive_allowed", "remote", "send_credit", "unreturned")

    def __init__(self, local: Half, remote: Half, send_credit: int, receive_allowed: int) -> None:
        self.local = local
        self.remote = remote
        self.send_credit = send_credit
        self.receive_allowed = receive_allowed
        self.held = 0
        self.unreturned = 0


def move_connection(
    state: ConnectionState, what: ConnectionInput, *, local: bool
) -> ConnectionState:
    """The connection's next state; raises (as ``local`` says) for a missing pair."""
    next_state = CONNECTION_TRANSITIONS.get((state, what))
    if next_state is None:
        message = f"{what.value} while the connection is {state.value}"
        raise LocalProtocolError(message) if local else RemoteProtocolError(message)
    return next_state


def move_half(stream: StreamState, side: str, move: Move) -> None:
    """Move the stream's ``"local"`` or ``"remote"`` half; a missing pair raises
    `LocalProtocolError` or `RemoteProtocolError` by side and changes nothing."""
    current: Half = getattr(stream, side)
    next_half = HALF_TRANSITIONS.get((current, move))
    if next_half is None:
        message = f"{move.value} on a {current.value} half"
        raise LocalProtocolError(message) if side == "local" else RemoteProtocolError(message)
    setattr(stream, side, next_half)
