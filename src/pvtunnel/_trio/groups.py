"""What a nursery's exception group comes down to, for callers that catch single errors.

A nursery wraps whatever its tasks raise in an exception group, while its callers
decide on one leaf (retry a network error, give up on a refusal, answer a reset).
The server, the agent, the client handlers, the replay and the CLI all need that
leaf; kept apart from all of them, taking it imports nothing else of pvtunnel's.
"""

from __future__ import annotations

import trio


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure that made a two-task nursery give up, for callers that catch leaves.

    A nursery wraps even a single failure in a group; the sibling it cancelled
    adds only `trio.Cancelled`. Cancellation is level-triggered in Trio, so an
    outer cancel is delivered again at the next checkpoint and is not lost.
    """
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group
