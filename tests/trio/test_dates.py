"""The Date header's value: an IMF-fixdate, formatted once per second."""

from __future__ import annotations

import calendar
from typing import TYPE_CHECKING

from pvtunnel._trio.dates import http_date

if TYPE_CHECKING:
    import pytest


def test_an_http_date_is_an_imf_fixdate_made_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [calendar.timegm((2026, 12, 6, 23, 24, 36)) + 0.25]
    monkeypatch.setattr("time.time", lambda: now[0])
    first = http_date()
    assert first == b"Sun, 06 Dec 2026 23:24:36 GMT"
    now[0] += 0.5
    assert http_date() is first  # the same second: not formatted again
    now[0] += 1
    assert http_date() == b"Sun, 06 Dec 2026 23:24:37 GMT"
