#!/usr/bin/env python3
"""pvtunnel speed benchmark: pvtunnel next to the tunnels people use today.

Usage::

    /work/venv/bin/python benchmarks/run.py                # full run, 10 s of wrk per figure
    /work/venv/bin/python benchmarks/run.py --quick        # 3 s of wrk per figure
    /work/venv/bin/python benchmarks/run.py --rows direct,pvtunnel --out /tmp/bench

Run as root on Debian: missing tools (wrk, nginx, openssh-server, openssh-client) are
installed with apt-get (``--no-install`` turns that off). Everything runs on 127.0.0.1:
a private nginx (its own config and ports, access log off) serves ``/1k`` (1 KiB) and
``/100m`` (100 MiB) and accepts ``PUT /upload/NAME`` (WebDAV, the body lands in a file
that is checked byte for byte), and a private sshd with throwaway keys provides the
``ssh -R`` rows. Rows, all set up at once and measured in turns (rounds) in one run:

- ``direct``       wrk straight to nginx: the physical limit;
- ``nginx-proxy``  a second nginx (own instance) doing ``proxy_pass`` with upstream
                   keep-alive: the best single-hop proxy;
- ``ssh -N -R``    OpenSSH remote forwarding as people run it (Nagle-bound on loopback);
- ``ssh -R best``  the same with ``-tt`` and a remote ``sleep``: TCP_NODELAY on;
- ``trio-relay``   ``trio_relay.py``: two Trio processes that only move bytes over one
                   multiplexed connection, parsing nothing: the floor under any tunnel
                   written on pvtunnel's runtime;
- ``h11-relay``    the same doing the h11 work any HTTP tunnel must per request (each
                   head validated once, a response written in one send) and nothing
                   else: the floor under any tunnel on pvtunnel's stack;
- ``pvtunnel``     ``pvtunnel serve`` + ``pvtunnel agent``, route ``app`` -> nginx, and
                   route ``slow`` -> a slow upstream (``slow.py``): after the row's
                   figures, 1,000 slow requests are held through that one agent while
                   wrk measures the fast route's p99.

The split-write upstream (``split.py``: a threaded ``http.server`` speaking HTTP/1.1
on keep-alive, writing each response's head and body in two sends) is reached
directly, through pvtunnel (a second agent route, ``split``) and through both ssh rows
(a second ``-R`` forward): 300 sequential GETs per row, each on a fresh client
connection, spread over the wrk rounds; p50 and p99 over all of them.

Per row: wrk with 64 connections / 2 threads and 1 connection / 1 thread (req/s over
the rounds, the median of the rounds' p50 and p99), the median of several 100 MiB
downloads and uploads (MB/s = 10**6 B/s), the tunnel's peak RSS (sum of VmHWM of its
processes, read after all rounds) and its CPU per request. Each round visits every row,
starting at a different one, so the machine's drift (20-30 % within minutes on a shared
VM) falls on all rows alike. Prints markdown tables (figures, ratios, and the bars of
``docs/performance.md`` with pass/fail) and writes ``OUT/results.json``,
``OUT/chart.png`` (when matplotlib, the ``bench`` extra, is importable) and the
children's logs under ``OUT/logs/``.

The bars are ratios to rows of the same run (absolute times on a shared machine are
noise), except peak RSS: req/s >= 0.18 x ``ssh -R best`` at 64 connections and
>= 0.22 x at 1 connection; at 1 connection p50 <= 4 x and p99 <= 3 x ``ssh -R best``'s;
100 MiB downloads >= 0.5 x and uploads >= 0.75 x ``ssh -N -R``; peak RSS of server
and agent together < 80 MiB; split-write p99 through pvtunnel <= 5 x directly; and
the 1,000 slow requests (``slow.py``).

Exit status: 0 when every row ran, 1 when a row failed (its error is in the table and the
JSON), 3 with ``--fail-on-bars`` when a bar is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import slow
import split

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

T = TypeVar("T")

ROWS: Final = (
    "direct",
    "nginx-proxy",
    "ssh -N -R",
    "ssh -R best",
    "trio-relay",
    "h11-relay",
    "pvtunnel",
    "pvtunnel-base",
)
ROW_KEYS: Final = {
    "direct": "direct",
    "nginx-proxy": "nginx-proxy",
    "ssh-n-r": "ssh -N -R",
    "ssh-r-best": "ssh -R best",
    "trio-relay": "trio-relay",
    "h11-relay": "h11-relay",
    "pvtunnel": "pvtunnel",
    "pvtunnel-base": "pvtunnel-base",
}
# The rows run unless --rows names them; pvtunnel-base runs when --base-bin is given.
DEFAULT_ROW_KEYS: Final = tuple(key for key in ROW_KEYS if key != "pvtunnel-base")
BEST: Final = "ssh -R best"
PLAIN_SSH: Final = "ssh -N -R"
HOST_HEADER: Final = "app"
SMALL_PATH: Final = "/1k"
BIG_PATH: Final = "/100m"
BIG_BYTES: Final = 100 * h.MIB
OTHER_LOAD_WARN_CORES: Final = 0.1
RSS_LIMIT_MIB: Final = 80.0  # server + agent together
SPLIT_P99_FACTOR: Final = 5.0  # split-write p99 through pvtunnel / directly
QUIET_WAIT_S: Final = 120.0
TOOLS: Final = {
    "wrk": "wrk",
    "nginx": "nginx",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
SSH_CLIENT_OPTIONS: Final = (
    "-F",
    "/dev/null",  # ignore the user's ssh config
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "ExitOnForwardFailure=yes",
    "-o",
    "LogLevel=ERROR",
)
WRK_LUA: Final = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, '
    .. '"connect_errors": %.0f, "read_errors": %.0f, "write_errors": %.0f, '
    .. '"status_errors": %.0f, "timeouts": %.0f, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "p999_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What to run and for how long."""

    out: Path
    rows: tuple[str, ...]
    wrk_s: int
    warmup_s: int
    reps: int
    install: bool
    fail_on_bars: bool
    retry_disturbed: int
    # Rows take turns: wrk's time is split over this many rounds, one transfer each.
    wrk_rounds: int = 1
    # The CLI of another pvtunnel (e.g. the parent commit's), for the pvtunnel-base row.
    base_command: tuple[str, ...] = ()

    @property
    def round_s(self) -> int:
        """Whole seconds of wrk per round: each figure gets ``round_s * wrk_rounds``."""
        return max(1, self.wrk_s // self.wrk_rounds)


def parse_args(argv: list[str] | None = None) -> Settings:
    """Command line -> Settings."""
    parser = argparse.ArgumentParser(
        description="Benchmark pvtunnel against direct, nginx proxy_pass and ssh -R.",
    )
    parser.add_argument("--quick", action="store_true", help="~3 s wrk runs, 3 transfers each")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="directory for results.json, chart.png and logs/ (default: benchmarks/results)",
    )
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated subset of {','.join(ROW_KEYS)} "
        "(default: all; pvtunnel-base only with --base-bin)",
    )
    parser.add_argument(
        "--base-bin",
        default=None,
        metavar="COMMAND",
        help="another pvtunnel CLI (e.g. a checkout of the previous commit installed in "
        "its own venv), measured beside this one as the row pvtunnel-base",
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=None,
        help="whole seconds of wrk per row and concurrency, in two rounds from 6 s "
        "(default 10, --quick 3)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="100 MiB downloads and uploads per row (default 5, --quick 3)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing tools; fail instead",
    )
    parser.add_argument(
        "--fail-on-bars", action="store_true", help="exit 3 when a speed or memory bar is missed"
    )
    parser.add_argument(
        "--retry-disturbed",
        type=int,
        default=0,
        metavar="N",
        help="take a measurement up to N more times while other processes use more "
        f"than {OTHER_LOAD_WARN_CORES} cores during it (after waiting up to "
        f"{QUIET_WAIT_S:.0f} s for quiet each time)",
    )
    args = parser.parse_args(argv)
    rows: list[str] = []
    default_keys = [*DEFAULT_ROW_KEYS, *(["pvtunnel-base"] if args.base_bin else [])]
    asked = args.rows.split(",") if args.rows is not None else default_keys
    for key in (part.strip().lower() for part in asked if part.strip()):
        if key not in ROW_KEYS:
            parser.error(f"unknown row {key!r}; choose from {','.join(ROW_KEYS)}")
        rows.append(ROW_KEYS[key])
    # wrk takes whole seconds only.
    wrk_s = round(args.duration) if args.duration is not None else (3 if args.quick else 10)
    reps = args.reps if args.reps is not None else (3 if args.quick else 5)
    if not 0 <= args.retry_disturbed <= 5:
        parser.error("--retry-disturbed must be in [0, 5]")
    if "pvtunnel-base" in rows and not args.base_bin:
        parser.error("the row pvtunnel-base needs --base-bin")
    if not 1 <= wrk_s <= 120 or not 1 <= reps <= 50:
        parser.error("--duration must be in [1, 120] seconds and --reps in [1, 50]")
    return Settings(
        out=args.out,
        rows=tuple(row for row in ROWS if row in rows),
        wrk_s=wrk_s,
        warmup_s=1 if wrk_s < 10 else 2,
        reps=reps,
        install=not args.no_install,
        fail_on_bars=args.fail_on_bars,
        retry_disturbed=args.retry_disturbed,
        wrk_rounds=2 if wrk_s >= 6 else 1,
        base_command=tuple(args.base_bin.split()) if args.base_bin else (),
    )


# --------------------------------------------------------------------------- results


@dataclass
class WrkResult:
    """One wrk run, as printed by the Lua ``done`` hook."""

    connections: int
    threads: int
    requests: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: dict[str, int]
    tunnel_cpu_us_per_req: float | None = None


@dataclass
class Transfer:
    """Repeated 100 MiB transfers; MB/s = 10**6 bytes per second."""

    runs_mb_s: list[float]
    median_mb_s: float


@dataclass
class RowResult:
    """Everything measured for one row (figures are None when not measured)."""

    name: str
    ok: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    wrk64: WrkResult | None = None
    wrk1: WrkResult | None = None
    download: Transfer | None = None
    upload: Transfer | None = None
    peak_rss_mib: float | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    other_load_cores: float | None = None
    slow: slow.SlowResult | None = None  # 1,000 slow requests (pvtunnel only)
    split: split.SplitResult | None = None  # the split-write upstream (rows that reach it)


@dataclass
class Target:
    """Where the load goes for one row, and which processes are the tunnel."""

    port: int
    tunnel_pids: Callable[[], list[int]]
    slow_upstream: slow.SlowUpstream | None = None  # the row's agent also routes `slow`
    split_port: int | None = None  # where the row reaches the split-write upstream


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """The shared fixtures of one run: temp dir, nginx, keys, payloads, children."""

    settings: Settings
    tmp: Path
    logs: Path
    tools: dict[str, str]
    children: h.Children
    small: bytes = b""
    big: bytes = b""
    nginx_port: int = 0
    upload_dir: Path = field(default_factory=Path)
    nginx: h.Child | None = None
    split_port: int = 0  # the split-write upstream (split.py)
    other_load_at_start: float = 0.0


def make_tmp_dir() -> Path:
    """A private temp dir, on tmpfs (/dev/shm) when it has room, so nginx's file I/O
    (100 MiB file served, uploads written) costs memory speed, not disk speed."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * h.GIB:
        return Path(tempfile.mkdtemp(prefix="pvtunnel-bench-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="pvtunnel-bench-"))


def write_payloads(world: World) -> None:
    """The 1 KiB and 100 MiB files (random bytes: nothing along the way can compress
    them), kept in memory too for checking what comes back."""
    www = world.tmp / "www"
    (www / "upload").mkdir(parents=True)
    world.small = os.urandom(1024)
    world.big = b"".join(os.urandom(h.MIB) for _ in range(BIG_BYTES // h.MIB))
    (www / SMALL_PATH.lstrip("/")).write_bytes(world.small)
    (www / BIG_PATH.lstrip("/")).write_bytes(world.big)
    world.upload_dir = www / "upload"


def nginx_config(world: World, *, name: str, server_block: str) -> str:
    """A private nginx: one worker (on 2 cores a second worker only adds contention
    with wrk), no access log, keep-alive that never runs out, temp paths of its own."""
    tmp = world.tmp
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""\
daemon off;
master_process on;
worker_processes 1;
{user}
pid {tmp}/{name}.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
{server_block}
}}
"""


def origin_block(world: World) -> str:
    """The upstream every row ends at: static files and WebDAV PUT."""
    return f"""\
    server {{
        listen {h.LOOPBACK}:{world.nginx_port};
        root {world.tmp}/www;
        location / {{ }}
        location /upload/ {{
            # A PUT body is written to a file under www/upload/ (a rename from the
            # temp path on the same filesystem); run.py compares that file with
            # what it sent, which proves the body crossed the tunnel.
            client_max_body_size 0;
            client_body_buffer_size 1m;
            dav_methods PUT DELETE;
        }}
    }}
"""


def proxy_block(world: World, port: int) -> str:
    """proxy_pass to the origin with upstream keep-alive: the best single-hop proxy.
    Responses stream through memory buffers (never a temp file); request bodies
    are not buffered."""
    return f"""\
    upstream origin {{
        server {h.LOOPBACK}:{world.nginx_port};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 600s;
    }}
    server {{
        listen {h.LOOPBACK}:{port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering on;
            proxy_buffers 16 256k;
            proxy_busy_buffers_size 512k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def start_nginx(world: World, *, name: str, port: int, server_block: str) -> h.Child:
    """Start a private nginx instance and wait until it serves /1k on ``port``."""
    config = world.tmp / f"{name}.conf"
    config.write_text(nginx_config(world, name=name, server_block=server_block))
    nginx = world.tools["nginx"]
    checked = subprocess.run(
        [nginx, "-t", "-q", "-c", str(config), "-p", str(world.tmp)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if checked.returncode != 0:
        raise h.BenchError(f"nginx -t ({name}) failed: {one_line(checked.stderr)}")
    child = world.children.start(
        name,
        [nginx, "-c", str(config), "-p", str(world.tmp)],
        log_path=world.logs / f"{name}.log",
    )
    h.wait_until(
        functools.partial(small_ok, port), what=f"{name} on port {port}", alive=child.problem
    )
    return child


def small_ok(port: int) -> bool:
    """True once GET /1k on ``port`` answers 200 (any failure: not yet)."""
    try:
        return h.http_request(port, "GET", SMALL_PATH, timeout_s=2).status == 200
    except (OSError, h.BenchError):
        return False


def split_ok(port: int) -> bool:
    """True once the split-write upstream answers through ``port``."""
    try:
        split.one_request(port)
    except (OSError, h.BenchError):
        return False
    return True


# --------------------------------------------------------------------------- rows


@contextlib.contextmanager
def row_direct(world: World, row: RowResult) -> Iterator[Target]:
    yield Target(world.nginx_port, list, split_port=world.split_port)


@contextlib.contextmanager
def row_nginx_proxy(world: World, row: RowResult) -> Iterator[Target]:
    # Its own nginx instance (same settings as the origin), so its CPU and RSS are
    # its own, like a tunnel's.
    (port,) = h.free_ports(1)
    proxy = start_nginx(world, name="nginx-proxy", port=port, server_block=proxy_block(world, port))
    try:
        yield Target(port, lambda: [proxy.pid, *h.descendants(proxy.pid)])
    finally:
        world.children.stop(proxy)


def sshd_config(world: World, port: int, keys: Path) -> str:
    return f"""\
Port {port}
ListenAddress {h.LOOPBACK}
HostKey {keys}/host_key
PidFile none
AuthorizedKeysFile {keys}/authorized_keys
PermitRootLogin yes
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding remote
GatewayPorts no
PermitTTY yes
X11Forwarding no
PrintMotd no
PrintLastLog no
MaxStartups 100
LogLevel ERROR
"""


def make_ssh_keys(world: World) -> Path:
    """Throwaway host and user keys; authorized_keys in the temp dir."""
    keys = world.tmp / "ssh"
    if keys.exists():
        return keys
    keys.mkdir(mode=0o700)
    for name in ("host_key", "user_key"):
        subprocess.run(
            [
                world.tools["ssh-keygen"],
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "pvtunnel-bench",
                "-f",
                str(keys / name),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
    (keys / "authorized_keys").write_bytes((keys / "user_key.pub").read_bytes())
    return keys


def sshd_banner(port: int) -> bool:
    """True once something on ``port`` sends an SSH banner."""
    try:
        with socket.create_connection((h.LOOPBACK, port), timeout=2) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


@contextlib.contextmanager
def ssh_tunnel(world: World, row: RowResult, *, best: bool) -> Iterator[Target]:
    """A fresh sshd and an ``ssh -R`` client; load goes to the remote port."""
    keys = make_ssh_keys(world)
    sshd_port, remote_port, remote_split_port = h.free_ports(3)
    config = world.tmp / f"sshd-{sshd_port}.conf"
    config.write_text(sshd_config(world, sshd_port, keys))
    # sshd insists on its privilege-separation directory even when run by hand.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = world.children.start(
        "sshd",
        [world.tools["sshd"], "-D", "-e", "-f", str(config)],
        log_path=world.logs / f"sshd-{'best' if best else 'plain'}.log",
    )
    master_fd = slave_fd = -1
    client: h.Child | None = None
    login = pwd.getpwuid(os.geteuid()).pw_name  # root, normally (PermitRootLogin yes)
    try:
        h.wait_until(lambda: sshd_banner(sshd_port), what="sshd", alive=sshd.problem)
        argv = [
            world.tools["ssh"],
            *SSH_CLIENT_OPTIONS,
            "-i",
            str(keys / "user_key"),
            "-p",
            str(sshd_port),
            "-R",
            f"{remote_port}:{h.LOOPBACK}:{world.nginx_port}",
            "-R",
            f"{remote_split_port}:{h.LOOPBACK}:{world.split_port}",
        ]
        stdin: int = subprocess.DEVNULL
        if best:
            # -tt makes ssh request a pty, and with one OpenSSH sets TCP_NODELAY. Its
            # stdin is a pty of our own whose master we hold open (never written), so
            # ssh never sees EOF and needs no terminal from whoever runs the benchmark.
            master_fd, slave_fd = os.openpty()
            stdin = slave_fd
            argv += ["-tt", f"{login}@{h.LOOPBACK}", "sleep 100000"]
        else:
            argv += ["-N", f"{login}@{h.LOOPBACK}"]
        client = ssh = world.children.start(
            "ssh",
            argv,
            log_path=world.logs / f"ssh-{'best' if best else 'plain'}.log",
            stdin=stdin,
        )
        if slave_fd >= 0:
            os.close(slave_fd)
            slave_fd = -1
        h.wait_until(
            functools.partial(small_ok, remote_port), what="ssh -R forwarding", alive=ssh.problem
        )
        h.wait_until(
            functools.partial(split_ok, remote_split_port),
            what="ssh -R forwarding (split-write)",
            alive=ssh.problem,
        )

        def pids() -> list[int]:
            # With root logins sshd skips the unprivileged child: one session process.
            session = [pid for pid in h.descendants(sshd.pid) if h.proc_comm(pid) == "sshd"]
            return [ssh.pid, *session]

        yield Target(remote_port, pids, split_port=remote_split_port)
    finally:
        if client is not None:
            row.exit_codes["ssh"] = world.children.stop(client)
        world.children.stop(sshd)
        for fd in (slave_fd, master_fd):
            if fd >= 0:
                os.close(fd)


@contextlib.contextmanager
def row_ssh_plain(world: World, row: RowResult) -> Iterator[Target]:
    with ssh_tunnel(world, row, best=False) as target:
        yield target


@contextlib.contextmanager
def row_ssh_best(world: World, row: RowResult) -> Iterator[Target]:
    with ssh_tunnel(world, row, best=True) as target:
        yield target


@contextlib.contextmanager
def row_pvtunnel(world: World, row: RowResult) -> Iterator[Target]:
    codes: dict[str, int | None] = {}
    try:
        with (
            slow.slow_upstream(world.children, world.logs) as slow_upstream,
            h.open_pvtunnel(
                world.children,
                upstream_port=world.nginx_port,
                log_dir=world.logs,
                route=HOST_HEADER,
                extra_agent_args=[
                    *slow.agent_route_args(slow_upstream),
                    *split.agent_route_args(world.split_port),
                ],
            ) as tunnel,
        ):
            codes = tunnel.exit_codes  # filled in when the block exits (SIGTERM)
            yield Target(
                tunnel.external_port,
                lambda: tunnel.pids,
                slow_upstream,
                split_port=tunnel.external_port,
            )
    finally:
        row.exit_codes.update(codes)
        for who in ("server", "agent"):
            if who in codes and codes[who] != 0:
                row.notes.append(f"pvtunnel {who} exited {codes[who]} after SIGTERM (contract: 0)")
            if codes.get(f"{who}_needed_sigkill"):
                row.notes.append(
                    f"pvtunnel {who} needed SIGKILL: still running "
                    f"{h.STOP_TIMEOUT_S:.0f} s after SIGTERM"
                )


@contextlib.contextmanager
def trio_relay(world: World, row: RowResult, mode: str) -> Iterator[Target]:
    """``trio_relay.py`` front and back in ``mode`` (raw or http); load on the front."""
    port, tunnel_port = h.free_ports(2)
    command = [sys.executable, str(Path(__file__).resolve().parent / "trio_relay.py")]
    front = world.children.start(
        f"{row.name} front",
        [*command, "front", "--listen", str(port), "--tunnel", str(tunnel_port), "--mode", mode],
        log_path=world.logs / f"{row.name}-front.log",
    )
    try:
        back = world.children.start(
            f"{row.name} back",
            [
                *command,
                "back",
                "--tunnel",
                str(tunnel_port),
                "--upstream",
                str(world.nginx_port),
                "--mode",
                mode,
            ],
            log_path=world.logs / f"{row.name}-back.log",
        )
        try:
            h.wait_until(
                functools.partial(small_ok, port),
                what=row.name,
                alive=lambda: front.problem() or back.problem(),
            )
            yield Target(port, lambda: [front.pid, back.pid])
        finally:
            row.exit_codes["back"] = world.children.stop(back)
    finally:
        row.exit_codes["front"] = world.children.stop(front)


@contextlib.contextmanager
def row_trio_relay(world: World, row: RowResult) -> Iterator[Target]:
    with trio_relay(world, row, "raw") as target:
        yield target


@contextlib.contextmanager
def row_h11_relay(world: World, row: RowResult) -> Iterator[Target]:
    with trio_relay(world, row, "http") as target:
        yield target


@contextlib.contextmanager
def row_pvtunnel_base(world: World, row: RowResult) -> Iterator[Target]:
    """Another pvtunnel (``--base-bin``) with the app and split routes: its figures, no bars."""
    with h.open_pvtunnel(
        world.children,
        upstream_port=world.nginx_port,
        log_dir=world.logs,
        route=HOST_HEADER,
        extra_agent_args=split.agent_route_args(world.split_port),
        command=world.settings.base_command,
        log_prefix="pvtunnel-base",
    ) as tunnel:
        yield Target(tunnel.external_port, lambda: tunnel.pids, split_port=tunnel.external_port)


ROW_SETUP: Final = {
    "direct": row_direct,
    "nginx-proxy": row_nginx_proxy,
    "ssh -N -R": row_ssh_plain,
    "ssh -R best": row_ssh_best,
    "trio-relay": row_trio_relay,
    "h11-relay": row_h11_relay,
    "pvtunnel": row_pvtunnel,
    "pvtunnel-base": row_pvtunnel_base,
}


# --------------------------------------------------------------------------- measuring


def run_wrk(
    world: World, port: int, *, connections: int, threads: int, seconds: int, pids: list[int]
) -> WrkResult:
    """One wrk run against ``/1k``; the tunnel's CPU is sampled around it."""
    script = world.tmp / "report.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    argv = [
        world.tools["wrk"],
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        "-H",
        f"Host: {HOST_HEADER}",
        f"http://{h.LOOPBACK}:{port}{SMALL_PATH}",
    ]
    cpu_before = h.cpu_total_s(pids)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, start_new_session=True
        )
    except subprocess.TimeoutExpired as exc:
        raise h.BenchError(f"wrk did not finish within {seconds + 60:.0f} s") from exc
    cpu_used = h.cpu_total_s(pids) - cpu_before
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise h.BenchError(
            f"wrk failed ({done.returncode}): {one_line(done.stderr + ' ' + done.stdout)[-300:]}"
        )
    data = json.loads(line.removeprefix("WRK_JSON "))
    requests = int(data["requests"])
    duration = data["duration_us"] / 1e6
    errors = {
        key: int(data[key])
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    }
    return WrkResult(
        connections=connections,
        threads=threads,
        requests=requests,
        seconds=duration,
        req_per_s=requests / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
        tunnel_cpu_us_per_req=(cpu_used / requests * 1e6) if pids and requests else None,
    )


def check_wrk(result: WrkResult, row: RowResult, label: str) -> None:
    """Errors in a wrk run make its req/s meaningless (fast 502s are not service)."""
    failed = sum(result.errors.values())
    if failed:
        row.notes.append(f"{label}: {failed} errors {result.errors} of {result.requests}")
    if result.requests == 0 or failed > max(10, result.requests // 1000):
        raise h.BenchError(
            f"{label}: too many errors {result.errors} for {result.requests} requests"
        )


def verify_small(port: int) -> None:
    """GET /1k through the row must return exactly the file."""
    response = h.http_request(port, "GET", SMALL_PATH, host_header=HOST_HEADER, timeout_s=10)
    if response.status != 200:
        raise h.BenchError(f"GET {SMALL_PATH} answered {response.status}: {response.body[:200]!r}")


def measure_download(world: World, port: int, *, check: bool) -> float:
    """MB/s of one 100 MiB download, checked for status and byte count; with ``check``
    an untimed download compared byte for byte with the file comes first."""
    for verifying in (True, False) if check else (False,):
        response = h.http_request(
            port,
            "GET",
            BIG_PATH,
            host_header=HOST_HEADER,
            keep_body=verifying,
            timeout_s=120,
            total_timeout_s=300,
        )
        if response.status != 200 or response.body_bytes != BIG_BYTES:
            raise h.BenchError(
                f"download: status {response.status}, {response.body_bytes} of {BIG_BYTES} bytes"
            )
        if verifying and response.body != world.big:
            raise h.BenchError("download: body differs from the file served")
    return BIG_BYTES / response.seconds / 1e6


def measure_upload(world: World, port: int, name: str) -> float:
    """MB/s of one 100 MiB PUT; the stored file is compared with what was sent, so a
    body that did not really cross the tunnel fails the row."""
    target = world.upload_dir / name
    response = h.http_request(
        port,
        "PUT",
        f"/upload/{name}",
        host_header=HOST_HEADER,
        body=world.big,
        timeout_s=120,
    )
    try:
        if response.status not in (200, 201, 204):
            raise h.BenchError(f"upload: status {response.status}: {response.body[:200]!r}")
        stored = target.read_bytes() if target.exists() else b""
        if stored != world.big:
            raise h.BenchError(
                f"upload: nginx stored {len(stored)} bytes, not the "
                f"{BIG_BYTES} sent (or different bytes)"
            )
    finally:
        target.unlink(missing_ok=True)
    return BIG_BYTES / response.seconds / 1e6


def transfer(speeds: list[float]) -> Transfer:
    return Transfer(runs_mb_s=[round(s, 1) for s in speeds], median_mb_s=h.median(speeds))


def merge_wrk(runs: list[WrkResult]) -> WrkResult:
    """One figure from a row's wrk runs of every round: req/s over all of them, the
    median of the runs' percentiles, the worst maximum, errors and CPU summed."""
    requests = sum(run.requests for run in runs)
    seconds = sum(run.seconds for run in runs)
    cpu_us = [
        run.tunnel_cpu_us_per_req * run.requests
        for run in runs
        if run.tunnel_cpu_us_per_req is not None
    ]
    errors: dict[str, int] = {}
    for run in runs:
        for key, count in run.errors.items():
            errors[key] = errors.get(key, 0) + count
    return WrkResult(
        connections=runs[0].connections,
        threads=runs[0].threads,
        requests=requests,
        seconds=seconds,
        req_per_s=requests / seconds if seconds else 0.0,
        p50_ms=h.median([run.p50_ms for run in runs]),
        p90_ms=h.median([run.p90_ms for run in runs]),
        p99_ms=h.median([run.p99_ms for run in runs]),
        p999_ms=h.median([run.p999_ms for run in runs]),
        max_ms=max(run.max_ms for run in runs),
        errors=errors,
        tunnel_cpu_us_per_req=sum(cpu_us) / requests if cpu_us and requests else None,
    )


def measure_slow(world: World, target: Target, upstream: slow.SlowUpstream) -> slow.SlowResult:
    """1,000 slow requests through the row's agent while wrk measures the fast route."""
    seconds = slow.fast_seconds(world.settings.wrk_s)
    print(
        f"   {slow.SLOW_REQUESTS:,} slow requests + fast runs ({seconds} s each)", file=sys.stderr
    )
    pids = target.tunnel_pids()

    def fast(run_s: int) -> WrkResult:
        return run_wrk(
            world,
            target.port,
            connections=slow.FAST_CONNECTIONS,
            threads=slow.FAST_THREADS,
            seconds=run_s,
            pids=pids,
        )

    result = slow.measure_slow(
        world.children,
        world.logs,
        upstream,
        tunnel_port=target.port,
        tunnel_pids=pids,
        seconds=seconds,
        fast=fast,
    )
    print(f"   slow: {result.summary()}", file=sys.stderr)
    return result


def sample_rss(row: RowResult, target: Target) -> None:
    """Peak RSS of the tunnel's processes, read before they stop."""
    pids = target.tunnel_pids()
    if pids:
        samples = h.sample(pids)
        row.processes = [asdict(s) for s in samples]
        row.peak_rss_mib = sum(s.vmhwm_kib for s in samples) / 1024


def wait_for_quiet(limit_s: float = QUIET_WAIT_S, window_s: float = 2.0) -> float:
    """Measure other processes' load in windows until one is quiet or ``limit_s``
    passes; returns the last window's load (cores)."""
    deadline = time.monotonic() + limit_s
    while True:
        others = h.ForeignLoad()
        time.sleep(window_s)  # a measuring window, not a readiness wait
        load = others.cores()
        if load <= OTHER_LOAD_WARN_CORES or time.monotonic() > deadline:
            return load


@dataclass
class Running:
    """A row set up and taking load: its target and what its rounds measured so far."""

    row: RowResult
    target: Target
    stack: contextlib.ExitStack[bool | None]  # stops the row's processes
    wrk64: list[WrkResult] = field(default_factory=list)
    wrk1: list[WrkResult] = field(default_factory=list)
    downloads: list[float] = field(default_factory=list)
    uploads: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    split: split.SplitResult = field(default_factory=split.SplitResult)


def measure(world: World, running: Running, label: str, step: Callable[[], T]) -> T:
    """One measurement of one row, again (``--retry-disturbed``) while other processes
    disturb it; the last attempt's figure is returned and its other load recorded."""
    for attempt in range(world.settings.retry_disturbed + 1):
        others = h.ForeignLoad()
        figure = step()
        load = others.cores()
        if load <= OTHER_LOAD_WARN_CORES or attempt == world.settings.retry_disturbed:
            break
        print(
            f"   {running.row.name}, {label}: disturbed ({load:.2f} cores used by others); "
            "waiting for quiet, then again",
            file=sys.stderr,
        )
        wait_for_quiet()
    running.loads.append(load)
    return figure


def round_of(world: World, running: Running, index: int, wrk_s: int) -> None:
    """One round of one row: a wrk run at each concurrency, a download and an upload."""
    row, port, pids = running.row, running.target.port, running.target.tunnel_pids()

    def wrk(connections: int, threads: int, label: str) -> WrkResult:
        result = run_wrk(
            world, port, connections=connections, threads=threads, seconds=wrk_s, pids=pids
        )
        check_wrk(result, row, label)
        return result

    if index < world.settings.wrk_rounds:
        running.wrk64.append(
            measure(world, running, "64 connections", lambda: wrk(64, 2, "64 connections"))
        )
        running.wrk1.append(
            measure(world, running, "1 connection", lambda: wrk(1, 1, "1 connection"))
        )
    split_port = running.target.split_port
    if index < world.settings.wrk_rounds and split_port is not None:
        count = split_requests_in_round(world.settings, index)
        running.split.add(
            measure(world, running, "split-write", lambda: split.measure_split(split_port, count))
        )
    if index < world.settings.reps:
        name = f"{row.name.replace(' ', '_')}-{index}"
        running.downloads.append(
            measure(
                world,
                running,
                "download",
                lambda: measure_download(world, port, check=index == 0),
            )
        )
        running.uploads.append(
            measure(world, running, "upload", lambda: measure_upload(world, port, name))
        )
    figures = []
    if index < world.settings.wrk_rounds:
        figures.append(
            f"{running.wrk64[-1].req_per_s:,.0f} / {running.wrk1[-1].req_per_s:,.0f} req/s"
        )
        if split_port is not None:
            figures.append(f"split-write p99 {fmt(running.split.p99_ms, '.2f')} ms")
    if index < world.settings.reps:
        figures.append(f"{running.downloads[-1]:,.0f} / {running.uploads[-1]:,.0f} MB/s")
    print(f"   {row.name}: {', '.join(figures)}", file=sys.stderr, flush=True)


def split_requests_in_round(settings: Settings, index: int) -> int:
    """The split-write requests are spread over the wrk rounds; the first takes the rest."""
    count = split.SPLIT_REQUESTS // settings.wrk_rounds
    return count + (split.SPLIT_REQUESTS % settings.wrk_rounds if index == 0 else 0)


def finish(running: Running) -> None:
    """A row's figures from its rounds."""
    row = running.row
    if running.split.requests:
        row.split = running.split
    if running.wrk64:
        row.wrk64 = merge_wrk(running.wrk64)
    if running.wrk1:
        row.wrk1 = merge_wrk(running.wrk1)
    if running.downloads:
        row.download = transfer(running.downloads)
    if running.uploads:
        row.upload = transfer(running.uploads)
    if running.loads:
        row.other_load_cores = sum(running.loads) / len(running.loads)
        if row.other_load_cores > OTHER_LOAD_WARN_CORES:
            row.notes.append(
                f"other processes used {row.other_load_cores:.2f} cores on "
                "average during this row: its figures are disturbed"
            )


def fail(row: RowResult, exc: BaseException) -> None:
    """Mark the row failed; its first failure stays the error, later ones become notes."""
    error = str(exc) if isinstance(exc, h.BenchError) else f"{type(exc).__name__}: {exc}"
    if row.error is None:
        row.error = error
    else:
        row.notes.append(f"then: {error}")
    row.ok = False
    print(f"   {row.name} FAILED: {error}", file=sys.stderr)


_FAILURES: Final = (h.BenchError, OSError, subprocess.SubprocessError)


class _Guarded:
    """A row's setup as a context: a failure while tearing it down fails that row
    (the others' figures stand); a failure setting it up reaches the caller."""

    def __init__(self, row: RowResult, setup: contextlib.AbstractContextManager[Target]) -> None:
        self._row = row
        self._setup = setup

    def __enter__(self) -> Target:
        return self._setup.__enter__()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            return bool(self._setup.__exit__(kind, exc, tb))
        except _FAILURES as failure:
            fail(self._row, failure)
            return False  # an exception already on its way out keeps going


def measure_rows(world: World) -> dict[str, RowResult]:
    """Every row set up at once, then measured in rounds that visit the rows in turn.

    The machine's speed drifts by 20-30 % within minutes on a shared VM. Rows measured
    one after another then differ by the minute they ran in; taken in turns, each
    round's drift falls on every row alike, so the ratios between rows hold.
    """
    settings = world.settings
    rows = {name: RowResult(name=name) for name in settings.rows}
    with contextlib.ExitStack() as stack:
        running: list[Running] = []
        for name in settings.rows:
            row = rows[name]
            print(f"== {name}: setting up", file=sys.stderr, flush=True)
            # The row's own stack: a row that fails to come up is stopped at once,
            # not left running beside the others' measurements.
            row_stack = contextlib.ExitStack()
            try:
                target = row_stack.enter_context(_Guarded(row, ROW_SETUP[name](world, row)))
                verify_small(target.port)
                if target.split_port is not None:
                    split.one_request(target.split_port)  # checked; warms a pooled connection
                run_wrk(
                    world,
                    target.port,
                    connections=64,
                    threads=2,
                    seconds=settings.warmup_s,
                    pids=target.tunnel_pids(),
                )
            except _FAILURES as exc:
                fail(row, exc)
                row_stack.close()
                continue
            stack.enter_context(row_stack)
            row.ok = True
            running.append(Running(row=row, target=target, stack=row_stack))
        for index in range(max(settings.wrk_rounds, settings.reps) if running else 0):
            print(f"== round {index + 1}", file=sys.stderr, flush=True)
            # Each round starts at another row, so none is always first after a pause.
            for running_row in running[index % len(running) :] + running[: index % len(running)]:
                if not running_row.row.ok:
                    continue
                try:
                    round_of(world, running_row, index, settings.round_s)
                except _FAILURES as exc:
                    fail(running_row.row, exc)
                    running_row.stack.close()  # stopped now, not beside the others' rounds
        for running_row in running:
            finish(running_row)
            report_row(running_row.row)
            if running_row.row.ok:  # a failed row's processes are gone
                sample_rss(running_row.row, running_row.target)
        for running_row in running:
            upstream = running_row.target.slow_upstream
            if upstream is not None and running_row.row.ok:  # after the RSS sample
                try:
                    running_row.row.slow = measure_slow(world, running_row.target, upstream)
                except _FAILURES as exc:
                    fail(running_row.row, exc)
    return rows


def report_row(row: RowResult) -> None:
    print(f"== {row.name}", file=sys.stderr)
    if row.wrk64:
        print(f"   64 conns: {row.wrk64.req_per_s:,.0f} req/s", file=sys.stderr)
    if row.wrk1:
        print(f"   1 conn: {row.wrk1.req_per_s:,.0f} req/s", file=sys.stderr)
    if row.download:
        print(f"   download: {row.download.median_mb_s:,.0f} MB/s", file=sys.stderr)
    if row.upload:
        print(f"   upload: {row.upload.median_mb_s:,.0f} MB/s", file=sys.stderr)


# --------------------------------------------------------------------------- report


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def metric(row: RowResult, key: str) -> float | None:
    """A named figure of a row, or None when it was not measured."""
    match key:
        case "rps64":
            return row.wrk64.req_per_s if row.wrk64 else None
        case "rps1":
            return row.wrk1.req_per_s if row.wrk1 else None
        case "p50_1":
            return row.wrk1.p50_ms if row.wrk1 else None
        case "p99_1":
            return row.wrk1.p99_ms if row.wrk1 else None
        case "down":
            return row.download.median_mb_s if row.download else None
        case "up":
            return row.upload.median_mb_s if row.upload else None
        case "rss":
            return row.peak_rss_mib
    raise KeyError(key)


RATIO_METRICS: Final = (
    ("rps64", "req/s 64c"),
    ("rps1", "req/s 1c"),
    ("down", "download"),
    ("up", "upload"),
)


def compute_ratios(rows: dict[str, RowResult]) -> dict[str, dict[str, dict[str, float | None]]]:
    """row -> baseline -> metric -> row/baseline."""
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, row in rows.items():
        result[name] = {}
        for base_name in ("direct", BEST, PLAIN_SSH):
            base = rows.get(base_name)
            result[name][base_name] = {
                key: ratio(metric(row, key), metric(base, key) if base else None)
                for key, _ in RATIO_METRICS
            }
    return result


@dataclass
class Bar:
    """One speed or memory bar and how pvtunnel did against it."""

    what: str
    needed: str
    value: str
    passed: bool | None  # None: could not be judged (a row is missing)


def judge_bars(rows: dict[str, RowResult]) -> list[Bar]:
    """The speed and memory bars this benchmark measures, as ratios within the run.

    Absolute times on a shared machine are noise; every bar but peak RSS compares
    pvtunnel with a row measured in the same rounds.
    """
    tunnel = rows.get("pvtunnel")
    best = rows.get(BEST)
    plain = rows.get(PLAIN_SSH)
    direct = rows.get("direct")
    bars: list[Bar] = []

    attempted = tunnel is not None  # a missing figure of an attempted row fails

    def relative(
        what: str,
        value: float | None,
        reference: float | None,
        *,
        at_least: bool,
        factor: float,
        base_label: str,
        spec: str,
        unit: str = "",
    ) -> None:
        needed = f"{'>=' if at_least else '<='} {factor:g} x {base_label}"
        if value is None or reference is None:
            missing = "pvtunnel" if value is None else base_label.removesuffix("'s")
            passed = False if value is None and attempted else None
            bars.append(Bar(what, needed, f"not measured ({missing})", passed))
            return
        ratio_text = f"{value / reference:.2f} x" if reference else "-"
        text = f"{value:{spec}}{unit} = {ratio_text} ({reference:{spec}}{unit})"
        passed = value >= factor * reference if at_least else value <= factor * reference
        bars.append(Bar(what, needed, text, passed))

    def versus(what: str, key: str, base: RowResult | None, factor: float, base_label: str) -> None:
        at_least = key not in ("p50_1", "p99_1")  # rates: more is better; latencies: less
        relative(
            what,
            metric(tunnel, key) if tunnel else None,
            metric(base, key) if base else None,
            at_least=at_least,
            factor=factor,
            base_label=f"{base_label}'s" if not at_least else base_label,
            spec=",.0f" if at_least else ".3f",
            unit="" if at_least else " ms",
        )

    versus("req/s, 1 KiB, 64 connections", "rps64", best, 0.18, BEST)
    versus("req/s, 1 KiB, 1 connection", "rps1", best, 0.22, BEST)
    versus("p50, 1 connection", "p50_1", best, 4.0, BEST)
    versus("p99, 1 connection", "p99_1", best, 3.0, BEST)
    versus("100 MiB download", "down", plain, 0.5, PLAIN_SSH)
    versus("100 MiB upload", "up", plain, 0.75, PLAIN_SSH)
    rss = metric(tunnel, "rss") if tunnel else None
    rss_needed = f"< {RSS_LIMIT_MIB:g} MiB"
    if rss is None:
        bars.append(
            Bar(
                "peak RSS, server + agent", rss_needed, "not measured", False if attempted else None
            )
        )
    else:
        bars.append(
            Bar("peak RSS, server + agent", rss_needed, f"{rss:.3g} MiB", rss < RSS_LIMIT_MIB)
        )
    relative(
        f"split-write upstream, p99 of {split.SPLIT_REQUESTS} requests on fresh connections",
        tunnel.split.p99_ms if tunnel and tunnel.split else None,
        direct.split.p99_ms if direct and direct.split else None,
        at_least=False,
        factor=SPLIT_P99_FACTOR,
        base_label="direct's",
        spec=".3f",
        unit=" ms",
    )
    slow_what = (
        f"{slow.SLOW_REQUESTS:,} slow requests: fast p99 < {slow.P99_LIMIT_MS:g} ms and "
        f"< {slow.P99_FACTOR:g}x alone; all complete"
    )
    slow_needed = (
        f"p99 < {slow.P99_LIMIT_MS:g} ms and < {slow.P99_FACTOR:g} x alone; "
        f"{slow.SLOW_REQUESTS:,}/{slow.SLOW_REQUESTS:,} complete"
    )
    if tunnel is None or tunnel.slow is None:
        bars.append(Bar(slow_what, slow_needed, "not measured", False if attempted else None))
    else:
        bars.append(Bar(slow_what, slow_needed, tunnel.slow.summary(), tunnel.slow.passed()))
    return bars


def one_line(text: str) -> str:
    """Collapse whitespace so a message fits in one markdown table cell."""
    return " ".join(text.split()).replace("|", "/")


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def render_tables(
    rows: dict[str, RowResult], ratios: dict[str, Any], bars: list[Bar], settings: Settings
) -> str:
    """The markdown report."""
    out: list[str] = []
    out.append(
        f"rows measured in turns; wrk: {settings.round_s * settings.wrk_rounds:g} s per figure in "
        f"{settings.wrk_rounds} round(s), 1 KiB responses; "
        f"transfers: median of {settings.reps} x 100 MiB, one per round; MB/s = 10^6 B/s; "
        "other load: CPU cores used by processes not started by this run\n"
    )
    out.append(
        "| row | req/s 64c | p50 64c ms | p99 64c ms | req/s 1c | p50 1c ms | "
        "p99 1c ms | down MB/s | up MB/s | peak RSS MiB | CPU us/req 64c | "
        "CPU us/req 1c | other load (cores) |"
    )
    out.append("|---|" + "---:|" * 12)
    for name, row in rows.items():
        if not row.ok and row.wrk64 is None:
            out.append(f"| {name} | FAILED: {one_line(row.error or '')} |" + " |" * 11)
            continue
        w64, w1 = row.wrk64, row.wrk1
        cells = [
            fmt(w64.req_per_s if w64 else None),
            fmt(w64.p50_ms if w64 else None, ".3f"),
            fmt(w64.p99_ms if w64 else None, ".3f"),
            fmt(w1.req_per_s if w1 else None),
            fmt(w1.p50_ms if w1 else None, ".3f"),
            fmt(w1.p99_ms if w1 else None, ".3f"),
            fmt(metric(row, "down")),
            fmt(metric(row, "up")),
            fmt(row.peak_rss_mib, ".1f"),
            fmt(w64.tunnel_cpu_us_per_req if w64 else None, ".0f"),
            fmt(w1.tunnel_cpu_us_per_req if w1 else None, ".0f"),
            fmt(row.other_load_cores, ".2f"),
        ]
        label = name if row.ok else f"{name} (FAILED: {one_line(row.error or '')})"
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for base_name in ("direct", BEST, PLAIN_SSH):
        if base_name not in rows or not rows[base_name].ok:
            continue
        out.append(f"\nRatios: row / `{base_name}`\n")
        out.append("| row | " + " | ".join(label for _, label in RATIO_METRICS) + " |")
        out.append("|---|" + "---:|" * len(RATIO_METRICS))
        for name in rows:
            cells = [fmt(ratios[name][base_name][key], ".2f") for key, _ in RATIO_METRICS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, row in rows.items():
        if row.slow is not None:
            s = row.slow
            out.append(
                f"\n{name}, {s.slow_requests:,} slow requests held through its one agent: "
                f"fast route wrk -c{s.fast_connections} -t{s.fast_threads} {s.fast_seconds} s: "
                f"p99 {fmt(s.fast_p99_alone_ms, '.3f')} ms alone "
                f"({fmt(s.fast_rps_alone)} req/s), {fmt(s.fast_p99_under_load_ms, '.3f')} ms "
                f"under load ({fmt(s.fast_rps_under_load)} req/s), ratio "
                f"{fmt(s.p99_ratio, '.2f')}; slow completed {s.completed:,}/{s.slow_requests:,}"
                + (f"; error: {one_line(s.error)}" if s.error else "")
            )
    measured = {name: row.split for name, row in rows.items() if row.split is not None}
    if measured:
        direct = measured.get("direct")
        out.append(
            f"\nSplit-write upstream (http.server, HTTP/1.1, head and body in two sends): "
            f"{split.SPLIT_REQUESTS} sequential GETs, each on a fresh connection\n"
        )
        out.append("| row | requests | p50 ms | p99 ms | max ms | p99 / direct's |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for name, result in measured.items():
            versus = ratio(result.p99_ms, direct.p99_ms if direct else None)
            out.append(
                f"| {name} | {result.requests} | {fmt(result.p50_ms, '.3f')} | "
                f"{fmt(result.p99_ms, '.3f')} | {fmt(result.max_ms, '.3f')} | "
                f"{fmt(versus, '.2f')} |"
            )
    out.append("\nBars (pvtunnel; ratios to rows of this run)\n")
    out.append("| bar | needed | pvtunnel | result |")
    out.append("|---|---|---|---|")
    for bar in bars:
        verdict = {True: "PASS", False: "FAIL", None: "not run"}[bar.passed]
        out.append(f"| {bar.what} | {bar.needed} | {bar.value} | {verdict} |")
    notes = [(name, note) for name, row in rows.items() for note in row.notes]
    if notes:
        out.append("\nNotes\n")
        out.extend(f"- {name}: {note}" for name, note in notes)
    return "\n".join(out) + "\n"


def draw_chart(rows: dict[str, RowResult], path: Path) -> str | None:
    """Bar charts of the main figures; needs matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib  # optional dependency (the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'pvtunnel[bench]'): no chart"
    panels = (
        ("rps64", "req/s, 64 connections"),
        ("rps1", "req/s, 1 connection"),
        ("p99_1", "p99 latency, 1 connection (ms, log)"),
        ("down", "100 MiB download (MB/s)"),
        ("up", "100 MiB upload (MB/s)"),
        ("rss", "tunnel peak RSS (MiB)"),
    )
    names = list(rows)
    shades = (
        "#7f7f7f",
        "#bcbd22",
        "#d62728",
        "#ff7f0e",
        "#9467bd",
        "#c5b0d5",
        "#1f77b4",
        "#aec7e8",
    )
    colors = dict(zip(ROWS, shades, strict=True))
    palette = {name: colors[name] for name in names}
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    for axis, (key, title) in zip(axes.flat, panels, strict=True):
        values = [metric(rows[name], key) for name in names]
        heights = [v if v is not None else 0.0 for v in values]
        bars = axis.bar(names, heights, color=[palette[n] for n in names])
        for bar, value in zip(bars, values, strict=True):
            label = "n/a" if value is None else (f"{value:.3g}" if value < 10 else f"{value:,.0f}")
            axis.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        if key == "p99_1" and any(v for v in values):
            axis.set_yscale("log")
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    figure.suptitle("pvtunnel benchmark (loopback, one run)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def versions(world: World) -> dict[str, str]:
    """Tool versions, for the JSON. ``python`` runs this script; the Python that runs
    pvtunnel (which its speed depends on) is in ``pvtunnel --version``."""
    found: dict[str, str] = {"python": platform.python_version()}
    probes = {
        "nginx": [world.tools["nginx"], "-v"],
        "ssh": [world.tools["ssh"], "-V"],
        "wrk": [world.tools["wrk"], "-v"],
    }
    for name, argv in probes.items():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            found[name] = (done.stderr + done.stdout).strip().splitlines()[0]
    try:
        found["pvtunnel"] = h.check_pvtunnel(h.pvtunnel_command())
    except h.BenchError as exc:
        found["pvtunnel"] = str(exc)
    return found


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    h.install_signal_handlers()
    tools = h.ensure_debian_packages(TOOLS, install=settings.install)
    settings.out.mkdir(parents=True, exist_ok=True)
    logs = settings.out / "logs"
    logs.mkdir(exist_ok=True)
    others = h.ForeignLoad()
    tmp = make_tmp_dir()
    children = h.Children()
    world = World(settings=settings, tmp=tmp, logs=logs, tools=tools, children=children)
    rows: dict[str, RowResult] = {}
    fixtures = contextlib.ExitStack()
    try:
        write_payloads(world)
        (world.nginx_port,) = h.free_ports(1)
        world.nginx = start_nginx(
            world, name="nginx-origin", port=world.nginx_port, server_block=origin_block(world)
        )
        world.split_port = fixtures.enter_context(split.split_upstream(children, logs))
        world.other_load_at_start = others.cores()
        if world.other_load_at_start > OTHER_LOAD_WARN_CORES:
            print(
                f"warning: other processes are using {world.other_load_at_start:.2f} cores; "
                "figures will be disturbed (see the 'other load' column)",
                file=sys.stderr,
            )
        rows = measure_rows(world)
        meta = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
            "versions": versions(world),
            "settings": {
                "wrk_s": settings.wrk_s,
                "wrk_round_s": settings.round_s,
                "wrk_rounds": settings.wrk_rounds,
                "warmup_s": settings.warmup_s,
                "reps": settings.reps,
            },
            "other_load_at_start_cores": world.other_load_at_start,
        }
    finally:
        fixtures.close()
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = compute_ratios(rows)
    bars = judge_bars(rows)
    report = render_tables(rows, ratios, bars, settings)
    chart_problem = draw_chart(rows, settings.out / "chart.png")
    print(report)
    results = {
        **meta,
        "rows": {name: asdict(row) for name, row in rows.items()},
        "ratios": ratios,
        "bars": [asdict(bar) for bar in bars],
    }
    (settings.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {settings.out / 'results.json'}", file=sys.stderr)
    if chart_problem:
        print(chart_problem, file=sys.stderr)
    else:
        print(f"wrote {settings.out / 'chart.png'}", file=sys.stderr)
    if any(not row.ok for row in rows.values()):
        return 1
    if settings.fail_on_bars and any(bar.passed is False for bar in bars):
        return 3
    return 0


if __name__ == "__main__":
    h.run_main(main)
