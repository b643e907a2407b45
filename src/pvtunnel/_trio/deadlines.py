"""Time limits of many client connections, kept by one task.

A client connection's time limit moves at least twice per request: the wait for
its next head, then the upstream's time to answer. On a Trio cancel scope each
move is a new entry in Trio's deadline heap, and that was a few per cent of the
server's CPU under load. Here a move is an attribute write (`Deadline.set`).
`Deadlines.run` keeps at most one live heap entry per connection, at the time it
was armed; when that time comes, it cancels the connection's scope if the limit
has passed, or arms again at the limit as it stands now. So a limit that keeps
moving later, the common case, costs one heap entry per time limit's length, not
one per request; a limit moved earlier than its entry is armed at once, so no
limit fires late.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Final

import trio

# Entries for limits that moved earlier, or for connections that ended, stay in the
# heap until their time; past this many, and past the live ones, the heap is rebuilt.
PRUNE_AT: Final = 256

_Entry = tuple[float, int, "Deadline"]


class Deadline:
    """One connection's time limit: once `due` has passed, `scope` is cancelled."""

    __slots__ = ("_entry", "_keeper", "due", "scope")

    def __init__(self, keeper: Deadlines, scope: trio.CancelScope) -> None:
        self._keeper = keeper
        self.scope = scope
        self.due = math.inf
        # The heap entry this limit is armed at, if any.
        self._entry: _Entry | None = None

    def set(self, when: float) -> None:
        """Let the scope run until ``when`` (trio clock); `math.inf` lifts the limit."""
        self.due = when
        entry = self._entry
        if when < (math.inf if entry is None else entry[0]):
            self._keeper._arm(self, when)

    def release(self) -> None:
        """The connection ended: its limit fires no more."""
        self.due = math.inf
        if self._entry is not None:
            self._entry = None
            self._keeper._forgotten()


class Deadlines:
    """The time limits of a server's client connections; `run` must be running."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._order = itertools.count()
        # Entries in the heap that no limit is armed at any more.
        self._stale = 0
        # The scope `run` sleeps in, while it sleeps: its deadline is the heap's first.
        self._sleep: trio.CancelScope | None = None

    def deadline(self, scope: trio.CancelScope) -> Deadline:
        """A limit, lifted to start with, that cancels ``scope`` when it passes."""
        return Deadline(self, scope)

    def __len__(self) -> int:
        """Entries in the heap, live or stale."""
        return len(self._heap)

    def _arm(self, deadline: Deadline, when: float) -> None:
        if deadline._entry is not None:
            self._stale += 1
        entry = deadline._entry = (when, next(self._order), deadline)
        heapq.heappush(self._heap, entry)
        if self._sleep is not None and when < self._sleep.deadline:
            self._sleep.deadline = when
        self._prune_if_due()

    def _forgotten(self) -> None:
        self._stale += 1
        self._prune_if_due()

    def _prune_if_due(self) -> None:
        if self._stale > PRUNE_AT and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2]._entry is entry]
            heapq.heapify(self._heap)
            self._stale = 0

    async def run(self) -> None:
        """Cancel the scopes whose limits have passed, as they pass, until cancelled."""
        while True:
            heap = self._heap
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            now = trio.current_time()
            while (heap := self._heap) and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                deadline = entry[2]
                if deadline._entry is not entry:
                    self._stale -= 1
                    continue
                deadline._entry = None
                if deadline.due <= now:
                    deadline.due = math.inf
                    deadline.scope.cancel()
                elif deadline.due < math.inf:
                    self._arm(deadline, deadline.due)
