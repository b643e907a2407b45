"""A replay's edits: what the JSON may say, and the request they make."""

from __future__ import annotations

import pytest

from pvtunnel._errors import EditError
from pvtunnel._inspect.edits import Edits, edited_request, parse_edits
from pvtunnel._wire.heads import RequestHead

ORIGINAL = RequestHead(
    route="app",
    method=b"POST",
    target=b"/items",
    headers=(
        (b"Host", b"app"),
        (b"Content-Type", b"application/json"),
        (b"Transfer-Encoding", b"chunked"),
    ),
)


def test_no_body_means_no_edits() -> None:
    assert parse_edits(b"") == Edits()
    assert parse_edits(b"  \n") == Edits()
    assert parse_edits(b"{}") == Edits()


def test_every_key_is_read() -> None:
    edits = parse_edits(
        b'{"method": "PUT", "target": "/items/7", "headers": [["Host", "app"]], "body": "\xc3\xa9"}'
    )
    assert edits == Edits(
        method=b"PUT", target=b"/items/7", headers=((b"Host", b"app"),), body="é".encode()
    )
    assert parse_edits(b'{"body_base64": "AAEC"}').body == b"\x00\x01\x02"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"methd": "GET"}', "unknown key 'methd'"),
        (b'{"method": ""}', "method: expected a non-empty string"),
        (b'{"target": 7}', "target: expected a non-empty string"),
        (b'{"method": "G\xe2\x82\xacT"}', "ISO-8859-1"),
        (b'{"headers": {"a": "b"}}', "headers: expected a list"),
        (b'{"headers": [["a"]]}', r"headers\[0\]: expected a \[name, value\] pair"),
        (b'{"body": 5}', "body: expected a string"),
        (b'{"body_base64": "!!"}', "not valid base64"),
        (b'{"body_base64": 1}', "body_base64: expected a string"),
        (b'{"body": "", "body_base64": ""}', "not both"),
        (b'{"headers": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deep"),
    ],
)
def test_bad_edits_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(EditError, match=message):
        parse_edits(data)


def test_a_replay_is_framed_afresh_for_its_body() -> None:
    head, body = edited_request(ORIGINAL, b"[1]", Edits(body=b'{"a": 2}'))
    assert body == b'{"a": 2}'
    assert head.headers == (
        (b"Host", b"app"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"8"),
    )
    assert (head.route, head.method, head.target) == ("app", b"POST", b"/items")


def test_edits_replace_method_target_and_headers() -> None:
    edits = Edits(method=b"GET", target=b"/other", headers=((b"Host", b"elsewhere"),), body=b"")
    head, body = edited_request(ORIGINAL, b"[1]", edits)
    assert (head.method, head.target, head.headers, body) == (
        b"GET",
        b"/other",
        ((b"Host", b"elsewhere"),),
        b"",
    )


@pytest.mark.parametrize(
    "edits",
    [
        Edits(method=b"CONNECT"),
        Edits(headers=((b"Host", b"app"), (b"Upgrade", b"websocket"))),
        Edits(method=b"GE T"),
        Edits(headers=((b"Bad Name", b"x"),)),
        Edits(headers=((b"X", b"a"),)),  # no Host
    ],
)
def test_edits_that_make_no_replayable_request_are_refused(edits: Edits) -> None:
    with pytest.raises(EditError):
        edited_request(ORIGINAL, b"", edits)
