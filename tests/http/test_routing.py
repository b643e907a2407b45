"""Routing decisions without sockets: which name a request is for and who serves it."""

from __future__ import annotations

import attrs
import pytest

from pvtunnel._http.routing import Router, split_target, strip_port


@attrs.define(eq=False)
class FakeSession:
    name: str
    in_flight: int = 0


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/path?q=1", (None, b"/path?q=1")),
        (b"*", (None, b"*")),
        (b"http://app/x?y", (b"app", b"/x?y")),
        (b"HTTP://App:8080", (b"App:8080", b"/")),
        (b"https://u:p@app.example:443/a", (b"app.example:443", b"/a")),
        (b"http://app?q=1", (b"app", b"/?q=1")),
        (b"http://[::1]:80/z", (b"[::1]:80", b"/z")),
    ],
)
def test_split_target(target: bytes, expected: tuple[bytes | None, bytes]) -> None:
    assert split_target(target) == expected


def test_an_options_request_for_the_whole_server_goes_on_as_an_asterisk() -> None:
    """RFC 9112 section 3.2.4: ``OPTIONS http://app`` asks about the server as a
    whole, which the origin form says as ``*``; with a path it is that path's."""
    assert split_target(b"http://app:8080", b"OPTIONS") == (b"app:8080", b"*")
    assert split_target(b"http://app/", b"OPTIONS") == (b"app", b"/")
    assert split_target(b"http://app", b"GET") == (b"app", b"/")


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("app:80", "app"),
        ("app", "app"),
        ("[::1]:80", "[::1]"),
        ("[::1]", "[::1]"),
        ("app:x", "app:x"),
        ("app:", "app"),  # an empty port is no port (RFC 3986 section 3.2.3)
    ],
)
def test_strip_port(authority: str, host: str) -> None:
    assert strip_port(authority) == host


def test_lookup_order_whole_authority_then_host_then_domain() -> None:
    router: Router[FakeSession] = Router(domain="Tunnel.Example.com")
    plain, with_port = FakeSession("plain"), FakeSession("with-port")
    router.add(plain, ["app"])
    router.add(with_port, ["App:9000"])
    assert router.lookup("app:9000") == ("app:9000", with_port)
    assert router.lookup("APP:9001") == ("app", plain)
    assert router.lookup("app") == ("app", plain)
    assert router.lookup("app.tunnel.example.com:443") == ("app", plain)
    assert router.lookup("tunnel.example.com") is None
    # The trailing dot of a fully qualified name (RFC 1034 section 3.1) changes nothing.
    assert router.lookup("app.") == ("app", plain)
    assert router.lookup("App.:8080") == ("app", plain)
    assert router.lookup("app.tunnel.example.com.") == ("app", plain)
    assert router.lookup("app..") is None
    assert router.lookup(".") is None
    assert router.lookup("other") is None


def test_sessions_equally_busy_take_turns() -> None:
    router: Router[FakeSession] = Router()
    sessions = [FakeSession(name) for name in ("a", "b", "c")]
    for session in sessions:
        router.add(session, ["app"])
    chosen = [router.lookup("app") for _ in range(6)]
    assert sorted(route[1].name for route in chosen if route is not None) == list("aabbcc")
    sessions[1].in_flight = 1
    picked = [router.lookup("app") for _ in range(4)]
    assert {route[1].name for route in picked if route is not None} == {"a", "c"}


def test_least_in_flight_wins_and_removed_sessions_are_never_chosen() -> None:
    router: Router[FakeSession] = Router()
    busy, idle = FakeSession("busy", in_flight=5), FakeSession("idle", in_flight=1)
    router.add(busy, ["app"])
    router.add(idle, ["app"])
    assert router.lookup("app") == ("app", idle)
    idle.in_flight = 9
    assert router.lookup("app") == ("app", busy)
    router.remove(busy)
    assert router.lookup("app") == ("app", idle)
    router.remove(idle)
    assert router.lookup("app") is None
    assert router.names() == {}
