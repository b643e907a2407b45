"""The inspector's ring buffer: its bounds by count and bytes, body previews, redaction."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, strategies as st

from pvtunnel._config import InspectConfig
from pvtunnel._inspect.capture import (
    ENTRY_OVERHEAD_BYTES,
    FIELD_OVERHEAD_BYTES,
    REDACTED,
    Capture,
    Event,
    Exchange,
    Kind,
    State,
    captured_headers,
)
from pvtunnel._wire.heads import RequestHead, ResponseHead

TOKEN = b"tunnel-token-0123456789abcdef"


def head(
    target: bytes = b"/", *headers: tuple[bytes, bytes], method: bytes = b"GET"
) -> RequestHead:
    return RequestHead(
        route="app", method=method, target=target, headers=((b"Host", b"app"), *headers)
    )


def capture(**bounds: int) -> tuple[Capture, list[Event]]:
    ring = Capture(InspectConfig(enabled=True, **bounds), secrets=[TOKEN])
    events: list[Event] = []
    ring.subscribe(events.append)
    return ring, events


def ok(exchange: Exchange, body: bytes = b"", content_type: bytes = b"text/plain") -> None:
    exchange.response_head(ResponseHead(status=200, headers=((b"Content-Type", content_type),)))
    if body:
        exchange.response_data(body)
    exchange.finish()


def held(ring: Capture) -> list[int]:
    return [exchange.id for exchange in ring.newest_first()]


def test_an_exchange_is_listed_open_then_done_with_its_figures() -> None:
    ring, events = capture()
    exchange = ring.begin(head(b"/items?x=1", (b"Content-Length", b"5"), method=b"POST"))
    assert [(kind, e.state) for kind, e in events] == [("exchange", State.OPEN)]
    exchange.request_data(b"he")
    exchange.request_data(b"llo")
    ok(exchange, b"answer")
    summary = exchange.summary()
    assert {key: summary[key] for key in ("id", "route", "method", "target", "host")} == {
        "id": 1,
        "route": "app",
        "method": "POST",
        "target": "/items?x=1",
        "host": "app",
    }
    assert summary["status"] == 200
    assert summary["request_bytes"] == 5
    assert summary["response_bytes"] == 6
    assert summary["replay_of"] is None
    assert summary["state"] == "done"
    assert isinstance(summary["duration_ms"], float)
    assert isinstance(summary["time"], str)
    assert summary["time"].endswith("Z")
    detail = exchange.detail()
    request = detail["request"]
    assert isinstance(request, dict)
    assert base64.b64decode(request["body"]["base64"]) == b"hello"
    assert events[-1] == ("exchange", exchange)


def test_the_count_bound_drops_the_oldest() -> None:
    ring, events = capture(max_requests=3)
    for index in range(5):
        ok(ring.begin(head(b"/%d" % index)))
    assert held(ring) == [5, 4, 3]
    assert [e.id for kind, e in events if kind == "removed"] == [1, 2]
    assert ring.get(1) is None
    assert ring.get(5) is not None


def test_bodies_are_cut_at_the_preview_size_and_marked() -> None:
    ring, _ = capture(max_body_bytes=10)
    exchange = ring.begin(head())
    ok(exchange, b"0123456789abcdef")
    body = exchange.response_body
    assert bytes(body.data) == b"0123456789"
    assert body.cut
    assert body.size == 16
    uncut = ring.begin(head())
    ok(uncut, b"0123456789")
    assert not uncut.response_body.cut


def test_the_byte_bound_holds_and_drops_the_oldest() -> None:
    ring, _ = capture(max_bytes=70000, max_body_bytes=8750)
    for _ in range(10):
        exchange = ring.begin(head())
        ok(exchange, b"x" * 30000)
        assert ring.bytes <= 70000
    # Each holds an 8750-byte preview plus its heads and overhead: six fit, not seven.
    assert held(ring) == [10, 9, 8, 7, 6, 5]
    assert ring.bytes == sum(e.size for e in ring.newest_first())


def test_a_head_of_many_tiny_fields_is_charged_what_it_holds() -> None:
    """Thousands of one-byte fields are a few KiB of text but a tuple and two bytes
    objects each: the bound counts those, so such heads cannot outgrow it."""
    fields = tuple((b"a", b"") for _ in range(7000))
    ring, _ = capture(max_bytes=2 << 20)
    for _ in range(5):
        ok(ring.begin(head(b"/", *fields)))
    for exchange in ring.newest_first():
        assert exchange.size >= ENTRY_OVERHEAD_BYTES + 7000 * (1 + FIELD_OVERHEAD_BYTES)
    # About 0.9 MiB each: two fit in 2 MiB, not five.
    assert held(ring) == [5, 4]


def test_an_open_exchange_that_leaves_the_ring_lets_go_of_its_bytes() -> None:
    # Open streams outlive their place in the ring: what they held would be held
    # outside max_bytes, two previews for each.
    ring, events = capture(max_requests=1)
    upload = ring.begin(head(method=b"POST"))
    upload.request_data(b"a" * 100)
    upload.response_head(ResponseHead(status=200))
    upload.response_data(b"c" * 100)
    ok(ring.begin(head()))
    assert ("removed", upload) in events
    assert not upload.request_body.data
    assert not upload.response_body.data
    upload.request_data(b"b" * 1000)
    assert not upload.request_body.data
    assert upload.request_body.size == 1100
    ok(upload)
    assert held(ring) == [2]
    assert events[-1][1] is not upload  # a gone exchange is not announced again


def test_connect_upgrade_and_event_streams_keep_no_streamed_body() -> None:
    ring, _ = capture()
    tunnel = ring.begin(head(b"app:443", method=b"CONNECT"))
    tunnel.request_data(b"client hello")
    tunnel.response_head(ResponseHead(status=200))
    tunnel.response_data(b"server hello")
    assert tunnel.kind is Kind.CONNECT
    upgrade = ring.begin(head(b"/ws", (b"Upgrade", b"websocket")))
    upgrade.response_head(ResponseHead(status=101, headers=((b"Upgrade", b"websocket"),)))
    upgrade.response_data(b"frames")
    assert upgrade.kind is Kind.UPGRADE
    events = ring.begin(head(b"/events", (b"Content-Length", b"5"), method=b"POST"))
    events.request_data(b"query")
    events.request_end()
    ok(events, b"data: 1\n\n", content_type=b"text/event-stream")
    assert events.kind is Kind.STREAMING
    streamed = [
        *(tunnel.request_body, tunnel.response_body),
        *(upgrade.request_body, upgrade.response_body),
        events.response_body,
    ]
    for body in streamed:
        assert body.omitted
        assert body.data == b""
    # An event stream's request is a document like any other: kept, and replayable.
    assert (bytes(events.request_body.data), events.request_body.omitted) == (b"query", False)
    assert events.request_complete
    assert not tunnel.request_complete
    assert tunnel.request_body.size == 12
    assert upgrade.response_body.size == 6
    assert ring.bytes == sum(e.size for e in ring.newest_first())


def test_informational_heads_are_passed_over() -> None:
    ring, _ = capture()
    exchange = ring.begin(head())
    exchange.response_head(ResponseHead(status=100))
    assert exchange.status is None
    ok(exchange)
    assert exchange.status == 200


def test_a_failed_exchange_keeps_its_first_reason() -> None:
    ring, _ = capture()
    exchange = ring.begin(head())
    exchange.failed("UPSTREAM_CONNECT_FAILED: refused")
    exchange.failed("later")
    exchange.finish()
    assert exchange.state is State.FAILED
    assert exchange.error == "UPSTREAM_CONNECT_FAILED: refused"
    silent = ring.begin(head())
    silent.finish()
    assert silent.state is State.FAILED
    assert silent.error == "no response"


def test_proxy_authorization_and_tokens_are_never_captured() -> None:
    headers = (
        (b"Proxy-Authorization", b"Basic dTp0b2tlbg=="),
        (b"X-Leak", b"Bearer " + TOKEN),
        (b"Authorization", b"Bearer the-users-own"),
        (b"Cookie", b"session=1"),
    )
    kept = captured_headers(headers, (TOKEN,))
    assert kept == (
        (b"X-Leak", REDACTED),
        (b"Authorization", b"Bearer the-users-own"),
        (b"Cookie", b"session=1"),
    )
    ring, _ = capture()
    exchange = ring.begin(head(b"/", *headers))
    exchange.request_data(b"token=" + TOKEN)
    exchange.response_head(ResponseHead(status=200, headers=((b"Set-Cookie", TOKEN),)))
    detail = exchange.detail()
    request = detail["request"]
    assert isinstance(request, dict)
    assert base64.b64decode(request["body"]["base64"]) == b"token=" + REDACTED
    shown = repr(detail)
    assert TOKEN.decode() not in shown
    assert "dTp0b2tlbg" not in shown
    assert "the-users-own" in shown


@pytest.mark.parametrize("user", [b"", b"admin", b"a:b"])
def test_a_token_inside_basic_credentials_is_redacted(user: bytes) -> None:
    # A browser sends the admin token to the inspector's page as a Basic password,
    # and a route may lead there: base64 hides it from a plain search.
    credentials = base64.b64encode(user + b":" + TOKEN)
    headers = (
        (b"Authorization", b"Basic " + credentials),
        (b"X-Other", b"basic  " + credentials + b" "),
        (b"Authorization", b"Basic " + base64.b64encode(b"user:the-users-own")),
        (b"X-Not-Base64", b"Basic !!!"),
    )
    kept = captured_headers(headers, (TOKEN,))
    assert kept == (
        (b"Authorization", REDACTED),
        (b"X-Other", REDACTED),
        headers[2],
        headers[3],
    )
    assert captured_headers(headers[:1], ()) == headers[:1]


def test_a_token_in_the_target_is_redacted_there_too() -> None:
    ring, _ = capture()
    exchange = ring.begin(head(b"/hook?secret=" + TOKEN + b"&page=2"))
    assert exchange.target == b"/hook?secret=" + REDACTED + b"&page=2"
    assert TOKEN.decode() not in repr(exchange.summary())
    assert TOKEN.decode() not in repr(exchange.detail())


@pytest.mark.parametrize("shown", [1, 5, len(TOKEN) - 1])
def test_a_token_the_preview_cut_through_shows_none_of_itself(shown: int) -> None:
    # A preview cut at 100 bytes, a token starting ``shown`` bytes before the cut.
    ring, _ = capture(max_body_bytes=100)
    exchange = ring.begin(head(b"/", method=b"POST"))
    exchange.request_data(b"a" * (100 - shown) + TOKEN + b"tail")
    body = exchange.detail()["request"]
    assert isinstance(body, dict)
    preview = base64.b64decode(body["body"]["base64"])
    assert body["body"]["cut"] is True
    assert preview == b"a" * (100 - shown) + REDACTED


def test_a_preview_not_cut_keeps_its_ending() -> None:
    ring, _ = capture(max_body_bytes=100)
    exchange = ring.begin(head(b"/", method=b"POST"))
    exchange.request_data(b"ends with " + TOKEN[:4])  # not cut: nothing more of it came
    body = exchange.detail()["request"]
    assert isinstance(body, dict)
    assert base64.b64decode(body["body"]["base64"]) == b"ends with " + TOKEN[:4]


operations = st.lists(
    st.tuples(
        st.sampled_from(["begin", "request", "response", "head", "finish"]),
        st.integers(0, 5),
        st.integers(0, 70000),
    ),
    max_size=60,
)


@given(
    max_requests=st.integers(1, 6),
    max_bytes=st.integers(65536, 200000),
    # As a share of what the configuration allows (max_bytes / 8).
    body_share=st.integers(0, 8),
    steps=operations,
)
@example(  # streams that stay open after the ring let them go, each with a preview
    max_requests=1,
    max_bytes=65536,
    body_share=8,
    steps=[("begin", 0, 0), ("response", 0, 60000), ("begin", 0, 0), ("response", 1, 60000)],
)
def test_any_traffic_stays_within_both_bounds(
    max_requests: int, max_bytes: int, body_share: int, steps: list[tuple[str, int, int]]
) -> None:
    max_body_bytes = max_bytes // 8 * body_share // 8
    ring, _ = capture(max_requests=max_requests, max_bytes=max_bytes, max_body_bytes=max_body_bytes)
    open_exchanges: list[Exchange] = []
    for operation, pick, size in steps:
        if operation == "begin" or not open_exchanges:
            open_exchanges.append(ring.begin(head()))
            continue
        exchange = open_exchanges[pick % len(open_exchanges)]
        if operation == "request":
            exchange.request_data(b"r" * size)
        elif operation == "response":
            exchange.response_data(b"s" * size)
        elif operation == "head":
            exchange.response_head(ResponseHead(status=200, headers=((b"X", b"v" * (size % 999)),)))
        else:
            exchange.finish()
        kept = list(ring.newest_first())
        assert len(kept) <= max_requests
        assert ring.bytes <= max_bytes
        assert ring.bytes == sum(e.size for e in kept)
        for e in kept:
            assert len(e.request_body.data) <= max_body_bytes
            assert len(e.response_body.data) <= max_body_bytes
            assert e.size >= ENTRY_OVERHEAD_BYTES
        # What every exchange still open holds, in the ring or not, is within the bound.
        held = sum(len(e.request_body.data) + len(e.response_body.data) for e in open_exchanges)
        assert held <= max_bytes


@pytest.mark.parametrize(
    ("headers", "sent", "ended", "complete"),
    [
        pytest.param((), b"", False, True, id="bodiless"),
        pytest.param(((b"Content-Length", b"0"),), b"", False, True, id="content-length-0"),
        pytest.param(((b"Content-Length", b"4"),), b"body", True, True, id="whole"),
        pytest.param(((b"Content-Length", b"16"),), b"body", False, False, id="broken-off"),
        pytest.param(((b"Transfer-Encoding", b"chunked"),), b"", False, False, id="no-chunk-yet"),
    ],
)
def test_a_request_is_complete_once_its_body_ended(
    headers: tuple[tuple[bytes, bytes], ...], sent: bytes, ended: bool, complete: bool
) -> None:
    ring, _ = capture()
    exchange = ring.begin(head(b"/", *headers, method=b"POST"))
    if sent:
        exchange.request_data(sent)
    if ended:
        exchange.request_end()
    exchange.failed("client request body broke off")
    exchange.finish()
    assert exchange.request_complete is complete
