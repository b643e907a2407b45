"""Held requests on a fake clock: how long names are remembered and requests wait.

`HeldRequests` is driven directly with a real `Router` and fake sessions; time
moves only when the test jumps the `MockClock`, so every bound is checked at its
edge without sleeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio
import trio.testing

from pvtunnel._config import LimitsConfig, ServerConfig, TimeoutsConfig
from pvtunnel._http.holding import HoldOutcome
from pvtunnel._http.routing import Router
from pvtunnel._metrics import ServerMetrics
from pvtunnel._trio.holding import HeldRequests

if TYPE_CHECKING:
    from collections.abc import Callable


@attrs.define(eq=False)
class FakeSession:
    name: str
    in_flight: int = 0


Result = tuple[str, FakeSession] | HoldOutcome


def held_requests(
    *, memory_s: float = 60.0, hold_s: float = 10.0, max_held: int = 1000
) -> HeldRequests:
    config = ServerConfig(
        timeouts=TimeoutsConfig(route_memory_s=memory_s, hold_s=hold_s),
        limits=LimitsConfig(max_held_requests=max_held),
    )
    return HeldRequests(config, ServerMetrics())


def departed(held: HeldRequests, *names: str) -> Router[FakeSession]:
    """A router whose only agent served ``names`` and has just left."""
    router: Router[FakeSession] = Router()
    gone = FakeSession("gone")
    router.add(gone, names)
    held.routes_left(router.remove(gone))
    return router


async def start_waiting(
    nursery: trio.Nursery, held: HeldRequests, router: Router[FakeSession], authority: str
) -> Callable[[], Result | None]:
    """Start a held request; returns a getter for its result (None while it waits)."""
    results: list[Result] = []

    async def wait() -> None:
        results.append(await held.wait_for_agent(router, authority))

    nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked()
    return lambda: results[0] if results else None


async def test_a_request_waits_and_goes_to_the_agent_that_registers(
    mock_clock: trio.testing.MockClock,
) -> None:
    held = held_requests(hold_s=10.0)
    router = departed(held, "app")
    async with trio.open_nursery() as nursery:
        result = await start_waiting(nursery, held, router, "APP:8080")
        mock_clock.jump(9.9)
        await trio.testing.wait_all_tasks_blocked()
        assert result() is None
        assert held.waiting == 1
        # Another name registering does not release it.
        other = FakeSession("other")
        router.add(other, ["else"])
        held.routes_arrived(["else"])
        await trio.testing.wait_all_tasks_blocked()
        assert result() is None
        back = FakeSession("back")
        router.add(back, ["app"])
        held.routes_arrived(["app"])
    assert result() == ("app", back)
    assert held.waiting == 0
    assert held.metrics.held_requests["served"] == 1


async def test_a_request_no_agent_comes_for_times_out_after_hold_s(
    mock_clock: trio.testing.MockClock,
) -> None:
    held = held_requests(hold_s=10.0)
    router = departed(held, "app")
    async with trio.open_nursery() as nursery:
        result = await start_waiting(nursery, held, router, "app")
        mock_clock.jump(9.99)
        await trio.testing.wait_all_tasks_blocked()
        assert result() is None
        mock_clock.jump(0.01)
    assert result() is HoldOutcome.TIMED_OUT
    assert held.metrics.held_requests["timed_out"] == 1
    assert held.waiting == 0


async def test_names_never_served_or_forgotten_are_not_held(
    mock_clock: trio.testing.MockClock,
) -> None:
    held = held_requests(memory_s=60.0)
    router = departed(held, "app")
    assert await held.wait_for_agent(router, "never") is HoldOutcome.NOT_REMEMBERED
    mock_clock.jump(60.0)
    assert await held.wait_for_agent(router, "app") is HoldOutcome.NOT_REMEMBERED
    assert sum(held.metrics.held_requests.values()) == 0


async def test_a_name_served_again_is_forgotten(mock_clock: trio.testing.MockClock) -> None:
    held = held_requests()
    router = departed(held, "app")
    held.routes_arrived(["app"])  # an agent came and ...
    assert await held.wait_for_agent(router, "app") is HoldOutcome.NOT_REMEMBERED


async def test_beyond_max_held_requests_the_answer_is_immediate(
    mock_clock: trio.testing.MockClock,
) -> None:
    held = held_requests(max_held=2)
    router = departed(held, "app")
    async with trio.open_nursery() as nursery:
        first = await start_waiting(nursery, held, router, "app")
        second = await start_waiting(nursery, held, router, "app")
        assert await held.wait_for_agent(router, "app") is HoldOutcome.FULL
        assert held.metrics.held_requests["refused"] == 1
        assert (first(), second()) == (None, None)
        session = FakeSession("back")
        router.add(session, ["app"])
        held.routes_arrived(["app"])
    assert first() == second() == ("app", session)
    assert held.metrics.held_requests["served"] == 2


async def test_no_request_is_held_when_max_held_requests_is_zero(
    mock_clock: trio.testing.MockClock,
) -> None:
    held = held_requests(max_held=0)
    router = departed(held, "app")
    assert await held.wait_for_agent(router, "app") is HoldOutcome.FULL


async def test_closing_releases_held_requests_and_holds_no_more(
    mock_clock: trio.testing.MockClock,
) -> None:
    held = held_requests()
    router = departed(held, "app")
    async with trio.open_nursery() as nursery:
        result = await start_waiting(nursery, held, router, "app")
        held.close()
    assert result() is HoldOutcome.SHUTTING_DOWN
    assert await held.wait_for_agent(router, "app") is HoldOutcome.SHUTTING_DOWN
    assert held.metrics.held_requests["shutting_down"] == 1


async def test_a_cancelled_wait_counts_as_abandoned(mock_clock: trio.testing.MockClock) -> None:
    held = held_requests()
    router = departed(held, "app")
    async with trio.open_nursery() as nursery:
        result = await start_waiting(nursery, held, router, "app")
        nursery.cancel_scope.cancel()
    assert result() is None
    assert held.waiting == 0
    assert held.metrics.held_requests["abandoned"] == 1
