"""Header rewriting rules of RFC 9110 section 7.6, as plain functions."""

from __future__ import annotations

from pvtunnel._errors import ErrorCode
from pvtunnel._http.access import presented_token
from pvtunnel._http.errors import error_body, status_for_reset
from pvtunnel._http.headers import end_to_end, request_headers, response_headers


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    headers = [
        (b"connection", b"close, X-Drop"),
        (b"x-drop", b"1"),
        (b"keep-alive", b"t=1"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"proxy-connection", b"keep-alive"),
        (b"x-keep", b"2"),
    ]
    assert end_to_end(headers) == [(b"x-keep", b"2")]


def test_request_headers_add_forwarding_fields() -> None:
    result = request_headers(
        [(b"host", b"app"), (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-proto", b"https")],
        client_address="192.0.2.1",
        host=None,
        proto=b"http",
        is_chunked=True,
    )
    assert result == (
        (b"host", b"app"),
        (b"x-forwarded-for", b"10.0.0.1, 192.0.2.1"),
        (b"x-forwarded-host", b"app"),
        (b"x-forwarded-proto", b"http"),
        (b"via", b"1.1 pvtunnel"),
        (b"transfer-encoding", b"chunked"),
    )


def test_absolute_form_authority_replaces_host() -> None:
    result = request_headers(
        [(b"host", b"wrong"), (b"accept", b"*/*")],
        client_address="::1",
        host=b"app:8080",
        proto=b"https",
        is_chunked=False,
    )
    assert result[0] == (b"host", b"app:8080")
    assert (b"x-forwarded-host", b"app:8080") in result
    assert (b"host", b"wrong") not in result


def test_response_headers_get_via() -> None:
    assert response_headers([(b"via", b"1.0 a"), (b"connection", b"close")]) == [
        (b"via", b"1.0 a, 1.1 pvtunnel")
    ]


def test_presented_token_forms() -> None:
    assert presented_token([(b"proxy-authorization", b"Bearer abc")]) == b"abc"
    assert presented_token([(b"proxy-authorization", b"basic dTp0b2s=")]) == b"tok"
    assert presented_token([(b"proxy-authorization", b"Basic !!!")]) is None
    assert presented_token([(b"proxy-authorization", b"Basic bm9jb2xvbg==")]) is None
    assert presented_token([(b"proxy-authorization", b"Digest x")]) is None
    assert presented_token([(b"authorization", b"Bearer abc")]) is None


def test_error_bodies_and_reset_statuses() -> None:
    assert error_body(502, "no upstream") == b"502 Bad Gateway: no upstream\n"
    assert status_for_reset(ErrorCode.UPSTREAM_TIMEOUT) == 504
    assert status_for_reset(ErrorCode.REFUSED_STREAM) == 503
    assert status_for_reset(ErrorCode.UNKNOWN_ROUTE) == 404
    assert status_for_reset(ErrorCode.INTERNAL_ERROR) == 502
