"""`pvtunnel`: argparse -> config -> trio.run, nothing more.

Exit statuses: 0 after a clean stop (including SIGINT, SIGTERM or SIGHUP after draining),
2 for a configuration or usage mistake (one line per problem, no traceback),
1 when the server refuses an agent for good, or for an unexpected error;
130 when `status` is interrupted (SIGINT) while it waits for an answer, or any
command before it handles SIGINT itself (`pvtunnel.__main__`, the entry point).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from pvtunnel import __version__
from pvtunnel._config import (
    CA_FILE_UNUSED,
    MAX_TOKEN_FILE_BYTES,
    TOKEN_FILE_TOO_BIG,
    AgentConfig,
    InternalConfig,
    Secret,
    ServerConfig,
    ServerEndpoint,
    admin_token_from_environment,
    check_file,
    generate_token,
    load_agent_config,
    load_server_config,
    looks_like_a_token,
    port_flag,
    read_limited_text,
    token_text,
    with_agent_overrides,
    with_overrides,
    write_init_files,
)
from pvtunnel._errors import ConfigError, HandshakeRefusedError, StatusError
from pvtunnel._heap import freeze_start_up_objects, tune_heap
from pvtunnel._logs import configure_logging, flush_logs, printable, say, serve_log_flushes
from pvtunnel._status import (
    DEFAULT_ADMIN_URL,
    admin_url,
    fetch_status,
    format_status,
)
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.demo import serve_demo_upstream
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.server import ServerAddresses, TunnelServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from pvtunnel._trio.links import AgentStatus

logger = logging.getLogger("pvtunnel.cli")

# Commands that stream bodies for hours: they get the heap settings of `_heap`.
_LONG_RUNNING = frozenset({"serve", "agent", "demo"})


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors follow ``--log-format json`` when asked for:
    a program reading stderr as JSON lines gets one for a mistyped flag too."""

    def __init__(self, *args: Any, json_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str) -> NoReturn:
        if not self.json_errors:
            super().error(message)
        configure_logging("info", "json")
        say(f"{self.prog}: {message} (see {self.prog} --help)", level="error", event="usage")
        flush_logs()
        sys.exit(2)


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether ``argv`` asks for JSON lines, read before argparse has parsed it (which
    takes ``--log-f`` and longer prefixes of ``--log-format`` for the flag too)."""

    def is_flag(word: str) -> bool:
        return len(word) >= len("--log-f") and "--log-format".startswith(word)

    words = list(argv)
    return any(
        is_flag(word) and following == "json" for word, following in itertools.pairwise(words)
    ) or any(
        flag == "json" and is_flag(word) for word, _, flag in (w.partition("=") for w in words)
    )


def _add_admin_flags(command: argparse.ArgumentParser) -> None:
    """The admin listener's flags, the same for serve and agent."""
    command.add_argument(
        "--admin-port", type=int, help="serve /metrics, /status, /live, /ready here (0: any)"
    )
    command.add_argument(
        "--admin-host",
        metavar="HOST",
        help="bind address of the admin listener (default 127.0.0.1; "
        "off loopback it needs $PVTUNNEL_ADMIN_TOKEN or the file's [admin] token)",
    )


def _parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    parser = _Parser(
        json_errors=json_errors,
        prog="pvtunnel",
        description="A reverse HTTP tunnel: reach private services "
        "through one outbound WebSocket per agent.",
    )
    # The interpreter too: pvtunnel's speed depends on it (docs/performance.md).
    version = (
        f"pvtunnel {__version__} ({platform.python_implementation()} {platform.python_version()})"
    )
    parser.add_argument("--version", action="version", version=version)
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    common.add_argument("--log-format", default="text", choices=["text", "json"])
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_Parser,
    )

    serve = commands.add_parser("serve", parents=[common], help="run the tunnel server")
    serve.add_argument("--config", type=Path, help="server.toml")
    serve.add_argument("--host", help="bind address of both listeners")
    serve.add_argument("--internal-port", type=int, help="port agents connect to (0: any)")
    serve.add_argument("--external-port", type=int, help="port HTTP clients use (0: any)")
    serve.add_argument(
        "--domain",
        help="base domain for subdomain routing: NAME.DOMAIN reaches route NAME",
    )
    _add_admin_flags(serve)

    agent = commands.add_parser("agent", parents=[common], help="run an agent")
    agent.add_argument("--config", type=Path, help="agent.toml")
    agent.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="ws://host:port, wss://host:port or host:port (repeatable: the agent "
        "holds one connection to each server)",
    )
    agent.add_argument(
        "--discover",
        choices=("none", "dns"),
        help="dns: connect to every address each server URL's host resolves to, "
        "re-resolved as servers come and go (e.g. a Kubernetes headless Service)",
    )
    agent.add_argument("--client-id", help="this agent's name in the server's logs")
    _add_admin_flags(agent)
    agent.add_argument(
        "--inspect",
        action="store_true",
        help="record requests and show them at /inspect on the admin listener "
        "(127.0.0.1:4040 unless --admin-host, --admin-port or the file's [admin] "
        "say otherwise)",
    )
    agent.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT[,KEY=VALUE]",
        help="serve NAME by sending its requests to HOST:PORT (repeatable; IPv6 as "
        "[ADDRESS]:PORT). The KEY=VALUE options are [[routes]] keys: type=ip|cname, "
        "host_header=preserve|rewrite|HOST[:PORT]. It replaces the file's route of "
        "that name whole (an option left out takes its default)",
    )

    init = commands.add_parser("init", help="write server.toml and agent.toml with fresh tokens")
    init.add_argument("--dir", type=Path, default=Path("."))
    init.add_argument("--force", action="store_true", help="overwrite existing files")

    check = commands.add_parser("check", help="validate a server or agent config file")
    check.add_argument("file", type=Path)

    status = commands.add_parser(
        "status", help="show a running server's or agent's /status as tables"
    )
    status.add_argument(
        "--admin",
        default=DEFAULT_ADMIN_URL,
        metavar="URL",
        help=f"its admin listener (default {DEFAULT_ADMIN_URL}; HOST:PORT works too)",
    )
    status.add_argument(
        "--token-file",
        type=Path,
        help="a file holding the admin token (else $PVTUNNEL_ADMIN_TOKEN, if set)",
    )

    demo = commands.add_parser(
        "demo", parents=[common], help="server + agent + a sample service in one process"
    )
    demo.add_argument(
        "--port", type=int, default=8080, help="external port to try first (any free port if taken)"
    )
    for command in commands.choices.values():
        command.json_errors = json_errors
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(json_errors=_wants_json(words)).parse_args(words)
    if args.command in _LONG_RUNNING:
        tune_heap()
    if hasattr(args, "log_format"):
        # First: every line these commands print, config errors too, is in this format.
        configure_logging(args.log_level, args.log_format)
    command: Callable[[argparse.Namespace], int] = {
        "serve": _serve,
        "agent": _agent,
        "init": _init,
        "check": _check,
        "status": _status,
        "demo": _demo,
    }[args.command]
    try:
        status = command(args)
    except ConfigError as exc:
        for problem in exc.problems:
            say(problem, level="error")
        status = 2
    finally:
        flush_logs()  # before a traceback, and before exit
    sys.exit(status)


def _say_ready(command: str, fields: dict[str, str]) -> None:
    """The ready line: ``key=value`` pairs in text, the same keys in JSON.

    Start-up is over then: what it built is frozen out of garbage collection.
    """
    freeze_start_up_objects()
    pairs = " ".join(f"{key}={value}" for key, value in fields.items())
    say(f"pvtunnel {command}: ready {pairs}", event="ready", **fields)


def _cannot_start(command: str, exc: OSError | BaseExceptionGroup[BaseException]) -> int:
    """A listener that cannot be opened (a port in use, a host that does not resolve,
    an address not on this machine) is one line, not a traceback; anything else
    goes on as it came."""
    failure = _failure(exc)
    if not isinstance(failure, OSError):
        raise exc
    say(f"pvtunnel {command}: cannot start: {printable(str(failure))}", level="error")
    return 1


def _serve(args: argparse.Namespace) -> int:
    config = load_server_config(args.config, environ=os.environ)
    config = with_overrides(
        config,
        host=args.host,
        internal_port=args.internal_port,
        external_port=args.external_port,
        domain=args.domain,
        admin_port=args.admin_port,
        admin_host=args.admin_host,
        admin_token=admin_token_from_environment(os.environ),
    )
    if config.internal.token is None and not config.internal.tokens:
        token = generate_token()
        config = attrs.evolve(config, internal=attrs.evolve(config.internal, token=Secret(token)))
        say(f"pvtunnel serve: no agent token configured; this run's token is {token}")
    try:
        return trio.run(_run_server, config)
    except (OSError, BaseExceptionGroup) as exc:
        return _cannot_start("serve", exc)


async def _run_server(config: ServerConfig) -> int:
    server = TunnelServer(config)
    with trio.open_signal_receiver(*_stop_signals()) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, server.drain, nursery.cancel_scope)
            nursery.start_soon(serve_log_flushes)
            addresses: ServerAddresses = await nursery.start(server.serve)
            # The schemes a client must use: a listener with a certificate speaks TLS.
            internal_tls = config.internal.tls_cert is not None
            urls = {
                "internal": _url("wss" if internal_tls else "ws", addresses.internal),
                "external": _url(
                    "https" if config.external.tls_cert is not None else "http",
                    addresses.external,
                ),
            }
            if addresses.admin:
                urls["admin"] = _url("http", addresses.admin)
            _say_ready("serve", urls)
    return 0


def _stop_signals() -> tuple[int, ...]:
    """SIGINT and SIGTERM, and SIGHUP unless it is ignored.

    A closed terminal (or a stray ``kill -HUP``) would otherwise end the process at
    once, cutting every request in flight; pvtunnel reloads no configuration, so
    it stops as it does on SIGTERM. Started under ``nohup`` (SIGHUP ignored, so
    that it outlives its terminal) it keeps ignoring it. Windows has no SIGHUP.
    """
    signals = [signal.SIGINT, signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        signals.append(hangup)
    return tuple(signals)


async def _stop_on_signal(
    signals: AsyncIterator[int],
    drain: Callable[[], Awaitable[None]],
    scope: trio.CancelScope,
) -> None:
    """First stop signal: drain (bounded by the grace period), then stop everything.
    A second one while draining stops everything at once (as a second Ctrl-C does)."""
    async for signum in signals:
        logger.info("%s: finishing in-flight requests, then stopping", signal.Signals(signum).name)
        break
    async with trio.open_nursery() as draining:
        draining.start_soon(_stop_on_second_signal, signals, draining.cancel_scope)
        await drain()
        draining.cancel_scope.cancel()
    scope.cancel()


async def _stop_on_second_signal(signals: AsyncIterator[int], draining: trio.CancelScope) -> None:
    async for signum in signals:
        logger.warning("%s again: stopping now", signal.Signals(signum).name)
        draining.cancel()
        return


def _agent(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config, environ=os.environ)
    config = with_agent_overrides(
        config,
        server_urls=args.server,
        client_id=args.client_id,
        routes=args.route,
        admin_port=args.admin_port,
        admin_host=args.admin_host,
        admin_token=admin_token_from_environment(os.environ),
        inspect=args.inspect,
        discover=args.discover,
        source=None if args.config is None else str(args.config),
    )
    problems = config.validate_runnable()
    if problems:
        # Missing from the file and the flags alike: the file is named, as `check` names it.
        where = "" if args.config is None else f"{args.config}: "
        raise ConfigError(
            [f"pvtunnel agent: {_blamed(problem, where, args)}" for problem in problems]
        )
    try:
        return trio.run(_run_agent, config)
    except (OSError, BaseExceptionGroup) as exc:
        return _cannot_start("agent", exc)
    except HandshakeRefusedError as exc:
        # The reason may be the server's own words: escaped, like a log line.
        say(f"pvtunnel agent: {printable(str(exc))}", level="error")
        return 1


def _blamed(problem: str, where: str, args: argparse.Namespace) -> str:
    """``problem`` said of what caused it: the file, or a flag that replaced its URLs."""
    if problem == CA_FILE_UNUSED and args.server:
        # The file's ca_file went with its wss:// URLs: the flag's plain URLs undid it.
        return (
            f"--server: no wss:// URL, but {where}server.ca_file is set: it verifies "
            "TLS servers only; give a wss:// URL or leave ca_file out (a ws:// link is "
            "neither verified nor encrypted)"
        )
    return where + problem


async def _run_agent(config: AgentConfig) -> int:
    agent = TunnelAgent(config)
    with trio.open_signal_receiver(*_stop_signals()) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, agent.drain, nursery.cancel_scope)
                nursery.start_soon(serve_log_flushes)
                status = await nursery.start(agent.serve)
                fields: dict[str, str] = {
                    "server": status.server_url,
                    "routes": ",".join(status.routes),
                }
                if status.admin:
                    fields["admin"] = _url("http", status.admin)
                    if config.inspect.enabled:
                        fields["inspect"] = f"{fields['admin']}/inspect"
                _say_ready("agent", fields)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    return 0


def _init(args: argparse.Namespace) -> int:
    server_path, agent_path = write_init_files(args.dir, force=args.force)
    print(f"wrote {server_path} and {agent_path} (mode 0600; they hold fresh tokens)")
    # Quoted where the shell needs it: the lines are there to be pasted.
    print(f"start the server: pvtunnel serve --config {shlex.quote(str(server_path))}")
    print(f"start an agent:   pvtunnel agent --config {shlex.quote(str(agent_path))}")
    return 0


def _check(args: argparse.Namespace) -> int:
    kind, problems = check_file(args.file, environ=os.environ)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 2
    if kind == "unknown":
        print(f"{args.file}: a valid configuration for pvtunnel serve or pvtunnel agent alike")
    else:
        print(f"{args.file}: a valid {kind} configuration")
    if kind != "server":
        # Valid, as flags and the environment may add these; but an agent started
        # with this file alone would stop at once, and the user should know now.
        missing = load_agent_config(args.file, environ=os.environ).validate_runnable()
        if missing:
            print(f"{args.file}: pvtunnel agent will still need, from flags or the environment:")
            for problem in missing:
                print(f"  {problem}")
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.token_file is None:
        # Read as `serve` and `agent` read it: stripped (a variable often ends in a
        # newline), and refused, exit 2, when set but empty or not a token. Empty is
        # not taken for none: it is most often a secret that did not arrive
        # (VAR=$(cat missing-file)), and asking without one would end in a 401
        # telling the user to set the variable they did set.
        from_environment = admin_token_from_environment(os.environ)
        token = None if from_environment is None else from_environment.reveal()
    else:
        try:
            content = read_limited_text(args.token_file, MAX_TOKEN_FILE_BYTES)
        except FileNotFoundError:
            if looks_like_a_token(str(args.token_file)):
                raise ConfigError(
                    [
                        "--token-file: no such file, and the value looks like a token "
                        "rather than a path (not shown): put the token in a file and name "
                        "that, or set PVTUNNEL_ADMIN_TOKEN"
                    ]
                ) from None
            raise ConfigError(
                [f"--token-file: cannot read {args.token_file}: No such file or directory"]
            ) from None
        except OSError as exc:
            detail = exc.strerror or exc
            raise ConfigError([f"--token-file: cannot read {args.token_file}: {detail}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"--token-file: {args.token_file} is not UTF-8 text"]) from None
        if content is None:
            raise ConfigError([f"--token-file: {args.token_file} {TOKEN_FILE_TOO_BIG}"])
        # Empty, it is refused, not taken for none: asking without a token, and
        # without the environment's either, would only end in a 401.
        token = content.strip()
        # Checked as `serve` and `agent` check theirs: a usage mistake, said before
        # anything is sent.
        problem = token_text(token)
        if problem is not None:
            raise ConfigError([f"--token-file: the token in {args.token_file} {problem}"])
    try:
        url = admin_url(args.admin)
    except ValueError as exc:
        raise ConfigError([f"--admin: {exc}"]) from None
    try:
        document = fetch_status(url, token)
        text = format_status(document, url.removesuffix("/status"))
    except StatusError as exc:
        say(f"pvtunnel status: {printable(str(exc))}", level="error")
        return 1
    except KeyboardInterrupt:
        # Ctrl-C while a listener keeps silent is how the user gives up on it, not a
        # crash: no traceback, and the status a shell expects (128 + SIGINT).
        say("pvtunnel status: interrupted", level="error")
        return 130
    print(text)
    return 0


def _demo(args: argparse.Namespace) -> int:
    port = port_flag("--port", args.port)
    try:
        return trio.run(_run_demo, port)
    except (OSError, BaseExceptionGroup) as exc:
        return _cannot_start("demo", exc)


async def _run_demo(preferred_port: int) -> int:
    token = generate_token()
    server_config = ServerConfig(
        host="127.0.0.1", internal=InternalConfig(port=0, token=Secret(token))
    )
    with trio.open_signal_receiver(*_stop_signals()) as signals:
        async with trio.open_nursery() as nursery:
            upstream_port = await nursery.start(serve_demo_upstream)
            server, addresses = await _start_server_on(nursery, server_config, preferred_port)
            nursery.start_soon(_stop_on_signal, signals, server.drain, nursery.cancel_scope)
            nursery.start_soon(serve_log_flushes)
            agent_config = with_agent_overrides(
                AgentConfig(client_id="demo-agent", server=_endpoint(addresses, token)),
                routes=[f"demo=127.0.0.1:{upstream_port}"],
                inspect=True,
            )
            status = await _start_agent_on(nursery, agent_config)
            assert status.admin is not None  # --inspect always opens the admin listener
            page = f"{_url('http', status.admin)}/inspect"
            port = addresses.external[1]
            external = _url("http", addresses.external)
            freeze_start_up_objects()
            say(
                f"pvtunnel demo: ready. A server, an agent and a sample service are running.\n"
                f"Try:\n"
                f"  curl -H 'Host: demo' http://127.0.0.1:{port}/\n"
                f"  curl -x http://127.0.0.1:{port} http://demo/hello\n"
                f"  curl -H 'Host: demo' --data-binary 'echo me' http://127.0.0.1:{port}/echo\n"
                f"and watch them arrive at {page}\n"
                f"Ctrl-C stops it.",
                # The keys of the other commands' ready lines, for --log-format json.
                event="ready",
                external=external,
                route="demo",
                inspect=page,
            )
    return 0


async def _start_server_on(
    nursery: trio.Nursery, config: ServerConfig, preferred_port: int
) -> tuple[TunnelServer, ServerAddresses]:
    """Start on the preferred external port, or any free one when it is taken."""
    for port in (preferred_port, 0):
        server = TunnelServer(
            attrs.evolve(config, external=attrs.evolve(config.external, port=port))
        )
        try:
            addresses: ServerAddresses = await nursery.start(server.serve)
        except (OSError, BaseExceptionGroup) as exc:
            # The listener's failure comes wrapped by the server's nurseries.
            if port == 0 or not isinstance(_failure(exc), OSError):
                raise
            continue
        return server, addresses
    raise AssertionError("port 0 either starts or raises")


def _failure(exc: BaseException) -> BaseException:
    """The error a nursery wrapped, or ``exc`` itself."""
    return first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc


async def _start_agent_on(nursery: trio.Nursery, config: AgentConfig) -> AgentStatus:
    """Start with the inspector on its usual port, or any free one when it is taken."""
    assert config.admin is not None
    try:
        status: AgentStatus = await nursery.start(TunnelAgent(config).serve)
    except (OSError, BaseExceptionGroup) as exc:
        if not isinstance(_failure(exc), OSError):
            raise
        config = attrs.evolve(config, admin=attrs.evolve(config.admin, port=0))
        status = await nursery.start(TunnelAgent(config).serve)
    return status


def _endpoint(addresses: ServerAddresses, token: str) -> ServerEndpoint:
    return ServerEndpoint(urls=(_url("ws", addresses.internal),), token=Secret(token))


def _url(scheme: str, address: tuple[str, int]) -> str:
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    return f"{scheme}://{host}:{address[1]}"
