"""The server's configuration objects: ``ServerConfig`` and the tables of server.toml.

``[internal]`` (where agents connect, and their tokens), ``[external]`` (where HTTP
clients connect), ``[timeouts]`` and ``[limits]``, and the checks that keep the
listeners off each other's ports: a module of their own because only ``pvtunnel
serve`` reads them (the flags' checks use the port checks too). What they share with
the agent's tables, how a table is built and checked and the ``[admin]`` table, is
``model``'s.
"""

# No `from __future__ import annotations` here: cattrs reads these classes'
# annotations at run time, so the names in them must be real imports.

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from . import rules
from .model import (
    AdminConfig,
    Holds,
    Problem,
    as_loaded,
    as_optional_path,
    as_optional_secret,
    check_relations,
    heartbeat_pair,
    lower_all,
    lower_optional,
    relates,
)
from .rules import Network, Rule, show
from .secret import Secret


def _secret(value: Secret | str) -> Secret:
    return as_loaded(rules.secret, value)


def _whitelist(value: Sequence[str]) -> tuple[str, ...]:
    return as_loaded(rules.whitelist, value)


@attrs.frozen(kw_only=True)
class ScopedToken:
    """An agent token that may only claim the route names its patterns cover.

    ``[[internal.tokens]]`` in server.toml: lets one server host several teams
    without any of them being able to take over another's names.
    """

    token: Secret = attrs.field(converter=_secret, validator=Rule(rules.secret))
    routes: tuple[str, ...] = attrs.field(converter=lower_all, validator=Rule(rules.scope_patterns))


def _scoped_tokens(value: Sequence[ScopedToken]) -> tuple[ScopedToken, ...]:
    return tuple(value) if isinstance(value, list) else value  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class InternalConfig:
    """The listener agents connect to (``[internal]``)."""

    port: int = attrs.field(default=8081, validator=Rule(rules.listen_port))
    token: Secret | None = attrs.field(
        default=None, converter=as_optional_secret, validator=Rule(rules.optional_secret)
    )
    tokens: tuple[ScopedToken, ...] = attrs.field(
        default=(), converter=_scoped_tokens, validator=Holds(ScopedToken, array=True)
    )
    tls_cert: Path | None = attrs.field(
        default=None, converter=as_optional_path, validator=Rule(rules.optional_path)
    )
    tls_key: Path | None = attrs.field(
        default=None, converter=as_optional_path, validator=Rule(rules.optional_path)
    )

    def __attrs_post_init__(self) -> None:
        check_relations(self)


@relates(InternalConfig)
def _distinct_tokens(internal: InternalConfig) -> list[Problem]:
    """Each agent token appears once: a scoped token that is also the unscoped
    ``token`` would claim any name, and of two scoped entries with one token only
    the first one's routes would apply. The messages name places, never values."""
    seen: dict[Secret, str] = {}
    if internal.token is not None:
        seen[internal.token] = "token"
    problems: list[Problem] = []
    for index, scoped in enumerate(internal.tokens):
        first = seen.setdefault(scoped.token, f"tokens[{index}]")
        if first != f"tokens[{index}]":
            problems.append((f"tokens[{index}].token", same_token(f"internal.{first}")))
    return problems


def same_token(first: str) -> str:
    """The message for a token already given at ``first`` (a key, or the
    environment variable the loader took it from)."""
    return f"the same token as {first}: give each agent token once"


@attrs.frozen(kw_only=True)
class ExternalConfig:
    """The listener HTTP clients connect to (``[external]``)."""

    port: int = attrs.field(default=8080, validator=Rule(rules.listen_port))
    token: Secret | None = attrs.field(
        default=None, converter=as_optional_secret, validator=Rule(rules.optional_secret)
    )
    whitelisted_ips: tuple[str, ...] = attrs.field(
        default=(), converter=_whitelist, validator=Rule(rules.whitelist)
    )
    domain: str | None = attrs.field(
        default=None, converter=lower_optional, validator=Rule(rules.domain)
    )
    tls_cert: Path | None = attrs.field(
        default=None, converter=as_optional_path, validator=Rule(rules.optional_path)
    )
    tls_key: Path | None = attrs.field(
        default=None, converter=as_optional_path, validator=Rule(rules.optional_path)
    )
    # Parsed once here: allows() runs for every client connection.
    _networks: tuple[Network, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        check_relations(self)
        networks = tuple(rules.network(entry) for entry in self.whitelisted_ips)
        object.__setattr__(self, "_networks", networks)

    def allows(self, address: str) -> bool:
        """Decide whether a client may use the external port at all (``whitelisted_ips``).

        Args:
            address: The peer address as the socket reports it (IPv4 or IPv6).

        Returns:
            True when the whitelist is empty or covers the address. An IPv4 client
            seen on a dual-stack socket as ``::ffff:a.b.c.d`` matches IPv4 entries.
            Anything that is not an IP address is refused.
        """
        if not self._networks:
            return True
        try:
            client = ipaddress.ip_address(address)
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [client]
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            candidates.append(client.ipv4_mapped)
        # `in` is False across IP versions, so mixed lists need no sorting.
        return any(candidate in net for net in self._networks for candidate in candidates)


@relates(InternalConfig, ExternalConfig)
def _tls_pair(listener: InternalConfig | ExternalConfig) -> list[Problem]:
    """TLS needs the certificate and its key: one without the other is a slip, not
    a plain listener."""
    cert, key = listener.tls_cert, listener.tls_key
    if (cert is None) == (key is None):
        return []
    missing, present = ("tls_key", "tls_cert") if key is None else ("tls_cert", "tls_key")
    return [(missing, f"required when {present} is set: TLS needs the certificate and its key")]


@attrs.frozen(kw_only=True)
class TimeoutsConfig:
    """Server-side time limits in seconds (``[timeouts]`` in server.toml)."""

    request_head_s: float = attrs.field(default=30.0, validator=Rule(rules.seconds))
    idle_s: float = attrs.field(default=75.0, validator=Rule(rules.seconds))
    upstream_response_s: float = attrs.field(default=60.0, validator=Rule(rules.seconds))
    grace_s: float = attrs.field(default=10.0, validator=Rule(rules.seconds))
    handshake_s: float = attrs.field(default=10.0, validator=Rule(rules.seconds))
    # Both ends PING every heartbeat_s; a peer silent for heartbeat_timeout_s is dead,
    # so a blackholed network is noticed in seconds, not at TCP's timeout.
    heartbeat_s: float = attrs.field(default=5.0, validator=Rule(rules.heartbeat_interval))
    heartbeat_timeout_s: float = attrs.field(default=15.0, validator=Rule(rules.seconds))
    # When a route's last agent leaves, its name is remembered this long; a request
    # for it then waits up to hold_s for an agent to register (else 503 + Retry-After).
    route_memory_s: float = attrs.field(default=60.0, validator=Rule(rules.seconds))
    hold_s: float = attrs.field(default=10.0, validator=Rule(rules.hold_seconds))
    # A server that just started cannot tell a name that does not exist from one
    # whose agents have not found it yet (they reconnect with backoff, or discover a
    # new replica at their next DNS look-up): for this long after it starts, every
    # name is held as a remembered one is. 0: unknown names get 404 from the start.
    startup_hold_s: float = attrs.field(default=30.0, validator=Rule(rules.delay_seconds))
    # On SIGTERM, /ready answers 503 this long before the listeners close, while
    # requests are still served: a load balancer's health check (or Kubernetes'
    # endpoint removal) notices first, so no new client meets a closed port.
    drain_delay_s: float = attrs.field(default=0.0, validator=Rule(rules.delay_seconds))

    def __attrs_post_init__(self) -> None:
        check_relations(self)


relates(TimeoutsConfig)(heartbeat_pair)


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """Server-side resource caps (``[limits]``); they bound memory per agent and client."""

    max_streams_per_agent: int = attrs.field(
        default=1024, validator=Rule(rules.integer(1, rules.MAX_INT32))
    )
    max_request_head_bytes: int = attrs.field(
        default=32768, validator=Rule(rules.integer(1024, 60000))
    )
    max_client_connections: int = attrs.field(
        default=10000, validator=Rule(rules.integer(1, rules.MAX_INT32))
    )
    stream_window_bytes: int = attrs.field(
        default=2097152, validator=Rule(rules.integer(16384, rules.MAX_INT32))
    )
    # At most this many unconsumed body bytes per agent connection, whatever the
    # stream count (protocol.md section 7).
    connection_window_bytes: int = attrs.field(
        default=16777216, validator=Rule(rules.integer(16384, rules.MAX_INT32))
    )
    # Requests waiting at once for departed routes' agents; 0 answers 503 at once.
    max_held_requests: int = attrs.field(
        default=1000, validator=Rule(rules.integer(0, rules.MAX_INT32))
    )


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything ``pvtunnel serve`` needs (server.toml plus flags and environment)."""

    host: str = attrs.field(default="0.0.0.0", validator=Rule(rules.host))
    internal: InternalConfig = attrs.field(factory=InternalConfig, validator=Holds(InternalConfig))
    external: ExternalConfig = attrs.field(factory=ExternalConfig, validator=Holds(ExternalConfig))
    timeouts: TimeoutsConfig = attrs.field(factory=TimeoutsConfig, validator=Holds(TimeoutsConfig))
    limits: LimitsConfig = attrs.field(factory=LimitsConfig, validator=Holds(LimitsConfig))
    admin: AdminConfig | None = attrs.field(
        default=None, validator=Holds(AdminConfig, optional=True)
    )

    def __attrs_post_init__(self) -> None:
        check_relations(self)


@relates(ServerConfig)
def _listener_ports(config: ServerConfig) -> list[Problem]:
    """The tunnel's two listeners each need a port of their own (`same_port`)."""
    problem = same_port(config.external.port, config.internal.port, "internal.port")
    return [] if problem is None else [("external.port", problem)]


@relates(ServerConfig)
def _external_token_room(config: ServerConfig) -> list[Problem]:
    """A client presents the external token in its request head, which holds
    ``limits.max_request_head_bytes``: a token whose header takes more than half of
    it leaves too little room for the rest (the request line, Host, the client's
    own headers), and past all of it every request would be answered 431."""
    token = config.external.token
    if token is None:
        return []
    length = len(token.reveal())
    size = proxy_authorization_bytes(length)
    limit = config.limits.max_request_head_bytes
    if 2 * size <= limit:
        return []
    return [
        (
            "external.token",
            f"a token of {length} characters takes {size} bytes in a client's "
            f"Proxy-Authorization header (as Basic), more than half of "
            f"limits.max_request_head_bytes ({limit}), a whole request head: "
            "shorten the token, or raise the limit",
        )
    ]


def proxy_authorization_bytes(token_length: int) -> int:
    """The bytes of a Proxy-Authorization header line carrying a token this long in
    its longer form, Basic with an empty user name (base64 of ``":" + token``)."""
    return len("Proxy-Authorization: Basic \r\n") + 4 * -(-(token_length + 1) // 3)


@relates(ServerConfig)
def _admin_port(config: ServerConfig) -> list[Problem]:
    """The admin listener needs a port no tunnel listener has on its address (`admin_clash`)."""
    if config.admin is None:
        return []
    ports = {"internal.port": config.internal.port, "external.port": config.external.port}
    other = admin_clash(config.admin.port, config.admin.host, config.host, ports)
    if other is None:
        return []
    problem = admin_port_taken(
        str(config.admin.port), other, ("host", config.host), ("admin.host", config.admin.host)
    )
    return [("admin.port", problem)]


def same_port(port: int, other_port: int, other: str) -> str | None:
    """Why ``port`` cannot go beside the other listener's, or None when it can.

    Both listeners bind ``host``: one port for both would pass every check, then
    fail at start ("Address already in use"). 0 is any free port, so two of them
    are two ports.
    """
    if port != other_port or port == 0:
        return None
    return (
        f"{port} is {other} too: both listeners bind one host, so the second could not "
        "start; give each its own port (0: any free one)"
    )


def admin_clash(
    admin_port: int, admin_host: str, host: str, ports: Mapping[str, int]
) -> str | None:
    """Which of the tunnel's listeners (named by the keys of ``ports``, bound to
    ``host``) an admin listener on ``admin_port`` and ``admin_host`` would meet, if any.

    The admin listener binds a host of its own, so a shared port is a clash only
    where the two hosts overlap (`rules.binds_overlap`); 0 is any free port.
    """
    if admin_port == 0 or not rules.binds_overlap(admin_host, host):
        return None
    return next((name for name, port in ports.items() if port == admin_port), None)


def admin_port_taken(
    subject: str, other: str, host: tuple[str, str], admin_host: tuple[str, str]
) -> str:
    """The message for an admin port (``subject``) that is ``other`` too, where
    ``host`` overlaps ``admin_host`` (each its key or flag, and its value)."""
    host_key, host_value = host
    admin_key, admin_value = admin_host
    return (
        f"{subject} is {other} too, on overlapping addresses ({host_key} {show(host_value)}, "
        f"{admin_key} {show(admin_value)}), so the second listener could not start; "
        "give each its own port (0: any free one)"
    )
