"""Whether the server forwards a request, and to which agent: the admission rules.

One pure function over the request's facts and the server's, as h11 makes its
protocol decisions, so the rules read in one place and are tested as a table
(``tests/http/test_admission.py``). In order, each refusing before the next is
asked:

1. no host to route by (no Host header, no absolute-form or CONNECT target): 400;
2. an external token is configured and the client did not present it in
   ``Proxy-Authorization``: 407, with ``Proxy-Authenticate`` (SECURITY.md);
3. the server is draining: 503;
4. no agent serves the name: `WaitForRoute`. The caller holds the request if the
   name's agents left lately and may come back (``_http/holding.py``), else
   answers 404;
5. the agent chosen (the least busy serving the name) has as many requests in
   flight as ``max_streams_per_agent``: 503.

Otherwise the request is forwarded to that agent.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Final, Generic

import attrs

from pvtunnel._http.access import PROXY_AUTHENTICATE, presented_token
from pvtunnel._http.routing import SessionT

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pvtunnel._config import Secret
    from pvtunnel._http.routing import Router

NO_HOST: Final = "the request names no host"
INVALID_HOST: Final = "the request's host is not a valid host[:port]"
# RFC 3986 section 3.2: host (an IP literal in brackets, IPv6 or IPvFuture, a
# zone as RFC 6874 writes it, or a reg-name, which also holds IPv4 addresses)
# and an optional port. Percent-encoding is a percent sign and two hex digits.
_UNRESERVED_OR_SUB_DELIM: Final = rb"[-A-Za-z0-9._~!$&'()*+,;=]"
_PCT_ENCODED: Final = rb"%[0-9A-Fa-f]{2}"
_AUTHORITY: Final = re.compile(
    rb"(?:\[(?:%s|%s|:)+\]|(?:%s|%s)*)(?::[0-9]*)?"
    % (_UNRESERVED_OR_SUB_DELIM, _PCT_ENCODED, _UNRESERVED_OR_SUB_DELIM, _PCT_ENCODED)
)
# Inside an IP literal's brackets, the other kind: "v", its version in hex, ".",
# then unreserved, sub-delims or ":" (RFC 3986 section 3.2.2).
_IP_FUTURE: Final = re.compile(rb"[vV][0-9A-Fa-f]+\.(?:%s|:)+" % _UNRESERVED_OR_SUB_DELIM)
# An IPv6 zone as a URI writes it: "%25", then unreserved or pct-encoded (RFC 6874).
_ZONE: Final = re.compile(rb"(?:[-A-Za-z0-9._~]|%[0-9A-Fa-f]{2})+")
TOKEN_REQUIRED: Final = "proxy authentication required"
SHUTTING_DOWN: Final = "the server is shutting down"
AGENT_AT_LIMIT: Final = "the agent for this host is at its limit"


@attrs.frozen(kw_only=True)
class Refuse:
    """Answer ``status`` with the short text ``reason`` instead of forwarding.

    ``headers`` go with the answer; ``route`` is the route matched, when the
    refusal came after routing (for the access log and metrics).
    """

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    route: str | None = None


@attrs.frozen(kw_only=True)
class Forward(Generic[SessionT]):
    """Forward the request to ``session``, the agent chosen for ``route``."""

    route: str
    session: SessionT


@attrs.frozen(kw_only=True)
class WaitForRoute:
    """No agent serves ``authority`` now: hold the request for one, or answer 404."""

    authority: str


def admit(
    *,
    authority: bytes | None,
    headers: Sequence[tuple[bytes, bytes]],
    token: Secret | None,
    draining: bool,
    router: Router[SessionT],
    max_streams_per_agent: int,
) -> Forward[SessionT] | Refuse | WaitForRoute:
    """Decide what becomes of one request (the rules are in the module docstring).

    Args:
        authority: What the request is routed by: the authority of an
            absolute-form target, the target of a CONNECT, else the Host header;
            None or empty when it has none.
        headers: The request's header fields (for ``Proxy-Authorization``).
        token: The external token clients must present, or None.
        draining: Whether the server is shutting down.
        router: The agents serving each route name.
        max_streams_per_agent: Requests one agent may have in flight.

    Returns:
        `Refuse`, `WaitForRoute`, or `Forward` to the least busy agent.
    """
    if not authority:
        return Refuse(status=400, reason=NO_HOST)
    if _AUTHORITY.fullmatch(authority) is None or (
        authority[:1] == b"[" and not is_ip_literal(authority[1 : authority.index(b"]")])
    ):
        # RFC 9112 section 3.2: a Host of invalid syntax is a 400, not a route
        # that happens not to exist ("app, evil.example", "user@app", "[app]").
        return Refuse(status=400, reason=INVALID_HOST)
    if token is not None:
        presented = presented_token(headers)
        if presented is None or not token.matches(presented):
            return Refuse(status=407, reason=TOKEN_REQUIRED, headers=(PROXY_AUTHENTICATE,))
    if draining:
        return Refuse(status=503, reason=SHUTTING_DOWN)
    key = authority.decode("latin-1")
    match = router.lookup(key)
    if match is None:
        return WaitForRoute(authority=key)
    return forward_to(match[0], match[1], max_streams_per_agent)


def is_ip_literal(inside: bytes) -> bool:
    """Whether ``inside`` (what an authority holds between its brackets) is an IPv6
    address, with or without a zone, or an IPvFuture: what brackets may hold."""
    if _IP_FUTURE.fullmatch(inside) is not None:
        return True
    address, separator, zone = inside.partition(b"%25")
    if (separator and _ZONE.fullmatch(zone) is None) or b"%" in address:
        return False  # Python would take a zone after a bare "%", a URI may not
    try:
        ipaddress.IPv6Address(address.decode("ascii"))
    except ValueError:
        return False
    return True


def forward_to(
    route: str, session: SessionT, max_streams_per_agent: int
) -> Forward[SessionT] | Refuse:
    """The last rule alone, for a request that found its agent after waiting for it.

    Returns:
        `Forward` to ``session``, or a 503 `Refuse` when it is at its limit.
    """
    if session.in_flight >= max_streams_per_agent:
        return Refuse(status=503, reason=AGENT_AT_LIMIT, route=route)
    return Forward(route=route, session=session)
