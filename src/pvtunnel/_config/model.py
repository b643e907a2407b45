"""How a configuration object is built: one frozen attrs class per TOML table.

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

Here is what every table is built from (the relation checks, the converters, the
validator of a field holding a table) and what both kinds of file have: ``[admin]``
and the heartbeat check of ``[timeouts]``. The server's tables are ``server``'s, the
agent's ``agent``'s: each kind is read by one command only.
"""

# No `from __future__ import annotations` here: cattrs reads these classes'
# annotations at run time, so the names in them must be real imports.

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, NoReturn, Protocol, TypeAlias, TypeVar

import attrs

from pvtunnel._errors import FieldError, InvalidKeyError, InvalidValue

from . import rules
from .rules import Rule, show, split_path
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


def lower_all(value: tuple[str, ...] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        # Not split into its letters ("app" would claim "a" and "p"): the rule refuses it.
        return value  # type: ignore[return-value]
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


def as_optional_secret(value: Secret | str | None) -> Secret | None:
    return as_loaded(rules.optional_secret, value)


def as_optional_path(value: Path | str | None) -> Path | None:
    return as_loaded(rules.optional_path, value)


class Heartbeats(Protocol):
    """A ``[timeouts]`` table, the server's or the agent's: both time a peer's silence."""

    @property
    def heartbeat_s(self) -> float: ...

    @property
    def heartbeat_timeout_s(self) -> float: ...


# A peer is declared dead after this many heartbeat intervals of silence, at least.
HEARTBEAT_TIMEOUT_INTERVALS: Final = 2


def heartbeat_pair(config: Heartbeats) -> list[Problem]:
    """A peer is declared dead after ``heartbeat_timeout_s`` of silence, and a quiet
    one is heard once per ``heartbeat_s`` (its PONG). The silence is read when the
    heartbeat's timer fires, one interval after the PING it answered less the round
    trip, plus however late the timer fires: a timeout just above the interval
    would drop idle connections whenever the timer is a little late (a busy event
    loop, a loaded machine). At twice the interval, the timer must fire a whole
    interval late for an idle peer to pass for a dead one, as ping/pong systems
    commonly require."""
    least = HEARTBEAT_TIMEOUT_INTERVALS * config.heartbeat_s
    if config.heartbeat_timeout_s < least:
        return [
            (
                "heartbeat_timeout_s",
                f"must be at least twice heartbeat_s ({HEARTBEAT_TIMEOUT_INTERVALS} x "
                f"{show(config.heartbeat_s)} = {show(least)}), so that a PONG that comes "
                f"late is not taken for silence; got {show(config.heartbeat_timeout_s)}",
            )
        ]
    return []


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
