"""Requests held while a route's agents reconnect (the rules: ``pvtunnel._http.holding``).

The server calls `HeldRequests.routes_left` when the last agent serving names
leaves and `routes_arrived` when an agent registers; the client handler calls
`wait_for_agent` when no agent serves the name it was asked for. Waiters park on
one lot and look the route up again at every registration, so an agent coming
back forwards every request held for it at once, without polling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from pvtunnel._http.holding import HoldOutcome, RouteMemory

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pvtunnel._config import ServerConfig
    from pvtunnel._http.routing import Router, SessionT
    from pvtunnel._metrics import ServerMetrics


class HeldRequests:
    """The server's memory of departed routes and the requests waiting for them.

    Args:
        config: ``timeouts.route_memory_s``, ``timeouts.hold_s`` and
            ``limits.max_held_requests`` bound how long names are remembered, how
            long a request waits and how many wait at once (0 turns holding off).
        metrics: Where outcomes are counted (``pvtunnel_held_requests_total``).
    """

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        self.memory = RouteMemory(config.timeouts.route_memory_s)
        self.hold_s = config.timeouts.hold_s
        self.max_held = config.limits.max_held_requests
        self.metrics = metrics
        self.waiting = 0
        self.is_closed = False
        self._routes_changed = trio.lowlevel.ParkingLot()
        self._waiting_changed = trio.lowlevel.ParkingLot()

    async def wait_waiting_changed(self) -> None:
        """Wait until a request starts or stops waiting (for status pages and tests)."""
        await self._waiting_changed.park()

    def server_started(self, startup_hold_s: float) -> None:
        """The listeners are open: hold any name for ``startup_hold_s`` (see `RouteMemory`)."""
        self.memory.remember_every_name(trio.current_time(), startup_hold_s)

    def routes_left(self, names: Iterable[str]) -> None:
        """No agent serves ``names`` any more: remember them from now."""
        self.memory.remember(names, trio.current_time())

    def routes_arrived(self, names: Iterable[str]) -> None:
        """An agent registered ``names``: wake the requests held for them."""
        self.memory.forget(names)
        self._routes_changed.unpark_all()

    def close(self) -> None:
        """The server is draining: release every held request (503) and hold no more."""
        self.is_closed = True
        self._routes_changed.unpark_all()

    def remembered_name(self, router: Router[SessionT], authority: str) -> str | None:
        """The departed route a request for ``authority`` is for, if it is remembered
        (for the log line and metrics of a held request that was refused)."""
        return router.match_name(authority, self.memory.names)

    async def wait_for_agent(
        self, router: Router[SessionT], authority: str
    ) -> tuple[str, SessionT] | HoldOutcome:
        """Wait for an agent serving ``authority``, if its route was served lately.

        Call it right after ``router.lookup(authority)`` found nothing, with no
        checkpoint in between, so no registration can slip past unseen.

        Returns:
            What ``router.lookup`` returns once an agent serving the route has
            registered, or why the request is not forwarded: never served (or too
            long ago), too many held already, the hold time ran out, or the server
            began to drain.
        """
        name = router.match_name(authority, self.memory.names)
        if not self.memory.recalls(name, trio.current_time()):
            return HoldOutcome.NOT_REMEMBERED
        if self.is_closed:
            return HoldOutcome.SHUTTING_DOWN
        if self.waiting >= self.max_held:
            self.metrics.held_request_ended("refused")
            return HoldOutcome.FULL
        self.waiting += 1
        self._waiting_changed.unpark_all()
        outcome = "abandoned"  # the client's own deadline or a cancellation ended the wait
        try:
            found: tuple[str, SessionT] | HoldOutcome = HoldOutcome.TIMED_OUT
            with trio.move_on_after(self.hold_s):
                found = await self._wait_until_served(router, authority)
            outcome = _OUTCOME_NAMES[found] if isinstance(found, HoldOutcome) else "served"
            return found
        finally:
            self.waiting -= 1
            self._waiting_changed.unpark_all()
            self.metrics.held_request_ended(outcome)

    async def _wait_until_served(
        self, router: Router[SessionT], authority: str
    ) -> tuple[str, SessionT] | HoldOutcome:
        while True:
            await self._routes_changed.park()
            if self.is_closed:
                return HoldOutcome.SHUTTING_DOWN
            match = router.lookup(authority)
            if match is not None:
                return match


_OUTCOME_NAMES: Final = {
    HoldOutcome.TIMED_OUT: "timed_out",
    HoldOutcome.SHUTTING_DOWN: "shutting_down",
}
