"""The request the agent writes upstream for a head the server sent (pure: no I/O)."""

from __future__ import annotations

import h11
import pytest

from pvtunnel._config import Route, RouteType
from pvtunnel._trio.upstream import upstream_request
from pvtunnel._wire.heads import RequestHead

ROUTE = Route(name="app", value="127.0.0.1", port=8080, type=RouteType.IP)


def post(*fields: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(
        route="app", method=b"POST", target=b"/", headers=((b"Host", b"app"), *fields)
    )


@pytest.mark.parametrize(
    ("length", "has_body"), [(b"5", True), (b"5, 5", True), (b"0, 0", False), (b"0", False)]
)
def test_a_list_of_equal_lengths_is_the_one_length(length: bytes, has_body: bool) -> None:
    """h11 takes "5, 5" as 5; a server sending it (no client can: the server's h11
    writes the one number) must not make the agent fail on its own reading."""
    request, body = upstream_request(post((b"Content-Length", length)), ROUTE)
    assert body is has_body
    assert dict(request.headers.raw_items())[b"Content-Length"] == length.partition(b",")[0]


def test_lengths_that_differ_are_refused() -> None:
    with pytest.raises(h11.LocalProtocolError):
        upstream_request(post((b"Content-Length", b"5, 6")), ROUTE)
