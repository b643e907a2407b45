"""Header rewriting rules of RFC 9110 section 7.6, as plain functions."""

from __future__ import annotations

from pvtunnel._errors import ErrorCode
from pvtunnel._http.access import presented_token
from pvtunnel._http.errors import error_body, status_for_reset
from pvtunnel._http.framing import framing_problem
from pvtunnel._http.headers import (
    content_length,
    end_to_end,
    header_value,
    is_chunked,
    protocol_switch,
    request_headers,
    response_headers,
)

# What this hop adds to a request for host "app" from 192.0.2.1 over http, with
# none of these fields from the client.
ADDED_FOR_APP = (
    (b"X-Forwarded-For", b"192.0.2.1"),
    (b"X-Forwarded-Host", b"app"),
    (b"X-Forwarded-Proto", b"http"),
    (b"Via", b"1.1 pvtunnel"),
)


def from_client(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The headers forwarded for a bodiless request from 192.0.2.1 over http."""
    return request_headers(
        headers, client_address="192.0.2.1", host=None, proto=b"http", is_chunked=False
    )


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
        (b"X-Forwarded-Host", b"app"),
        (b"X-Forwarded-Proto", b"http"),
        (b"Via", b"1.1 pvtunnel"),
        (b"Transfer-Encoding", b"chunked"),
    )


def test_underscore_spellings_of_removed_fields_and_proxy_are_dropped() -> None:
    """CGI-style upstreams read "Transfer_Encoding" as Transfer-Encoding and a Proxy
    field as HTTP_PROXY: a client's such lines never reach them."""
    result = from_client(
        [
            (b"host", b"app"),
            (b"Transfer_Encoding", b"chunked"),
            (b"content_length", b"5"),
            (b"Proxy_Authorization", b"Basic c2VjcmV0"),
            (b"proxy_connection", b"keep-alive"),
            (b"Keep_Alive", b"timeout=5"),
            (b"Proxy", b"http://evil.example:3128"),
            (b"x_request_id", b"kept"),
            (b"proxy-id", b"kept"),
        ]
    )
    assert result == (
        (b"host", b"app"),
        (b"x_request_id", b"kept"),
        (b"proxy-id", b"kept"),
        *ADDED_FOR_APP,
    )


def test_underscore_spellings_of_the_client_fields_are_dropped() -> None:
    """CGI-style upstreams read "X_Real_IP" as X-Real-IP: a client's underscore
    spellings of the fields that name the client never reach them."""
    result = from_client(
        [
            (b"host", b"app"),
            (b"X_Real_IP", b"10.6.6.6"),
            (b"x_forwarded_for", b"10.6.6.6"),
            (b"X_Forwarded_Host", b"evil"),
            (b"x_forwarded_proto", b"https"),
            (b"FORWARDED", b"for=10.0.0.1"),
            (b"x_request_id", b"kept"),
        ]
    )
    assert result == (
        (b"host", b"app"),
        (b"FORWARDED", b"for=10.0.0.1, for=192.0.2.1;proto=http"),
        (b"x_request_id", b"kept"),
        *ADDED_FOR_APP,
    )


def test_forwarding_lines_stay_well_formed() -> None:
    """An empty X-Forwarded-For line takes the address alone, and a Forwarded
    element has no IPv6 zone, which RFC 7239's node syntax cannot hold."""
    result = request_headers(
        [(b"host", b"app"), (b"x-forwarded-for", b""), (b"forwarded", b"for=10.0.0.1")],
        client_address="fe80::1%eth0",
        host=None,
        proto=b"http",
        is_chunked=False,
    )
    assert (b"x-forwarded-for", b"fe80::1%eth0") in result
    assert (b"forwarded", b'for=10.0.0.1, for="[fe80::1]";proto=http') in result


def test_absolute_form_authority_replaces_host() -> None:
    result = request_headers(
        [(b"host", b"wrong"), (b"accept", b"*/*")],
        client_address="::1",
        host=b"app:8080",
        proto=b"https",
        is_chunked=False,
    )
    assert result[0] == (b"Host", b"app:8080")
    assert (b"X-Forwarded-Host", b"app:8080") in result
    assert [name for name, _ in result].count(b"Host") == 1
    assert (b"host", b"wrong") not in result


def test_names_keep_their_spelling_and_match_in_any_case() -> None:
    # Names are case-insensitive (RFC 9110 section 5.1): every rule matches them in
    # any case, and what is forwarded keeps the sender's spelling.
    headers = [
        (b"Host", b"app"),
        (b"CONNECTION", b"Keep-Alive, X-Drop"),
        (b"X-DROP", b"1"),
        (b"Keep-Alive", b"t=1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"UPGRADE", b"h2c"),
        (b"Te", b"trailers"),
        (b"Trailer", b"x"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"Proxy-Authorization", b"Bearer t"),
        (b"X-Api-Key", b"k"),
        (b"X-FORWARDED-FOR", b"10.0.0.1"),
        (b"X-Forwarded-Host", b"spoofed"),
        (b"x-FORWARDED-proto", b"https"),
        (b"VIA", b"1.0 edge"),
    ]
    assert end_to_end(headers) == [
        (b"Host", b"app"),
        (b"X-Api-Key", b"k"),
        (b"X-FORWARDED-FOR", b"10.0.0.1"),
        (b"X-Forwarded-Host", b"spoofed"),
        (b"x-FORWARDED-proto", b"https"),
        (b"VIA", b"1.0 edge"),
    ]
    assert from_client(headers) == (
        (b"Host", b"app"),
        (b"X-Api-Key", b"k"),
        (b"X-FORWARDED-FOR", b"10.0.0.1, 192.0.2.1"),
        (b"VIA", b"1.0 edge, 1.1 pvtunnel"),
        (b"X-Forwarded-Host", b"app"),
        (b"X-Forwarded-Proto", b"http"),
    )
    assert response_headers([(b"Set-Cookie", b"a=b"), (b"VIA", b"1.0 a")]) == [
        (b"Set-Cookie", b"a=b"),
        (b"VIA", b"1.0 a, 1.1 pvtunnel"),
    ]
    absolute = request_headers(
        [(b"HOST", b"wrong")], client_address="::1", host=b"app", proto=b"http", is_chunked=False
    )
    assert [name.lower() for name, _ in absolute].count(b"host") == 1


def test_framing_reads_names_in_any_case() -> None:
    assert is_chunked([(b"Transfer-Encoding", b"chunked")])
    assert not is_chunked([(b"Content-Length", b"3")])
    assert content_length([(b"CONTENT-LENGTH", b"12")]) == 12
    assert content_length([(b"Host", b"a")]) is None
    assert header_value([(b"A", b"1"), (b"hOsT", b"h"), (b"host", b"i")], b"host") == b"h"
    assert framing_problem([(b"Content-Length", b"3"), (b"TRANSFER-ENCODING", b"chunked")], b"1.1")
    switch = protocol_switch(b"GET", [(b"Connection", b"UPGRADE"), (b"Upgrade", b"websocket")])
    assert switch is not None
    assert switch.upgrade == b"websocket"
    assert presented_token([(b"Proxy-Authorization", b"Bearer abc")]) == b"abc"


def test_response_headers_get_via() -> None:
    assert response_headers([(b"via", b"1.0 a"), (b"connection", b"close")]) == [
        (b"via", b"1.0 a, 1.1 pvtunnel")
    ]
    assert response_headers([(b"server", b"x")]) == [(b"server", b"x"), (b"Via", b"1.1 pvtunnel")]
    # A Via line the Connection header names is hop-by-hop: ours starts a new line.
    assert response_headers([(b"Connection", b"VIA"), (b"via", b"1.0 a")]) == [
        (b"Via", b"1.1 pvtunnel")
    ]


def test_response_headers_add_a_date_only_where_none_is() -> None:
    date = b"Sun, 06 Dec 2026 23:24:36 GMT"
    assert response_headers([(b"x", b"1")], date=date) == [
        (b"x", b"1"),
        (b"Via", b"1.1 pvtunnel"),
        (b"Date", date),
    ]
    upstreams = (b"DATE", b"Tue, 01 Dec 2026 10:00:00 GMT")
    assert response_headers([upstreams], date=date) == [upstreams, (b"Via", b"1.1 pvtunnel")]


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


def test_an_http_1_0_requests_expect_is_not_passed_on() -> None:
    """RFC 9110 section 10.1.1: a server ignores 100-continue in an HTTP/1.0 request;
    passed on inside the HTTP/1.1 request the agent writes, the next hop would act
    on it."""
    fields = [(b"Host", b"app"), (b"Expect", b"100-continue"), (b"Content-Length", b"3")]
    common = {"client_address": "192.0.2.1", "host": None, "proto": b"http", "is_chunked": False}
    old = request_headers(fields, http_version=b"1.0", **common)  # type: ignore[arg-type]
    assert [name for name, _ in old] == [
        b"Host",
        b"Content-Length",
        b"X-Forwarded-For",
        b"X-Forwarded-Host",
        b"X-Forwarded-Proto",
        b"Via",
    ]
    assert dict(old)[b"Via"] == b"1.0 pvtunnel"
    new = request_headers(fields, http_version=b"1.1", **common)  # type: ignore[arg-type]
    assert (b"Expect", b"100-continue") in new
    assert dict(new)[b"Via"] == b"1.1 pvtunnel"


def test_interim_and_204_responses_lose_content_length_and_426_keeps_upgrade() -> None:
    fields = [(b"Content-Length", b"0"), (b"Link", b"</a.css>; rel=preload")]
    for status in (100, 103, 204):
        assert response_headers(fields, status=status) == [
            (b"Link", b"</a.css>; rel=preload"),
            (b"Via", b"1.1 pvtunnel"),
        ]
    assert (b"Content-Length", b"0") in response_headers(fields, status=200)
    required = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Content-Length", b"0")]
    assert response_headers(required, status=426) == [
        (b"Content-Length", b"0"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"upgrade"),
        (b"Via", b"1.1 pvtunnel"),
    ]
    # Elsewhere Upgrade stays hop-by-hop.
    assert response_headers(required, status=400) == [
        (b"Content-Length", b"0"),
        (b"Via", b"1.1 pvtunnel"),
    ]
