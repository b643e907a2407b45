"""The Date header's value, formatted once a second.

RFC 9110 section 6.6.1: a server sends Date on its own 2xx to 4xx answers, and a
proxy that forwards a response without one adds it. Formatting a date costs more
than the rest of a small answer's head, and a second holds thousands of them.
"""

from __future__ import annotations

import email.utils
import time

_cached_second = -1
_cached_value = b""


def http_date() -> bytes:
    """Now, as an HTTP date (IMF-fixdate: ``Sun, 06 Dec 2026 23:24:36 GMT``)."""
    global _cached_second, _cached_value
    second = int(time.time())
    if second != _cached_second:
        _cached_value = email.utils.formatdate(second, usegmt=True).encode("ascii")
        _cached_second = second
    return _cached_value
