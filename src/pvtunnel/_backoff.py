"""Reconnection delays: exponential, capped, with jitter.

Jitter ("equal jitter": a delay drawn from the upper half of the current step)
keeps a fleet of agents that lost the same server from reconnecting in lockstep,
while still guaranteeing each waits at least half the step.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays before successive reconnection attempts.

    Args:
        initial_s: the first step (no more than the cap: a cap below it is every step).
        cap_s: no step grows beyond this.
        rng: the source of jitter (seeded in tests).
    """

    def __init__(self, initial_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if not (initial_s > 0 and cap_s > 0):
            raise ValueError("need initial_s > 0 and cap_s > 0")
        initial_s = min(initial_s, cap_s)
        self._initial_s = initial_s
        self._cap_s = cap_s
        self._step_s = initial_s
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The delay before the next attempt; each call doubles the step up to the cap."""
        step = self._step_s
        self._step_s = min(step * 2, self._cap_s)
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        """After a connection that lasted: start again from the first step."""
        self._step_s = self._initial_s
