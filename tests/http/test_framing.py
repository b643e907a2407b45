"""The framing checks h11 leaves to a proxy: CL with TE, TE in HTTP/1.0, obs-fold."""

from __future__ import annotations

import h11
import pytest

from pvtunnel._http.framing import (
    framing_problem,
    has_obs_fold,
    refused_head_status,
    request_head_problem,
)

CL = (b"content-length", b"5")
TE = (b"transfer-encoding", b"chunked")
HOST = (b"host", b"app")


@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        ([HOST], b"1.1", None),
        ([HOST, CL], b"1.1", None),
        ([HOST, TE], b"1.1", None),
        ([HOST, CL], b"1.0", None),
        ([HOST, CL, TE], b"1.1", "both Content-Length and Transfer-Encoding"),
        ([TE, HOST, CL], b"1.1", "both Content-Length and Transfer-Encoding"),
        ([HOST, TE, CL], b"1.0", "both Content-Length and Transfer-Encoding"),
        ([HOST, TE], b"1.0", "Transfer-Encoding in an HTTP/1.0 message"),
    ],
)
def test_framing_problem(
    headers: list[tuple[bytes, bytes]], version: bytes, expected: str | None
) -> None:
    problem = framing_problem(headers, version)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.startswith(expected)


def test_framing_problem_reads_what_h11_parsed() -> None:
    """h11 accepts CL with TE and lets TE win; the check sees both headers it keeps."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
    )
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert framing_problem(request.headers, request.http_version) is not None


@pytest.mark.parametrize(
    ("received", "folded"),
    [
        (b"GET / HTTP/1.1\r\nHost: app\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a b\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n b\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n\tb\r\n\r\n", True),
        (b"GET / HTTP/1.1\nHost: app\nX-A: a\n b\n\n", True),
        (b"GET / HTTP/1.1\nHost: app\n\n", False),
        # Only the head counts: a body (or the next request) may hold anything.
        (b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 9\r\n\r\nline\r\n two", False),
        (b"POST / HTTP/1.1\nHost: app\nContent-Length: 4\n\n\n \t\n", False),
        (b"GET / HTTP/1.1\r\nHost: app\r\n\r\nGET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", False),
        # A head still arriving is judged on what is there.
        (b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n b", True),
    ],
)
def test_has_obs_fold(received: bytes, folded: bool) -> None:
    assert has_obs_fold(received) is folded
    assert has_obs_fold(bytearray(received)) is folded


def test_request_head_problem_combines_both_checks() -> None:
    plain = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n"
    folded = b"GET / HTTP/1.1\r\nHost: app\r\nX-A: a\r\n b\r\n\r\n"
    assert request_head_problem([HOST], b"1.1", plain) is None
    assert request_head_problem([HOST], b"1.1", folded) == (
        "a header folded over two lines (obs-fold, RFC 9112 section 5.2)"
    )
    both = request_head_problem([HOST, CL, TE], b"1.1", folded)
    assert both is not None
    assert both.startswith("both Content-Length")


@pytest.mark.parametrize(
    ("hint", "received", "expected"),
    [
        (431, b"GET /" + b"a" * 100, 414),  # no end of the request line within the limit
        (431, b"GET / HTTP/1.1\r\nX: " + b"a" * 100, 431),
        (501, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (501, b"POST / HTTP/1.1\r\ntransfer-encoding : chunked, gzip\r\n\r\n", 400),
        (501, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        # Empty list elements count for nothing (RFC 9110 section 5.6.1).
        (501, b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked, \r\n\r\n", 501),
        # An empty field, or one of empty elements only, names no coding: no chunked last.
        (501, b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", 400),
        (501, b"POST / HTTP/1.1\r\nTransfer-Encoding: , \r\n\r\n", 400),
        (
            501,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            501,
        ),
        (400, b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        # A pipelined request's lines are not this head's.
        (
            501,
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n",
            400,
        ),
    ],
)
def test_refused_heads_get_the_status_rfc_9112_asks_for(
    hint: int, received: bytes, expected: int
) -> None:
    assert refused_head_status(hint, received, 64)[0] == expected
