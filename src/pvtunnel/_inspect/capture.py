"""The inspector's ring buffer of exchanges, bounded by count and by bytes.

Each request the agent replays becomes an `Exchange`: its heads, its timing and a
preview of each body, cut at ``max_body_bytes`` and marked as cut. A `Capture`
keeps at most ``max_requests`` of them and at most ``max_bytes`` of heads and
previews in all; the oldest go first, even while still open (an evicted exchange
lets go of its previews and keeps no more, so a long upload cannot grow past the
bound either).

Streams that stop being request/response (CONNECT, an upgrade after 101, an
event stream) are recorded with their byte counts but without their bodies:
their bytes are a conversation, not a document, and may never end.

Never kept: ``Proxy-Authorization`` (the server's external token) and any header
value that contains one of the agent's own secrets (its tunnel token, its admin
token), in clear or inside HTTP Basic credentials; such values read
``[redacted]``, and so do those secrets where a body preview holds them.
``Authorization`` and ``Cookie`` are kept otherwise, since they are the
developer's own, and the page masks them until clicked.

Plain Python: the Trio layer feeds it and the admin listener renders it.
"""

from __future__ import annotations

import base64
import collections
import enum
import time
from typing import TYPE_CHECKING, Final

from pvtunnel._http import headers as hdr
from pvtunnel._http.access import basic_credentials

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from pvtunnel._config import InspectConfig
    from pvtunnel._wire.heads import Headers, RequestHead, ResponseHead

REDACTED: Final = b"[redacted]"
# What an exchange costs in memory beyond its bytes, charged against ``max_bytes``
# with them (measured with tracemalloc on CPython 3.11): the exchange's own objects
# and previews, about 1.5 KiB, so that many bodiless requests still count; and
# per header field its tuple and two bytes objects, about 130 bytes, so that a head
# of thousands of tiny fields (a client may send 7,000 of them in 32 KiB) is
# charged what it holds, not its few bytes of text.
ENTRY_OVERHEAD_BYTES: Final = 2048
FIELD_OVERHEAD_BYTES: Final = 128
_NEVER_CAPTURED: Final = frozenset({b"proxy-authorization"})
_STREAMING_TYPES: Final = (b"text/event-stream", b"multipart/x-mixed-replace")


class Kind(enum.Enum):
    """What sort of stream an exchange turned out to be."""

    HTTP = "http"
    STREAMING = "streaming"
    UPGRADE = "upgrade"
    CONNECT = "connect"


class State(enum.Enum):
    OPEN = "open"
    DONE = "done"
    FAILED = "failed"


Event = tuple[str, "Exchange"]
"""What listeners hear: ``("exchange", e)`` when it starts, changes or ends, and
``("removed", e)`` when the ring lets it go."""


def captured_headers(headers: Iterable[tuple[bytes, bytes]], secrets: tuple[bytes, ...]) -> Headers:
    """``headers`` as the inspector may keep them: see the module docstring."""
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name.lower() in _NEVER_CAPTURED:
            continue
        if any(secret in value for secret in secrets) or _basic_holds_secret(value, secrets):
            value = REDACTED
        kept.append((name, value))
    return tuple(kept)


def _basic_holds_secret(value: bytes, secrets: tuple[bytes, ...]) -> bool:
    """Whether ``value`` is HTTP Basic credentials (``Basic <base64>``) with a secret
    in them: the way a browser sends the admin token to the inspector's own page,
    which a route may well lead to, in base64 where a plain search misses it."""
    decoded = basic_credentials(value) if secrets else None
    return decoded is not None and any(secret in decoded for secret in secrets)


def _headers_size(headers: Headers) -> int:
    text = sum(len(name) + len(value) for name, value in headers)
    return text + FIELD_OVERHEAD_BYTES * len(headers)


class BodyPreview:
    """The first ``limit`` bytes of a body and how big the whole body was."""

    __slots__ = ("cut", "data", "limit", "omitted", "size")

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit
        self.size = 0
        self.cut = False
        self.omitted = False

    def add(self, chunk: bytes) -> int:
        """Count ``chunk`` and keep what fits; returns the bytes kept."""
        self.size += len(chunk)
        room = self.limit - len(self.data)
        if len(chunk) <= room:
            self.data += chunk
            return len(chunk)
        if chunk:
            self.cut = True
        if room <= 0:
            return 0
        self.data += chunk[:room]
        return room

    def omit(self) -> int:
        """Keep nothing from now on (a stream, not a document); returns bytes freed."""
        freed = len(self.data)
        self.data = bytearray()
        self.limit = 0
        self.omitted = True
        return freed

    def release(self) -> None:
        """Let go of what is kept (the exchange left the ring): later bytes are only counted.

        Nothing shows an exchange once it has left, and an open one may stay open
        long after (an upload, a slow answer): what it held would be held outside
        ``max_bytes``, up to two previews for each such stream.
        """
        self.data = bytearray()
        self.limit = 0

    def document(self, secrets: tuple[bytes, ...] = ()) -> dict[str, object]:
        """The preview as the API shows it, with any of ``secrets`` in it redacted."""
        data = redacted(bytes(self.data), secrets)
        if self.cut:
            data = _without_cut_secret(data, secrets)
        return {
            "size": self.size,
            "cut": self.cut,
            "omitted": self.omitted,
            "base64": base64.b64encode(data).decode("ascii"),
        }


def _without_cut_secret(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``data`` (a preview cut short) without the start of a secret the cut went through."""
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(data)), 0, -1):
            if data.endswith(secret[:size]):
                return data[:-size] + REDACTED
    return data


def redacted(text: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``text`` with each of ``secrets`` in it replaced."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


class Exchange:
    """One request the agent replayed (or the inspector replayed), as it goes.

    The recording channel calls the ``request_*``/``response_*`` methods as bytes
    pass; everything else reads it.
    """

    def __init__(
        self,
        capture: Capture,
        exchange_id: int,
        head: RequestHead,
        headers: Headers,
        *,
        replay_of: int | None,
    ) -> None:
        limit = capture.max_body_bytes
        self._capture = capture
        self.id = exchange_id
        self.replay_of = replay_of
        self.time = time.time()
        self._started = time.perf_counter()
        self.route = head.route
        self.method = head.method
        # A token may come in the query string too (a webhook's URL, a mistake).
        self.target = redacted(head.target, capture.secrets)
        self.request_headers = headers
        self.host = next((value for name, value in headers if name.lower() == b"host"), b"")
        self.kind = Kind.CONNECT if head.method == b"CONNECT" else Kind.HTTP
        self.state = State.OPEN
        self.error: str | None = None
        self.status: int | None = None
        self.reason = b""
        self.response_headers: Headers = ()
        self.response_head_ms: float | None = None
        self.duration_ms: float | None = None
        self.request_body = BodyPreview(limit)
        self.response_body = BodyPreview(limit)
        # Whether the request's body reached its end (a bodiless one has: see
        # `request_complete`); a replay of one that did not would send it cut short.
        self.request_ended = False
        self.is_kept = True
        self.size = ENTRY_OVERHEAD_BYTES + len(head.target) + _headers_size(headers)
        if self.kind is Kind.CONNECT:
            self.request_body.omit()
            self.response_body.omit()

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._started) * 1000, 3)

    def request_data(self, chunk: bytes) -> None:
        kept = self.request_body.add(chunk)
        if kept:
            self._capture.grew(self, kept)

    def response_data(self, chunk: bytes) -> None:
        kept = self.response_body.add(chunk)
        if kept:
            self._capture.grew(self, kept)

    def response_head(self, head: ResponseHead) -> None:
        """Record the final head (1xx other than 101 are passed over)."""
        if head.is_informational:
            return
        headers = captured_headers(head.headers, self._capture.secrets)
        self.status = head.status
        self.reason = head.reason
        self.response_headers = headers
        self.response_head_ms = self._elapsed_ms()
        if head.status == 101:
            self.kind = Kind.UPGRADE
        elif any(
            name.lower() == b"content-type" and value.lower().startswith(_STREAMING_TYPES)
            for name, value in head.headers
        ):
            self.kind = Kind.STREAMING
        freed = 0
        if self.kind is Kind.UPGRADE:
            # After the switch both ways carry a conversation, not a document.
            freed = self.request_body.omit() + self.response_body.omit()
        elif self.kind is Kind.STREAMING:
            # Only the answer streams: the request is still one to show and replay.
            freed = self.response_body.omit()
        self._capture.grew(self, _headers_size(headers) - freed)
        self._capture.publish(self)

    def request_end(self) -> None:
        """The request's body reached its end."""
        self.request_ended = True

    @property
    def request_complete(self) -> bool:
        """Whether the whole request is recorded: its body ended (or it had none)
        and the preview holds all of it."""
        body = self.request_body
        if body.cut or body.omitted:
            return False
        headers = self.request_headers
        # As the server decided it: a body follows if chunked or of a length above 0.
        declares_body = hdr.is_chunked(headers) or bool(hdr.content_length(headers))
        return self.request_ended or not declares_body

    def failed(self, reason: str) -> None:
        """The stream was reset (by us or the server); the first reason stays."""
        if self.error is None:
            self.error = reason

    def finish(self) -> None:
        """The stream is over: stamp the duration and tell the listeners."""
        if self.state is not State.OPEN:
            return
        self.duration_ms = self._elapsed_ms()
        complete = self.error is None and self.status is not None
        self.state = State.DONE if complete else State.FAILED
        if self.status is None and self.error is None:
            self.error = "no response"
        self._capture.publish(self)

    def leave(self) -> None:
        """The ring let go of this exchange: from now on it only counts bytes."""
        self.is_kept = False
        self.request_body.release()
        self.response_body.release()

    def summary(self) -> dict[str, object]:
        """The list entry: the fields `GET /inspect/api/requests` documents."""
        return {
            "id": self.id,
            "time": _iso(self.time),
            "route": self.route,
            "method": _text(self.method),
            "target": _text(self.target),
            "host": _text(self.host),
            "status": self.status,
            "duration_ms": self.duration_ms,
            "request_bytes": self.request_body.size,
            "response_bytes": self.response_body.size,
            "replay_of": self.replay_of,
            "kind": self.kind.value,
            "state": self.state.value,
            "error": self.error,
        }

    def detail(self) -> dict[str, object]:
        """The summary plus both heads, both body previews and the timing."""
        return {
            **self.summary(),
            "request": {
                "headers": _header_list(self.request_headers),
                "body": self.request_body.document(self._capture.secrets),
            },
            "response": {
                "status": self.status,
                "reason": _text(self.reason),
                "headers": _header_list(self.response_headers),
                "body": self.response_body.document(self._capture.secrets),
            },
            "timing": {"response_head_ms": self.response_head_ms, "duration_ms": self.duration_ms},
        }


def _text(value: bytes) -> str:
    # Header bytes are ISO-8859-1 by RFC 9110 section 5.5; any byte maps to a character.
    return value.decode("latin-1")


def _header_list(headers: Headers) -> list[list[str]]:
    return [[_text(name), _text(value)] for name, value in headers]


def _iso(wall: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    return f"{seconds}.{int(wall % 1 * 1000):03d}Z"


class Capture:
    """The ring buffer: newest last, bounded by ``max_requests`` and ``max_bytes``.

    Args:
        config: The ``[inspect]`` table (bounds).
        secrets: Values no captured header may contain (the agent's tokens).
    """

    def __init__(self, config: InspectConfig, secrets: Iterable[bytes] = ()) -> None:
        self.max_requests = config.max_requests
        self.max_bytes = config.max_bytes
        self.max_body_bytes = config.max_body_bytes
        self.secrets = tuple(secret for secret in secrets if secret)
        self.bytes = 0
        self._exchanges: collections.OrderedDict[int, Exchange] = collections.OrderedDict()
        self._next_id = 1
        self._listeners: list[Callable[[Event], None]] = []

    def __len__(self) -> int:
        return len(self._exchanges)

    def begin(self, head: RequestHead, *, replay_of: int | None = None) -> Exchange:
        """Start recording a request; it is listed at once, as open."""
        headers = captured_headers(head.headers, self.secrets)
        exchange = Exchange(self, self._next_id, head, headers, replay_of=replay_of)
        self._next_id += 1
        self._exchanges[exchange.id] = exchange
        self.bytes += exchange.size
        while len(self._exchanges) > self.max_requests:
            self._evict_oldest()
        self._fit()
        self.publish(exchange)
        return exchange

    def grew(self, exchange: Exchange, size: int) -> None:
        """An exchange kept ``size`` more bytes (negative: freed some)."""
        if not exchange.is_kept:
            return
        exchange.size += size
        self.bytes += size
        self._fit()

    def _fit(self) -> None:
        while self.bytes > self.max_bytes and self._exchanges:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, exchange = self._exchanges.popitem(last=False)
        self.bytes -= exchange.size
        exchange.leave()
        self._tell(("removed", exchange))

    def publish(self, exchange: Exchange) -> None:
        if exchange.is_kept:
            self._tell(("exchange", exchange))

    def _tell(self, event: Event) -> None:
        for listener in tuple(self._listeners):
            listener(event)

    def get(self, exchange_id: int) -> Exchange | None:
        return self._exchanges.get(exchange_id)

    def newest_first(self) -> Iterator[Exchange]:
        return reversed(self._exchanges.values())

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` on every event until the returned function is called."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)
