"""The `pvtunnel` command as users run it: real processes, real signals, loopback only."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import h11
import pytest
import trio

from pvtunnel import __version__
from pvtunnel._config import ScopedToken, Secret
from tests.config.helpers import write_tls_files
from tests.integration.client import fetch
from tests.integration.harness import TOKEN, server_config, start_server, start_upstream
from tests.integration.pki import issue
from tests.integration.processes import PVTUNNEL, Process

if TYPE_CHECKING:
    from pathlib import Path

LIMIT_S = 20
SCOPED_TOKEN = "team-a-secret-93e1d7"

Launch = Callable[..., Awaitable[Process]]


@pytest.fixture
def launch(processes: list[Process]) -> Launch:
    """Start pvtunnel processes; after the test each is gone and its pipe closed."""

    async def start(*args: str, env: dict[str, str] | None = None) -> Process:
        process = await Process.launch(*args, env=env or {})
        processes.append(process)
        return process

    return start


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PVTUNNEL, *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    implementation, version = platform.python_implementation(), platform.python_version()
    assert result.stdout.strip() == f"pvtunnel {__version__} ({implementation} {version})"


def test_config_errors_exit_2_with_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'client_id = "a"\n[server]\nurl = "ws://127.0.0.1:1"\ntoken = "t"\n'
        '[[routes]]\nname = "r"\nvalue = "localhost"\nport = 80\n'
        '[[routes]]\nname = "s"\nvalue = "localhost"\nport = "80a"\n'
    )
    for command in (("check", str(config)), ("agent", "--config", str(config))):
        result = run(*command)
        assert result.returncode == 2, result
        assert "Traceback" not in result.stderr
        assert 'agent.toml: routes[1].port: expected an integer from 1 to 65535, got "80a"' in (
            result.stderr
        ), result.stderr


def test_a_reconnect_cap_below_its_floor_stops_agent_and_check_before_any_dial(
    tmp_path: Path,
) -> None:
    """At 1e-9 the agent redialled a server that was down as fast as it could,
    thousands of times a second, each attempt logged."""
    config = tmp_path / "agent.toml"
    config.write_text(
        'client_id = "a"\n[server]\nurl = "ws://127.0.0.1:1"\ntoken = "t"\n'
        '[[routes]]\nname = "r"\nvalue = "localhost"\nport = 80\n'
        "[timeouts]\nreconnect_max_s = 1e-9\n"
    )
    for command in (("check", str(config)), ("agent", "--config", str(config))):
        result = run(*command)
        assert result.returncode == 2, result
        assert result.stderr.splitlines() == [
            f"{config}: timeouts.reconnect_max_s: expected at least 0.2 seconds "
            "(the longest pause between attempts to dial a server), got 1e-09"
        ]


def test_a_port_clash_is_reported_beside_a_bad_host_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text('host = "bad host"\n[internal]\nport = 9000\n[external]\nport = 9000\n')
    for command in (("check", str(config)), ("serve", "--config", str(config))):
        result = run(*command, env={})
        assert result.returncode == 2, result
        assert result.stderr.splitlines() == [
            f'{config}: host: expected a host name or IP address, got "bad host"',
            f"{config}: external.port: 9000 is internal.port too: both listeners bind one "
            "host, so the second could not start; give each its own port (0: any free one)",
        ]


def test_bad_route_flag_exits_2() -> None:
    result = run(
        "agent", "--server", "ws://127.0.0.1:1", "--route", "nonsense", env={"PVTUNNEL_TOKEN": "x"}
    )
    assert result.returncode == 2
    assert "--route nonsense" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_says_which_kind_a_file_is(tmp_path: Path) -> None:
    files = {
        "s.toml": ("[timeouts]\nidle_s = 5.0\n", "a valid server configuration"),
        "a.toml": ("[timeouts]\nupstream_idle_s = 5.0\n", "a valid agent configuration"),
        "e.toml": ("[admin]\nport = 9000\n", "for pvtunnel serve or pvtunnel agent alike"),
    }
    for name, (text, says) in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        result = run("check", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        assert says in result.stdout


def test_a_plain_server_flag_beside_a_files_ca_file_is_blamed_on_the_flag(
    tmp_path: Path,
) -> None:
    """The file is right (its wss:// URL uses its ca_file); the --server ws://...
    that replaced its URLs is what left the CA file verifying nothing."""
    write_tls_files(tmp_path, "cert.pem", "key.pem", ca="ca.pem")
    path = tmp_path / "a.toml"
    path.write_text(
        'client_id = "a"\n[server]\nurl = "wss://127.0.0.1:1"\ntoken = "t"\n'
        f'ca_file = "{tmp_path / "ca.pem"}"\n'
        '[[routes]]\nname = "app"\nvalue = "127.0.0.1"\nport = 8080\n'
    )
    assert run("check", str(path), env={}).returncode == 0
    started = run("agent", "--config", str(path), "--server", "ws://127.0.0.1:1", env={})
    assert started.returncode == 2
    assert started.stderr.startswith(
        f"pvtunnel agent: --server: no wss:// URL, but {path}: server.ca_file is set: "
    ), started.stderr
    assert "give a wss:// URL or leave ca_file out" in started.stderr


def test_a_files_inspect_sizes_that_inspect_brings_into_play_are_blamed_on_both(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[inspect]\nmax_bytes = 65536\nmax_body_bytes = 65536\n")
    assert run("check", str(path), env={}).returncode == 0
    started = run(
        "agent", "--config", str(path), "--inspect", "--server", "ws://127.0.0.1:1", env={}
    )
    assert started.returncode == 2
    assert started.stderr.startswith(f"--inspect: {path}: inspect.max_body_bytes: at most "), (
        started.stderr
    )


def test_one_server_given_twice_is_blamed_on_the_flag() -> None:
    started = run(
        "agent", "--server", "ws://h:1", "--server", "ws://H:1/", "--route", "a=1.2.3.4:5"
    )
    assert started.returncode == 2
    assert started.stderr == '--server: server URL "ws://H:1/" given twice (as "ws://h:1")\n'


def test_check_says_what_an_agent_file_leaves_to_flags(tmp_path: Path) -> None:
    """Valid (flags and the environment may add them), but an agent started with the
    file alone stops at once: `check` says so, and the agent names the file."""
    path = tmp_path / "a.toml"
    path.write_text('[[routes]]\nname = "app"\nvalue = "127.0.0.1"\nport = 8080\n')
    checked = run("check", str(path), env={})
    assert checked.returncode == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == f"{path}: a valid agent configuration"
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["server.url", "server.token"]
    with_token = run("check", str(path), env={"PVTUNNEL_TOKEN": "t"})
    assert [line.split(":")[0].strip() for line in with_token.stdout.splitlines()[2:]] == [
        "server.url"
    ]
    started = run("agent", "--config", str(path), env={})
    assert started.returncode == 2
    assert f"pvtunnel agent: {path}: server.url: " in started.stderr
    assert f"pvtunnel agent: {path}: server.token: " in started.stderr
    path.write_text(path.read_text() + '[server]\nurl = "ws://127.0.0.1:1"\ntoken = "t"\n')
    complete = run("check", str(path), env={})
    assert complete.stdout.splitlines() == [f"{path}: a valid agent configuration"]
    # A file either kind loads says so too, for the agent it may be meant for.
    either = tmp_path / "e.toml"
    either.write_text("[timeouts]\ngrace_s = 5.0\n")
    lines = run("check", str(either), env={}).stdout.splitlines()
    assert lines[0].endswith("for pvtunnel serve or pvtunnel agent alike")
    assert [line.split(":")[0].strip() for line in lines[2:]] == [
        "server.url",
        "server.token",
        "routes",
    ]


def test_init_writes_configs_that_check_cleanly(tmp_path: Path) -> None:
    result = run("init", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("server.toml", "agent.toml"):
        checked = run("check", str(tmp_path / name))
        assert checked.returncode == 0, checked.stderr
    again = run("init", "--dir", str(tmp_path))
    assert again.returncode == 2
    assert run("init", "--dir", str(tmp_path), "--force").returncode == 0


def test_init_prints_commands_a_shell_can_run_as_printed(tmp_path: Path) -> None:
    directory = tmp_path / "sp ace"
    result = run("init", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    commands = [line.partition(": ")[2] for line in result.stdout.splitlines()[1:]]
    assert [shlex.split(command) for command in commands] == [
        ["pvtunnel", "serve", "--config", str(directory / "server.toml")],
        ["pvtunnel", "agent", "--config", str(directory / "agent.toml")],
    ]


# `pvtunnel serve` on loopback, both ports chosen by the system.
SERVE_ON_LOOPBACK = ("serve", "--host", "127.0.0.1", "--internal-port", "0", "--external-port", "0")


async def launch_pair(launch: Launch, upstream_port: int) -> tuple[Process, Process, str]:
    """`pvtunnel serve` and an agent routing "app" to ``upstream_port``, both ready;
    with the server's external port."""
    server = await launch(*SERVE_ON_LOOPBACK, env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN})
    ready = await server.wait_for(
        r"ready internal=ws://127\.0\.0\.1:(\d+) external=http://127\.0\.0\.1:(\d+)"
    )
    internal, external = ready.group(1), ready.group(2)
    agent = await launch(
        "agent",
        "--server",
        f"127.0.0.1:{internal}",
        "--route",
        f"app=127.0.0.1:{upstream_port}",
        env={"PVTUNNEL_TOKEN": TOKEN},
    )
    await agent.wait_for(r"ready server=ws://127\.0\.0\.1:\d+ routes=app")
    return server, agent, external


async def test_serve_without_an_agent_token_prints_the_one_it_made_once(
    launch: Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run needs no token: the server makes one and says it on one line,
    and an agent given that token registers."""
    monkeypatch.delenv("PVTUNNEL_INTERNAL_TOKEN", raising=False)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, upstream_port = await start_upstream(nursery, "svc")
            server = await launch(*SERVE_ON_LOOPBACK)
            ready = await server.wait_for(
                r"ready internal=(\S+) external=http://127\.0\.0\.1:(\d+)"
            )
            # Said before the ready line, so it is among the lines read by now.
            prefix = "pvtunnel serve: no agent token configured; this run's token is "
            told = [line for line in server.lines if line.startswith(prefix)]
            assert len(told) == 1, server.lines
            token = told[0].removeprefix(prefix)
            assert re.fullmatch(r"[\w-]{43}", token), token
            agent = await launch(
                "agent",
                "--server",
                ready.group(1),
                "--route",
                f"app=127.0.0.1:{upstream_port}",
                env={"PVTUNNEL_TOKEN": token},
            )
            await agent.wait_for(r"ready server=ws://127\.0\.0\.1:\d+ routes=app")
            assert (await fetch(int(ready.group(2)), b"GET", b"/")).status == 200
            assert len(upstream.requests) == 1
            for process in (agent, server):
                process.process.send_signal(signal.SIGTERM)
                assert await process.process.wait() == 0
            # Neither the ready line nor any log line after it repeats the token.
            said = (await server.drain_output()).splitlines()
            assert [line for line in said if token in line] == told, said
            assert token not in await agent.drain_output()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("stop_server", "stop_agent"),
    [(signal.SIGTERM, signal.SIGINT), (signal.SIGHUP, signal.SIGHUP)],
    ids=["sigterm", "sighup"],
)
async def test_serve_prints_ready_line_and_drains_on_a_stop_signal(
    launch: Launch, stop_server: signal.Signals, stop_agent: signal.Signals
) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, upstream_port = await start_upstream(nursery, "svc")
            server, agent, external = await launch_pair(launch, upstream_port)
            replies: list[int] = []

            async def slow_request() -> None:
                replies.append((await fetch(int(external), b"GET", b"/hold")).status)

            nursery.start_soon(slow_request)
            await upstream.hold_started.wait()
            server.process.send_signal(stop_server)
            await server.wait_for(f"{stop_server.name}: finishing in-flight requests")
            # In-flight requests finish during the grace period.
            upstream.release.set()
            assert await server.process.wait() == 0
            assert replies == [200]
            agent.process.send_signal(stop_agent)
            assert await agent.process.wait() == 0
            nursery.cancel_scope.cancel()


async def test_under_nohup_sighup_is_left_ignored(processes: list[Process]) -> None:
    """`nohup` ignores SIGHUP so that a process outlives its terminal: the server
    keeps it so, and the SIGTERM after it is the one that stops it."""
    with trio.fail_after(LIMIT_S):
        server = await Process.spawn(
            ["nohup", *PVTUNNEL, *SERVE_ON_LOOPBACK], env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN}
        )
        processes.append(server)
        await server.wait_for(r"ready internal=")
        server.process.send_signal(signal.SIGHUP)
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() == 0
        output = await server.drain_output()
        assert "SIGTERM: finishing in-flight requests" in output
        assert "SIGHUP" not in output


async def test_with_json_logs_every_line_is_json_ready_lines_too(launch: Launch) -> None:
    """A program reading stderr under --log-format json reads JSON only: the ready
    lines carry their addresses as keys, and the log lines come in the same form."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            _, upstream_port = await start_upstream(nursery, "svc")
            server = await launch(
                *SERVE_ON_LOOPBACK, "--log-format", "json", env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN}
            )
            await server.wait_for(r'"event": "ready"')
            ready = json.loads(server.lines[-1])
            assert ready["level"] == "info"
            assert ready["message"].startswith("pvtunnel serve: ready internal=ws://127.0.0.1:")
            agent = await launch(
                "agent",
                "--server",
                ready["internal"],
                "--route",
                f"app=127.0.0.1:{upstream_port}",
                "--log-format",
                "json",
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            await agent.wait_for(r'"event": "ready"')
            assert json.loads(agent.lines[-1])["routes"] == "app"
            port = int(ready["external"].rpartition(":")[2])
            assert (await fetch(port, b"GET", b"/")).status == 200
            for process in (agent, server):
                process.process.send_signal(signal.SIGTERM)
                assert await process.process.wait() == 0
                lines = (await process.drain_output()).splitlines()
                assert len(lines) >= 3
                for line in lines:
                    assert isinstance(json.loads(line), dict), line
            nursery.cancel_scope.cancel()


def test_with_json_logs_config_errors_are_json_too(tmp_path: Path) -> None:
    result = run("agent", "--log-format", "json", "--server", "ws://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 2
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["level"] for line in lines] == ["error", "error"]
    assert [line["message"].partition(":")[2].split(":")[0] for line in lines] == [
        " server.token",
        " routes",
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("serve", "--log-format", "json", "--bogus"), "unrecognized arguments: --bogus"),
        (("serve", "--log-format=json", "--internal-port", "x"), "invalid int value: 'x'"),
        (("agent", "--log-format", "json", "--discover", "mdns"), "invalid choice: 'mdns'"),
        (("serve", "--log-form", "json", "--bogus"), "unrecognized arguments: --bogus"),
        (("serve", "--log-f=json", "--bogus"), "unrecognized arguments: --bogus"),
    ],
)
def test_with_json_logs_usage_errors_are_json_too(args: tuple[str, ...], says: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    (line,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert (line["level"], line["event"]) == ("error", "usage")
    assert says in line["message"]


def test_without_json_logs_usage_errors_are_argparses() -> None:
    result = run("serve", "--bogus")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: pvtunnel ")
    assert result.stderr.endswith("error: unrecognized arguments: --bogus\n")


async def test_agent_with_a_refused_token_exits_non_zero(launch: Launch) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            host, port = running.addresses.internal
            agent = await launch(
                "agent",
                "--server",
                f"ws://{host}:{port}",
                "--route",
                "app=127.0.0.1:9",
                env={"PVTUNNEL_TOKEN": "wrong-token"},
            )
            assert await agent.process.wait() == 1
            output = await agent.drain_output()
            assert "refused this agent's token (HTTP 401)" in output
            assert "wrong-token" not in output
            nursery.cancel_scope.cancel()


async def test_agent_the_server_rejects_exits_1_with_one_line_saying_why(
    launch: Launch, tmp_path: Path
) -> None:
    """A token scoped to other names, and more names than an ACCEPT can list the
    refusals of: the server answers REJECT, and the agent stops rather than retry."""
    scoped = ScopedToken(token=Secret(SCOPED_TOKEN), routes=("*.team-a.example.com",))
    config = tmp_path / "agent.toml"
    config.write_text(
        "".join(
            f'[[routes]]\nname = "svc-{index:04d}"\nvalue = "127.0.0.1"\nport = 9\n'
            for index in range(2000)
        ),
        "utf-8",
    )
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, server_config(internal={"tokens": (scoped,)}))
            agent = await launch(
                "agent",
                "--config",
                str(config),
                "--server",
                running.url,
                env={"PVTUNNEL_TOKEN": SCOPED_TOKEN},
            )
            # The first line to say so is the last word, not a failure to retry after.
            said = (await agent.wait_for(r".*rejected this agent.*")).group(0)
            assert said == (
                "pvtunnel agent: the server rejected this agent: "
                "2000 routes refused: too many to list in an ACCEPT"
            )
            assert await agent.process.wait() == 1
            lines = (await agent.drain_output()).splitlines()
            assert [line for line in lines if "rejected" in line] == [said]
            assert not [line for line in lines if "reconnecting" in line], lines
            nursery.cancel_scope.cancel()


async def test_agent_process_killed_mid_request_gives_502_within_5_seconds(launch: Launch) -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, upstream_port = await start_upstream(nursery, "svc")
            host, port = running.addresses.internal
            agent = await launch(
                "agent",
                "--server",
                f"ws://{host}:{port}",
                "--route",
                f"app=127.0.0.1:{upstream_port}",
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            await agent.wait_for("ready")
            outcome: list[int | str] = []
            answered = trio.Event()

            async def client() -> None:
                try:
                    outcome.append((await fetch(running.port, b"GET", b"/hold")).status)
                except (h11.RemoteProtocolError, trio.BrokenResourceError):
                    outcome.append("closed")
                answered.set()

            nursery.start_soon(client)
            await upstream.hold_started.wait()
            agent.process.kill()
            with trio.fail_after(5):  # the bar in the issue: the client hears within 5 s
                await answered.wait()
            assert outcome == [502]
            with trio.fail_after(5):  # the server's per-agent state drops back to zero
                await running.server.state.idle.wait()
            assert running.server.state.in_flight == 0
            nursery.cancel_scope.cancel()


async def test_route_flag_options_choose_the_host_header_the_upstream_receives(
    launch: Launch,
) -> None:
    """``host_header`` on ``--route`` does what the [[routes]] key does: "rewrite"
    sends the target's own HOST:PORT, a fixed value that value, and a route without
    the option the client's Host."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            upstream, upstream_port = await start_upstream(nursery, "svc")
            target = f"127.0.0.1:{upstream_port}"
            agent = await launch(
                "agent",
                *("--server", running.url),
                *("--route", f"app={target},host_header=rewrite"),
                *("--route", f"fixed={target},host_header=backend.internal:8443,type=ip"),
                *("--route", f"plain={target}"),
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            await agent.wait_for(r"ready server=\S+ routes=app,fixed,plain$")
            for name in (b"app", b"fixed", b"plain"):
                assert (await fetch(running.port, b"GET", b"/", host=name)).status == 200
            assert [request.header(b"host") for request in upstream.requests] == [
                target.encode(),
                b"backend.internal:8443",
                b"plain",
            ]
            agent.process.send_signal(signal.SIGTERM)
            assert await agent.process.wait() == 0
            nursery.cancel_scope.cancel()


async def test_domain_flag_routes_subdomains_to_their_routes(launch: Launch) -> None:
    """``serve --domain``, as ``[external] domain``: app.DOMAIN reaches route "app"."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, upstream_port = await start_upstream(nursery, "svc")
            server = await launch(
                *SERVE_ON_LOOPBACK,
                *("--domain", "tunnel.example"),
                env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
            )
            ready = await server.wait_for(
                r"ready internal=(ws://\S+) external=http://127\.0\.0\.1:(\d+)"
            )
            agent = await launch(
                *("agent", "--server", ready.group(1), "--route", f"app=127.0.0.1:{upstream_port}"),
                env={"PVTUNNEL_TOKEN": TOKEN},
            )
            await agent.wait_for(r"ready server=\S+ routes=app$")
            port = int(ready.group(2))
            reply = await fetch(port, b"GET", b"/", host=b"app.tunnel.example")
            assert reply.status == 200
            assert [request.header(b"host") for request in upstream.requests] == [
                b"app.tunnel.example"
            ]
            for process in (agent, server):
                process.process.send_signal(signal.SIGTERM)
                assert await process.process.wait() == 0
            nursery.cancel_scope.cancel()


def test_a_bad_route_option_is_one_line_naming_the_flag() -> None:
    result = run(
        "agent",
        *("--server", "ws://127.0.0.1:1", "--route", "app=127.0.0.1:80,host-header=rewrite"),
        env={"PVTUNNEL_TOKEN": TOKEN},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "--route app=127.0.0.1:80,host-header=rewrite: host-header: unknown option "
        '(did you mean "host_header"?)\n'
    )


async def test_demo_prints_a_curl_line_that_works(launch: Launch) -> None:
    with trio.fail_after(LIMIT_S):
        demo = await launch("demo", "--port", "0")
        match = await demo.wait_for(r"curl -H 'Host: demo' http://127\.0\.0\.1:(\d+)/")
        reply = await fetch(int(match.group(1)), b"GET", b"/", host=b"demo")
        assert reply.status == 200
        assert b"Hello from the private service behind pvtunnel!" in reply.body
        # The demo turns the inspector on (on 4040, or any free port if that is taken).
        page = await demo.wait_for(r"watch them arrive at http://127\.0\.0\.1:(\d+)/inspect$")
        inspector = int(page.group(1))
        listing = await fetch(
            inspector, b"GET", b"/inspect/api/requests", host=b"127.0.0.1:%d" % inspector
        )
        assert [(entry["method"], entry["target"]) for entry in json.loads(listing.body)] == [
            ("GET", "/")
        ]
        demo.process.send_signal(signal.SIGINT)
        assert await demo.process.wait() == 0


async def test_the_ready_line_gives_the_schemes_of_tls_listeners(
    launch: Launch, tmp_path: Path
) -> None:
    """Whatever reads the ready line to wire itself up gets URLs that work."""
    pki = issue(tmp_path, "server", "127.0.0.1")
    tls = f'tls_cert = "{pki.cert_file}"\ntls_key = "{pki.key_file}"\n'
    config = tmp_path / "server.toml"
    config.write_text(f"[internal]\nport = 0\n{tls}[external]\nport = 0\n{tls}", "utf-8")
    with trio.fail_after(LIMIT_S):
        server = await launch(
            "serve", "--config", str(config), "--host", "127.0.0.1", "--log-format", "json",
            env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
        )  # fmt: skip
        await server.wait_for(r'"event": "ready"')
        ready = json.loads(server.lines[-1])
        assert ready["internal"].startswith("wss://127.0.0.1:")
        assert ready["external"].startswith("https://127.0.0.1:")
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() == 0


async def test_a_server_certificate_the_agent_cannot_verify_is_said_once(
    launch: Launch, tmp_path: Path
) -> None:
    pki = issue(tmp_path, "server", "127.0.0.1")  # a CA the agent was not given
    config = tmp_path / "server.toml"
    config.write_text(
        f'[internal]\nport = 0\ntls_cert = "{pki.cert_file}"\ntls_key = "{pki.key_file}"\n'
        "[external]\nport = 0\n",
        "utf-8",
    )
    with trio.fail_after(LIMIT_S):
        server = await launch(
            "serve", "--config", str(config), "--host", "127.0.0.1",
            env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
        )  # fmt: skip
        ready = await server.wait_for(r"ready internal=wss://127\.0\.0\.1:(\d+)")
        agent = await launch(
            "agent", "--server", f"wss://127.0.0.1:{ready.group(1)}", "--route", "app=127.0.0.1:9",
            env={"PVTUNNEL_TOKEN": TOKEN},
        )  # fmt: skip
        assert await agent.process.wait() == 1
        said = (await agent.drain_output()).splitlines()
        verify = [line for line in said if "certificate" in line]
        assert len(verify) == 1, said
        server.process.send_signal(signal.SIGTERM)
        assert await server.process.wait() == 0


async def test_demo_ready_line_under_json_logs_has_the_keys_of_the_others(
    launch: Launch,
) -> None:
    with trio.fail_after(LIMIT_S):
        demo = await launch("demo", "--port", "0", "--log-format", "json")
        await demo.wait_for(r'"event": "ready"')
        ready = json.loads(demo.lines[-1])
        assert ready["external"].startswith("http://127.0.0.1:")
        assert ready["inspect"].endswith("/inspect")
        port = int(ready["external"].rpartition(":")[2])
        assert (await fetch(port, b"GET", b"/", host=ready["route"].encode())).status == 200
        demo.process.send_signal(signal.SIGINT)
        assert await demo.process.wait() == 0


async def test_demo_takes_a_free_port_when_its_own_is_taken(launch: Launch) -> None:
    """Its --port (8080 by default) is only the first choice: on a machine where
    something already listens there, the first command of the README still works."""
    with trio.fail_after(LIMIT_S), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        demo = await launch("demo", "--port", str(busy))
        match = await demo.wait_for(r"curl -H 'Host: demo' http://127\.0\.0\.1:(\d+)/")
        port = int(match.group(1))
        assert port != busy
        assert (await fetch(port, b"GET", b"/", host=b"demo")).status == 200
        demo.process.send_signal(signal.SIGINT)
        assert await demo.process.wait() == 0


def test_demo_refuses_a_port_that_is_no_port() -> None:
    result = run("demo", "--port", "70000")
    assert result.returncode == 2
    assert result.stderr == "--port: expected an integer from 0 to 65535, got 70000\n"


async def test_a_second_signal_stops_the_server_without_waiting_for_the_grace_period(
    launch: Launch,
) -> None:
    """The first SIGTERM waits up to grace_s (10 s) for a request the upstream holds;
    a second one, as a second Ctrl-C, stops at once."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            upstream, upstream_port = await start_upstream(nursery, "svc")
            server, agent, external = await launch_pair(launch, upstream_port)

            async def held_request() -> None:
                # Cut short when the server stops: no answer comes.
                with contextlib.suppress(h11.RemoteProtocolError, trio.BrokenResourceError):
                    await fetch(int(external), b"GET", b"/hold")

            nursery.start_soon(held_request)
            await upstream.hold_started.wait()
            server.process.send_signal(signal.SIGTERM)
            await server.wait_for(r"SIGTERM: finishing in-flight requests")
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):  # well inside the 10 s grace period
                assert await server.process.wait() == 0
            assert "SIGTERM again: stopping now" in await server.drain_output()
            agent.process.send_signal(signal.SIGINT)
            assert await agent.process.wait() == 0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("listener", ["internal", "external", "admin"])
def test_a_port_in_use_is_one_line_naming_the_listener(listener: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ports = {"internal": "0", "external": "0", "admin": "0", listener: port}
        result = run(
            "serve",
            "--host",
            "127.0.0.1",
            *(word for name, value in ports.items() for word in (f"--{name}-port", value)),
            env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
        )
    assert result.returncode == 1
    said = f"pvtunnel serve: cannot start: [Errno {errno.EADDRINUSE}] the {listener} listener"
    assert f"{said} on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert f"give it another port (--{listener}-port, or {listener}.port)" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_admin_port_on_another_listeners_port_is_refused_before_anything_binds() -> None:
    """Refused as a flag mistake (2), not met at start as a port in use (1). The port
    is held here, so a listener that tried it anyway would fail, not take it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run(
            "serve",
            *("--host", "127.0.0.1", "--internal-port", "0"),
            *("--external-port", port, "--admin-port", port),
            env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"--admin-port: {port} is --external-port too, on overlapping addresses "
        '(--host "127.0.0.1", admin.host "127.0.0.1"), so the second listener could not '
        "start; give each its own port (0: any free one)\n"
    )


NEEDS_TOKEN = (
    '--admin-host: admin.token: required when host is not a loopback address (got "0.0.0.0"); '
    "set token or token_file in [admin], or the PVTUNNEL_ADMIN_TOKEN environment variable\n"
)


# Each command as far as the admin flags go; the agent has all else it needs.
SERVE = ("serve",)
AGENT = ("agent", "--server", "ws://127.0.0.1:1", "--route", "app=127.0.0.1:9")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            (*SERVE, "--admin-host", "127.0.0.1"),
            "--admin-host: no admin listener to bind it to; give --admin-port N too, "
            "or [admin] port in the file\n",
        ),
        (
            (*AGENT, "--admin-host", "127.0.0.1"),
            "--admin-host: no admin listener to bind it to; give --admin-port N or --inspect "
            "too, or [admin] port in the file\n",
        ),
        ((*SERVE, "--admin-port", "0", "--admin-host", "0.0.0.0"), NEEDS_TOKEN),
        ((*AGENT, "--inspect", "--admin-host", "0.0.0.0"), NEEDS_TOKEN),
        (
            (*SERVE, "--admin-port", "0", "--admin-host", "not a host"),
            '--admin-host: expected a host name or IP address, got "not a host"\n',
        ),
    ],
    ids=["serve-alone", "agent-alone", "serve-off-loopback", "agent-off-loopback", "bad"],
)
def test_an_admin_host_flag_that_cannot_be_honoured_is_one_line_naming_it(
    args: tuple[str, ...], says: str
) -> None:
    """Refused before anything starts (2): alone it would bind nothing, and off
    loopback without a token it would hand /metrics and /status to the network."""
    result = run(*args, env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN, "PVTUNNEL_TOKEN": TOKEN})
    assert result.returncode == 2, result.stderr
    assert result.stderr == says


def test_an_admin_host_flag_onto_a_listeners_address_and_port_is_refused_naming_it(
    tmp_path: Path,
) -> None:
    """The file's [admin] shares external.port on another address (so it is valid);
    the flag puts it on the external listener's address. The port is held here, so
    a listener that tried it anyway would fail (1), not take it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "server.toml"
        config.write_text(
            f'host = "127.0.0.1"\n[internal]\nport = 0\n[external]\nport = {port}\n'
            f'[admin]\nport = {port}\nhost = "127.0.0.2"\n'
        )
        assert run("check", str(config)).returncode == 0
        result = run(
            "serve",
            *("--config", str(config), "--admin-host", "127.0.0.1"),
            env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"--admin-host: admin.port {port} is external.port too, on overlapping addresses "
        '(host "127.0.0.1", --admin-host "127.0.0.1"), so the second listener could not '
        "start; give each its own port (0: any free one)\n"
    )
