"""The agent's configuration objects: ``AgentConfig`` and the tables of agent.toml.

``[server]`` (where to dial and how to find the servers behind a URL), ``[[routes]]``,
``[timeouts]`` and ``[inspect]``: a module of their own because only ``pvtunnel
agent`` reads them. What they share with the server's tables, how a table is built
and checked and the ``[admin]`` table, is ``model``'s.
"""

# No `from __future__ import annotations` here: cattrs reads these classes'
# annotations at run time, so the names in them must be real imports.

import enum
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from pvtunnel._errors import FieldError, InvalidValue
from pvtunnel._wire import frames as fr

from . import rules
from .model import (
    TOML_KEY,
    AdminConfig,
    Holds,
    Problem,
    as_loaded,
    as_optional_path,
    as_optional_secret,
    check_relations,
    heartbeat_pair,
    lower,
    relates,
)
from .rules import Rule, join_path, show
from .secret import Secret


def _normalised_urls(value: tuple[str, ...]) -> tuple[str, ...]:
    # Best effort for objects built in code; the validator reports what cannot be fixed.
    try:
        return rules.server_urls(value)
    except InvalidValue:
        return value


E = TypeVar("E", bound=enum.Enum)


def _enum_rule(kind: type[E]) -> Callable[[object], E]:
    """The rule for an enum-valued key: its TOML spelling (a member's value) or the member."""
    expected = " or ".join(f'"{member.value}"' for member in kind)

    def parse(value: object) -> E:
        if isinstance(value, kind):
            return value
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                pass
        raise InvalidValue(f"expected {expected}, got {show(value)}")

    return parse


class Discovery(enum.Enum):
    """How the agent finds the servers behind a URL (``[server] discover``)."""

    NONE = "none"  # one connection per URL, to whatever its host resolves to first
    DNS = "dns"  # one connection per address the URL's host resolves to, kept current


discovery: Final = _enum_rule(Discovery)
"""The rule for ``discover``."""


def _discovery(value: Discovery | str) -> Discovery:
    return as_loaded(discovery, value)


@attrs.frozen(kw_only=True)
class ServerEndpoint:
    """Where the agent dials (``[server]``): one connection per URL, each on its own.

    With ``discover = "dns"`` each URL stands for every server its host name
    resolves to (a Kubernetes headless Service, a round-robin name): one
    connection per address, re-resolved every ``discover_interval_s`` and when a
    connection fails. TLS still verifies the URL's host name, not the address.
    """

    urls: tuple[str, ...] = attrs.field(
        default=(),
        converter=_normalised_urls,
        validator=Rule(rules.server_urls),
        metadata={TOML_KEY: "url"},
    )
    token: Secret | None = attrs.field(
        default=None, converter=as_optional_secret, validator=Rule(rules.optional_secret)
    )
    ca_file: Path | None = attrs.field(
        default=None, converter=as_optional_path, validator=Rule(rules.optional_path)
    )
    discover: Discovery = attrs.field(
        default=Discovery.NONE, converter=_discovery, validator=Rule(discovery)
    )
    discover_interval_s: float = attrs.field(default=30.0, validator=Rule(rules.discover_interval))

    def ca_file_unused(self) -> bool:
        """Whether ``ca_file`` is set where no URL uses TLS: a ws:// link is not
        verified by it, nor encrypted, whatever the file's presence suggests."""
        return (
            self.ca_file is not None
            and bool(self.urls)
            and not any(url.startswith("wss://") for url in self.urls)
        )


class RouteType(enum.Enum):
    """How a route's ``value`` is read: a name to resolve, or an address as is."""

    CNAME = "cname"
    IP = "ip"


route_type: Final = _enum_rule(RouteType)
"""The rule for ``type``."""


def _route_type(value: RouteType | str) -> RouteType:
    return as_loaded(route_type, value)


def _unbracket(value: str) -> str:
    inner = value[1:-1]
    if value.startswith("[") and value.endswith("]") and rules.is_ip_literal(inner):
        return inner
    return value


@attrs.frozen(kw_only=True)
class Route:
    """One name an agent serves and the fixed target it replays requests to."""

    name: str = attrs.field(converter=lower, validator=Rule(rules.route_name))
    value: str = attrs.field(converter=_unbracket, validator=Rule(rules.route_target))
    port: int = attrs.field(validator=Rule(rules.route_port))
    type: RouteType = attrs.field(
        default=RouteType.CNAME, converter=_route_type, validator=Rule(route_type)
    )
    host_header: str = attrs.field(default="preserve", validator=Rule(rules.host_header))
    # Computed once: upstream_host_header() runs for every request.
    _fixed_host: bytes | None = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        check_relations(self)
        fixed: bytes | None
        if self.host_header == "preserve":
            fixed = None
        elif self.host_header == "rewrite":
            host = f"[{self.value}]" if ":" in self.value else self.value
            fixed = f"{host}:{self.port}".encode("ascii")
        else:
            fixed = self.host_header.encode("ascii")
        object.__setattr__(self, "_fixed_host", fixed)

    def upstream_host_header(self, original: bytes | None) -> bytes | None:
        """Choose the Host header the upstream receives (``host_header``).

        Args:
            original: The client's Host value, or None if it sent none.

        Returns:
            ``original`` for "preserve"; ``b"value:port"`` (IPv6 in brackets) for
            "rewrite"; the configured bytes for a fixed value.
        """
        return original if self._fixed_host is None else self._fixed_host


@relates(Route)
def _ip_value(route: Route) -> list[Problem]:
    """A route of type "ip" is dialled as given, never resolved: its value must be
    an address."""
    if route.type is RouteType.IP and not rules.is_ip_literal(route.value):
        return [
            ("value", f'expected an IP literal for a route of type "ip", got {show(route.value)}')
        ]
    return []


def duplicate_route_names(names: Sequence[str | None]) -> list[tuple[str, str]]:
    """Find names claimed twice; None stands for a name that is invalid anyway.

    Returns:
        ``(sub-path, message)`` pairs, the sub-path relative to the routes array.
    """
    first_index: dict[str, int] = {}
    problems: list[tuple[str, str]] = []
    for index, name in enumerate(names):
        if name is None:
            continue
        if name in first_index:
            message = f"duplicate route name {show(name)} (also routes[{first_index[name]}])"
            problems.append((f"[{index}].name", message))
        else:
            first_index[name] = index
    return problems


def _unique_route_names(
    instance: object, attribute: "attrs.Attribute[Any]", value: Sequence[Route]
) -> None:
    problems = duplicate_route_names([route.name for route in value])
    if problems:
        raise FieldError(
            type(instance).__name__,
            [(join_path(attribute.name, at), message) for at, message in problems],
        )


@attrs.frozen(kw_only=True)
class AgentTimeouts:
    """Agent-side time limits in seconds (``[timeouts]`` in agent.toml)."""

    connect_s: float = attrs.field(default=10.0, validator=Rule(rules.seconds))
    upstream_connect_s: float = attrs.field(default=10.0, validator=Rule(rules.seconds))
    reconnect_max_s: float = attrs.field(default=30.0, validator=Rule(rules.reconnect_max))
    upstream_idle_s: float = attrs.field(default=60.0, validator=Rule(rules.seconds))
    heartbeat_s: float = attrs.field(default=5.0, validator=Rule(rules.heartbeat_interval))
    heartbeat_timeout_s: float = attrs.field(default=15.0, validator=Rule(rules.seconds))
    grace_s: float = attrs.field(default=10.0, validator=Rule(rules.seconds))

    def __attrs_post_init__(self) -> None:
        check_relations(self)


relates(AgentTimeouts)(heartbeat_pair)


# What max_bytes must hold of max_body_bytes at least: four exchanges of two previews.
INSPECT_EXCHANGES_IN_BYTES: Final = 8
INSPECT_BODY_BYTES: Final = 64 * 1024


@attrs.frozen(kw_only=True)
class InspectConfig:
    """The request inspector (``[inspect]`` in agent.toml): off unless ``enabled``.

    What it keeps is bounded by ``max_requests`` and ``max_bytes`` together (the
    oldest exchanges go first); each body is cut at ``max_body_bytes``. At most
    ``max_replays`` replays are in flight at once: each holds an upstream
    connection, its body and a task, and anyone who reaches the admin port could
    otherwise start thousands.
    """

    enabled: bool = attrs.field(default=False, validator=Rule(rules.boolean))
    max_requests: int = attrs.field(default=200, validator=Rule(rules.integer(1, 100000)))
    max_bytes: int = attrs.field(
        default=16 * 1024 * 1024, validator=Rule(rules.integer(65536, rules.MAX_INT32))
    )
    max_body_bytes: int = attrs.field(validator=Rule(rules.integer(0, 16 * 1024 * 1024)))
    max_replays: int = attrs.field(default=8, validator=Rule(rules.integer(1, 1024)))

    @max_body_bytes.default
    def _max_body_bytes(self) -> int:
        # 64 KiB, or less where max_bytes is small (see _preview_room).
        max_bytes: object = self.max_bytes  # not validated yet: its rule reports a wrong one
        if isinstance(max_bytes, int):
            return min(INSPECT_BODY_BYTES, max_bytes // INSPECT_EXCHANGES_IN_BYTES)
        return INSPECT_BODY_BYTES

    def __attrs_post_init__(self) -> None:
        check_relations(self)


@relates(InspectConfig)
def _preview_room(inspect: InspectConfig) -> list[Problem]:
    """An exchange holds two previews: near max_bytes, each new exchange would push
    out all the others, and the page would show one request at most. Looked at only
    when the inspector is on: off, neither value is used."""
    if inspect.enabled and inspect.max_body_bytes * INSPECT_EXCHANGES_IN_BYTES > inspect.max_bytes:
        return [
            (
                "max_body_bytes",
                f"at most max_bytes / {INSPECT_EXCHANGES_IN_BYTES}, so that max_bytes "
                f"holds {INSPECT_EXCHANGES_IN_BYTES // 2} exchanges with both previews "
                f"whole (got {inspect.max_body_bytes} with max_bytes {inspect.max_bytes})",
            )
        ]
    return []


def _routes(value: Sequence[Route]) -> tuple[Route, ...]:
    return tuple(value) if isinstance(value, list) else value  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Everything ``pvtunnel agent`` needs (agent.toml plus flags and environment)."""

    client_id: str = attrs.field(validator=Rule(rules.client_id))
    server: ServerEndpoint = attrs.field(factory=ServerEndpoint, validator=Holds(ServerEndpoint))
    routes: tuple[Route, ...] = attrs.field(
        default=(),
        converter=_routes,
        validator=[Holds(Route, array=True), _unique_route_names],
    )
    timeouts: AgentTimeouts = attrs.field(factory=AgentTimeouts, validator=Holds(AgentTimeouts))
    admin: AdminConfig | None = attrs.field(
        default=None, validator=Holds(AdminConfig, optional=True)
    )
    inspect: InspectConfig = attrs.field(factory=InspectConfig, validator=Holds(InspectConfig))
    max_streams: int = attrs.field(default=4096, validator=Rule(rules.integer(1, rules.MAX_INT32)))
    stream_window_bytes: int = attrs.field(
        default=2097152, validator=Rule(rules.integer(16384, rules.MAX_INT32))
    )
    # At most this many unconsumed body bytes per agent connection, whatever the
    # stream count (protocol.md section 7).
    connection_window_bytes: int = attrs.field(
        default=16777216, validator=Rule(rules.integer(16384, rules.MAX_INT32))
    )
    upstream_pool_size: int = attrs.field(
        default=64, validator=Rule(rules.integer(0, rules.MAX_INT32))
    )

    def __attrs_post_init__(self) -> None:
        check_relations(self)

    def validate_runnable(self) -> list[str]:
        """List what is still missing before the agent can run.

        A file may leave these out because flags and the environment can supply
        them, so the CLI calls this once everything is applied.

        Returns:
            One ``"key.path: message"`` line per missing piece; empty when runnable.
        """
        problems: list[str] = []
        if not self.server.urls:
            problems.append("server.url: no server to connect to; set it or pass --server URL")
        elif self.server.ca_file_unused():
            problems.append(CA_FILE_UNUSED)
        if self.server.token is None:
            problems.append(
                "server.token: no token; set token or token_file in [server], "
                "or the PVTUNNEL_TOKEN environment variable"
            )
        if not self.routes:
            problems.append(
                "routes: no routes to serve; add a [[routes]] table or pass --route NAME=HOST:PORT"
            )
        return problems


@relates(AgentConfig)
def _hello_room(config: AgentConfig) -> list[Problem]:
    """The agent names every route in its HELLO, which is one frame (protocol.md
    sections 4.1 and 10): an agent whose names do not fit could never connect."""
    hello = fr.our_hello(
        client_id=config.client_id,
        routes=tuple(route.name for route in config.routes),
        window=config.stream_window_bytes,
        connection_window=config.connection_window_bytes,
    )
    size = len(fr.hello_payload(hello))
    if size > fr.MAX_FRAME_PAYLOAD:
        return [
            (
                "routes",
                f"{len(config.routes)} routes take {size} bytes in the agent's HELLO frame, "
                f"which holds {fr.MAX_FRAME_PAYLOAD}: serve some from another agent "
                "(its own client_id), or shorten their names",
            )
        ]
    return []


# One line for the file check and the check after flags (a --server ws://... URL).
CA_FILE_UNUSED: Final = (
    "server.ca_file: set, but no server URL is wss://: it verifies TLS servers only, "
    "and a ws:// link is neither verified nor encrypted"
)
