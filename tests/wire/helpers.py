"""Two multiplexers joined back to back, and small builders for hand-made frames."""

from __future__ import annotations

from typing import Final

from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.endpoint import DEFAULT_CONNECTION_WINDOW
from pvtunnel._wire.frames import FrameDecoder, StreamId
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer, Role

GET: Final = RequestHead(route="app", method=b"GET", target=b"/", headers=((b"host", b"app"),))
OK: Final = ResponseHead(status=200, reason=b"OK")
CONTINUE: Final = ResponseHead(status=100, reason=b"Continue")


class MuxPair:
    """A server-side and an agent-side `Multiplexer` that only talk to each other.

    Bytes move only when a test calls `to_agent` or `to_server`, so a test can hold
    frames in flight to build races (a RESET crossing DATA, a GOAWAY crossing a HEAD).
    """

    def __init__(
        self,
        *,
        server_window: int = 1024,
        agent_window: int = 1024,
        server_connection_window: int = DEFAULT_CONNECTION_WINDOW,
        agent_connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_streams: int = 16,
    ) -> None:
        self.server = Multiplexer(
            Role.SERVER, window=server_window, connection_window=server_connection_window
        )
        self.agent = Multiplexer(
            Role.AGENT,
            window=agent_window,
            connection_window=agent_connection_window,
            max_streams=max_streams,
        )

    def to_agent(self) -> list[ev.Event]:
        """Deliver everything the server has queued; the agent's events."""
        return self.agent.receive_data(self.server.data_to_send())

    def to_server(self) -> list[ev.Event]:
        """Deliver everything the agent has queued; the server's events."""
        return self.server.receive_data(self.agent.data_to_send())

    def handshake(
        self, *, routes: tuple[str, ...] = ("app",), refused: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.agent.send_hello(client_id="agent-1", routes=routes)
        assert self.to_server() == [ev.HelloReceived(client_id="agent-1", routes=routes)]
        self.server.accept(refused=refused)
        assert self.to_agent() == [ev.Accepted(refused=refused)]

    def open(self, head: RequestHead = GET, *, end_stream: bool = False) -> StreamId:
        """Open a stream and deliver its HEAD (and END) to the agent."""
        stream_id = self.server.open_stream(head, end_stream=end_stream)
        expected: list[ev.Event] = [ev.StreamOpened(stream_id=stream_id, head=head)]
        if end_stream:
            expected.append(ev.StreamEnded(stream_id=stream_id))
        assert self.to_agent() == expected
        return stream_id


def opened_pair(**kwargs: int) -> MuxPair:
    pair = MuxPair(**kwargs)
    pair.handshake()
    return pair


def decode_all(data: bytes) -> list[fr.Frame]:
    """Decode bytes that must be whole, valid frames."""
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.buffered_bytes == 0
    return frames


def raw_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    return fr.HEADER.pack(frame_type, flags, stream_id, length)


def raw_frame(frame_type: int, stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    """A frame built by hand, bypassing `encode`'s checks (a misbehaving peer)."""
    return raw_header(frame_type, flags, stream_id, len(payload)) + payload
