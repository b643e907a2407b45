"""What the admin listener answers, decided without sockets (`pvtunnel._http.admin.respond`)."""

from __future__ import annotations

import json

import attrs
import pytest

from pvtunnel._config import Secret
from pvtunnel._http.admin import AdminResponse, bearer_token, respond
from pvtunnel._metrics import CONTENT_TYPE

TOKEN = Secret("admin-token-123")
LOOPBACK_HOST = (b"host", b"127.0.0.1:9100")


@attrs.define
class FakeSource:
    ready: bool = False
    scraped: int = 0

    def is_ready(self) -> bool:
        return self.ready

    def metrics_text(self) -> str:
        self.scraped += 1
        return "# HELP x y\n# TYPE x gauge\nx 1\n"

    def status(self) -> dict[str, object]:
        return {"kind": "server", "agents": []}


def get(
    source: FakeSource,
    target: bytes,
    *,
    token: Secret | None = None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    method: bytes = b"GET",
) -> AdminResponse:
    return respond(source, token, method, target, (LOOPBACK_HOST, *headers))


def test_ready_follows_the_source_and_live_is_always_ok() -> None:
    source = FakeSource(ready=False)
    assert get(source, b"/ready").status == 503
    assert get(source, b"/live").status == 200
    source.ready = True
    assert get(source, b"/ready").status == 200
    assert get(source, b"/ready?verbose=1").status == 200


def test_metrics_and_status() -> None:
    source = FakeSource()
    metrics = get(source, b"/metrics")
    assert (metrics.status, metrics.content_type) == (200, CONTENT_TYPE)
    assert metrics.body.endswith(b"x 1\n")
    status = get(source, b"/status")
    assert status.content_type == "application/json"
    assert json.loads(status.body) == {"kind": "server", "agents": []}


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (b"127.0.0.1:9100", 200),
        (b"localhost:9100", 200),
        (b"[::1]:9100", 200),
        (b"rebound.evil.example:9100", 403),  # a hostile name resolving to 127.0.0.1
        (None, 403),
    ],
)
def test_without_a_token_only_loopback_names_read_metrics_and_status(
    host: bytes | None, status: int
) -> None:
    """A page the user visits can reach a loopback listener under a name that
    resolves to 127.0.0.1 (DNS rebinding); the probes stay open to all."""
    headers = () if host is None else ((b"host", host),)
    for path in (b"/metrics", b"/status"):
        assert respond(FakeSource(), None, b"GET", path, headers).status == status
    assert respond(FakeSource(ready=True), None, b"GET", b"/ready", headers).status == 200
    assert respond(FakeSource(), None, b"GET", b"/live", headers).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ((b"authorization", b"Bearer wrong"),),
        ((b"authorization", b"Basic admin-token-123"),),
        ((b"authorization", b"Bearer"),),
    ],
)
def test_a_token_guards_metrics_and_status_but_not_the_probes(
    headers: tuple[tuple[bytes, bytes], ...],
) -> None:
    source = FakeSource(ready=True)
    for path in (b"/metrics", b"/status", b"/elsewhere"):
        answer = get(source, path, token=TOKEN, headers=headers)
        assert answer.status == 401
        assert (b"www-authenticate", b'Bearer realm="pvtunnel admin"') in answer.headers
        assert b"admin-token-123" not in answer.body
    assert source.scraped == 0
    assert get(source, b"/live", token=TOKEN, headers=headers).status == 200
    assert get(source, b"/ready", token=TOKEN, headers=headers).status == 200


def test_the_right_token_opens_everything() -> None:
    source = FakeSource()
    headers = ((b"authorization", b"bearer  admin-token-123 "),)
    assert get(source, b"/metrics", token=TOKEN, headers=headers).status == 200
    assert get(source, b"/status", token=TOKEN, headers=headers).status == 200
    assert get(source, b"/nope", token=TOKEN, headers=headers).status == 404


def test_only_get_and_head() -> None:
    source = FakeSource()
    assert get(source, b"/metrics", method=b"HEAD").status == 200
    answer = get(source, b"/metrics", method=b"POST")
    assert answer.status == 405
    assert (b"allow", b"GET, HEAD") in answer.headers
    assert source.scraped == 1


def test_unknown_paths_are_404() -> None:
    assert get(FakeSource(), b"/").status == 404
    assert get(FakeSource(), b"/metrics/").status == 404


def test_a_404_names_the_paths_this_listener_serves() -> None:
    plain = get(FakeSource(), b"/nope")
    assert plain.body == b"404 Not Found: try /metrics, /status, /live or /ready\n"
    with_inspector = respond(FakeSource(), None, b"GET", b"/nope", (LOOPBACK_HOST,), inspector=True)
    assert with_inspector.status == 404
    assert b"/inspect" in with_inspector.body


def test_bearer_token_parsing() -> None:
    assert bearer_token([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([(b"x", b"y")]) is None
    assert bearer_token([(b"authorization", b"Token abc")]) is None
