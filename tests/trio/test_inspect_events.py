"""The inspector's event stream to a page that reads slowly: what it holds meanwhile.

A page is sent each event as text; a page that falls behind holds that text (one
copy for all pages), never the exchanges themselves, so the ring's memory bound
holds whatever the pages do, and a page too far behind is sent away.
"""

from __future__ import annotations

import gc
import types
import weakref
from typing import TYPE_CHECKING, cast

import h11
import trio
import trio.testing

from pvtunnel._config import InspectConfig
from pvtunnel._inspect.capture import Capture
from pvtunnel._trio.http11 import H11Stream
from pvtunnel._trio.inspect_http import EVENT_QUEUE_BYTES, _serve_events
from pvtunnel._wire.heads import RequestHead

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pvtunnel._inspect.capture import Exchange
    from pvtunnel._trio.inspector import Inspector


LIMIT_S = 10


def page_request(stream: trio.abc.Stream) -> H11Stream[trio.abc.Stream]:
    """The server's side of a page that asked for the event stream."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET /inspect/api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return H11Stream(conn, stream)


def inspector_with(capture: Capture) -> Inspector:
    return cast("Inspector", types.SimpleNamespace(capture=capture, last_event=(None, b"")))


def begin(capture: Capture, target: bytes = b"/") -> weakref.ref[Exchange]:
    head = RequestHead(route="app", method=b"GET", target=target, headers=((b"Host", b"app"),))
    return weakref.ref(capture.begin(head))


async def test_a_page_that_reads_nothing_keeps_no_exchange_alive() -> None:
    capture = Capture(InspectConfig(enabled=True, max_requests=1), secrets=())
    # A write waits for the page to read, and this page never does.
    server, _ = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_serve_events, page_request(server), inspector_with(capture))
        await trio.testing.wait_all_tasks_blocked()
        exchanges = [begin(capture) for _ in range(20)]  # each one evicts the one before
        gc.collect()
        # The ring's one, and nothing else: the page's queue holds text.
        assert [ref() is not None for ref in exchanges] == [False] * 19 + [True]
        nursery.cancel_scope.cancel()


async def test_a_page_too_far_behind_in_bytes_is_sent_away() -> None:
    capture = Capture(InspectConfig(enabled=True, max_requests=1), secrets=())
    server, page = trio.testing.lockstep_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        await _serve_events(page_request(server), inspector_with(capture))
        served.set()

    with trio.fail_after(LIMIT_S):
        await _sent_away(serve, served, page, capture)


async def _sent_away(
    serve: Callable[[], Awaitable[None]],
    served: trio.Event,
    page: trio.abc.Stream,
    capture: Capture,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await trio.testing.wait_all_tasks_blocked()
        target = b"/" + b"t" * 30000
        count = 2 * EVENT_QUEUE_BYTES // len(target)  # far fewer than the queue's count
        for _ in range(count):
            begin(capture, target)
        received = bytearray()

        async def read() -> None:
            while True:
                received.extend(await page.receive_some(1 << 20))

        nursery.start_soon(read)
        await served.wait()
        # What was queued went out; the stream then ended instead of growing.
        assert 0 < received.count(b"event: exchange") < count
        nursery.cancel_scope.cancel()


class Breaks(trio.abc.Stream):
    """A page's connection that breaks at the first write after the head's two."""

    def __init__(self) -> None:
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.writes += 1
        if self.writes > 2:
            raise trio.BrokenResourceError("reset by the page")

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_page_that_breaks_its_connection_ends_its_stream_quietly() -> None:
    # The break came out of the stream's nursery wrapped in an exception group, past
    # the handler for it: the admin listener logged a traceback and tried a 500.
    capture = Capture(InspectConfig(enabled=True), secrets=())
    page = Breaks()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_events, page_request(page), inspector_with(capture))
            await trio.testing.wait_all_tasks_blocked()
            begin(capture)
    assert page.writes == 3
