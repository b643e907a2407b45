"""DNS discovery through the system resolver and a real DNS server (dnsmasq), on loopback.

The agent runs as a process (``pvtunnel agent --discover dns``) whose name
resolution is the machine's own: glibc's ``getaddrinfo``, reading
``/etc/resolv.conf``. That file is not touched: the agent starts in a private mount
namespace (``unshare --mount``) where a resolv.conf naming the test's dnsmasq is
bind-mounted over it, as ``ip netns exec`` does for a network namespace, while
the network (and loopback) stays the machine's, so the agent reaches the servers
this test runs on 127.0.0.1, 127.0.0.2 and 127.0.0.3. dnsmasq answers the
replicas' name from a hosts file the test rewrites; SIGHUP makes it read the
file again, as a headless Service's answer changes when pods come and go. A name
with an AAAA record (::1) beside its A record shows glibc's order of the two
families, and the agent turning to IPv4 when only IPv4 listens.

Needs root (a mount namespace, port 53) and Debian's ``dnsmasq``, which
``.ci/run`` installs.
"""

from __future__ import annotations

import random
import shlex
import shutil
import signal
import sys
from pathlib import Path

import trio

from tests.integration.admin_probe import status_of
from tests.integration.harness import TOKEN, start_upstream, wait_for_sessions
from tests.integration.processes import Process
from tests.integration.replicas import NAME, get, start_replicas

LIMIT_S = 30


def hosts_file(path: Path, *addresses: str) -> None:
    path.write_text("".join(f"{address} {NAME}\n" for address in addresses))


async def start_dnsmasq(
    tmp_path: Path, processes: list[Process], *addresses: str
) -> tuple[Process, str, Path]:
    """dnsmasq on a loopback address of its own, port 53, answering the replicas' name
    with ``addresses`` from a hosts file (returned, to be rewritten) and nothing else."""
    hosts = tmp_path / "addn-hosts"
    hosts_file(hosts, *addresses)
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    address = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    process = await Process.spawn(
        [
            dnsmasq,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            f"--listen-address={address}",
            "--bind-interfaces",
            "--port=53",
            "--local-ttl=0",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
        ],
        env={},
    )
    processes.append(process)
    await process.wait_for(r"read .*addn-hosts|read " + str(hosts))
    return process, address, hosts


async def start_agent(
    tmp_path: Path,
    processes: list[Process],
    dns_address: str,
    internal_port: int,
    upstream_port: int,
) -> tuple[Process, tuple[str, int]]:
    """``pvtunnel agent --discover dns`` for the replicas' name, resolving through the
    dnsmasq at ``dns_address``; returned with its admin address once it is ready."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns_address}\noptions timeout:1 attempts:2\n")
    agent_toml = tmp_path / "agent.toml"
    agent_toml.write_text(
        f'client_id = "dns-agent"\n[server]\nurl = "ws://{NAME}:{internal_port}"\n'
        "discover_interval_s = 0.2\n[admin]\nport = 0\n"
    )
    agent_argv = [
        sys.executable,
        "-m",
        "pvtunnel",
        "agent",
        "--config",
        str(agent_toml),
        "--discover",
        "dns",
        "--route",
        f"app=127.0.0.1:{upstream_port}",
    ]
    bind = f"mount --bind {shlex.quote(str(resolv))} /etc/resolv.conf"
    script = f"{bind} && exec {shlex.join(agent_argv)}"
    agent = await Process.spawn(
        ["unshare", "--mount", "--", "sh", "-c", script], env={"PVTUNNEL_TOKEN": TOKEN}
    )
    processes.append(agent)
    ready = await agent.wait_for(r"ready server=\S+ routes=app admin=http://([\d.]+):(\d+)")
    return agent, (ready[1], int(ready[2]))


async def test_the_agent_finds_every_replica_through_a_real_dns_server(
    tmp_path: Path, processes: list[Process]
) -> None:
    machine_resolv = Path("/etc/resolv.conf").read_bytes()
    with trio.fail_after(LIMIT_S):
        dnsmasq, dns_address, hosts = await start_dnsmasq(
            tmp_path, processes, "127.0.0.1", "127.0.0.2"
        )
        async with trio.open_nursery() as nursery:
            replicas = await start_replicas(nursery, 3)
            _, upstream_port = await start_upstream(nursery, "svc")
            internal_port = replicas[0].addresses.internal[1]
            _, admin = await start_agent(
                tmp_path, processes, dns_address, internal_port, upstream_port
            )
            for running in replicas[:2]:
                await wait_for_sessions(running, 1)
                assert (await get(running, b"/")).status == 200
            assert replicas[2].server.sessions == frozenset()

            # The answer changes (a rollout replaced the first replica by a third).
            seen = len(dnsmasq.lines)
            hosts_file(hosts, "127.0.0.2", "127.0.0.3")
            dnsmasq.process.send_signal(signal.SIGHUP)
            await dnsmasq.wait_for(r"read ", start=seen)
            await wait_for_sessions(replicas[2], 1)
            await wait_for_sessions(replicas[0], 0)
            assert (await get(replicas[2], b"/")).status == 200
            document = await status_of(admin)
            servers = document["servers"]
            assert isinstance(servers, list)
            assert sorted(entry["address"] for entry in servers) == ["127.0.0.2", "127.0.0.3"]
            assert {entry["url"] for entry in servers} == {f"ws://{NAME}:{internal_port}"}
            nursery.cancel_scope.cancel()
    assert Path("/etc/resolv.conf").read_bytes() == machine_resolv


async def test_a_name_with_an_aaaa_record_first_reaches_servers_on_ipv4_only(
    tmp_path: Path, processes: list[Process]
) -> None:
    """The name has an AAAA (::1) and an A record (127.0.0.1), and the server listens
    on IPv4 only, as with its default host 0.0.0.0: glibc lists ::1 first, which
    refuses, and the agent turns to the IPv4 address."""
    with trio.fail_after(LIMIT_S):
        _, dns_address, _ = await start_dnsmasq(tmp_path, processes, "::1", "127.0.0.1")
        async with trio.open_nursery() as nursery:
            (replica,) = await start_replicas(nursery, 1)
            _, upstream_port = await start_upstream(nursery, "svc")
            internal_port = replica.addresses.internal[1]
            agent, _ = await start_agent(
                tmp_path, processes, dns_address, internal_port, upstream_port
            )
            switched = "using IPv4 addresses (no IPv6 address could be connected to)"
            assert [line for line in agent.lines if switched in line] != []
            await wait_for_sessions(replica, 1)
            assert (await get(replica, b"/")).status == 200
            nursery.cancel_scope.cancel()
