"""Soak: mixed traffic through a real server and agent while the network misbehaves.

    python benchmarks/soak.py --minutes 10 [--workers 16] [--out benchmarks/results/soak.json]

Starts `pvtunnel serve` and `pvtunnel agent` as processes (so their memory is their
own), an upstream and a fault-injecting TCP relay between agent and server inside
this process, then runs ``--workers`` clients in a loop for ``--minutes``: small
GETs, 256 KiB downloads, 64 KiB uploads echoed back, and slow requests. Every 15
to 45 s the relay cuts every agent connection or blackholes it for 2 to 8 s.
Every response body is checked byte for byte, so a mixed-up or spliced response
counts as ``corrupt`` (which must stay 0). At the end it prints requests served,
errors by kind, the requests the server held while the agent reconnected (and how
many of those were served), and the server's and agent's RSS at the start and end
and their peaks. Loopback only; everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Final

import _harness as h
import _procfs as procfs
import h11
import trio

from pvtunnel._trio.demo import read_request, send_response

TOKEN: Final = "soak-token-0123456789abcdef"
SMALL: Final = bytes(range(256)) * 4
MEDIUM: Final = random.Random(3).randbytes(256 * 1024)
HEARTBEAT: Final = "[timeouts]\nheartbeat_s = 1.0\nheartbeat_timeout_s = 4.0\n"


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """A memory figure of a live process in KiB (0 once it is gone)."""
    return procfs.proc_status_kib(pid, key) or 0


# --------------------------------------------------------------------- upstream


async def upstream_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while (received := await read_request(stream, conn)) is not None:
            request, body = received
            if request.target == b"/medium":
                payload = MEDIUM
            elif request.target == b"/echo":
                payload = body
            elif request.target.startswith(b"/slow"):
                await trio.sleep(random.uniform(0.2, 1.0))
                payload = SMALL
            else:
                payload = SMALL
            await send_response(stream, conn, payload)
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


# --------------------------------------------------------------------- fault relay


class Relay:
    """Forwards agent <-> server; can cut or blackhole every connection on command."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.healed = trio.Event()
        self.healed.set()
        self.scopes: set[trio.CancelScope] = set()

    async def connection(self, downstream: trio.SocketStream) -> None:
        async with downstream:
            await self.healed.wait()
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self.scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self.pump, downstream, upstream, nursery)
                            nursery.start_soon(self.pump, upstream, downstream, nursery)
                    finally:
                        self.scopes.discard(scope)

    async def pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, nursery: trio.Nursery
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await self.healed.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    def cut(self) -> None:
        for scope in list(self.scopes):
            scope.cancel()


# --------------------------------------------------------------------- clients


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()


async def one_request(port: int, rng: random.Random) -> str:
    """One request on a fresh connection; returns "ok" or the kind of failure."""
    kind = rng.choices(["small", "medium", "echo", "slow"], weights=[60, 15, 15, 10])[0]
    upload = rng.randbytes(64 * 1024) if kind == "echo" else b""
    target = {"small": b"/small", "medium": b"/medium", "echo": b"/echo", "slow": b"/slow"}[kind]
    expected = {"small": SMALL, "medium": MEDIUM, "echo": upload, "slow": SMALL}[kind]
    method = b"POST" if upload else b"GET"
    conn = h11.Connection(h11.CLIENT)
    try:
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                headers = [(b"host", b"app"), (b"content-length", b"%d" % len(upload))]
                data = conn.send(h11.Request(method=method, target=target, headers=headers))
                data = (
                    (data or b"")
                    + (conn.send(h11.Data(data=upload)) or b"" if upload else b"")
                    + (conn.send(h11.EndOfMessage()) or b"")
                )
                await stream.send_all(data)
                status = 0
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return "connection closed"
    except trio.TooSlowError:
        return "client timeout (30 s)"
    except (h11.RemoteProtocolError, trio.BrokenResourceError, OSError):
        return "connection closed"
    if status != 200:
        return f"HTTP {status}"
    return "ok" if bytes(body) == expected else "corrupt"


async def worker(port: int, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        outcome = await one_request(port, rng)
        if outcome == "ok":
            tally.ok += 1
        else:
            tally.errors[outcome] += 1


async def faults(relay: Relay, tally: Tally, rng: random.Random) -> None:
    while True:
        await trio.sleep(rng.uniform(15, 45))
        if rng.random() < 0.5:
            tally.faults["cut"] += 1
            relay.cut()
        else:
            tally.faults["blackhole"] += 1
            relay.healed = trio.Event()
            await trio.sleep(rng.uniform(2, 8))
            relay.healed.set()


# --------------------------------------------------------------------- processes


async def held_requests(admin_port: int) -> dict[str, int]:
    """The server's held requests by outcome, read from its /metrics page."""

    def read() -> str:
        url = f"http://127.0.0.1:{admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    text = await trio.to_thread.run_sync(read)
    held: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("pvtunnel_held_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            held[labels.split('"')[1]] = int(float(value))
    return held


async def wait_ready(process: trio.Process, what: str) -> None:
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(20):
        while b"ready" not in seen:
            chunk = await process.stderr.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"{what} exited: {seen.decode(errors='replace')}")
            seen += chunk


async def drain_stderr(process: trio.Process) -> None:
    assert process.stderr is not None
    while await process.stderr.receive_some(65536):
        pass


async def soak(minutes: float, workers: int) -> dict[str, object]:
    pvtunnel = [sys.executable, "-m", "pvtunnel"]
    env = {**os.environ, "PVTUNNEL_INTERNAL_TOKEN": TOKEN, "PVTUNNEL_TOKEN": TOKEN}
    internal, external, admin = h.free_ports(3)
    with tempfile.TemporaryDirectory() as tmp:
        server_toml = Path(tmp) / "server.toml"
        server_toml.write_text(f'host = "127.0.0.1"\n{HEARTBEAT}\n[admin]\nport = {admin}\n')
        agent_toml = Path(tmp) / "agent.toml"
        agent_toml.write_text(f'client_id = "soak"\n{HEARTBEAT}')
        tally = Tally()
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(
                functools.partial(trio.serve_tcp, upstream_connection, 0, host="127.0.0.1")
            )
            upstream_port = upstream[0].socket.getsockname()[1]
            relay = Relay(internal)
            relay_listeners = await nursery.start(
                functools.partial(trio.serve_tcp, relay.connection, 0, host="127.0.0.1")
            )
            relay_port = relay_listeners[0].socket.getsockname()[1]
            server = await trio.lowlevel.open_process(
                [
                    *pvtunnel,
                    "serve",
                    "--config",
                    str(server_toml),
                    "--internal-port",
                    str(internal),
                    "--external-port",
                    str(external),
                    "--log-level",
                    "warning",
                ],
                env=env,
                stderr=subprocess.PIPE,
            )
            agent: trio.Process | None = None
            try:
                await wait_ready(server, "server")
                nursery.start_soon(drain_stderr, server)
                agent = await trio.lowlevel.open_process(
                    [
                        *pvtunnel,
                        "agent",
                        "--config",
                        str(agent_toml),
                        "--server",
                        f"ws://127.0.0.1:{relay_port}",
                        "--route",
                        f"app=127.0.0.1:{upstream_port}",
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                    stderr=subprocess.PIPE,
                )
                await wait_ready(agent, "agent")
                nursery.start_soon(drain_stderr, agent)
                result = await run_load(
                    server.pid, agent.pid, external, relay, tally, minutes, workers
                )
                result["held"] = await held_requests(admin)
            finally:
                for process in (agent, server):
                    if process is not None and process.returncode is None:
                        process.send_signal(signal.SIGTERM)
                        with trio.move_on_after(15, shield=True):
                            await process.wait()
                        if process.returncode is None:
                            process.kill()
                nursery.cancel_scope.cancel()
    return result


async def run_load(
    server_pid: int,
    agent_pid: int,
    port: int,
    relay: Relay,
    tally: Tally,
    minutes: float,
    workers: int,
) -> dict[str, object]:
    rng = random.Random(11)
    async with trio.open_nursery() as load:
        for index in range(workers):
            load.start_soon(worker, port, tally, index)
        await trio.sleep(5)  # warm-up before the "start" memory reading
        start = {"server": rss_kib(server_pid), "agent": rss_kib(agent_pid)}
        load.start_soon(faults, relay, tally, rng)
        deadline = trio.current_time() + minutes * 60
        while trio.current_time() < deadline:
            await trio.sleep(min(30, max(0.0, deadline - trio.current_time())))
            print(
                f"  served {tally.ok}, errors {dict(tally.errors)}, faults "
                f"{dict(tally.faults)}, RSS server {rss_kib(server_pid) // 1024} MiB "
                f"agent {rss_kib(agent_pid) // 1024} MiB",
                flush=True,
            )
        end = {"server": rss_kib(server_pid), "agent": rss_kib(agent_pid)}
        peak = {"server": rss_kib(server_pid, "VmHWM"), "agent": rss_kib(agent_pid, "VmHWM")}
        load.cancel_scope.cancel()
    return {
        "minutes": minutes,
        "workers": workers,
        "served": tally.ok,
        "errors": dict(tally.errors),
        "faults": dict(tally.faults),
        "rss_start_kib": start,
        "rss_end_kib": end,
        "rss_peak_kib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak.json"))
    args = parser.parse_args()
    result = trio.run(soak, args.minutes, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\n| figure | value |\n|---|---|")
    print(f"| duration | {result['minutes']} min, {result['workers']} workers |")
    print(f"| requests served | {result['served']} |")
    for kind, count in sorted(dict(result["errors"]).items()):  # type: ignore[call-overload]
        print(f"| error: {kind} | {count} |")
    print(f"| faults injected | {result['faults']} |")
    held = dict(result["held"])  # type: ignore[call-overload]
    waited = sum(count for outcome, count in held.items() if outcome != "refused")
    print(f"| requests held while the agent reconnected | {waited} |")
    for outcome, count in sorted(held.items()):
        print(f"| held: {outcome} | {count} |")
    for who in ("server", "agent"):
        start = result["rss_start_kib"][who]  # type: ignore[index]
        end = result["rss_end_kib"][who]  # type: ignore[index]
        peak = result["rss_peak_kib"][who]  # type: ignore[index]
        print(
            f"| {who} RSS start / end / peak | {start // 1024} / {end // 1024} / "
            f"{peak // 1024} MiB |"
        )


if __name__ == "__main__":
    main()
