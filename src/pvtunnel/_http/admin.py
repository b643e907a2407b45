"""What the admin listener answers (``[admin]``), as a plain function.

``/live`` and ``/ready`` never ask for the token: load balancers and Kubernetes
probes cannot be given a secret without writing it into a manifest, and the two
answers reveal nothing but a yes or no. ``/metrics`` and ``/status`` name routes,
agents and traffic, so with a token configured they require ``Authorization:
Bearer <token>``, compared in constant time.
"""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from pvtunnel._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pvtunnel._config import Secret

TEXT: Final = "text/plain; charset=utf-8"
JSON: Final = "application/json"
WWW_AUTHENTICATE: Final = (b"www-authenticate", b'Bearer realm="pvtunnel admin"')


class AdminSource(Protocol):
    """What a server or an agent shows on its admin listener."""

    def is_ready(self) -> bool:
        """Whether to take traffic: listening (or registered) and not draining."""
        ...

    def metrics_text(self) -> str:
        """The Prometheus text exposition of this process's figures."""
        ...

    def status(self) -> Mapping[str, object]:
        """The ``/status`` document (see `pvtunnel._status`)."""
        ...


@attrs.frozen(kw_only=True)
class AdminResponse:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: tuple[tuple[bytes, bytes], ...] = ()


def respond(
    source: AdminSource,
    token: Secret | None,
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    inspector: bool = False,
) -> AdminResponse:
    """Answer one admin request.

    Args:
        source: The server or agent being asked about.
        token: The configured admin token; None means no token is asked for.
        method: The request method (GET and HEAD are served; the caller leaves
            out the body for HEAD).
        target: The request target; a query string is ignored.
        headers: The request headers, names lower-case (as h11 gives them).
        inspector: Whether this listener also serves the inspector at ``/inspect``
            (answered elsewhere); a 404 then names it among the paths to try.

    Returns:
        The status, body and content type to send.
    """
    if method not in (b"GET", b"HEAD"):
        return AdminResponse(
            status=405, body=b"405 Method Not Allowed\n", headers=((b"allow", b"GET, HEAD"),)
        )
    path = target.partition(b"?")[0]
    if path == b"/live":
        return AdminResponse(status=200, body=b"live\n")
    if path == b"/ready":
        if source.is_ready():
            return AdminResponse(status=200, body=b"ready\n")
        return AdminResponse(status=503, body=b"not ready\n")
    if token is not None:
        presented = bearer_token(headers)
        if presented is None or not token.matches(presented):
            return AdminResponse(
                status=401,
                body=b"401 Unauthorized: send Authorization: Bearer <admin token>\n",
                headers=(WWW_AUTHENTICATE,),
            )
    else:
        # Without a token the listener is on loopback, where the web pages its user
        # visits can still reach it under a hostile name that resolves to 127.0.0.1
        # (DNS rebinding) and read the routes' targets: only loopback names answer.
        host = next((value for name, value in headers if name == b"host"), None)
        if host is None or not is_loopback_host(host):
            return AdminResponse(
                status=403,
                body=b"403 Forbidden: ask as localhost, 127.0.0.1 or [::1], or set a token\n",
            )
    if path == b"/metrics":
        return AdminResponse(
            status=200, body=source.metrics_text().encode(), content_type=METRICS_CONTENT_TYPE
        )
    if path == b"/status":
        body = json.dumps(source.status(), indent=2).encode() + b"\n"
        return AdminResponse(status=200, body=body, content_type=JSON)
    inspect = b"/inspect, " if inspector else b""
    return AdminResponse(
        status=404, body=b"404 Not Found: try /metrics, /status, %s/live or /ready\n" % inspect
    )


def is_loopback_host(host: bytes) -> bool:
    """Whether a Host header names this machine's loopback: localhost, 127/8, ::1."""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        address, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
    else:
        address = text.rpartition(":")[0] if ":" in text else text
    if address == "localhost" or address.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            credentials = credentials.strip()
            if scheme.lower() == b"bearer" and credentials:
                return credentials
            return None
    return None
