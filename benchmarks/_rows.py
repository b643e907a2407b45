"""The rows of ``run.py``: the shared fixtures of a run (nginx, payloads, keys) and,
per row, a context manager that sets the row up, yields where its load goes and
which processes are the tunnel, and stops it."""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import _harness as h
import _httpclient as hc
import _procfs as procfs
import slow
import split
from _results import RowResult, Target, one_line
from _settings import BIG_BYTES, BIG_PATH, HOST_HEADER, SMALL_PATH, Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

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
        return hc.http_request(port, "GET", SMALL_PATH, timeout_s=2).status == 200
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
        yield Target(port, lambda: [proxy.pid, *procfs.descendants(proxy.pid)])
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
            session = [
                pid for pid in procfs.descendants(sshd.pid) if procfs.proc_comm(pid) == "sshd"
            ]
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
