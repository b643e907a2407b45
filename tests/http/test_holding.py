"""What the server remembers of departed routes, and how it answers when it cannot hold."""

from __future__ import annotations

import attrs
import pytest

from pvtunnel._http.holding import HoldOutcome, RouteMemory, hold_answer
from pvtunnel._http.routing import Router


@attrs.define(eq=False)
class FakeSession:
    name: str
    in_flight: int = 0


def test_remove_reports_only_names_left_without_a_session() -> None:
    router: Router[FakeSession] = Router()
    first, second = FakeSession("first"), FakeSession("second")
    router.add(first, ["shared", "alone"])
    router.add(second, ["shared"])
    assert router.remove(first) == ("alone",)
    assert router.remove(second) == ("shared",)
    assert router.remove(second) == ()


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("app", "app"),
        ("APP:8080", "app"),
        ("app.", "app"),
        ("app.tunnel.example.com", "app"),
        ("app.tunnel.example.com:443", "app"),
        ("other", None),
        ("app.elsewhere.com", None),
    ],
)
def test_match_name_follows_the_lookup_rules(authority: str, expected: str | None) -> None:
    router: Router[FakeSession] = Router(domain="tunnel.example.com")
    assert router.match_name(authority, {"app": 1.0}) == expected
    router.add(FakeSession("s"), ["app"])
    found = router.lookup(authority)
    assert (found[0] if found is not None else None) == expected


def test_memory_recalls_a_name_until_memory_s_after_it_left() -> None:
    memory = RouteMemory(60.0)
    memory.remember(["app"], now=100.0)
    assert memory.recalls("app", 159.9)
    assert not memory.recalls("app", 160.0)
    assert not memory.recalls("other", 100.0)
    assert not memory.recalls(None, 100.0)


def test_memory_forgets_a_name_served_again_and_drops_expired_ones() -> None:
    memory = RouteMemory(10.0)
    memory.remember(["old", "back"], now=0.0)
    memory.forget(["back", "never-there"])
    assert not memory.recalls("back", 1.0)
    memory.remember(["new"], now=20.0)
    assert set(memory.names) == {"new"}


@pytest.mark.parametrize(
    ("outcome", "status", "retry_after"),
    [
        (HoldOutcome.NOT_REMEMBERED, 404, None),
        (HoldOutcome.FULL, 503, b"3"),
        (HoldOutcome.TIMED_OUT, 503, b"3"),
        (HoldOutcome.SHUTTING_DOWN, 503, b"3"),
    ],
)
def test_hold_answer(outcome: HoldOutcome, status: int, retry_after: bytes | None) -> None:
    got_status, detail, headers = hold_answer(outcome, 2.5)
    assert got_status == status
    assert detail
    assert dict(headers).get(b"retry-after") == retry_after


def test_retry_after_is_at_least_one_second() -> None:
    assert hold_answer(HoldOutcome.TIMED_OUT, 0.1)[2] == ((b"retry-after", b"1"),)
