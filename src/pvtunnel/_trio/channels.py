"""What a request's replay needs of its stream: the part of `Channel` it uses.

A tunnel stream's `Channel` is one; the inspector's recording and replay
channels (`pvtunnel._trio.inspector`) are others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pvtunnel._errors import ErrorCode
    from pvtunnel._trio.stream import InboxItem
    from pvtunnel._wire.frames import StreamId
    from pvtunnel._wire.heads import ResponseHead


class StreamChannel(Protocol):
    @property
    def stream_id(self) -> StreamId: ...

    async def receive(self) -> InboxItem: ...

    def consume(self, size: int) -> None: ...

    async def send_data(self, data: bytes) -> None: ...

    def send_response(self, head: ResponseHead) -> None: ...

    def end(self) -> None: ...

    def reset(self, code: ErrorCode, reason: str = "") -> None: ...

    def connection_short(self) -> bool: ...
