"""HTTP through a real server, agent and upstream on loopback: valid and mutated requests."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from fuzz._registry import Target, given_target
from tests.integration import test_http_fuzz

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def _live_tunnel() -> Iterator[tuple[object, ...]]:
    """One tunnel per batch: started once, then every example of the batch goes through it.

    Warnings are expected by the thousand (a mutated HEAD goes to an upstream that
    cannot answer it) and the property judges every answer, so only errors are shown.
    """
    logger = logging.getLogger("pvtunnel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with test_http_fuzz.LiveTunnel() as live:
            yield (live,)
    finally:
        logger.setLevel(level)


TARGETS: list[Target] = [
    given_target(
        "http-valid",
        "valid requests, re-chunked, reach the upstream exactly as the forwarding model says",
        test_http_fuzz.valid_requests_arrive_as_sent,
        arguments=_live_tunnel,
    ),
    given_target(
        "http-hostile",
        "mutated requests get what a strict parse says; a bystander and a new client unharmed",
        test_http_fuzz.hostile_requests_get_what_a_parse_says,
        arguments=_live_tunnel,
    ),
]
