"""The pure checks behind issue 20: agent response heads, versions, lengths, Forwarded."""

from __future__ import annotations

import re

import h11
import pytest
from hypothesis import given, strategies as st

from pvtunnel._http.framing import field_problem, framing_problem, response_head_problem
from pvtunnel._http.headers import request_headers, response_headers


@pytest.mark.parametrize(
    ("reason", "headers", "problem"),
    [
        (b"OK", [(b"Content-Type", b"text/plain")], None),
        (b"", [], None),
        (b"Caf\xe9 \tnoted", [(b"x", b"a \t b"), (b"x-empty", b"")], None),
        (b"OK\r\nX: y", [], "a control byte in the reason phrase"),
        (b"OK\x00", [], "a control byte in the reason phrase"),
        (b"OK\x7f", [], "a control byte in the reason phrase"),
        (b"OK", [(b"", b"v")], "an invalid header name"),
        (b"OK", [(b"a:b", b"v")], "an invalid header name"),
        (b"OK", [(b"x", b" leading")], "an invalid header value"),
        (b"OK", [(b"x", b"trailing ")], "an invalid header value"),
        (b"OK", [(b"x", b"a\nb")], "an invalid header value"),
        (b"OK", [(b"x", b"\x1b[2K")], "an invalid header value"),
        (b"OK", [(b"Content-Length", b"5"), (b"content-length", b"5")], None),
        (
            b"OK",
            [(b"Content-Length", b"5"), (b"content-length", b"6")],
            "an invalid Content-Length",
        ),
        (b"OK", [(b"Content-Length", b"-1")], "an invalid Content-Length"),
        (b"OK", [(b"Content-Length", b"1" * 20)], "an invalid Content-Length"),
        # 19 digits, past what a signed 64-bit length holds: a client would wrap it.
        (b"OK", [(b"Content-Length", b"9223372036854775808")], "an invalid Content-Length"),
        (b"OK", [(b"Content-Length", b"9223372036854775807")], None),
    ],
)
def test_response_head_problem(
    reason: bytes, headers: list[tuple[bytes, bytes]], problem: str | None
) -> None:
    assert response_head_problem(reason, headers) == problem


@pytest.mark.parametrize(
    ("version", "length", "ok"),
    [
        (b"1.1", b"9223372036854775807", True),
        (b"1.0", b"0005", True),
        (b"1.1", b"9223372036854775808", False),
        (b"1.1", b"18446744073709551621", False),
        (b"1.2", b"1", False),
        (b"0.9", b"1", False),
        (b"2.0", b"1", False),
    ],
)
def test_framing_problem_versions_and_lengths(version: bytes, length: bytes, ok: bool) -> None:
    problem = framing_problem([(b"content-length", length)], version)
    assert (problem is None) is ok, problem


@pytest.mark.parametrize(
    ("address", "element"),
    [
        ("192.0.2.1", b"for=192.0.2.1;proto=https"),
        ("2001:db8::1", b'for="[2001:db8::1]";proto=https'),
    ],
)
def test_forwarded_gets_our_element_on_its_last_line(address: str, element: bytes) -> None:
    headers = request_headers(
        [
            (b"Host", b"app"),
            (b"Forwarded", b"for=a"),
            (b"X-Real-IP", b"6.6.6.6"),
            (b"forwarded", b"for=b"),
            (b"Content-Length", b"007"),
            (b"content-length", b"7"),
        ],
        client_address=address,
        host=None,
        proto=b"https",
        is_chunked=False,
    )
    assert [v for n, v in headers if n.lower() == b"forwarded"] == [b"for=a", b"for=b, " + element]
    assert [v for n, v in headers if n.lower() == b"content-length"] == [b"7"]
    assert not [n for n, _ in headers if n.lower() == b"x-real-ip"]


def test_forwarded_is_not_added_when_the_client_sent_none() -> None:
    headers = request_headers(
        [(b"Host", b"app")], client_address="192.0.2.1", host=None, proto=b"http", is_chunked=False
    )
    assert not [n for n, _ in headers if n.lower() == b"forwarded"]


# Bytes near the edges of what a header may hold: separators, blanks, controls.
_HEAD_BYTES = st.binary(max_size=12) | st.builds(
    bytes, st.lists(st.sampled_from(b"aZ09-_: \t\r\n\x00\x7f\x80\xff,;\"'"), max_size=12)
)


@given(
    reason=_HEAD_BYTES,
    headers=st.lists(
        st.tuples(
            _HEAD_BYTES | st.sampled_from([b"Content-Length", b"Via", b"Connection"]),
            _HEAD_BYTES | st.sampled_from([b"5", b"05", b"close", b"x-a"]),
        ),
        max_size=6,
    ),
)
def test_a_head_response_head_problem_accepts_is_one_h11_accepts(
    reason: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """The server builds accepted heads with h11's ``_parsed`` (no second validation):
    that is sound only while h11's own checks would pass whatever we let through."""
    if response_head_problem(reason, headers) is not None:
        return
    sent = response_headers(headers)
    checked = h11.Response(status_code=200, headers=sent, reason=reason)
    trusted = h11.Response(status_code=200, headers=sent, reason=reason, _parsed=True)
    assert trusted == checked
    assert trusted.headers.raw_items() == checked.headers.raw_items()


@given(
    headers=st.lists(
        st.tuples(_HEAD_BYTES | st.sampled_from([b"Host", b"x-a"]), _HEAD_BYTES),
        max_size=6,
    )
)
def test_field_problem_refuses_exactly_what_h11_refuses(
    headers: list[tuple[bytes, bytes]],
) -> None:
    """The agent builds requests with h11's ``_parsed`` after `field_problem`: sound
    only while it refuses all h11 refuses. It refuses control bytes in values too,
    which h11 lets through (and the server never forwards)."""
    try:
        h11.Request(method=b"GET", target=b"/", headers=headers, http_version=b"1.0")
    except h11.LocalProtocolError as exc:
        h11_refuses = str(exc).startswith("Illegal header")
    else:
        h11_refuses = False
    control = any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value) for _, value in headers)
    assert (field_problem(headers) is not None) is (h11_refuses or control)


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([], None),
        ([(b"a", b"")], None),
        ([(b"a", b""), (b"b", b"")], None),
        ([(b"", b"v")], "an invalid header name"),
        ([(b"a", b"1"), (b"", b"v")], "an invalid header name"),
        ([(b"a\nb", b"v")], "an invalid header name"),
        ([(b"a", b"1"), (b"b", b"x\ny")], "an invalid header value"),
        ([(b"a", b"1"), (b"b", b"x\x01y")], "an invalid header value"),
        ([(b"a", b"1"), (b"b", b" x")], "an invalid header value"),
        ([(b"a", b"1 \t 2"), (b"b", b"\xff")], None),
    ],
)
def test_field_problem_sees_every_field(
    headers: list[tuple[bytes, bytes]], problem: str | None
) -> None:
    assert field_problem(headers) == problem
