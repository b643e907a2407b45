"""Command-line flags applied on top of a loaded config.

Flags win over the file. Each flag value goes through the same rule as the TOML
key it replaces; a bad one is reported as ``"--flag: message"`` (the message
quotes the value), or ``"--route VALUE: message"`` since routes come several at a
time. All bad flags are reported together.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Final, TypeVar

import attrs

from pvtunnel._errors import ConfigError, FieldError, InvalidValue

from . import rules
from .agent import AgentConfig, Route, RouteType, discovery
from .model import AdminConfig
from .server import ServerConfig, admin_clash, admin_port_taken, same_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .secret import Secret

_ROUTE_FORMAT: Final = "expected NAME=HOST:PORT"
# The [[routes]] keys a --route flag may add after its target, as KEY=VALUE. None
# of their values can hold a "," (a Host header value cannot), so it separates them.
_ROUTE_OPTIONS: Final = ("type", "host_header")
# Where the inspector's page is when nothing says otherwise: ngrok's port, so a
# developer's bookmark and habits carry over.
INSPECT_PORT: Final = 4040
T = TypeVar("T")


def _flag(name: str, value: object, parse: Callable[[object], T], problems: list[str]) -> T | None:
    """The flag's parsed value, or None with its problems added to ``problems``."""
    try:
        return parse(value)
    except InvalidValue as exc:
        problems.extend(f"{name}: {message}" for _, message in exc.entries)
        return None


def _flags_named(problems: Sequence[str]) -> set[str]:
    """The flags ``problems`` are about: each line names its flag before the first colon."""
    return {problem.partition(":")[0] for problem in problems}


def port_flag(name: str, value: int) -> int:
    """A port given as a flag (0 for any free one).

    Raises:
        ConfigError: ``"NAME: message"`` when it is not a port.
    """
    problems: list[str] = []
    _flag(name, value, rules.listen_port, problems)
    if problems:
        raise ConfigError(problems)
    return value


def with_overrides(
    config: ServerConfig,
    *,
    host: str | None = None,
    internal_port: int | None = None,
    external_port: int | None = None,
    domain: str | None = None,
    admin_port: int | None = None,
    admin_host: str | None = None,
    admin_token: Secret | None = None,
) -> ServerConfig:
    """Apply ``pvtunnel serve`` flags; None leaves the file's (or default) value.

    Args:
        config: The loaded configuration.
        host: ``--host``: bind address of both listeners.
        internal_port: ``--internal-port``; 0 means any free port.
        external_port: ``--external-port``; 0 means any free port.
        domain: ``--domain``: the base domain for subdomain routing
            (``[external] domain``).
        admin_port: ``--admin-port``: turns the admin listener on (loopback,
            unless ``admin_host`` or the file's ``[admin]`` says otherwise); 0
            means any free port.
        admin_host: ``--admin-host``: the admin listener's bind address. It
            moves a listener the file or ``admin_port`` turns on, and turns none
            on by itself: alone, with no ``[admin]`` in the file, it is refused.
        admin_token: The token a listener turned on by ``admin_port`` requires
            (``$PVTUNNEL_ADMIN_TOKEN``); one from the file's ``[admin]`` stays.

    Returns:
        A new config; ``config`` itself is unchanged.

    Raises:
        ConfigError: One ``"--flag: message"`` line per bad value.
    """
    problems: list[str] = []
    if host is not None:
        _flag("--host", host, rules.host, problems)
    if internal_port is not None:
        _flag("--internal-port", internal_port, rules.listen_port, problems)
    if external_port is not None:
        _flag("--external-port", external_port, rules.listen_port, problems)
    base_domain = None if domain is None else _flag("--domain", domain, rules.domain, problems)
    if admin_port is not None:
        _flag("--admin-port", admin_port, rules.listen_port, problems)
    if admin_host is not None:
        _flag("--admin-host", admin_host, rules.host, problems)
    # A clash is looked for where every value it relates is valid: a bad one is
    # reported already, and a clash worked out from it would be noise.
    bad = _flags_named(problems)
    if not bad & {"--internal-port", "--external-port"}:
        problems.extend(_port_clash(config, internal_port, external_port))
    admin = config.admin
    place = None if admin is None else (admin.port, admin.host)
    if not bad & {"--admin-port", "--admin-host"}:
        admin, place = _admin_on(
            config.admin, port=admin_port, host=admin_host, token=admin_token, problems=problems
        )
    if not bad & {"--host", "--internal-port", "--external-port", "--admin-port", "--admin-host"}:
        problems.extend(
            _admin_port_clash(config, place, host, admin_host, internal_port, external_port)
        )
    if problems:
        raise ConfigError(problems)
    internal, external = config.internal, config.external
    if internal_port is not None:
        internal = attrs.evolve(internal, port=internal_port)
    if external_port is not None:
        external = attrs.evolve(external, port=external_port)
    if base_domain is not None:
        external = attrs.evolve(external, domain=base_domain)
    return attrs.evolve(
        config,
        host=config.host if host is None else host,
        internal=internal,
        external=external,
        admin=admin,
    )


def _port_clash(
    config: ServerConfig, internal_port: int | None, external_port: int | None
) -> list[str]:
    """A port flag that lands on the other listener's port, said of the flag
    (``ServerConfig`` itself would name external.port, which the user may not have
    set)."""
    clash = None
    if external_port is not None:
        other = "internal.port" if internal_port is None else "--internal-port"
        internal = config.internal.port if internal_port is None else internal_port
        clash = same_port(external_port, internal, other)
        flag = "--external-port"
    elif internal_port is not None:
        clash = same_port(internal_port, config.external.port, "external.port")
        flag = "--internal-port"
    return [] if clash is None else [f"{flag}: {clash}"]


def _admin_port_clash(
    config: ServerConfig,
    place: tuple[int, str] | None,
    host: str | None,
    admin_host: str | None,
    internal_port: int | None,
    external_port: int | None,
) -> list[str]:
    """An admin listener the flags put on a tunnel listener's port and address,
    said of the flag that did it: the file alone passed ``ServerConfig``'s check.
    ``place`` is the listener's port and host after ``--admin-port`` and
    ``--admin-host`` (`_admin_on`), None where there is no listener."""
    if place is None:
        return []
    admin_port, admin_bind = place
    # Each value with the flag or key it came from, to be named in the message.
    internal = ("internal.port", config.internal.port)
    external = ("external.port", config.external.port)
    if internal_port is not None:
        internal = ("--internal-port", internal_port)
    if external_port is not None:
        external = ("--external-port", external_port)
    ports = dict([internal, external])
    bound = ("host", config.host) if host is None else ("--host", host)
    admin_bound = ("admin.host", admin_bind) if admin_host is None else ("--admin-host", admin_host)
    other = admin_clash(admin_port, admin_bind, bound[1], ports)
    if other is None:
        return []
    # The port flag that chose the port first, then the one on the other side of
    # it, then whichever flag moved an address (the admin one is what to change).
    port_moved = config.admin is None or admin_port != config.admin.port
    if port_moved:
        blamed, subject = "--admin-port", str(admin_port)
    elif other.startswith("--"):
        blamed, subject, other = other, str(admin_port), "admin.port"
    elif admin_host is not None:
        blamed, subject = "--admin-host", f"admin.port {admin_port}"
    else:
        blamed, subject = "--host", f"admin.port {admin_port}"
    return [f"{blamed}: {admin_port_taken(subject, other, bound, admin_bound)}"]


def _admin_on(
    admin: AdminConfig | None,
    *,
    port: int | None,
    host: str | None,
    token: Secret | None,
    problems: list[str],
    default_port: int | None = None,
    turned_on_by: str = "--admin-port N",
) -> tuple[AdminConfig | None, tuple[int, str] | None]:
    """The admin listener after ``--admin-port`` and ``--admin-host`` (both valid),
    and the port and host it binds, or None for each where there is none.

    A port turns the listener on, and so does ``default_port`` (``--inspect``'s)
    where nothing else did; a host only says where a listener goes, so one with
    no listener to move is a mistake, said rather than ignored (naming
    ``turned_on_by``, the flags that would turn one on). Off loopback the
    listener needs a token: ``AdminConfig`` checks that itself, by the rule the
    file's ``[admin]`` goes through, and where ``--admin-host`` took it there,
    that flag is blamed and no listener is returned; its port and host still
    are, for a clash there to be said in the same run, as the loader says one
    beside an ``[admin]`` without its token. ``token`` is the environment's, for
    a listener the file has no table for (the loader put it in the file's
    already).
    """
    if admin is None:
        port = default_port if port is None else port
        if port is None:
            if host is not None:
                problems.append(
                    f"--admin-host: no admin listener to bind it to; give {turned_on_by} too, "
                    "or [admin] port in the file"
                )
            return None, None
        admin = AdminConfig(port=port, token=token)
    place = (admin.port if port is None else port, admin.host if host is None else host)
    try:
        return attrs.evolve(admin, port=place[0], host=place[1]), place
    except FieldError as exc:
        problems.extend(
            f"--admin-host: admin.{at}: {message}; set token or token_file in [admin], "
            "or the PVTUNNEL_ADMIN_TOKEN environment variable"
            for at, message in exc.entries
        )
        return None, place


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith("["):
        address, bracket, rest = target[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise InvalidValue(f"{_ROUTE_FORMAT} (an IPv6 address as [ADDRESS]:PORT)")
        if not rules.is_ip_literal(address):
            raise InvalidValue(
                f"expected an IP address in brackets, got {rules.show(address)}", at="value"
            )
        return address, rest[1:]
    host, colon, port = target.rpartition(":")
    if not colon or not host:
        raise InvalidValue(_ROUTE_FORMAT)
    if ":" in host:
        raise InvalidValue(f"{_ROUTE_FORMAT} (put an IPv6 address in brackets: NAME=[::1]:PORT)")
    return host, port


def parse_route_flag(flag: str) -> Route:
    """Turn one ``--route NAME=HOST:PORT[,type=T][,host_header=H]`` into a route.

    The options are the ``[[routes]]`` keys of the same names, with the same
    values and rules. Without ``type`` it is inferred: an IP literal (IPv6 in
    brackets) makes an "ip" route, anything else a "cname" route; without
    ``host_header`` it is "preserve", as in the file. The flag says the whole
    route, so that what the command line shows is what the agent does.

    Args:
        flag: The flag's value, e.g. ``"app=127.0.0.1:3000"``, ``"v6=[::1]:3000"``
            or ``"app=localhost:3000,host_header=rewrite"``.

    Returns:
        The route, its name lower-cased.

    Raises:
        ConfigError: One ``"--route FLAG: message"`` line per problem.
    """
    try:
        name_and_target, *options = flag.split(",")
        name, equals, target = name_and_target.partition("=")
        if not equals or not name or not target:
            raise InvalidValue(_ROUTE_FORMAT)
        host, port_text = _split_target(target)
        digits = port_text.isascii() and port_text.isdigit()
        port = _route_port(int(port_text) if digits else port_text)
        keys = _route_options(options)
        inferred = RouteType.IP if rules.is_ip_literal(host) else RouteType.CNAME
        return Route(
            name=name,
            value=host,
            port=port,
            type=keys.get("type", inferred),
            host_header=keys.get("host_header", "preserve"),
        )
    except (InvalidValue, FieldError) as exc:
        lines = [f"--route {flag}: {_prefixed(at, message)}" for at, message in exc.entries]
        raise ConfigError(lines) from None


def _route_options(options: Sequence[str]) -> dict[str, str]:
    """The ``KEY=VALUE`` options after a route flag's target, each key once; their
    values are left for `Route` to check, as the file's are."""
    keys: dict[str, str] = {}
    for option in options:
        key, equals, value = option.partition("=")
        if not equals:
            raise InvalidValue(
                f"expected type=VALUE or host_header=VALUE after NAME=HOST:PORT, "
                f"got {rules.show(option)}"
            )
        if key not in _ROUTE_OPTIONS:
            close = difflib.get_close_matches(key, _ROUTE_OPTIONS, n=1)
            hint = (
                f"did you mean {rules.show(close[0])}?" if close else "expected type or host_header"
            )
            raise InvalidValue(f"unknown option ({hint})", at=rules.format_key(key))
        if key in keys:
            raise InvalidValue("given twice", at=key)
        keys[key] = value
    return keys


def _prefixed(key: str, message: str) -> str:
    return f"{key}: {message}" if key else message


def _route_port(value: object) -> int:
    try:
        return rules.route_port(value)
    except InvalidValue as exc:
        raise InvalidValue(exc.entries[0][1], at="port") from None


def _merge_routes(file_routes: Sequence[Route], flag_routes: Sequence[Route]) -> tuple[Route, ...]:
    by_name = {route.name: route for route in flag_routes}
    merged = [by_name.pop(route.name, route) for route in file_routes]
    return (*merged, *by_name.values())


def with_agent_overrides(
    config: AgentConfig,
    *,
    client_id: str | None = None,
    routes: Sequence[str] = (),
    admin_port: int | None = None,
    admin_host: str | None = None,
    server_urls: Sequence[str] = (),
    admin_token: Secret | None = None,
    inspect: bool = False,
    discover: str | None = None,
    source: str | None = None,
) -> AgentConfig:
    """Apply ``pvtunnel agent`` flags; None or empty leaves the file's value.

    Args:
        config: The loaded configuration.
        server_urls: Each ``--server`` given (it is repeatable): together they
            replace every URL from the file, and the agent holds one connection to
            each.
        client_id: ``--client-id``.
        routes: ``--route NAME=HOST:PORT[,type=T][,host_header=H]`` values (see
            `parse_route_flag`). A flag route replaces the file's route of the
            same name whole and in place (an option it leaves out takes its
            default, not the file's value); new names are appended.
        admin_port: ``--admin-port``, as for `with_overrides`.
        admin_host: ``--admin-host``, as for `with_overrides`; ``inspect`` turns
            a listener on for it too (on port 4040, where nothing else names one).
        admin_token: As for `with_overrides`.
        discover: ``--discover`` ("none" or "dns"), for every server URL.
        source: The file ``config`` was loaded from, named in a problem a flag
            brings out in its values (``--inspect`` checks ``[inspect]``).

    Returns:
        A new config; ``config`` itself is unchanged. It may still lack what
        ``AgentConfig.validate_runnable`` reports.

    Raises:
        ConfigError: One line per bad flag, including a name given twice.
    """
    problems: list[str] = []
    flag_urls: list[str] = []
    for flag in server_urls:
        url = _flag("--server", flag, rules.server_url, problems)
        if url is None:
            continue
        twin = next(
            (
                seen
                for seen in flag_urls
                if rules.server_identity(seen) == rules.server_identity(url)
            ),
            None,
        )
        if twin is None:
            flag_urls.append(url)
        else:
            # However written (host case, default port, bare path): one server.
            also = "" if twin == url else f" (as {rules.show(twin)})"
            problems.append(f"--server: server URL {rules.show(url)} given twice{also}")
    if client_id is not None:
        _flag("--client-id", client_id, rules.client_id, problems)
    if admin_port is not None:
        _flag("--admin-port", admin_port, rules.listen_port, problems)
    if admin_host is not None:
        _flag("--admin-host", admin_host, rules.host, problems)
    found_by = None if discover is None else _flag("--discover", discover, discovery, problems)
    flag_routes: dict[str, Route] = {}
    for flag in routes:
        try:
            route = parse_route_flag(flag)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if route.name in flag_routes:
            problems.append(f"--route {flag}: route name {rules.show(route.name)} given twice")
        flag_routes[route.name] = route
    inspector = config.inspect
    if inspect:
        try:
            inspector = attrs.evolve(inspector, enabled=True)
        except FieldError as exc:
            # Values the file may hold while the inspector is off, which it then
            # checks: the flag brought the problem out, the file's keys fix it.
            where = "" if source is None else f"{source}: "
            problems.extend(
                f"--inspect: {where}inspect.{at}: {message}" for at, message in exc.entries
            )
    admin = config.admin
    if not _flags_named(problems) & {"--admin-port", "--admin-host"}:
        admin, _ = _admin_on(
            config.admin,
            port=admin_port,
            host=admin_host,
            token=admin_token,
            problems=problems,
            default_port=INSPECT_PORT if inspector.enabled else None,
            turned_on_by="--admin-port N or --inspect",
        )
    if problems:
        raise ConfigError(problems)
    server = config.server
    if flag_urls:
        server = attrs.evolve(server, urls=tuple(flag_urls))
    if found_by is not None:
        server = attrs.evolve(server, discover=found_by)
    try:
        return attrs.evolve(
            config,
            client_id=config.client_id if client_id is None else client_id,
            server=server,
            routes=_merge_routes(config.routes, tuple(flag_routes.values())),
            admin=admin,
            inspect=inspector,
        )
    except FieldError as exc:
        # A rule over the whole configuration that the file kept and the flags'
        # routes broke: the routes' room in the agent's HELLO.
        raise ConfigError(
            [
                f"--route: {message}" if at == "routes" else f"{at}: {message}"
                for at, message in exc.entries
            ]
        ) from None
