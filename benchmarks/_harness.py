"""Shared plumbing for the benchmark scripts (``run.py``, ``memory.py``).

Everything here is plain standard library: free loopback ports, child processes that
always get stopped, readiness by connecting or by a ready line (never a fixed sleep),
and the tools the rows need. Readings from ``/proc`` (CPU, peak RSS, the CPU
other processes used meanwhile) are in ``_procfs.py``, and the HTTP client the
scripts measure with is in ``_httpclient.py``.

Only loopback addresses are ever used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, NoReturn

from _procfs import descendants, proc_start_ticks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import FrameType

LOOPBACK: Final = "127.0.0.1"
KIB: Final = 1024
MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB
READY_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0
IO_BLOCK: Final = MIB


class BenchError(Exception):
    """A step of the benchmark failed; the message says which and why."""


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code; a `BenchError` or Ctrl-C becomes a one-line message.

    Whatever the script started is stopped by then: children live in context managers.
    """
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: all children stopped", file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------- signals


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt so every ``finally`` runs."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)


# --------------------------------------------------------------------------- ports


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct free TCP ports, found by binding port 0.

    All sockets stay bound until every port is chosen, so the kernel cannot hand out
    the same port twice. There is an unavoidable window between closing the probe
    and the real server binding it; on a loopback-only benchmark machine it is tiny.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(probe)
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout_s: float = READY_TIMEOUT_S,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Retry ``check`` (which itself blocks on a connect or read) until it is true.

    Used only with checks that do real I/O (connecting, fetching a page, reading a
    child's log for its ready line), with a short growing back-off between failed
    attempts so a refused connect does not spin.

    Raises:
        BenchError: on timeout, or as soon as ``alive`` reports that a child died.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        if alive is not None and (problem := alive()) is not None:
            raise BenchError(f"{what}: {problem}")
        if check():
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(delay)  # back-off between refused connects, not a readiness sleep
        delay = min(delay * 2, 0.2)


# --------------------------------------------------------------------------- children


class Child:
    """A child process in its own session (so its whole group can be signalled).

    Its stdout and stderr go straight to ``log_path`` (no pipe: a reader thread in
    this process would compete with the tunnel for CPU when the child logs every
    request). :meth:`wait_ready` reads that file for a line containing ``ready_word``.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        ready_word: str | None = None,
        stdin: int | IO[bytes] = subprocess.DEVNULL,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_word = ready_word
        self.ready_line: str | None = None
        self.exit_code: int | None = None
        self.killed = False
        self._scanned = 0  # bytes of the log already searched for the ready word
        self._owned_descendants: list[tuple[int, int | None]] = []
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self._log = open(log_path, "wb")  # noqa: SIM115  # closed in stop()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise BenchError(f"{name}: cannot start {self.argv[0]}: {exc}") from exc

    @property
    def pid(self) -> int:
        """The child's PID (also its process-group ID)."""
        return self.proc.pid

    def tail(self, lines: int = 8) -> str:
        """The last lines the child printed, for error messages."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no output)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def problem(self) -> str | None:
        """None while the child runs; otherwise what happened to it."""
        code = self.proc.poll()
        if code is None:
            return None
        return f"{self.name} exited with code {code}: {self.tail()}"

    def _saw_ready_line(self) -> bool:
        assert self.ready_word is not None
        with open(self.log_path, "rb") as log:
            log.seek(self._scanned)
            data = log.read(1024 * 1024)
        complete = data[: data.rfind(b"\n") + 1]  # only whole lines
        for raw in complete.splitlines():
            line = raw.decode("utf-8", "replace")
            if self.ready_word in line:
                self.ready_line = line
                return True
        self._scanned += len(complete)
        return False

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        """Block until the child prints a line containing ``ready_word``.

        Raises:
            BenchError: if it exits first or says nothing ready in time.
        """
        try:
            wait_until(
                self._saw_ready_line,
                what=f"{self.name} (waiting for a line containing {self.ready_word!r})",
                timeout_s=timeout_s,
                alive=self.problem,
            )
        except BenchError as exc:
            if self.proc.poll() is None:  # timed out: show what it did say
                raise BenchError(f"{exc}; its output so far: {self.tail()}") from None
            raise
        assert self.ready_line is not None
        return self.ready_line

    def adopt_descendants(self) -> None:
        """Remember the current descendants, so :meth:`stop` also ends those that
        left the process group (sshd's per-connection children call ``setsid``)."""
        for pid in descendants(self.pid):
            self._owned_descendants.append((pid, proc_start_ticks(pid)))

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Signal the child, wait, then SIGKILL its group and adopted descendants.

        Returns the exit code (negative: killed by that signal). ``killed`` tells
        whether it had to be SIGKILLed after not exiting in ``timeout_s``.
        """
        self.adopt_descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout_s)
        self.exit_code = self.proc.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # leftovers in the group (workers)
        for pid, ticks in self._owned_descendants:
            if ticks is not None and proc_start_ticks(pid) == ticks:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()
        return self.exit_code


class Children:
    """Owns every child started during a run and stops them in reverse order."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(self, *args: object, **kwargs: object) -> Child:
        """Start a :class:`Child` (same arguments) and register it for stopping."""
        child = Child(*args, **kwargs)  # type: ignore[arg-type]  # forwarded verbatim
        self._children.append(child)
        return child

    def stop(self, child: Child, sig: int = signal.SIGTERM) -> int | None:
        """Stop one child now and forget it (if interrupted, stop_all retries it)."""
        code = child.stop(sig)
        if child in self._children:
            self._children.remove(child)
        return code

    def stop_all(self) -> None:
        """Stop all remaining children, newest first, whatever goes wrong. A second
        Ctrl-C meanwhile is ignored, so the clean-up (bounded by the stop timeouts)
        cannot be cut short and leave children behind."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
        try:
            while self._children:
                child = self._children.pop()
                try:
                    child.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"warning: stopping {child.name}: {exc}", file=sys.stderr)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# --------------------------------------------------------------------------- tools


def find_tool(name: str, *extra_dirs: str) -> str | None:
    """``shutil.which`` that also looks in sbin directories (not on every PATH)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs, "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def ensure_debian_packages(wanted: Mapping[str, str], *, install: bool) -> dict[str, str]:
    """Make sure each tool in ``wanted`` (tool -> Debian package) is present.

    Missing tools are installed with ``apt-get install -y`` (after ``apt-get update``
    if the package lists are stale) when ``install`` is true and we are root.

    Returns:
        tool name -> absolute path.

    Raises:
        BenchError: when a tool is missing and cannot be installed.
    """
    missing = {tool: pkg for tool, pkg in wanted.items() if find_tool(tool) is None}
    if missing:
        packages = sorted(set(missing.values()))
        command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        if not install:
            raise BenchError(f"missing {sorted(missing)}; install with: {' '.join(command)}")
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise BenchError(
                f"missing {sorted(missing)}; run as root on Debian, or: sudo {' '.join(command)}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {' '.join(packages)} with apt-get ...", file=sys.stderr)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print("apt-get install failed; running apt-get update first", file=sys.stderr)
            subprocess.run(
                ["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600
            )
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(command)} failed: {done.stderr.strip()[-800:]}")
    found: dict[str, str] = {}
    for tool in wanted:
        path = find_tool(tool)
        if path is None:
            raise BenchError(f"{tool} still missing after installing {wanted[tool]}")
        found[tool] = path
    return found


def pvtunnel_command() -> list[str]:
    """How to run the pvtunnel CLI: ``$PVTUNNEL_BIN``, the script beside this
    interpreter, ``pvtunnel`` on PATH, or ``python -m pvtunnel`` as a last resort."""
    if explicit := os.environ.get("PVTUNNEL_BIN"):
        return explicit.split()
    beside = Path(sys.executable).parent / "pvtunnel"
    if beside.exists():
        return [str(beside)]
    if on_path := shutil.which("pvtunnel"):
        return [on_path]
    return [sys.executable, "-m", "pvtunnel"]


def check_pvtunnel(command: Sequence[str]) -> str:
    """Return ``pvtunnel --version`` output, or raise BenchError saying why it fails."""
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"pvtunnel CLI not usable ({' '.join(command)}): {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise BenchError(
            f"pvtunnel CLI not working yet: `{' '.join(command)} --version` exited "
            f"{done.returncode}: {last[0]}"
        )
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0]


@dataclass
class Tunnel:
    """A running pvtunnel server + agent pair."""

    server: Child
    agent: Child
    internal_port: int
    external_port: int
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        """PIDs whose peak RSS counts as the tunnel's."""
        return [self.server.pid, self.agent.pid]


@contextlib.contextmanager
def open_pvtunnel(
    children: Children,
    *,
    upstream_port: int,
    log_dir: Path,
    route: str = "app",
    extra_server_args: Sequence[str] = (),
    extra_agent_args: Sequence[str] = (),
    command: Sequence[str] = (),
    log_prefix: str = "pvtunnel",
) -> Iterator[Tunnel]:
    """Start ``pvtunnel serve`` and ``pvtunnel agent`` (route ``route`` -> upstream).

    ``command`` runs the CLI (default: `pvtunnel_command`). Waits for each one's ready
    line; on exit sends SIGTERM (agent first) and records the exit codes in
    ``Tunnel.exit_codes`` (the contract says both exit 0).
    """
    command = list(command) or pvtunnel_command()
    check_pvtunnel(command)
    internal_port, external_port = free_ports(2)
    token = os.urandom(16).hex()
    exit_codes: dict[str, int | None] = {}
    server = children.start(
        "pvtunnel serve",
        [
            *command,
            "serve",
            "--host",
            LOOPBACK,
            "--internal-port",
            str(internal_port),
            "--external-port",
            str(external_port),
            *extra_server_args,
        ],
        log_path=log_dir / f"{log_prefix}-server.log",
        env={"PVTUNNEL_INTERNAL_TOKEN": token},
        ready_word="ready",
    )
    agent: Child | None = None
    try:
        server.wait_ready()
        agent = children.start(
            "pvtunnel agent",
            [
                *command,
                "agent",
                "--server",
                f"ws://{LOOPBACK}:{internal_port}",
                "--client-id",
                "bench",
                "--route",
                f"{route}={LOOPBACK}:{upstream_port}",
                *extra_agent_args,
            ],
            log_path=log_dir / f"{log_prefix}-agent.log",
            env={"PVTUNNEL_TOKEN": token},
            ready_word="ready",
        )
        agent.wait_ready()
        yield Tunnel(server, agent, internal_port, external_port, exit_codes)
    finally:
        if agent is not None:
            exit_codes["agent"] = children.stop(agent)
            if agent.killed:
                exit_codes["agent_needed_sigkill"] = 1
        exit_codes["server"] = children.stop(server)
        if server.killed:
            exit_codes["server_needed_sigkill"] = 1


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
