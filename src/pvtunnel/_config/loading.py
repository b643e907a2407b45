"""Reading server.toml and agent.toml into finished config objects.

The pipeline, for both kinds of file:

1. tomllib parses the file (a syntax error is one problem line with its position);
2. secrets and paths are resolved on the raw tables: ``token_file`` is read
   relative to the file's directory, environment variables replace tokens (the
   environment wins over the file), relative TLS/CA paths become absolute;
3. one cattrs converter (``converter.CONVERTER``: ``forbid_extra_keys``, detailed
   validation) structures the tables into the attrs classes of ``server`` and
   ``agent``, running each field's rule as its hook, so every problem in the file is
   collected, not just the first; where a table has invalid keys, the checks that
   relate its keys (``model.relates``) still run on the valid ones, so their
   problems come in the same run;
4. the resulting exception tree is flattened (``converter.flatten``) into
   ``"<file>: <key.path>: <message>"`` lines for one ``ConfigError``.

Nothing here formats ``str(exc)`` of an unknown exception into a message, so a
token can never slip into a problem line.
"""

from __future__ import annotations

import errno
import os
import shlex
import socket
import ssl
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs
from cattrs.errors import ClassValidationError

from pvtunnel._errors import ConfigError
from pvtunnel._tls import load_cert_chain

from . import rules
from .agent import AgentConfig
from .converter import CONVERTER, flatten
from .rules import join_path, show
from .secret import Secret
from .server import ServerConfig, same_token

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

ConfigKind = Literal["server", "agent", "unknown"]

T = TypeVar("T")

ENVIRONMENT_SOURCE: Final = "environment"
ADMIN_TOKEN_ENV: Final = {"PVTUNNEL_ADMIN_TOKEN": "admin"}
SERVER_TOKEN_ENV: Final = {
    "PVTUNNEL_INTERNAL_TOKEN": "internal",
    "PVTUNNEL_EXTERNAL_TOKEN": "external",
    **ADMIN_TOKEN_ENV,
}
AGENT_TOKEN_ENV: Final = {"PVTUNNEL_TOKEN": "server", **ADMIN_TOKEN_ENV}
_PATH_KEYS: Final = ("tls_cert", "tls_key", "ca_file")
# Far past any configuration file, and any token: a file over them is the wrong one.
MAX_CONFIG_BYTES: Final = 16 << 20
MAX_TOKEN_FILE_BYTES: Final = 64 << 10
CONFIG_FILE_TOO_BIG: Final = f"over {MAX_CONFIG_BYTES >> 20} MiB, too big for a configuration"
TOKEN_FILE_TOO_BIG: Final = f"holds over {MAX_TOKEN_FILE_BYTES >> 10} KiB, too much for a token"

# check_file tells the kinds apart by these top-level keys; the strong ones first,
# the weak ones only when no strong key is present.
_KIND_SAID: Final = {
    "server": "a server config ([internal], [external])",
    "agent": "an agent config (client_id, [server], [[routes]])",
}
_COMMAND: Final = {"server": "serve", "agent": "agent"}
_SERVER_KEYS: Final = frozenset({"internal", "external"})
_AGENT_KEYS: Final = frozenset({"client_id", "server", "routes"})
_WEAK_SERVER_KEYS: Final = frozenset({"host", "limits"})
_WEAK_AGENT_KEYS: Final = frozenset(
    {
        "inspect",
        "max_streams",
        "stream_window_bytes",
        "connection_window_bytes",
        "upstream_pool_size",
    }
)


# ---------------------------------------------------------------- reading


@attrs.define
class _Problems:
    """Problem lines collected across all stages, so one run reports everything."""

    source: str
    lines: list[str] = attrs.field(factory=list)
    # Keys whose problem was already reported by an earlier stage (a token_file that
    # could not be read), so the converter's "missing required key" is not repeated.
    reported: set[str] = attrs.field(factory=set)
    # Messages worded otherwise in this load: a token the environment set is named
    # by its variable, not by a key the file may not even hold.
    worded: dict[str, str] = attrs.field(factory=dict)

    def add(self, path: str, message: str) -> None:
        message = self.worded.get(message, message)
        self.lines.append(
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        )


def read_limited_text(path: Path, limit: int) -> str | None:
    """The text of a UTF-8 file, or None when it holds over ``limit`` bytes: what
    never ends (``/dev/zero``, a pipe that goes on) is not read until memory runs out.
    A byte order mark at the start is no part of it (Windows editors write one).

    Raises:
        OSError: The file cannot be opened or read.
        UnicodeDecodeError: It is not UTF-8.
    """
    with path.open("rb") as file:
        data = file.read(limit + 1)
    return data.decode("utf-8-sig") if len(data) <= limit else None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file or raise ``ConfigError`` with one line saying why not.

    Args:
        path: The file, named in the message exactly as given.

    Returns:
        The parsed top-level table.

    Raises:
        ConfigError: The file cannot be read, is over `MAX_CONFIG_BYTES`, is not
            UTF-8, or is not valid TOML (or nested deeper than tomllib can parse).
    """
    try:
        text = read_limited_text(path, MAX_CONFIG_BYTES)
        if text is None:
            raise ConfigError([f"{path}: {CONFIG_FILE_TOO_BIG}"])
        return tomllib.loads(text)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        # The message already ends with "(at line L, column C)".
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: invalid TOML: the file is not UTF-8 text"]) from None
    except RecursionError:
        # tomllib recurses once per level: a few hundred nested arrays or tables do.
        raise ConfigError([f"{path}: invalid TOML: values nested too deep"]) from None


def _secret_tables(raw: dict[str, Any], kind: ConfigKind) -> Iterator[tuple[str, dict[str, Any]]]:
    names = ("internal", "external", "admin") if kind == "server" else ("server", "admin")
    for name in names:
        table = raw.get(name)
        if isinstance(table, dict):
            yield name, table
    internal = raw.get("internal")
    scoped = internal.get("tokens") if kind == "server" and isinstance(internal, dict) else None
    if isinstance(scoped, list):
        for index, table in enumerate(scoped):
            if isinstance(table, dict):
                yield f"internal.tokens[{index}]", table


def _read_token_file(table: dict[str, Any], key_path: str, base: Path, problems: _Problems) -> None:
    name = table.pop("token_file")
    problems.reported.add(join_path(key_path, "token"))
    if not isinstance(name, str) or not name:
        problems.add(join_path(key_path, "token_file"), f"expected a file path, got {show(name)}")
        return
    file = _absolute(base, name)
    if isinstance(file, str):
        problems.add(join_path(key_path, "token_file"), file)
        return
    try:
        content = read_limited_text(file, MAX_TOKEN_FILE_BYTES)
    except FileNotFoundError:
        problems.add(join_path(key_path, "token_file"), _missing_token_file(name, file))
        return
    except OSError as exc:
        problems.add(
            join_path(key_path, "token_file"), f"cannot read {file}: {exc.strerror or exc}"
        )
        return
    except UnicodeDecodeError:
        problems.add(join_path(key_path, "token_file"), f"{file} is not UTF-8 text")
        return
    if content is None:
        problems.add(join_path(key_path, "token_file"), f"{file} {TOKEN_FILE_TOO_BIG}")
        return
    text = content.strip()
    problem = rules.token_text(text)
    if problem is not None:
        problems.add(join_path(key_path, "token_file"), f"the token in {file} {problem}")
        return
    problems.reported.discard(join_path(key_path, "token"))
    table["token"] = Secret(text)


def _absolute(base: Path, name: str) -> Path | str:
    """``name`` (``~`` expanded) made absolute against ``base``, its links resolved;
    or why it names no file (pathlib raises for these, as no ``open`` would)."""
    if "\0" in name:
        return f"expected a file path, got {show(name)}"
    try:
        path = Path(name).expanduser()
    except RuntimeError:
        return f"cannot read {name}: {name.partition('/')[0]} names no home directory"
    try:
        return (base / path).resolve()
    except RuntimeError:
        # A loop of symbolic links (Python 3.13 leaves it to open(), as ELOOP).
        return f"cannot read {(base / path).absolute()}: {os.strerror(errno.ELOOP)}"


# Shorter values are as likely to be file names ("token", "agent-key").
_TOKEN_LIKE_LENGTH = 20


def looks_like_a_token(name: str) -> bool:
    """Whether a token file's name that names no file is more likely the token itself.

    Long, one word of the characters tokens use, and nothing a path has (a
    separator, a dot before an extension, a ``~``): the token put where its file
    goes. Echoed as a path, it would end up in terminals, CI logs and bug reports.
    """
    return (
        len(name) >= _TOKEN_LIKE_LENGTH
        and rules.token_text(name) is None
        and not any(char in name for char in "/\\.~")
    )


def _missing_token_file(name: str, file: Path) -> str:
    if looks_like_a_token(name):
        return (
            "no such file, and the value looks like a token rather than a path "
            "(not shown): put a token in token, or in the file token_file names"
        )
    return f"cannot read {file}: No such file or directory"


def _environment_tokens(
    environ: Mapping[str, str], names: Mapping[str, str], problems: list[str]
) -> dict[str, Secret]:
    tokens: dict[str, Secret] = {}
    for variable, table_name in names.items():
        value = environ.get(variable)
        if value is None:
            continue
        text = value.strip()
        problem = rules.token_text(text)
        if problem is None:
            tokens[table_name] = Secret(text)
        else:
            problems.append(f"{ENVIRONMENT_SOURCE}: {variable}: the token {problem}")
    return tokens


def _resolve(
    raw: dict[str, Any],
    kind: ConfigKind,
    base: Path,
    environment_tokens: Mapping[str, Secret],
    problems: _Problems,
) -> None:
    """Put finished tokens and absolute paths into the raw tables, in place."""
    for key_path, table in _secret_tables(raw, kind):
        if "token_file" in table and "token" in table:
            problems.add(
                join_path(key_path, "token_file"), "set either token or token_file, not both"
            )
            del table["token_file"]
        elif "token_file" in table and key_path in environment_tokens:
            # The environment overrides it anyway: do not fail on a file not meant
            # to be there (say, a production path on a developer's machine).
            del table["token_file"]
        elif "token_file" in table:
            _read_token_file(table, key_path, base, problems)
        for key in _PATH_KEYS:
            value = table.get(key)
            if isinstance(value, str) and value:
                resolved = _absolute(base, value)
                if isinstance(resolved, str):
                    problems.add(join_path(key_path, key), resolved)
                    continue
                table[key] = str(resolved)
                if not resolved.is_file():
                    problems.add(join_path(key_path, key), f"no such file: {resolved}")
    for table_name, token in environment_tokens.items():
        if table_name == "admin" and "admin" not in raw:
            # The admin token alone does not turn the listener on (`pvtunnel status`
            # reads the same variable); `--admin-port` takes it, see
            # `admin_token_from_environment`.
            continue
        table = raw.setdefault(table_name, {})
        if isinstance(table, dict):  # else the converter reports the table itself
            table["token"] = token


def _structure(raw: dict[str, Any], cls: type[T], problems: _Problems) -> T | None:
    try:
        return CONVERTER.structure(raw, cls)
    except ClassValidationError as exc:
        for key_path, message in flatten(exc):
            # A key said to be missing ("missing required key", "required when
            # ...") whose file could not be read was said already, better.
            missing = message == "missing required key" or message.startswith("required when")
            if not (missing and key_path in problems.reported):
                problems.add(key_path, message)
        return None


def _load(path: Path | None, environ: Mapping[str, str], kind: ConfigKind, cls: type[T]) -> T:
    problems = _Problems(source=str(path) if path is not None else ENVIRONMENT_SOURCE)
    raw = read_toml(path) if path is not None else {}
    other = detect_kind(raw)
    if other not in (kind, "unknown"):
        # The other kind's file: every one of its tables would be an "unknown key",
        # where the one thing to say is which command it is for.
        raise ConfigError(
            [
                f"{path}: this is {_KIND_SAID[other]}, not {_KIND_SAID[kind]}: "
                f"start it with pvtunnel {_COMMAND[other]} --config {shlex.quote(str(path))}"
            ]
        )
    base = path.parent if path is not None else Path.cwd()
    env_problems: list[str] = []
    env_names = SERVER_TOKEN_ENV if kind == "server" else AGENT_TOKEN_ENV
    tokens = _environment_tokens(environ, env_names, env_problems)
    for variable, table_name in env_names.items():
        if table_name in tokens:
            problems.worded[same_token(f"{table_name}.token")] = same_token(variable)
    _resolve(raw, kind, base, tokens, problems)
    if kind == "agent" and "client_id" not in raw:
        raw["client_id"] = socket.gethostname()
    config = _structure(raw, cls, problems)
    all_problems = problems.lines + env_problems
    if config is not None and not all_problems:
        all_problems = _tls_problems(config, problems.source)
    if all_problems:
        raise ConfigError(all_problems)
    assert config is not None
    return config


def _tls_problems(config: object, source: str) -> list[str]:
    """TLS files that exist but do not load: found here, as one line each, rather
    than as a traceback when the listener starts or a retry loop when the agent
    dials (and `pvtunnel check` finds them too)."""
    lines: list[str] = []
    if isinstance(config, ServerConfig):
        for name, listener in (("internal", config.internal), ("external", config.external)):
            if listener.tls_cert is None or listener.tls_key is None:
                continue
            try:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                load_cert_chain(context, listener.tls_cert, listener.tls_key)
            except (ssl.SSLError, OSError) as exc:
                lines.append(
                    f"{source}: {name}.tls_cert: cannot load it with {name}.tls_key "
                    f"(a PEM certificate and its private key): {exc}"
                )
    elif isinstance(config, AgentConfig) and config.server.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.server.ca_file))
        except (ssl.SSLError, OSError) as exc:
            lines.append(f"{source}: server.ca_file: cannot load it (PEM CA certificates): {exc}")
    return lines


def admin_token_from_environment(environ: Mapping[str, str]) -> Secret | None:
    """``$PVTUNNEL_ADMIN_TOKEN``, for an admin listener that ``--admin-port`` turns on.

    A listener from the file's ``[admin]`` table already has it: the loaders put it
    there, winning over the file as every environment token does.

    Raises:
        ConfigError: The variable is set but holds no usable token.
    """
    problems: list[str] = []
    tokens = _environment_tokens(environ, ADMIN_TOKEN_ENV, problems)
    if problems:
        raise ConfigError(problems)
    return tokens.get("admin")


def load_server_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str]
) -> ServerConfig:
    """Build the server's configuration from server.toml and the environment.

    Args:
        path: The TOML file (a `Path` or a str), or None for defaults only (a first
            run needs no file).
        environ: Where ``PVTUNNEL_INTERNAL_TOKEN``, ``PVTUNNEL_EXTERNAL_TOKEN`` and
            ``PVTUNNEL_ADMIN_TOKEN`` are looked up (pass ``os.environ``); they win
            over the file.

    Returns:
        A finished config: tokens resolved, relative paths made absolute.

    Raises:
        ConfigError: With one ``"<file>: <key.path>: <message>"`` line for every
            problem found (unreadable file, TOML syntax, unknown keys, bad values,
            unreadable token files, empty environment tokens).
    """
    return _load(_as_path(path), environ, "server", ServerConfig)


def load_agent_config(
    path: str | os.PathLike[str] | None, *, environ: Mapping[str, str]
) -> AgentConfig:
    """Build the agent's configuration from agent.toml and the environment.

    The file may leave out the server URL, the token and the routes, since flags
    and ``PVTUNNEL_TOKEN`` can supply them; ``AgentConfig.validate_runnable`` checks
    for them once flags are applied. ``client_id`` defaults to the host name.

    Args:
        path: The TOML file (a `Path` or a str), or None for defaults only.
        environ: Where ``PVTUNNEL_TOKEN`` and ``PVTUNNEL_ADMIN_TOKEN`` are looked
            up; they win over the file.

    Returns:
        A finished config: tokens resolved, paths absolute, route names lower-case.

    Raises:
        ConfigError: With one line per problem, as for ``load_server_config``, plus
            duplicate route names.
    """
    return _load(_as_path(path), environ, "agent", AgentConfig)


def _as_path(path: str | os.PathLike[str] | None) -> Path | None:
    """A str as a `Path`, as `open` takes either (a program's paths often are str)."""
    return None if path is None else Path(path)


def detect_kind(raw: Mapping[str, Any]) -> ConfigKind:
    """The kind of file whose top-level table is ``raw``, by its keys: "unknown" where
    they say both kinds or neither."""
    keys = set(raw)
    for server_keys, agent_keys in (
        (_SERVER_KEYS, _AGENT_KEYS),
        (_WEAK_SERVER_KEYS, _WEAK_AGENT_KEYS),
    ):
        is_server, is_agent = bool(keys & server_keys), bool(keys & agent_keys)
        if is_server != is_agent:
            return "server" if is_server else "agent"
        if is_server:
            return "unknown"
    return "unknown"
