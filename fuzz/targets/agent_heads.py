"""Response heads from a hostile agent through a real server: one response per request."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from fuzz._registry import Target, given_target
from tests.integration import test_agent_heads_fuzz

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def _quiet() -> Iterator[tuple[object, ...]]:
    """Invalid heads are logged by the thousand (each a warning); the property judges them."""
    logger = logging.getLogger("pvtunnel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield ()
    finally:
        logger.setLevel(level)


TARGETS: list[Target] = [
    given_target(
        "agent-heads",
        "a hostile agent's response heads: the client parses exactly one response per request",
        test_agent_heads_fuzz.test_hostile_agent_heads_give_one_response_per_request,
        arguments=_quiet,
    ),
]
