"""The Max-Forwards rules as pure functions (RFC 9110 sections 7.6.2 and 9.3.8)."""

from __future__ import annotations

import pytest

from pvtunnel._http.max_forwards import decremented, final_answer, remaining_forwards


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        (b"OPTIONS", [(b"Max-Forwards", b"0")], 0),
        (b"TRACE", [(b"MAX-FORWARDS", b"12")], 12),
        (b"TRACE", [(b"max-forwards", b"007")], 7),
        (b"OPTIONS", [], None),
        (b"GET", [(b"max-forwards", b"0")], None),
        (b"POST", [(b"max-forwards", b"0")], None),
        (b"OPTIONS", [(b"max-forwards", b"")], None),
        (b"OPTIONS", [(b"max-forwards", b"-1")], None),
        (b"OPTIONS", [(b"max-forwards", b"1, 2")], None),
        (b"OPTIONS", [(b"max-forwards", b"\xd9\xa3")], None),  # a non-ASCII digit
        (b"TRACE", [(b"max-forwards", b"2"), (b"max-forwards", b"0")], 2),
    ],
)
def test_remaining_forwards(
    method: bytes, headers: list[tuple[bytes, bytes]], expected: int | None
) -> None:
    assert remaining_forwards(method, headers) == expected


def test_decremented_keeps_the_place_and_drops_repeats() -> None:
    headers = (
        (b"Host", b"app"),
        (b"Max-Forwards", b"5"),
        (b"Accept", b"*/*"),
        (b"max-forwards", b"9"),
    )
    assert decremented(headers, 5) == (
        (b"Host", b"app"),
        (b"Max-Forwards", b"4"),
        (b"Accept", b"*/*"),
    )


def test_options_is_an_empty_answer() -> None:
    assert final_answer(b"OPTIONS", b"*", b"1.1", [(b"Max-Forwards", b"0")]) == ((), b"")


def test_trace_reflects_the_head_without_credentials_in_any_spelling() -> None:
    fields, body = final_answer(
        b"TRACE",
        b"/x",
        b"1.0",
        [
            (b"Host", b"app"),
            (b"COOKIE", b"a=b"),
            (b"authorization", b"Basic eA=="),
            (b"Proxy-Authorization", b"Bearer t"),
            (b"Max-Forwards", b"0"),
        ],
    )
    assert fields == ((b"content-type", b"message/http"),)
    assert body == b"TRACE /x HTTP/1.0\r\nHost: app\r\nMax-Forwards: 0\r\n\r\n"
