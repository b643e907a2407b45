"""Routes whose agents left lately: remembered, so their requests wait instead of failing.

An agent that reconnects (a network cut, a restart, a rollout) is away for a few
seconds. Answering 404 meanwhile tells clients the name does not exist, which is
false and makes caches and monitors misbehave. So when the last agent serving a
name leaves, the server remembers the name for ``route_memory_s``; a request for
it waits up to ``hold_s`` (and only while fewer than ``max_held_requests`` wait)
for an agent serving it to register, and is forwarded then. If none comes it gets
503 with ``Retry-After``, which says "try again", not "no such thing". A name no
agent served lately still gets 404 at once, except in the server's first
``startup_hold_s``: a server that just started (a restart, a new replica agents
find at their next DNS look-up) has seen no agent yet, so any name is held.

Only new requests wait: one already sent over a lost connection fails with 502,
since the upstream may have acted on it and replaying it is not safe.

Pure: the caller passes ``now`` (trio's clock in the server).
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable


class HoldOutcome(enum.Enum):
    """Why a request for an unserved name was not forwarded."""

    NOT_REMEMBERED = "not remembered"  # never served, or too long ago: 404
    FULL = "full"  # too many requests wait already
    TIMED_OUT = "timed out"  # no agent came back within the hold time
    SHUTTING_DOWN = "shutting down"  # the server began to drain while it waited


_DETAIL: Final = {
    HoldOutcome.NOT_REMEMBERED: (404, "no agent serves this host"),
    HoldOutcome.FULL: (503, "the agent for this host is reconnecting; too many requests wait"),
    HoldOutcome.TIMED_OUT: (503, "the agent for this host is reconnecting; try again"),
    HoldOutcome.SHUTTING_DOWN: (503, "the server is shutting down"),
}


def hold_answer(
    outcome: HoldOutcome, hold_s: float
) -> tuple[int, str, tuple[tuple[bytes, bytes], ...]]:
    """The status, detail and extra headers for a request that was not forwarded.

    Args:
        outcome: Why it was not.
        hold_s: The hold time; a 503 asks the client to come back after as long
            (RFC 9110 section 10.2.3), about when a reconnecting agent is back.

    Returns:
        ``(status, detail, headers)``; the 503s carry ``Retry-After`` in whole seconds.
    """
    status, detail = _DETAIL[outcome]
    if status != 503:
        return status, detail, ()
    retry_after = b"%d" % max(1, math.ceil(hold_s))
    return status, detail, ((b"retry-after", retry_after),)


class RouteMemory:
    """Names whose last agent left, each until ``memory_s`` after it left.

    Bounded: only names some authenticated agent announced get in, and expired
    ones are dropped whenever another is added.
    """

    def __init__(self, memory_s: float) -> None:
        self.memory_s = memory_s
        # name -> until when (trio's clock) it is remembered.
        self.names: dict[str, float] = {}
        # Until when every name counts as remembered (see `remember_every_name`).
        self.every_name_until = -math.inf

    def remember_every_name(self, now: float, for_s: float) -> None:
        """The server starts: for ``for_s``, any name may be one whose agents have
        not connected yet, so none is answered as unknown."""
        self.every_name_until = now + for_s

    def remember(self, names: Iterable[str], now: float) -> None:
        """The last agent serving each of ``names`` left at ``now``."""
        self.names = {name: until for name, until in self.names.items() if until > now}
        until = now + self.memory_s
        for name in names:
            self.names[name] = until

    def forget(self, names: Iterable[str]) -> None:
        """An agent serves these names again."""
        for name in names:
            self.names.pop(name, None)

    def recalls(self, name: str | None, now: float) -> bool:
        """Whether ``name`` (a remembered name or None) was served less than ``memory_s``
        ago, or the server started lately enough that any name may still come."""
        if now < self.every_name_until:
            return True
        return name is not None and self.names.get(name, -math.inf) > now
