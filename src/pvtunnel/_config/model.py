"""The configuration objects: one frozen attrs class per TOML table.

These are what the rest of pvtunnel (and library users) consume, so they hold
finished values only: tokens already resolved from files or the environment,
relative paths already resolved, route names lower-cased. Every field carries its
rule (see ``rules``) as its validator, so an object that exists is valid, whether
the loader, a flag or ``attrs.evolve`` built it.

Checks that relate several keys of a table are functions registered for it with
``relates``: the constructor runs them (``__attrs_post_init__``), and so does the
loader for a table whose other keys are invalid, so that one run reports every
problem. Each returns ``(key path, message)`` pairs naming the key the user should
change; raised, they are one ``FieldError``.
"""

# No `from __future__ import annotations` here: cattrs reads these classes'
# annotations at run time, so the names in them must be real imports.

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol, TypeAlias, TypeVar

import attrs

from pvtunnel._errors import FieldError, InvalidKeyError, InvalidValue

from . import rules
from .rules import Network, Rule, show, split_path
from .secret import Secret

T = TypeVar("T")

TOML_KEY: Final = "pvtunnel.toml_key"
"""Field metadata: the TOML key, where it differs from the attribute name."""

Problem: TypeAlias = tuple[str, str]
"""A key path relative to a table, and what is wrong there."""

Check: TypeAlias = Callable[[Any], Iterable[Problem]]
"""A rule relating keys of one table: given the table (or the loader's stand-in for
it), what is wrong with how its keys go together."""

C = TypeVar("C", bound=Check)

_RELATIONS: Final[dict[type, list[Check]]] = {}


def relates(*tables: type) -> Callable[[C], C]:
    """Register a check for each of ``tables``.

    A rule on several keys cannot be one field's validator; registered here, it has
    one definition that both the constructor and the loader find (`relation_problems`).
    """

    def register(check: C) -> C:
        for table in tables:
            _RELATIONS.setdefault(table, []).append(check)
        return check

    return register


def relation_problems(table: type, config: object) -> list[Problem]:
    """What the checks relating ``table``'s keys find wrong with ``config``, in key order.

    ``config`` is a ``table``, or the loader's stand-in for one some of whose keys are
    invalid. A check that reads such a key raises `InvalidKeyError` and is skipped
    (its message would be noise beside the key's own problem); the others still run,
    so their problems show in the same run as the rest.
    """
    checks = next((_RELATIONS[cls] for cls in table.__mro__ if cls in _RELATIONS), [])
    problems: list[Problem] = []
    for check in checks:
        try:
            problems.extend(list(check(config)))  # all or nothing, should it raise midway
        except InvalidKeyError:
            continue
    order = {field.name: index for index, field in enumerate(attrs.fields(table))}
    return sorted(problems, key=lambda problem: order.get(split_path(problem[0])[0], len(order)))


def check_relations(config: object) -> None:
    problems = relation_problems(type(config), config)
    if problems:
        raise FieldError(type(config).__name__, problems)


# Converters lower-case only ASCII text and leave the rest to the validator, which
# refuses it: "\u212a".lower() is "k", a name the user never wrote.
def lower(value: str) -> str:
    return value.lower() if value.isascii() else value


def lower_optional(value: str | None) -> str | None:
    return None if value is None else lower(value)


def lower_all(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(lower(item) for item in value)


# Converters that hold a value built in code as the loader holds one read from a file
# (a token as a `Secret`, a path as a `Path`, a name as its enum member, an array as a
# tuple), where it parses; one that does not is left as given, for the field's rule
# to report. Without them, a token given as a plain string would show in the repr.
def as_loaded(parse: Callable[[object], T], value: object) -> T:
    try:
        return parse(value)
    except InvalidValue:
        return value  # type: ignore[return-value]  # the validator refuses it


@attrs.frozen
class Holds:
    """An attrs validator for a field that holds a table (or an array of tables):
    a value of another type fails here, as a `FieldError`, not later and deep in
    the server or agent."""

    kind: type
    optional: bool = False
    array: bool = False

    def __call__(self, instance: object, attribute: "attrs.Attribute[Any]", value: object) -> None:
        if self.array:
            if not isinstance(value, tuple):
                self._refuse(instance, attribute.name, "a tuple", value)
            for index, item in enumerate(value):
                if not isinstance(item, self.kind):
                    self._refuse(instance, f"{attribute.name}[{index}]", "", item)
        elif not (isinstance(value, self.kind) or (self.optional and value is None)):
            self._refuse(instance, attribute.name, "", value)

    def _refuse(self, instance: object, at: str, expected: str, value: object) -> NoReturn:
        expected = expected or f"a {self.kind.__name__}" + (" or None" if self.optional else "")
        raise FieldError(
            type(instance).__name__, [(at, f"expected {expected}, got {type(value).__name__}")]
        )


def _secret(value: Secret | str) -> Secret:
    return as_loaded(rules.secret, value)


def as_optional_secret(value: Secret | str | None) -> Secret | None:
    return as_loaded(rules.optional_secret, value)


def as_optional_path(value: Path | str | None) -> Path | None:
    return as_loaded(rules.optional_path, value)


def _whitelist(value: Sequence[str]) -> tuple[str, ...]:
    return as_loaded(rules.whitelist, value)


class Heartbeats(Protocol):
    """A ``[timeouts]`` table, the server's or the agent's: both time a peer's silence."""

    @property
    def heartbeat_s(self) -> float: ...

    @property
    def heartbeat_timeout_s(self) -> float: ...


def heartbeat_pair(config: Heartbeats) -> list[Problem]:
    """A peer is declared dead after ``heartbeat_timeout_s`` of silence, and a quiet
    one is heard once per ``heartbeat_s`` (its PONG): a timeout not above the
    interval would drop every idle connection."""
    if config.heartbeat_timeout_s <= config.heartbeat_s:
        return [
            (
                "heartbeat_timeout_s",
                f"must be more than heartbeat_s ({show(config.heartbeat_s)}), "
                f"got {show(config.heartbeat_timeout_s)}",
            )
        ]
    return []


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
    heartbeat_s: float = attrs.field(default=5.0, validator=Rule(rules.seconds))
    heartbeat_timeout_s: float = attrs.field(default=15.0, validator=Rule(rules.seconds))
    # When a route's last agent leaves, its name is remembered this long; a request
    # for it then waits up to hold_s for an agent to register (else 503 + Retry-After).
    route_memory_s: float = attrs.field(default=60.0, validator=Rule(rules.seconds))
    hold_s: float = attrs.field(default=10.0, validator=Rule(rules.seconds))
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
class AdminConfig:
    """The admin listener (``[admin]``): /metrics, /live, /ready, /status.

    It reveals routes and traffic figures, so anywhere but loopback it needs a token.
    """

    port: int = attrs.field(validator=Rule(rules.listen_port))
    host: str = attrs.field(default="127.0.0.1", validator=Rule(rules.host))
    token: Secret | None = attrs.field(
        default=None, converter=as_optional_secret, validator=Rule(rules.optional_secret)
    )

    def __attrs_post_init__(self) -> None:
        check_relations(self)


@relates(AdminConfig)
def _admin_token(admin: AdminConfig) -> list[Problem]:
    """Off loopback, anyone who reaches the admin port would read it without a token."""
    if admin.token is None and not rules.is_loopback(admin.host):
        return [("token", f"required when host is not a loopback address (got {show(admin.host)})")]
    return []


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
