"""The checks behind every configuration value, shared by files, flags and code.

A rule is a function from a raw value (whatever TOML, a flag or a caller handed
over) to the finished value, raising ``InvalidValue`` with a message written to
follow ``"<file>: <key.path>: "``. One function serves three callers, so a port
means the same thing everywhere: the cattrs converter uses it as the field's
structure hook (every bad field is reported, each with its own key path), attrs
runs it as the field's validator (so objects built in code or by ``attrs.evolve``
cannot skip it), and the flag parsers call it directly.

Messages quote what the user wrote (``got "80a"``) except for tokens, which are
never echoed anywhere.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import attrs

from pvtunnel._errors import FieldError, InvalidValue

from .secret import Secret

T = TypeVar("T")

MAX_INT32: Final = 2**31 - 1
MAX_HOST_NAME_LENGTH: Final = 253
MAX_CLIENT_ID_LENGTH: Final = 255
# Far above any generated token (43 characters), and well inside the 16 KiB that
# the heads carrying one hold: an agent's WebSocket upgrade, an admin request.
MAX_TOKEN_LENGTH: Final = 4096
_MAX_SHOWN_CHARS: Final = 80

# RFC 1123 labels; route *targets* also accept "_" because Docker and Kubernetes
# service names may carry one and resolve fine, while route *names* travel in Host
# headers, where browsers reject it. re.ASCII: with IGNORECASE alone, [a-z] also
# matches the Kelvin sign and the long s, which cannot be encoded into a Host header.
_LABEL: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TARGET_LABEL: Final = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE | re.ASCII)
_TARGET_NAME: Final = re.compile(
    rf"{_TARGET_LABEL}(?:\.{_TARGET_LABEL})*", re.IGNORECASE | re.ASCII
)
_PORT_DIGITS: Final = re.compile(r"[0-9]{1,5}")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
# A fixed Host header value goes out verbatim: keep it to what a host[:port] can hold,
# so no configuration can smuggle whitespace or line breaks into a request head.
_HOST_HEADER_VALUE: Final = re.compile(r"[A-Za-z0-9._~:\[\]-]+")
_FIRST_KEY: Final = re.compile(r"[^.\[]+")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class Rule(Generic[T]):
    """An attrs validator that runs ``parse``; the converter also uses ``parse`` as hook."""

    parse: Callable[[object], T]

    def __call__(self, instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        try:
            self.parse(value)
        except InvalidValue as exc:
            entries = [(join_path(attribute.name, at), message) for at, message in exc.entries]
            raise FieldError(type(instance).__name__, entries) from None


def join_path(base: str, sub: str) -> str:
    """Append a key or an index (``"[3]"``) to a dotted key path."""
    if not sub:
        return base
    if not base or sub.startswith("["):
        return base + sub
    return f"{base}.{sub}"


def split_path(path: str) -> tuple[str, str]:
    """Split a key path into its first key and the rest, as `join_path` would join
    them: ``"tokens[1].token"`` is ``("tokens", "[1].token")``."""
    head = _FIRST_KEY.match(path)
    end = 0 if head is None else head.end()
    return path[:end], path[end:].removeprefix(".")


def format_key(key: str) -> str:
    """A key as a message names it: bare where TOML would write it bare, else quoted,
    so that one holding a dot or a space is not read as a path or two words.

    Shared by the loader (unknown keys) and the flag parser (``--route`` options).
    """
    return key if _BARE_KEY.fullmatch(key) else show(key)


def show(value: object) -> str:
    """Render a user's value in TOML spelling, short enough for a one-line message."""
    if isinstance(value, str):
        text = value if len(value) <= _MAX_SHOWN_CHARS else value[:_MAX_SHOWN_CHARS] + "..."
        return json.dumps(text, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        if len(text) <= _MAX_SHOWN_CHARS:
            return text
        return f"{text[:_MAX_SHOWN_CHARS]}... ({len(text.lstrip('-'))} digits)"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def describe(value: object) -> str:
    """Name a value's TOML type without quoting it, for values that may be secret."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    return show(value)  # arrays, tables and dates, which show() never quotes


def is_ip_literal(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (no brackets, no port)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_host_name(text: str) -> bool:
    """Whether ``text`` is an RFC 1123 host name (what a Host header may carry)."""
    return len(text) <= MAX_HOST_NAME_LENGTH and _HOST_NAME.fullmatch(text) is not None


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a listener on this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def binds_overlap(one: str, other: str) -> bool:
    """Whether listeners bound to hosts ``one`` and ``other`` on one port would clash.

    A wildcard (0.0.0.0, ::) takes the port on every address of its family, so
    Linux refuses a second bind beside it (elsewhere the narrower listener would
    quietly take its address's connections). trio opens IPv6 listeners
    IPv6-only, so the two families never meet. A host name is bound on every
    address it resolves to, one listener each; "localhost" counts as both
    127.0.0.1 and ::1, as most systems resolve it (without ::1 on this machine,
    the check still refuses what would clash on one that has it, so a file that
    passes here starts there too). Any other name is only known to clash with
    itself, as its addresses are not looked up here.
    """
    if one.lower() == other.lower():
        return True
    return any(
        first.version == second.version
        and (first == second or first.is_unspecified or second.is_unspecified)
        for first in _bind_addresses(one)
        for second in _bind_addresses(other)
    )


def _bind_addresses(host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    if host.lower() == "localhost":
        return (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        return ()


def integer(low: int, high: int) -> Callable[[object], int]:
    """Build the rule for an integer in ``low..high``; strings like "80" are refused."""

    def parse(value: object) -> int:
        # TOML booleans are Python ints: `port = true` must not mean port 1.
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise InvalidValue(f"expected an integer from {low} to {high}, got {show(value)}")

    return parse


listen_port = integer(0, 65535)
"""A port to listen on; 0 asks the OS for any free port (tests, demos)."""

route_port = integer(1, 65535)
"""A port to connect to: 0 is never a real destination."""


def boolean(value: object) -> bool:
    """A TOML boolean: ``true`` or ``false``, never a string or a number."""
    if isinstance(value, bool):
        return value
    raise InvalidValue(f"expected true or false, got {show(value)}")


# The longest duration any key takes: past a year no wait is one anyone means,
# and such values reach floats whose seconds spelled out (a log line, a header)
# run to hundreds of digits: 1e308 is valid TOML.
MAX_SECONDS: Final = 365 * 24 * 3600
# hold_s: a held request keeps its client waiting this long, and its 503 asks the
# client to come back after as long (Retry-After). An hour is past what clients and
# proxies in front of them wait for a response head (a minute or a few), and past
# any agent's restart; longer would only hold connections and memory.
MAX_HOLD_S: Final = 3600


def seconds(value: object) -> float:
    """A duration in seconds: positive and finite (``inf`` and ``nan`` are valid
    TOML), at most a year (`MAX_SECONDS`)."""
    return _seconds_up_to(value, MAX_SECONDS, "a year")


def _positive_seconds(value: object) -> int | float | None:
    """``value`` if it is a positive finite number, else None. Not yet a float: an
    integer too large for one (TOML integers have any number of digits) is compared
    as it is, where ``float()`` or ``math.isfinite`` would raise OverflowError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if value > 0 else None


def _seconds_up_to(value: object, most: float, what: str) -> float:
    duration = _positive_seconds(value)
    if duration is None:
        raise InvalidValue(f"expected a finite number of seconds greater than 0, got {show(value)}")
    if duration > most:
        raise InvalidValue(f"expected at most {show(most)} seconds ({what}), got {show(value)}")
    return float(duration)


def hold_seconds(value: object) -> float:
    """``hold_s``: positive, at most an hour (`MAX_HOLD_S`)."""
    return _seconds_up_to(
        value,
        MAX_HOLD_S,
        "an hour: a held client waits as long, and is told to come back after as long",
    )


def interval_seconds(floor: float, why: str) -> Callable[[object], float]:
    """Build the rule for a duration that paces a loop: at least ``floor`` seconds.

    A loop that sleeps for the key's value between rounds (a PING, a DNS look-up,
    a reconnect attempt) spins at a value near zero: ``floor`` is the shortest
    pause that is still a pause, and ``why`` says, in the message, what the loop
    does each round.
    """

    def parse(value: object) -> float:
        duration = seconds(value)
        if duration < floor:
            raise InvalidValue(
                f"expected at least {show(floor)} seconds ({why}), got {show(value)}"
            )
        return duration

    return parse


# The floors of the keys that pace a loop; timeouts that only bound a wait need
# none, as a tiny one ends its wait, not a loop.
#
# 10 ms: both ends PING every heartbeat_s. Near zero each sleep ends at once (or
# at the event loop's next millisecond tick) and the loop spins; at 10 ms a link
# already carries a hundred PINGs and PONGs a second for nothing but liveness.
MIN_HEARTBEAT_S: Final = 0.01
# 50 ms: each round is a DNS look-up (a thread, and a query to a resolver other
# machines share), so at most 20 a second per URL; a failing link asks for one
# more, at most once a second, whatever this is.
MIN_DISCOVER_INTERVAL_S: Final = 0.05
# 200 ms: each round dials a server that may be down, and logs the failure and
# the pause. With the jitter (each pause from half the cap to the cap), an agent
# then tries at most ten times a second per server, not thousands of times.
MIN_RECONNECT_MAX_S: Final = 0.2


def delay_seconds(value: object) -> float:
    """A delay in seconds: 0 (none), or positive and finite, at most a year."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    if _positive_seconds(value) is None:
        raise InvalidValue(f"expected a finite number of seconds, 0 or more, got {show(value)}")
    return seconds(value)


def string(value: object, what: str) -> str:
    """Narrow ``value`` to ``str`` or explain what was expected instead."""
    if not isinstance(value, str):
        raise InvalidValue(f"expected {what}, got {show(value)}")
    return value


def host(value: object) -> str:
    """A bind address: an IP literal or a host name."""
    text = string(value, "a host name or IP address")
    if not (is_ip_literal(text) or is_host_name(text)):
        raise InvalidValue(f"expected a host name or IP address, got {show(value)}")
    return text


def domain(value: object) -> str | None:
    """The optional base domain for subdomain routing, lower-cased."""
    if value is None:
        return None
    text = string(value, "a domain name")
    if not is_host_name(text) or is_ip_literal(text):
        raise InvalidValue(f"expected a domain name such as tunnel.example.com, got {show(value)}")
    return text.lower()


def client_id(value: object) -> str:
    """An agent's name in logs and /status: printable, no spaces, at most 255 characters."""
    text = string(value, "a string")
    if not text:
        raise InvalidValue("must not be empty")
    if (
        len(text) > MAX_CLIENT_ID_LENGTH
        or not text.isprintable()
        or any(char.isspace() for char in text)
    ):
        raise InvalidValue(
            f"expected at most {MAX_CLIENT_ID_LENGTH} printable characters without spaces, "
            f"got {show(value)}"
        )
    return text


def token_text(text: str) -> str | None:
    """Return why ``text`` cannot be a token, or None; never mentions the text itself."""
    if not text:
        return "must not be empty"
    # Tokens travel in Authorization headers: anything outside visible ASCII would
    # corrupt the request head or be mangled on the way.
    if not all("!" <= char <= "~" for char in text):
        return "must be printable ASCII without spaces (it is sent in an HTTP header)"
    if len(text) > MAX_TOKEN_LENGTH:
        return f"must be at most {MAX_TOKEN_LENGTH} characters (it is sent in an HTTP header)"
    return None


def secret(value: object) -> Secret:
    """A token given inline; the message never repeats the value."""
    if isinstance(value, Secret):
        text = value.reveal()
    elif isinstance(value, str):
        text = value
    else:
        raise InvalidValue("expected a string")
    problem = token_text(text)
    if problem is not None:
        raise InvalidValue(problem)
    return value if isinstance(value, Secret) else Secret(text)


def optional(parse: Callable[[object], T]) -> Callable[[object], T | None]:
    """Let None (an absent key) through ``parse``."""

    def parse_optional(value: object) -> T | None:
        return None if value is None else parse(value)

    return parse_optional


optional_secret = optional(secret)


def path(value: object) -> Path:
    """A file path; the loader has already made relative ones relative to the file."""
    if isinstance(value, Path):
        return value
    text = string(value, "a file path")
    if not text:
        raise InvalidValue("expected a file path, got an empty string")
    return Path(text)


optional_path = optional(path)


def array(item: Callable[[object], T], what: str) -> Callable[[object], tuple[T, ...]]:
    """Build the rule for an array whose every element obeys ``item``.

    All bad elements are reported, each at its own index.
    """

    def parse(value: object) -> tuple[T, ...]:
        if not isinstance(value, list | tuple):
            raise InvalidValue(f"expected an array of {what}, got {show(value)}")
        items: list[T] = []
        problems: list[tuple[str, str]] = []
        for index, element in enumerate(value):
            try:
                items.append(item(element))
            except InvalidValue as exc:
                problems.extend((join_path(f"[{index}]", at), msg) for at, msg in exc.entries)
        if problems:
            raise InvalidValue.many(problems)
        return tuple(items)

    return parse


def network(value: object) -> Network:
    """A whitelist entry: an address or a CIDR range without host bits."""
    text = string(value, "an IP address or CIDR range")
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidValue(f"expected an IP address or CIDR range, got {show(value)}") from None
    # Silently widening "10.0.0.1/8" would let in more clients than the user may think.
    raise InvalidValue(f"{show(value)} has host bits set; write the network, {show(str(loose))}")


def whitelist_entry(value: object) -> str:
    """Keep the entry as written (for messages and /status) once it parses."""
    network(value)
    assert isinstance(value, str)
    return value


whitelist = array(whitelist_entry, "IP addresses or CIDR ranges")


def route_name(value: object) -> str:
    """A route alias: a host name, optionally with ":port", lower-cased for matching."""
    text = string(value, "a route name")
    # ASCII before lower(): "\u212a".lower() is "k", a name the user never wrote.
    name, colon, port = text.lower().partition(":")
    if (
        not text.isascii()
        or not is_host_name(name)
        or (colon and not (_PORT_DIGITS.fullmatch(port) and 1 <= int(port) <= 65535))
    ):
        raise InvalidValue(
            "expected a route name (letters, digits, '-' and '.', optionally ':port'), "
            f"got {show(value)}"
        )
    return text.lower()


def route_target(value: object) -> str:
    """Where a route leads: a host name or an IP literal (IPv6 without brackets)."""
    text = string(value, "a host name or IP address")
    if text.startswith("[") and text.endswith("]") and is_ip_literal(text[1:-1]):
        text = text[1:-1]
    if is_ip_literal(text):
        return text
    if len(text) > MAX_HOST_NAME_LENGTH or _TARGET_NAME.fullmatch(text) is None:
        raise InvalidValue(f"expected a host name or IP address, got {show(value)}")
    return text


def host_header(value: object) -> str:
    """``preserve``, ``rewrite`` or a fixed Host value that is safe to send verbatim."""
    text = string(value, '"preserve", "rewrite" or a fixed host name')
    if _HOST_HEADER_VALUE.fullmatch(text) is None:
        raise InvalidValue(
            f'expected "preserve", "rewrite" or a fixed host[:port], got {show(value)}'
        )
    return text


def scope_pattern(value: object) -> str:
    """A scoped token's claim: "*", "*.suffix" or an exact route name."""
    text = string(value, "a route name pattern")
    if not text.isascii():
        raise InvalidValue(f'expected a route name, "*.domain" or "*", got {show(value)}')
    text = text.lower()
    if text == "*":
        return text
    exact = text[2:] if text.startswith("*.") else text
    try:
        route_name(exact)
    except InvalidValue:
        raise InvalidValue(f'expected a route name, "*.domain" or "*", got {show(value)}') from None
    return text


def scope_patterns(value: object) -> tuple[str, ...]:
    """At least one pattern: a token that may claim nothing is a mistake."""
    patterns = array(scope_pattern, "route name patterns")(value)
    if not patterns:
        raise InvalidValue('expected at least one route name pattern, such as "*.example.com"')
    return patterns


def server_url(value: object) -> str:
    """Normalise one server address to a ws:// or wss:// URL.

    A bare "host:port" (the seed's form) means ws://. Credentials in the URL are
    refused without echoing it: the token has its own keys so it stays out of argv
    and logs.
    """
    text = string(value, "a ws:// or wss:// URL")
    url = text if "://" in text else f"ws://{text}"
    authority = url.partition("://")[2].partition("/")[0]
    if "@" in authority:
        # Checked before anything that would quote the URL back.
        raise InvalidValue("credentials in the URL are not allowed: set token or token_file")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidValue(f"expected a ws:// or wss:// URL, got {show(value)}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise InvalidValue(f"expected a ws:// or wss:// URL, got {show(value)}")
    hostname = parts.hostname or ""
    # urlsplit drops what follows "]" up to a colon: "[::1]x" would dial [::1].
    after_brackets = parts.netloc.partition("]")[2] if parts.netloc.startswith("[") else ""
    if not (is_ip_literal(hostname) or is_host_name(hostname)) or (
        after_brackets and not after_brackets.startswith(":")
    ):
        raise InvalidValue(f"expected a URL with a host name or IP address, got {show(value)}")
    if not _url_port_valid(parts.netloc):
        raise InvalidValue(f"the port must be a number from 1 to 65535, got {show(value)}")
    if parts.fragment or any(char.isspace() for char in url):
        raise InvalidValue(f"expected a ws:// or wss:// URL, got {show(value)}")
    return f"{scheme}{url[len(parts.scheme) :]}"


def _url_port_valid(netloc: str) -> bool:
    """Whether the port of a URL's ``host[:port]`` or ``[v6][:port]`` is absent (or
    empty: the scheme's default) or a number from 1 to 65535.

    Read here rather than from ``urlsplit(...).port``, whose ValueError would have
    to be told apart from the URL's other faults to say which part is wrong.
    """
    after_host = netloc.partition("]")[2] if netloc.startswith("[") else netloc
    port = after_host.partition(":")[2]
    return not port or (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)


def server_urls(value: object) -> tuple[str, ...]:
    """One URL or an array of them (the agent holds one connection per server)."""
    if isinstance(value, str):
        urls: tuple[str, ...] = (server_url(value),)
    elif isinstance(value, list | tuple):
        urls = _url_array(value)
    else:
        raise InvalidValue(f"expected a ws:// or wss:// URL or an array of them, got {show(value)}")
    seen: list[tuple[str, str, int, str]] = []
    for index, url in enumerate(urls):
        # The same server however written (host case, the default port, a bare
        # path): two links to one server with one client id replace each other.
        same = server_identity(url)
        if same in seen:
            raise InvalidValue(f"duplicate server URL {show(url)}", at=f"[{index}]")
        seen.append(same)
    return urls


def server_identity(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path of a checked URL, as a server sees them: two
    URLs alike in these reach one server however they are written."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "wss" else 80)
    return scheme, (parts.hostname or "").lower(), port, parts.path or "/"


_url_array = array(server_url, "ws:// or wss:// URLs")


heartbeat_interval: Final = interval_seconds(MIN_HEARTBEAT_S, "a PING goes out each time")
"""The rule for ``heartbeat_s``, the server's and the agent's."""

discover_interval: Final = interval_seconds(
    MIN_DISCOVER_INTERVAL_S, "the name is looked up in DNS each time"
)
"""The rule for ``discover_interval_s``."""

reconnect_max: Final = interval_seconds(
    MIN_RECONNECT_MAX_S, "the longest pause between attempts to dial a server"
)
"""The rule for ``reconnect_max_s``."""
