"""What the peer did, as the multiplexer reports it (facts in the past tense)."""

from __future__ import annotations

import attrs

from pvtunnel._errors import ErrorCode
from pvtunnel._wire._make import positional
from pvtunnel._wire.frames import StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead


@attrs.frozen(kw_only=True)
class HelloReceived:
    """An agent introduced itself; the server must `accept` or `reject`."""

    client_id: str
    routes: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Accepted:
    """The server took this agent; ``refused`` lists routes it would not give it."""

    refused: tuple[tuple[str, str], ...]


@attrs.frozen(kw_only=True)
class Rejected:
    """The server refused this agent for good."""

    reason: str


@attrs.frozen(kw_only=True)
class StreamOpened:
    """A new request for the agent to replay."""

    stream_id: StreamId
    head: RequestHead


@attrs.frozen(kw_only=True)
class ResponseReceived:
    """A response head (or a 1xx before it) for a request the server sent."""

    stream_id: StreamId
    head: ResponseHead


@attrs.frozen(kw_only=True)
class DataReceived:
    """Body bytes; give them back with `Multiplexer.acknowledge_data` once consumed."""

    stream_id: StreamId
    data: bytes


@attrs.frozen(kw_only=True)
class StreamEnded:
    stream_id: StreamId


@attrs.frozen(kw_only=True)
class StreamReset:
    stream_id: StreamId
    code: ErrorCode
    reason: str


@attrs.frozen(kw_only=True)
class CreditGranted:
    """The peer returned credit: for one stream, or when ``stream_id`` is 0 for the
    connection, which may let every stream waiting for credit send again."""

    stream_id: StreamId
    increment: int


@attrs.frozen(kw_only=True)
class PingReceived:
    """The multiplexer has already queued the PONG."""

    payload: bytes


@attrs.frozen(kw_only=True)
class PongReceived:
    payload: bytes


@attrs.frozen(kw_only=True)
class GoAwayReceived:
    """The peer opens or accepts no stream above ``last_stream_id``; others finish."""

    last_stream_id: StreamId
    code: ErrorCode
    reason: str


# The events of every proxied request, for the multiplexer.
stream_opened = positional(StreamOpened, "stream_id", "head")
response_received = positional(ResponseReceived, "stream_id", "head")
data_received = positional(DataReceived, "stream_id", "data")
stream_ended = positional(StreamEnded, "stream_id")

Event = (
    HelloReceived
    | Accepted
    | Rejected
    | StreamOpened
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | CreditGranted
    | PingReceived
    | PongReceived
    | GoAwayReceived
)
