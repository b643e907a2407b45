"""The ``/status`` document and `pvtunnel status`, which reads it and prints tables.

The document's shape is written down once here, as TypedDicts, so the admin
listener that produces it and the command that reads it cannot drift apart
silently (mypy checks both ends). Reading uses blocking ``urllib``: the command
makes one request and exits, so it has no use for an event loop.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Final, Literal, NotRequired, TypedDict, cast

from pvtunnel._errors import StatusError
from pvtunnel._logs import printable

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_ADMIN_URL: Final = "http://127.0.0.1:8082"
FETCH_TIMEOUT_S: Final = 5.0
# A status document of thousands of agents is well under a MiB.
MAX_STATUS_BYTES: Final = 16 << 20
# How much of a first line that is not HTTP a message quotes.
_SHOWN_LINE: Final = 60
# The clock the whole answer is timed by (a test's own stands in for it).
_now = time.monotonic


class ServerAgentEntry(TypedDict):
    client_id: str
    address: str
    connected_since: str
    connected_for_s: float
    routes: list[str]
    in_flight: int
    requests: int


class ServerRouteEntry(TypedDict):
    name: str
    agents: list[str]


class ServerStatusDocument(TypedDict):
    kind: Literal["server"]
    # The id the server sends with every upgrade (protocol.md 1.1); servers older
    # than it send none, so readers use ``.get``.
    server_id: NotRequired[str]
    ready: bool
    draining: bool
    in_flight: int
    agents: list[ServerAgentEntry]
    routes: list[ServerRouteEntry]


class AgentRouteEntry(TypedDict):
    name: str
    target: str
    streams: int
    idle_connections: int
    connect_errors: int
    # Servers that refused the route at their latest registration ({url: reason});
    # empty while every server serves it.
    refused_by: dict[str, str]


class AgentServerEntry(TypedDict):
    """One server link of the agent: one per URL, or per address with DNS discovery."""

    url: str
    # The address DNS discovery found and dials; None for a plain URL.
    address: str | None
    connected: bool
    connected_since: str | None
    connected_for_s: float | None
    reconnects: int
    in_flight: int
    # Why the server turned the agent away for good (token, hello, certificate); None
    # while the link is connected or still retrying.
    refused: str | None
    # The id the server answered this link's upgrade with (protocol.md 1.1), while the
    # link holds that server; None otherwise, or from a server that sends none.
    server_id: NotRequired[str | None]
    # Another of the agent's links (its URL, and address with DNS discovery), which
    # held the server this one's latest attempt reached: this one then did not
    # register there (it retries at its reconnect pace). None otherwise. Agents
    # older than these keys lack them.
    same_server_as: NotRequired[str | None]


class AgentStatusDocument(TypedDict):
    """An agent's ``/status``; the top-level figures cover all its server links.

    ``server`` is the configured URL, or the URLs joined by ", " when there are
    several; ``connected`` means registered with at least one; ``connected_since``
    is the oldest registration still standing; ``reconnects`` and ``in_flight``
    are sums. ``servers`` has one entry per URL; documents from agents older than
    it lack the key, so readers use ``.get``.
    """

    kind: Literal["agent"]
    client_id: str
    server: str
    ready: bool
    connected: bool
    draining: bool
    connected_since: str | None
    connected_for_s: float | None
    reconnects: int
    in_flight: int
    routes: list[AgentRouteEntry]
    servers: NotRequired[list[AgentServerEntry]]


StatusDocument = ServerStatusDocument | AgentStatusDocument


def iso_utc(timestamp: float) -> str:
    """A wall-clock time as the status document shows it: ``2025-01-31T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def admin_url(text: str) -> str:
    """``host:port`` or a URL -> the URL of ``/status`` (a bare address means http://).

    A URL may end in ``/status`` already; any other path, a query or a fragment is
    refused rather than guessed at (``/status`` appended to them named another page).

    The host and port are checked here, not left to urllib and http.client: they
    read them more loosely (a port of 99999 wraps round to 34463, ``+80`` is 80),
    and the admin token goes wherever they connect.

    Raises:
        ValueError: a URL of another scheme than http or https (urllib would try it),
            a host or port that names no one listener, or a path, query or
            fragment that is not the listener's ``/status``.
    """
    scheme, found, rest = text.partition("://")
    if found and scheme.lower() not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL or HOST:PORT, got {text!r}")
    if not found:
        scheme, rest = "http", text
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ValueError(f"a space or control character has no place in a URL: {text!r}")
    # Where urllib ends the host and port (its _splithost), so both read the same.
    end = min((rest.find(mark) for mark in "/?#" if mark in rest), default=len(rest))
    authority, path = rest[:end], rest[end:]
    checked = _authority(authority, text)
    if "?" in path or "#" in path:
        raise ValueError(f"a query or fragment has no place in the admin URL: {text!r}")
    if path not in ("", "/", "/status"):
        raise ValueError(f"expected no path, / or /status after the host, got {text!r}")
    return f"{scheme}://{checked}/status"


def _authority(authority: str, text: str) -> str:
    """``host``, ``host:port`` or ``[v6]:port``, checked (``text`` is for the message)."""
    if "@" in authority:
        raise ValueError(
            f"a user name in the URL is not sent (the token comes from --token-file or "
            f"$PVTUNNEL_ADMIN_TOKEN): {text!r}"
        )
    if authority.startswith("["):
        address, closed, after = authority[1:].partition("]")
        if not closed or (after and not after.startswith(":")):
            raise ValueError(f"expected [IPV6] or [IPV6]:PORT, got {text!r}")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
        port = after[1:] if after else None
    else:
        host, colon, port = authority.rpartition(":")
        if not colon:
            host, port = authority, None
        if not host:
            raise ValueError(f"no host in {text!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 address goes in brackets ([::1]:8082), got {text!r}")
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port must be a number from 1 to 65535, got {text!r}")
    return authority


def fetch_status(url: str, token: str | None) -> StatusDocument:
    """GET the ``/status`` document.

    Args:
        url: The full URL of ``/status`` (see `admin_url`).
        token: The admin token, sent as ``Authorization: Bearer``; None sends none.

    Returns:
        The document, checked to be a server's or an agent's.

    Raises:
        StatusError: Unreachable ("cannot reach"), or reached but its answer was
            no status document: another status than 200 (401: the token), not
            HTTP, cut short, too slow or too big, not JSON, or JSON of another
            shape ("reached, but"). The message never contains the token.
    """
    headers = {"Accept": "application/json"}
    if token is not None:
        if not token.isascii() or not token.isprintable() or " " in token:
            # http.client's complaint would quote the whole header, token and all.
            raise StatusError("the admin token holds a character no header can carry (a newline?)")
        headers["Authorization"] = f"Bearer {token}"
    try:
        # Inside: urllib refuses some URLs here already (a bracket left open).
        request = urllib.request.Request(url, headers=headers)
        response = _OPENER.open(request, timeout=FETCH_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise StatusError(f"{url}: reached, but {_status_answer(exc.code, token)}") from None
    except urllib.error.URLError as exc:
        # urllib wraps what fails while it connects and sends the request.
        if isinstance(exc.reason, ssl.SSLError):
            raise StatusError(
                f"{url}: reached, but the TLS handshake failed: {exc.reason}"
            ) from None
        raise StatusError(f"cannot reach {url}: {exc.reason}") from None
    except (ValueError, http.client.InvalidURL) as exc:
        raise StatusError(f"cannot reach {url}: {exc}") from None
    except (http.client.HTTPException, OSError) as exc:
        # Raised while the answer's head is read: the request went out.
        raise StatusError(f"{url}: reached, but {_no_answer(exc)}") from None
    with response:
        if response.status != 200:
            # urllib raises for the others; a 2xx other than 200 carries no document.
            raise StatusError(f"{url}: reached, but {_status_answer(response.status, token)}")
        body = _read_answer(response, url)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise StatusError(f"{url}: reached, but the answer was not JSON") from None
    if not isinstance(document, dict) or document.get("kind") not in ("server", "agent"):
        raise StatusError(f"{url}: reached, but the answer was not a pvtunnel status document")
    # Checked just above as far as the formatter relies on it; json.loads gives Any.
    return cast("StatusDocument", document)


def _status_answer(code: int, token: str | None) -> str:
    """What an answer of another status than 200 means, after "reached, but"."""
    if code == 401:
        hint = "a token is needed" if token is None else "the token was refused"
        return f"the answer was HTTP 401, {hint} (set PVTUNNEL_ADMIN_TOKEN or pass --token-file)"
    if 300 <= code < 400:
        return f"the answer was HTTP {code}, a redirect (not followed: the token goes nowhere else)"
    return f"the answer was HTTP {code}, not 200"


def _no_answer(exc: http.client.HTTPException | OSError) -> str:
    """Why no answer's head came back, after "reached, but"."""
    if isinstance(exc, http.client.RemoteDisconnected):
        return "it closed the connection without an answer"
    if isinstance(exc, http.client.BadStatusLine):
        first = str(exc).strip()
        shown = first if len(first) <= _SHOWN_LINE else first[:_SHOWN_LINE] + "..."
        return f"the answer was not HTTP (its first line: {shown!r})"
    if isinstance(exc, http.client.HTTPException):
        return f"the answer was not valid HTTP ({type(exc).__name__}: {exc})"
    if isinstance(exc, TimeoutError):
        return f"no answer came within {FETCH_TIMEOUT_S:g}s"
    return f"the connection broke before an answer came ({exc.strerror or exc})"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer like any other: the token never follows it elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


# No proxies either: $http_proxy would carry the token (and a local address) through
# a third party.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _read_answer(response: http.client.HTTPResponse, url: str) -> bytes:
    """The body, within `MAX_STATUS_BYTES` and `FETCH_TIMEOUT_S` in all (the socket's
    timeout bounds each read only: a byte every few seconds would go on forever).

    http.client ends the body quietly where the connection closes, even short of
    its Content-Length: a body that stops early is a broken answer here, not a
    shorter document (JSON cut at the right place still parses).
    """
    declared = _declared_length(response, url)
    deadline = _now() + FETCH_TIMEOUT_S
    body = bytearray()
    try:
        while chunk := response.read1(65536):
            body += chunk
            if len(body) > MAX_STATUS_BYTES:
                raise StatusError(
                    f"{url}: reached, but the answer is over {MAX_STATUS_BYTES} bytes"
                )
            if _now() > deadline:
                raise StatusError(f"{url}: reached, but the answer took over {FETCH_TIMEOUT_S:g}s")
    except http.client.IncompleteRead:
        # A chunked body that ends before its last chunk (or a chunk size that is
        # not hex).
        raise StatusError(f"{url}: reached, but the answer was cut short") from None
    except OSError as exc:
        raise StatusError(
            f"{url}: reached, but the answer broke off ({exc.strerror or exc})"
        ) from None
    if declared is not None and len(body) < declared:
        raise StatusError(
            f"{url}: reached, but the answer was cut short: {len(body)} of the "
            f"{declared} bytes its Content-Length declares came"
        )
    return bytes(body)


def _declared_length(response: http.client.HTTPResponse, url: str) -> int | None:
    """The body's length as the answer's Content-Length declares it, or None for a
    chunked body (as http.client reads it) or one that runs to the close."""
    encoding = response.headers.get("Transfer-Encoding")
    if encoding is not None and encoding.lower() == "chunked":
        return None
    values = {value.strip() for value in response.headers.get_all("Content-Length", [])}
    if not values:
        return None
    # http.client reads a length it cannot parse as none at all (the body then
    # runs to the close), and one it can more loosely than HTTP allows ("+5", "1_0").
    if len(values) > 1 or not all(value.isascii() and value.isdigit() for value in values):
        raise StatusError(f"{url}: reached, but the answer's Content-Length is not one number")
    return int(values.pop())


def format_status(document: StatusDocument, source: str) -> str:
    """The document as a summary line and aligned tables, for a terminal.

    What the peer wrote is escaped (a newline or an escape sequence in a client id
    could forge lines or drive the terminal).

    Args:
        document: A server's or an agent's status.
        source: Where it came from, named in the summary line.

    Raises:
        StatusError: the document lacks what a status document holds, or holds
            values of the wrong kind.
    """
    try:
        # Inside: a document nested deeper than the stack allows overruns it here.
        escaped = cast("StatusDocument", _escaped(document))
        if escaped["kind"] == "server":
            return _format_server(escaped, printable(source))
        return _format_agent(escaped, printable(source))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
        reason = printable(f"{type(exc).__name__} {exc}")
        raise StatusError(
            f"{source}: reached, but the answer was not a pvtunnel status document ({reason})"
        ) from None


def _escaped(value: object) -> object:
    """``value`` with every string in it made printable (see `printable`)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        # Keys too: some are values a peer chose (the server URLs of ``refused_by``).
        return {_escaped(key): _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value


def _format_server(document: ServerStatusDocument, source: str) -> str:
    agents = document["agents"]
    state = _state(ready=document["ready"], draining=document["draining"])
    lines = [
        f"pvtunnel server at {source}: {state}, {_count(len(agents), 'agent')}, "
        f"{_count(document['in_flight'], 'stream')} in flight",
        "",
    ]
    if agents:
        lines += _table(
            ("AGENT", "ADDRESS", "CONNECTED SINCE", "FOR", "IN FLIGHT", "REQUESTS", "ROUTES"),
            [
                (
                    agent["client_id"],
                    agent["address"],
                    agent["connected_since"],
                    _duration(agent["connected_for_s"]),
                    str(agent["in_flight"]),
                    str(agent["requests"]),
                    ", ".join(agent["routes"]) or "-",
                )
                for agent in agents
            ],
            numeric={4, 5},
        )
    else:
        lines.append("no agents connected")
    lines.append("")
    routes = document["routes"]
    if routes:
        lines += _table(
            ("ROUTE", "AGENTS"),
            [(route["name"], ", ".join(route["agents"])) for route in routes],
        )
    else:
        lines.append("no routes served")
    return "\n".join(lines)


def _format_agent(document: AgentStatusDocument, source: str) -> str:
    state = _state(ready=document["ready"], draining=document["draining"])
    servers = document.get("servers", [])
    discovered = any(server.get("address") for server in servers)
    if len(servers) > 1 or discovered:
        up = sum(server["connected"] for server in servers)
        link = f"connected to {up} of {len(servers)} servers"
    elif document["connected"]:
        since = document["connected_since"] or "?"
        for_s = document["connected_for_s"]
        link = f"connected to {document['server']} since {since}"
        if for_s is not None:
            link += f" ({_duration(for_s)})"
    else:
        link = f"not connected to {document['server']}"
    lines = [
        f"pvtunnel agent {document['client_id']} at {source}: {state}, {link}, "
        f"{_count(document['reconnects'], 'reconnect')}, "
        f"{_count(document['in_flight'], 'stream')} in flight",
        "",
    ]
    if len(servers) > 1 or discovered:
        lines += _servers_table(servers, discovered=discovered)
        lines += [
            f"{_label(server)}: not registered; its latest attempt reached the server "
            f"{server['same_server_as']} holds"
            for server in servers
            if server.get("same_server_as") and not server["connected"]
        ]
        lines.append("")
    lines += _table(
        ("ROUTE", "TARGET", "STREAMS", "IDLE CONNECTIONS", "CONNECT ERRORS"),
        [
            (
                # A route a server would not take (its token does not cover the name).
                route["name"] + (" (refused)" if route.get("refused_by") else ""),
                route["target"],
                str(route["streams"]),
                str(route["idle_connections"]),
                str(route["connect_errors"]),
            )
            for route in document["routes"]
        ],
        numeric={2, 3, 4},
    )
    refusals = [
        f"{route['name']}: refused by {url}: {reason}"
        for route in document["routes"]
        for url, reason in route.get("refused_by", {}).items()
    ]
    if refusals:
        lines += ["", *refusals]
    return "\n".join(lines)


def _servers_table(servers: Sequence[AgentServerEntry], *, discovered: bool) -> list[str]:
    """One row per server link; shown with several (or discovered), else the summary says it."""
    rows: list[tuple[str, ...]] = []
    for server in servers:
        if server["connected"]:
            link = "connected"
        elif server["refused"] is not None:
            link = "refused"
        else:
            link = "same server" if server.get("same_server_as") else "connecting"
        for_s = server["connected_for_s"]
        address = (server.get("address") or "-",) if discovered else ()
        rows.append(
            (
                server["url"],
                *address,
                link,
                server["connected_since"] or "-",
                "-" if for_s is None else _duration(for_s),
                str(server["reconnects"]),
                str(server["in_flight"]),
            )
        )
    header = ("SERVER", *(("ADDRESS",) if discovered else ()), "STATE", "CONNECTED SINCE")
    shift = 1 if discovered else 0
    return _table((*header, "FOR", "RECONNECTS", "IN FLIGHT"), rows, numeric={4 + shift, 5 + shift})


def _label(server: AgentServerEntry) -> str:
    """A server link as the agent's logs name it: its URL, and the address it dials."""
    address = server.get("address")
    return server["url"] if not address else f"{server['url']} ({address})"


def _state(*, ready: bool, draining: bool) -> str:
    if draining:
        return "draining"
    return "ready" if ready else "not ready"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``, ``4d02h``: precise enough to read at a glance."""
    whole = max(0, int(seconds))
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: set[int] | None = None
) -> list[str]:
    """Columns two spaces apart; numbers right-aligned; the last column not padded."""
    numeric = numeric or set()
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
