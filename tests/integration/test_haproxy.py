"""examples/haproxy/ for real: HAProxy in front of two servers, two agents linked to both.

HAProxy runs ``examples/haproxy/haproxy.cfg`` itself, with only its addresses and
ports replaced by loopback ones (each replacement must match exactly once, so the
example cannot drift from what is tested). The servers are ``pvtunnel serve``
processes running the example's ``server.toml`` (loopback hosts and test ports
swapped in), so SIGTERM and SIGKILL are real; the agents run in this process with
the example agent's two URLs pointed at HAProxy's agent ports.

While clients send requests through HAProxy without pause (each on a fresh
connection, bounded by the phases below, about 15 s in all):

1. SIGTERM server a: ``/ready`` fails at once, HAProxy's check takes a out of
   rotation, then a closes its listeners and exits. No request may fail.
2. a is started again, HAProxy's check sees it up, both agents are back on it.
3. SIGKILL server b: only the requests on b as it died may fail (counted and
   printed); once HAProxy's check has marked b down, every request succeeds.

Ports for HAProxy's listeners and the servers are fixed (HAProxy's config and a
server restarted on the same ports need them), picked free below the kernel's
ephemeral range (see `free_port`); all on 127.0.0.1. Synchronisation is on what
HAProxy and the servers print (``Server pvtunnel_external/a is UP``, the ready
line) and on the agents' link state, never on sleeping. Needs Debian's
``haproxy``, which ``.ci/run`` installs.
"""

from __future__ import annotations

import collections
import functools
import random
import shutil
import signal
import socket
import tomllib
from pathlib import Path

import attrs
import h11
import tomli_w
import trio

from pvtunnel._config import AgentConfig, AgentTimeouts, Route, Secret, ServerEndpoint
from pvtunnel._trio.agent import TunnelAgent
from tests.integration.client import fetch
from tests.integration.harness import TOKEN, start_upstream, wait_for
from tests.integration.processes import Process

EXAMPLE = Path(__file__).resolve().parent.parent.parent / "examples" / "haproxy"
LIMIT_S = 60
WORKERS = 8
# Load after HAProxy has marked the killed server down: every request must pass.
TAIL_S = 2.0
STEADY_S = 2.0
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, not handed out before.

    The servers are restarted on their ports while the clients open thousands of
    connections, each from an ephemeral local port: a port from that range (what
    binding port 0 gives) could by then be one of theirs, and the restart would
    fail. The kernel picks no port below the range by itself.
    """
    first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, first_ephemeral // 2), first_ephemeral)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise AssertionError("no free port below the ephemeral range")


@attrs.frozen
class ServerPorts:
    external: int = attrs.field(factory=free_port)
    internal: int = attrs.field(factory=free_port)
    admin: int = attrs.field(factory=free_port)


def haproxy_config(
    a: ServerPorts, b: ServerPorts, clients: int, agents_a: int, agents_b: int
) -> str:
    text = (EXAMPLE / "haproxy.cfg").read_text()
    replacements = {
        "bind :80\n": f"bind 127.0.0.1:{clients}\n",
        "bind :8181\n": f"bind 127.0.0.1:{agents_a}\n",
        "bind :8182\n": f"bind 127.0.0.1:{agents_b}\n",
        "10.0.1.10:8080 check port 8082": f"127.0.0.1:{a.external} check port {a.admin}",
        "10.0.1.11:8080 check port 8082": f"127.0.0.1:{b.external} check port {b.admin}",
        "10.0.1.10:8081\n": f"127.0.0.1:{a.internal}\n",
        "10.0.1.11:8081\n": f"127.0.0.1:{b.internal}\n",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    assert not any("10.0.1." in line for line in text.splitlines() if not line.startswith("#"))
    return text


def server_toml(ports: ServerPorts) -> str:
    """The example's server.toml on loopback, tokens from the environment."""
    config = tomllib.loads((EXAMPLE / "server.toml").read_text())
    config["host"] = "127.0.0.1"
    config["internal"] = {"port": ports.internal}
    config["external"] = {"port": ports.external}
    config["admin"] = {"host": "127.0.0.1", "port": ports.admin}
    return tomli_w.dumps(config)


async def start_server(tmp_path: Path, name: str, ports: ServerPorts) -> Process:
    path = tmp_path / f"server-{name}.toml"
    path.write_text(server_toml(ports))
    # Warnings only: nobody reads the pipe during the load, which access lines would fill.
    server = await Process.launch(
        "serve",
        "--config",
        str(path),
        "--log-level",
        "warning",
        env={"PVTUNNEL_INTERNAL_TOKEN": TOKEN},
    )
    await server.wait_for(r"pvtunnel serve: ready")
    return server


async def linked_to_both(agents: list[TunnelAgent]) -> None:
    for agent in agents:
        await wait_for(agent, functools.partial(all_connected, agent))


def all_connected(agent: TunnelAgent) -> bool:
    return all(link.connected for link in agent.links)


@attrs.define
class Load:
    """Clients sending GETs through HAProxy; outcomes counted by the phase they ended in."""

    port: int
    phase: str = "steady"
    outcomes: dict[str, collections.Counter[str]] = attrs.field(
        factory=lambda: collections.defaultdict(collections.Counter)
    )

    async def worker(self, target: bytes) -> None:
        while True:
            try:
                reply = await fetch(self.port, b"GET", target, host=b"app")
                outcome = "ok" if reply.status == 200 else f"HTTP {reply.status}"
            except (OSError, h11.RemoteProtocolError, trio.BrokenResourceError):
                outcome = "connection failed"
            # Counted when it ends: a request begun just before the kill and cut off
            # by it belongs to the kill.
            self.outcomes[self.phase][outcome] += 1

    def failures(self, phase: str) -> int:
        return sum(count for outcome, count in self.outcomes[phase].items() if outcome != "ok")


async def test_sigterm_loses_nothing_and_sigkill_only_what_was_in_flight(
    tmp_path: Path, processes: list[Process]
) -> None:
    haproxy_bin = shutil.which("haproxy") or "/usr/sbin/haproxy"
    a, b = ServerPorts(), ServerPorts()
    clients, agents_a, agents_b = free_port(), free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(a, b, clients, agents_a, agents_b))
    with trio.fail_after(LIMIT_S):
        haproxy = await Process.spawn([haproxy_bin, "-db", "-f", str(config)], env={})
        processes.append(haproxy)
        # No server runs yet: both go down first, so "is UP" below means HAProxy
        # checked a live server, not that it has not checked yet.
        for name in ("a", "b"):
            await haproxy.wait_for(rf"Server pvtunnel_external/{name} is DOWN")
        seen = len(haproxy.lines)
        server_a = await start_server(tmp_path, "a", a)
        processes.append(server_a)
        server_b = await start_server(tmp_path, "b", b)
        processes.append(server_b)
        for name in ("a", "b"):
            await haproxy.wait_for(rf"Server pvtunnel_external/{name} is UP", start=seen)

        async with trio.open_nursery() as nursery:
            _, upstream_port = await start_upstream(nursery, "svc")
            agents = []
            for client_id in ("agent-1", "agent-2"):
                # The example agent's two URLs, pointed at HAProxy's agent ports.
                example = tomllib.loads((EXAMPLE / "agent.toml").read_text())
                assert len(example["server"]["url"]) == 2
                urls = (f"ws://127.0.0.1:{agents_a}", f"ws://127.0.0.1:{agents_b}")
                agent = TunnelAgent(
                    AgentConfig(
                        client_id=client_id,
                        server=ServerEndpoint(urls=urls, token=Secret(TOKEN)),
                        routes=(Route(name="app", value="127.0.0.1", port=upstream_port),),
                        timeouts=AgentTimeouts(reconnect_max_s=0.5),
                    )
                )
                await nursery.start(agent.serve)
                agents.append(agent)
            await linked_to_both(agents)

            load = Load(clients)
            async with trio.open_nursery() as clients_nursery:
                # Half the clients ask for slow answers, so a stop always finds
                # requests in flight.
                for index in range(WORKERS):
                    clients_nursery.start_soon(load.worker, b"/sleep/300" if index % 2 else b"/")
                await trio.sleep(STEADY_S)

                # 1. Drain a: the check goes down first, then a stops and exits.
                load.phase = "drain"
                seen = len(haproxy.lines)
                server_a.process.send_signal(signal.SIGTERM)
                assert await server_a.process.wait() == 0
                await haproxy.wait_for(r"Server pvtunnel_external/a is DOWN", start=seen)

                # 2. a is back: checked up, and both agents linked to it again.
                load.phase = "restart"
                seen = len(haproxy.lines)
                server_a = await start_server(tmp_path, "a", a)
                processes.append(server_a)
                await haproxy.wait_for(r"Server pvtunnel_external/a is UP", start=seen)
                await linked_to_both(agents)

                # 3. Kill b: what it was carrying may fail, nothing else.
                load.phase = "kill"
                seen = len(haproxy.lines)
                server_b.process.send_signal(signal.SIGKILL)
                await haproxy.wait_for(r"Server pvtunnel_external/b is DOWN", start=seen)
                load.phase = "after"
                await trio.sleep(TAIL_S)
                clients_nursery.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    counts = {phase: dict(outcomes) for phase, outcomes in load.outcomes.items()}
    print(f"\nrequests through HAProxy by phase: {counts}")
    assert load.outcomes["drain"]["ok"] > 0
    assert load.failures("steady") == load.failures("drain") == load.failures("restart") == 0
    # Each client can lose the request it had in flight on b, and one more sent to
    # b while it died (the kernel accepted it on b's listening socket, then reset
    # it); the next goes elsewhere, since HAProxy redispatches a refused connection.
    assert load.failures("kill") <= 2 * WORKERS
    assert load.outcomes["after"]["ok"] > 0
    assert load.failures("after") == 0
