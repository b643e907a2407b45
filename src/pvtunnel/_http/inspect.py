"""Who may use the inspector's page and API, and which of them a request asks for.

Access is that of ``/status`` (``docs/inspector.md``): with no admin token the listener
is on loopback and answers without one; with a token, every inspector request
must carry it, as ``Authorization: Bearer <token>`` (scripts) or as the password
of HTTP Basic (any user name), so that a browser asks for it once and then sends
it with the page's own requests, including the event stream, which cannot set
headers.

A loopback listener is still reachable by the web pages its user visits, so
without a token two browser attacks are closed here:
- DNS rebinding (a hostile name that resolves to 127.0.0.1): the ``Host`` header
  must name a loopback address or ``localhost``;
- cross-site replays: a POST must be ``application/json`` (which a foreign page
  cannot send without a CORS preflight, and none is ever granted);
- requests of another site's page at all: an ``Origin`` must be the page's own,
  and a browser's ``Sec-Fetch-Site`` must say the same origin (or none: an
  address typed in). A foreign page could otherwise hold the event stream's
  few places open with requests it never reads.
"""

from __future__ import annotations

import enum
import urllib.parse
from typing import TYPE_CHECKING, Final

import attrs

from pvtunnel._http.access import basic_credentials
from pvtunnel._http.admin import AdminResponse, bearer_token, is_loopback_host

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pvtunnel._config import Secret

PREFIX: Final = b"/inspect"
API: Final = b"/inspect/api/requests"
EVENTS: Final = b"/inspect/api/events"
BASIC_CHALLENGE: Final = (b"www-authenticate", b'Basic realm="pvtunnel inspector"')
ASSETS: Final = {
    b"/inspect": ("index.html", "text/html; charset=utf-8"),
    b"/inspect/": ("index.html", "text/html; charset=utf-8"),
    b"/inspect/inspect.js": ("inspect.js", "text/javascript; charset=utf-8"),
    b"/inspect/inspect.css": ("inspect.css", "text/css; charset=utf-8"),
}
# The page draws captured bytes as text and data: images only; nothing it shows
# may load or run anything (a captured body is whatever a client sent). Every
# inspector answer carries these, not the page alone: a JSON answer holds
# captured text too, and is read as JSON, never sniffed as a page, framed or
# run, whoever opens it (an address typed in, a link, an old browser).
SECURITY_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class Action(enum.Enum):
    ASSET = "asset"
    LIST = "list"
    ONE = "one"
    REPLAY = "replay"
    EVENTS = "events"


@attrs.frozen(kw_only=True)
class InspectRequest:
    """What an inspector request asks for: an action and, for some, an asset or id."""

    action: Action
    asset: tuple[str, str] | None = None
    exchange_id: int | None = None


def is_inspect_path(target: bytes) -> bool:
    path = target.partition(b"?")[0]
    return path == PREFIX or path.startswith(PREFIX + b"/")


def check_access(
    token: Secret | None, method: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> AdminResponse | None:
    """None when the request may go on, else the refusal to send (see the module docstring)."""
    fields = list(headers)
    if token is not None:
        presented = bearer_token(fields) or basic_password(fields)
        if presented is None or not token.matches(presented):
            return AdminResponse(
                status=401,
                body=b"401 Unauthorized: the inspector needs the admin token\n",
                headers=(BASIC_CHALLENGE,),
            )
    else:
        host = _field(fields, b"host")
        if host is None or not is_loopback_host(host):
            return AdminResponse(
                status=403,
                body=b"403 Forbidden: open the inspector as localhost, 127.0.0.1 or [::1]\n",
            )
    if _from_another_site(fields):
        return AdminResponse(status=403, body=b"403 Forbidden: another site's page\n")
    if method == b"POST":
        content_type = (_field(fields, b"content-type") or b"").partition(b";")[0].strip()
        if content_type.lower() != b"application/json":
            return AdminResponse(status=415, body=b"415: send the edits as application/json\n")
    return None


def _from_another_site(fields: list[tuple[bytes, bytes]]) -> bool:
    origin = _field(fields, b"origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != _field(fields, b"host"):
        return True
    site = _field(fields, b"sec-fetch-site")
    return site is not None and site.lower() not in (b"same-origin", b"none")


def route(method: bytes, target: bytes) -> InspectRequest | AdminResponse:
    """The action an inspector path asks for, or the answer when there is none."""
    path = target.partition(b"?")[0]
    if method == b"POST":
        exchange_id = _exchange_id(path, suffix=b"/replay")
        if exchange_id is not None:
            return InspectRequest(action=Action.REPLAY, exchange_id=exchange_id)
        return _not_allowed(b"GET, HEAD")
    if method not in (b"GET", b"HEAD"):
        return _not_allowed(b"GET, HEAD, POST")
    asset = ASSETS.get(path)
    if asset is not None:
        return InspectRequest(action=Action.ASSET, asset=asset)
    if path == API:
        return InspectRequest(action=Action.LIST)
    if path == EVENTS:
        # A HEAD has no body to stream events in.
        if method != b"GET":
            return _not_allowed(b"GET")
        return InspectRequest(action=Action.EVENTS)
    exchange_id = _exchange_id(path, suffix=b"")
    if exchange_id is not None:
        return InspectRequest(action=Action.ONE, exchange_id=exchange_id)
    if _exchange_id(path, suffix=b"/replay") is not None:
        return _not_allowed(b"POST")
    return AdminResponse(status=404, body=b"404 Not Found: the inspector is at /inspect\n")


def _not_allowed(allow: bytes) -> AdminResponse:
    return AdminResponse(status=405, body=b"405 Method Not Allowed\n", headers=((b"allow", allow),))


def _exchange_id(path: bytes, *, suffix: bytes) -> int | None:
    prefix = API + b"/"
    if not path.startswith(prefix) or not path.endswith(suffix):
        return None
    digits = path[len(prefix) : len(path) - len(suffix)]
    if not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


def _field(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for field, value in headers if field == name), None)


def basic_password(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The password of an ``Authorization: Basic`` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            decoded = basic_credentials(value)
            if decoded is None:
                return None
            _, colon, password = decoded.partition(b":")
            return password if colon and password else None
    return None
