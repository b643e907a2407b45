"""Who may use the inspector, and what its paths ask for (`pvtunnel._http.inspect`)."""

from __future__ import annotations

import base64

import pytest

from pvtunnel._config import Secret
from pvtunnel._http.admin import is_loopback_host
from pvtunnel._http.inspect import (
    Action,
    InspectRequest,
    check_access,
    is_inspect_path,
    route,
)

TOKEN = Secret("admin-token-0123456789")


def basic(password: bytes, user: bytes = b"me") -> tuple[bytes, bytes]:
    return (b"authorization", b"Basic " + base64.b64encode(user + b":" + password))


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (b"127.0.0.1:4040", True),
        (b"127.8.9.10", True),
        (b"localhost:4040", True),
        (b"LOCALHOST", True),
        (b"app.localhost:4040", True),
        (b"[::1]:4040", True),
        (b"[::1]", True),
        (b"evil.example:4040", False),
        (b"10.0.0.1:4040", False),
        (b"[::1", False),
        (b"[::1]x", False),
        (b"", False),
    ],
)
def test_without_a_token_only_loopback_names_are_served(host: bytes, allowed: bool) -> None:
    assert is_loopback_host(host) is allowed
    refusal = check_access(None, b"GET", [(b"host", host)])
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.status == 403


def test_without_a_token_a_request_needs_a_host() -> None:
    refusal = check_access(None, b"GET", [])
    assert refusal is not None
    assert refusal.status == 403


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ([], False),
        ([(b"authorization", b"Bearer admin-token-0123456789")], True),
        ([(b"authorization", b"Bearer wrong")], False),
        ([basic(b"admin-token-0123456789")], True),
        ([basic(b"admin-token-0123456789", user=b"")], True),
        ([basic(b"wrong")], False),
        ([(b"authorization", b"Basic !!!")], False),
        ([(b"authorization", b"Basic " + base64.b64encode(b"no-colon"))], False),
        ([(b"authorization", b"Digest x")], False),
    ],
)
def test_with_a_token_bearer_or_basic_is_asked_for(
    headers: list[tuple[bytes, bytes]], allowed: bool
) -> None:
    # Any Host: the token is the guard (the listener may be on a public address).
    refusal = check_access(TOKEN, b"GET", [(b"host", b"agent.example:4040"), *headers])
    assert (refusal is None) is allowed
    if refusal is not None:
        assert refusal.status == 401
        assert (b"www-authenticate", b'Basic realm="pvtunnel inspector"') in refusal.headers


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"content-type", b"application/json")], None),
        ([(b"content-type", b"Application/JSON; charset=utf-8")], None),
        ([(b"content-type", b"text/plain")], 415),
        ([], 415),
        (
            [(b"content-type", b"application/json"), (b"origin", b"http://127.0.0.1:4040")],
            None,
        ),
        ([(b"content-type", b"application/json"), (b"origin", b"https://evil.example")], 403),
        ([(b"content-type", b"application/json"), (b"origin", b"null")], 403),
    ],
)
def test_a_replay_must_be_json_from_the_page_itself(
    headers: list[tuple[bytes, bytes]], status: int | None
) -> None:
    refusal = check_access(None, b"POST", [(b"host", b"127.0.0.1:4040"), *headers])
    assert (None if refusal is None else refusal.status) == status


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], None),  # a script: no browser headers
        ([(b"sec-fetch-site", b"none")], None),  # an address typed in
        ([(b"sec-fetch-site", b"same-origin"), (b"origin", b"http://127.0.0.1:4040")], None),
        ([(b"origin", b"https://evil.example")], 403),  # EventSource, fetch with CORS
        ([(b"sec-fetch-site", b"cross-site")], 403),  # <img>, no-cors fetch: no Origin
        ([(b"sec-fetch-site", b"same-site")], 403),  # another port of the same host
    ],
)
def test_another_sites_page_gets_nothing(
    headers: list[tuple[bytes, bytes]], status: int | None
) -> None:
    """Not even a GET: a foreign page could hold the event stream's places open."""
    refusal = check_access(None, b"GET", [(b"host", b"127.0.0.1:4040"), *headers])
    assert (None if refusal is None else refusal.status) == status


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (
            b"GET",
            b"/inspect",
            InspectRequest(action=Action.ASSET, asset=("index.html", "text/html; charset=utf-8")),
        ),
        (
            b"GET",
            b"/inspect/?x",
            InspectRequest(action=Action.ASSET, asset=("index.html", "text/html; charset=utf-8")),
        ),
        (
            b"HEAD",
            b"/inspect/inspect.js",
            InspectRequest(
                action=Action.ASSET, asset=("inspect.js", "text/javascript; charset=utf-8")
            ),
        ),
        (
            b"GET",
            b"/inspect/inspect.css",
            InspectRequest(action=Action.ASSET, asset=("inspect.css", "text/css; charset=utf-8")),
        ),
        (b"GET", b"/inspect/api/requests", InspectRequest(action=Action.LIST)),
        (b"GET", b"/inspect/api/requests?limit=1", InspectRequest(action=Action.LIST)),
        (b"GET", b"/inspect/api/requests/12", InspectRequest(action=Action.ONE, exchange_id=12)),
        (
            b"POST",
            b"/inspect/api/requests/12/replay",
            InspectRequest(action=Action.REPLAY, exchange_id=12),
        ),
        (b"GET", b"/inspect/api/events", InspectRequest(action=Action.EVENTS)),
        (b"HEAD", b"/inspect/api/events", 405),
        (b"GET", b"/inspect/api/requests/x1", 404),
        (b"GET", b"/inspect/api/requests/", 404),
        (b"GET", b"/inspect/api/requests/1234567890123456789", 404),
        (b"GET", b"/inspect/../status", 404),
        (b"GET", b"/inspect/api/requests/3/replay", 405),
        (b"POST", b"/inspect/api/requests", 405),
        (b"DELETE", b"/inspect/api/requests/1", 405),
    ],
)
def test_paths_map_to_actions(method: bytes, target: bytes, expected: InspectRequest | int) -> None:
    decision = route(method, target)
    if isinstance(expected, int):
        assert not isinstance(decision, InspectRequest)
        assert decision.status == expected
    else:
        assert decision == expected


@pytest.mark.parametrize(
    ("target", "is_inspector"),
    [
        (b"/inspect", True),
        (b"/inspect?x", True),
        (b"/inspect/api/events", True),
        (b"/inspector", False),
        (b"/status", False),
    ],
)
def test_which_paths_are_the_inspectors(target: bytes, is_inspector: bool) -> None:
    assert is_inspect_path(target) is is_inspector
