"""DNS discovery end to end in one process: real servers on 127.0.0.x, a resolver the test sets.

Every replica is a real `TunnelServer` on its own loopback address (127.0.0.1,
127.0.0.2, ...), all on the same internal port, as the pods behind a headless
Service are; the agent gets one URL naming all of them. The answer the name
resolves to is the test's (`TunnelAgent`'s ``resolve``), so replicas come and go
on cue. The system resolver with a real DNS server is in ``test_dnsmasq.py``.
Link state is awaited through `TunnelAgent.wait_links_changed` and the servers'
session tables, never by sleeping.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio

from pvtunnel import ServerCertificateError
from pvtunnel._config import Discovery, Secret
from pvtunnel._errors import HandshakeRefusedError
from pvtunnel._metrics import ServerLinkFigures
from pvtunnel._trio.agent import TunnelAgent
from pvtunnel._trio.agent_admin import AgentAdmin
from tests.integration.harness import (
    Running,
    agent_config,
    start_server,
    start_server_in_scope,
    start_upstream,
    wait_for,
    wait_for_sessions,
)
from tests.integration.pki import issue
from tests.integration.replicas import NAME, get, replica_config, start_replicas
from tests.integration.upstream import RecordingUpstream
from tests.prometheus import Scrape

if TYPE_CHECKING:
    from pathlib import Path


LIMIT_S = 20


@attrs.define
class Names:
    """The resolver: what ``NAME`` resolves to right now."""

    answer: tuple[str, ...]
    asked: int = 0

    async def resolve(self, host: str, port: int) -> tuple[str, ...]:
        assert host == NAME
        self.asked += 1
        return self.answer


def discovering_agent(
    replicas: list[Running], names: Names, routes: dict[str, int], **server: Any
) -> TunnelAgent:
    scheme = server.pop("scheme", "ws")
    config = agent_config(replicas[0].addresses, routes)
    endpoint = attrs.evolve(
        config.server,
        urls=(f"{scheme}://{NAME}:{replicas[0].addresses.internal[1]}",),
        discover=Discovery.DNS,
        **server,
    )
    return TunnelAgent(attrs.evolve(config, server=endpoint), resolve=names.resolve)


def connected_addresses(agent: TunnelAgent) -> set[str | None]:
    return {link.address for link in agent.links if link.connected}


def families_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The agent's lines saying which address family it uses, in order."""
    return [r.getMessage() for r in caplog.records if "using IPv" in r.getMessage()]


def switched_to_ipv4(url: str) -> list[str]:
    """What ``url``'s discovery says when it starts on IPv6 and has to turn to IPv4."""
    return [
        f"{url}: using IPv6 addresses (the resolver's preference)",
        f"{url}: using IPv4 addresses (no IPv6 address could be connected to)",
    ]


async def test_one_link_per_address_and_replicas_that_come_and_go() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            replicas = await start_replicas(nursery, 3)
            _, port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1", "127.0.0.2"))
            agent = discovering_agent(replicas, names, {"app": port}, discover_interval_s=0.05)
            await nursery.start(agent.serve)
            await wait_for(agent, lambda: connected_addresses(agent) == {"127.0.0.1", "127.0.0.2"})
            for running in replicas[:2]:
                await wait_for_sessions(running, 1)
                assert (await get(running, b"/")).status == 200
            assert replicas[2].server.sessions == frozenset()

            # A replica added (scale-up, a rollout's new pod): linked within an interval.
            names.answer = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
            await wait_for(agent, lambda: len(connected_addresses(agent)) == 3)
            await wait_for_sessions(replicas[2], 1)
            assert (await get(replicas[2], b"/")).status == 200

            # A replica gone from DNS: its link drains and closes; the others stay.
            names.answer = ("127.0.0.2", "127.0.0.3")
            await wait_for(
                agent, lambda: {link.address for link in agent.links} == set(names.answer)
            )
            await wait_for_sessions(replicas[0], 0)
            assert connected_addresses(agent) == {"127.0.0.2", "127.0.0.3"}
            for running in replicas[1:]:
                assert len(running.server.sessions) == 1
            nursery.cancel_scope.cancel()


async def test_status_and_metrics_show_each_link_by_url_and_address() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            replicas = await start_replicas(nursery, 2)
            _, port = await start_upstream(nursery, "svc")
            agent = discovering_agent(replicas, Names(("127.0.0.1", "127.0.0.2")), {"app": port})
            await nursery.start(agent.serve)
            await wait_for(agent, lambda: len(connected_addresses(agent)) == 2)
            admin = AgentAdmin(agent)
            url = f"ws://{NAME}:{replicas[0].addresses.internal[1]}"
            document = admin.status()
            assert document["server"] == url
            assert sorted(
                (e["url"], e["address"], e["connected"]) for e in document["servers"]
            ) == [
                (url, "127.0.0.1", True),
                (url, "127.0.0.2", True),
            ]
            page = Scrape(admin.metrics_text())
            assert page.series("pvtunnel_agent_server_connected") == {
                (("address", "127.0.0.1"), ("server", url)): 1.0,
                (("address", "127.0.0.2"), ("server", url)): 1.0,
            }
            nursery.cancel_scope.cancel()


async def test_a_replica_leaving_dns_finishes_its_in_flight_request_first() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            replicas = await start_replicas(nursery, 2)
            upstream, port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1", "127.0.0.2"))
            agent = discovering_agent(replicas, names, {"app": port}, discover_interval_s=0.05)
            await nursery.start(agent.serve)
            await wait_for(agent, lambda: len(connected_addresses(agent)) == 2)
            leaving = replicas[0]
            (session,) = leaving.server.sessions
            replies: list[int] = []

            async def client() -> None:
                replies.append((await get(leaving, b"/hold")).status)

            async with trio.open_nursery() as clients:
                clients.start_soon(client)
                await upstream.hold_started.wait()
                names.answer = ("127.0.0.2",)
                # GOAWAY: no new requests for it there, but the connection stays...
                await session.tunnel.going_away.wait()
                assert leaving.server.sessions == frozenset({session})
                upstream.release.set()
            # ... until the request in flight is answered; then it closes.
            assert replies == [200]
            await wait_for_sessions(leaving, 0)
            assert connected_addresses(agent) == {"127.0.0.2"}
            nursery.cancel_scope.cancel()


async def test_a_failing_link_resolves_the_name_again_at_once() -> None:
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            first, first_scope = await start_server_in_scope(
                nursery, replica_config("127.0.0.1", 0)
            )
            second = await start_server(
                nursery, replica_config("127.0.0.2", first.addresses.internal[1])
            )
            _, port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1", "127.0.0.2"))
            # An interval far beyond the test's limit: only the failure can ask again.
            agent = discovering_agent(
                [first, second], names, {"app": port}, discover_interval_s=3600
            )
            await nursery.start(agent.serve)
            await wait_for(agent, lambda: len(connected_addresses(agent)) == 2)
            assert names.asked == 1
            names.answer = ("127.0.0.2",)
            first_scope.cancel()  # the replica is replaced: its connection fails first
            await wait_for(agent, lambda: {link.address for link in agent.links} == {"127.0.0.2"})
            assert names.asked >= 2
            nursery.cancel_scope.cancel()


async def test_an_ipv6_address_listed_first_gives_way_to_servers_on_ipv4_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The servers listen on IPv4 (the server's default host is 0.0.0.0) while their
    name also has an IPv6 address, which the resolver lists first: it refuses, and
    the resolution that failure asks for, a second later, dials IPv4 instead."""
    caplog.set_level(logging.INFO, "pvtunnel.agent")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            (replica,) = await start_replicas(nursery, 1)
            _, port = await start_upstream(nursery, "svc")
            names = Names(answer=("::1", "127.0.0.1"))
            # An interval far beyond the test's limit: only the failure can ask again.
            agent = discovering_agent([replica], names, {"app": port}, discover_interval_s=3600)
            await nursery.start(agent.serve)  # returns once a server has registered it
            assert names.asked == 2
            assert [(link.address, link.connected) for link in agent.links] == [("127.0.0.1", True)]
            assert (await get(replica, b"/")).status == 200
            nursery.cancel_scope.cancel()
    assert families_said(caplog) == switched_to_ipv4(agent.config.server.urls[0])


async def answer_503(answered: list[bytes], stream: trio.SocketStream) -> None:
    """Read a request's head, answer 503 and close: a server that is draining."""
    async with stream:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        answered.append(head)
        await stream.send_all(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )


async def test_an_ipv6_server_that_answers_503_keeps_the_agent_on_ipv6_until_it_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that answers over IPv6, if only with a 503 at the upgrade while it
    drains, proves IPv6 reaches it: the agent keeps retrying there rather than turn
    to IPv4. Once nothing listens on the IPv6 address (connections refused), it turns."""
    caplog.set_level(logging.INFO, "pvtunnel.agent")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            (replica,) = await start_replicas(nursery, 1)
            _, port = await start_upstream(nursery, "svc")
            answered: list[bytes] = []
            draining = trio.CancelScope()

            async def serve_draining(
                *, task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED
            ) -> None:
                listeners = await trio.open_tcp_listeners(replica.addresses.internal[1], host="::1")
                with draining:
                    await trio.serve_listeners(
                        functools.partial(answer_503, answered), listeners, task_status=task_status
                    )

            await nursery.start(serve_draining)
            names = Names(answer=("::1", "127.0.0.1"))
            found = discovering_agent([replica], names, {"app": port}, discover_interval_s=0.05)
            quick = attrs.evolve(found.config.timeouts, reconnect_max_s=0.2)
            agent = TunnelAgent(attrs.evolve(found.config, timeouts=quick), resolve=names.resolve)
            nursery.start_soon(agent.serve)
            await wait_for(
                agent,
                lambda: agent.connected or any(link.reconnects >= 3 for link in agent.links),
            )
            # A resolution after the third 503, which a switch would have come with.
            await agent.discovered[found.config.server.urls[0]].wait_resolved()
            assert [(link.address, link.connected) for link in agent.links] == [("::1", False)]
            assert len(answered) >= 3
            assert replica.server.sessions == frozenset()

            draining.cancel()  # the server is gone: its address refuses connections
            await wait_for(
                agent,
                lambda: (
                    [(link.address, link.connected) for link in agent.links]
                    == [("127.0.0.1", True)]
                ),
            )
            assert (await get(replica, b"/")).status == 200
            nursery.cancel_scope.cancel()
    assert families_said(caplog) == switched_to_ipv4(agent.config.server.urls[0])


@attrs.define
class TwoReplicas:
    """Replicas on 127.0.0.1 (stoppable: ``first_scope``) and 127.0.0.2, one internal
    port, and a discovering agent linked to both that retries fast, counting."""

    nursery: trio.Nursery
    first: Running
    first_scope: trio.CancelScope
    internal_port: int
    upstream: RecordingUpstream
    names: Names
    agent: TunnelAgent

    async def start_first_again(self, answer: tuple[str, ...] | None = None) -> None:
        """127.0.0.1 back (a new replica on the same port; then ``answer`` in DNS, if
        given), and the agent linked to it."""
        self.first, self.first_scope = await start_server_in_scope(
            self.nursery, replica_config("127.0.0.1", self.internal_port)
        )
        if answer is not None:
            self.names.answer = answer
        await wait_for(self.agent, lambda: len(connected_addresses(self.agent)) == 2)

    def links_to_first(self) -> int:
        return sum(link.address == "127.0.0.1" for link in self.agent.links)


async def two_replicas(nursery: trio.Nursery) -> TwoReplicas:
    first, first_scope = await start_server_in_scope(nursery, replica_config("127.0.0.1", 0))
    internal_port = first.addresses.internal[1]
    await start_server(nursery, replica_config("127.0.0.2", internal_port))
    upstream, port = await start_upstream(nursery, "svc")
    names = Names(answer=("127.0.0.1", "127.0.0.2"))
    found = discovering_agent([first], names, {"app": port}, discover_interval_s=0.05)
    quick = attrs.evolve(found.config.timeouts, reconnect_max_s=0.2)
    agent = TunnelAgent(attrs.evolve(found.config, timeouts=quick), resolve=names.resolve)
    await nursery.start(agent.serve)
    await wait_for(agent, lambda: len(connected_addresses(agent)) == 2)
    return TwoReplicas(nursery, first, first_scope, internal_port, upstream, names, agent)


async def test_reconnects_only_go_up_as_addresses_leave_and_return() -> None:
    """A counter (/metrics, /status): an address leaving DNS leaves its link's count
    in the total, and the address coming back starts a series of its own again."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            replicas = await two_replicas(nursery)
            agent = replicas.agent
            replicas.first_scope.cancel()  # the replica goes: its link retries, counting
            await wait_for(agent, lambda: agent.reconnects >= 2)
            replicas.names.answer = ("127.0.0.2",)
            before = agent.reconnects
            await wait_for(agent, lambda: replicas.links_to_first() == 0)
            assert agent.reconnects >= before
            counted = agent.reconnects
            await replicas.start_first_again(answer=("127.0.0.1", "127.0.0.2"))
            (returned,) = [link for link in agent.links if link.address == "127.0.0.1"]
            assert returned.reconnects == 0
            assert agent.reconnects == counted
            nursery.cancel_scope.cancel()


async def test_addresses_that_leave_dns_leave_nothing_behind_but_their_count() -> None:
    """In Kubernetes nearly every pod IP leaves DNS for good, so an agent that kept
    something per address would grow for as long as it runs."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            replicas = await start_replicas(nursery, 1)
            _, port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1",))
            found = discovering_agent(replicas, names, {"app": port}, discover_interval_s=0.05)
            quick = attrs.evolve(found.config.timeouts, reconnect_max_s=0.2)
            agent = TunnelAgent(attrs.evolve(found.config, timeouts=quick), resolve=names.resolve)
            await nursery.start(agent.serve)
            gone = [f"127.0.0.{n}" for n in range(10, 15)]  # nothing listens there

            def retried(address: str) -> bool:
                return any(link.address == address and link.reconnects for link in agent.links)

            for address in gone:
                names.answer = ("127.0.0.1", address)
                await wait_for(agent, functools.partial(retried, address))
                names.answer = ("127.0.0.1",)
                await wait_for(agent, lambda: len(agent.links) == 1)
            assert agent.reconnects >= len(gone)
            assert agent.retired_reconnects == agent.reconnects
            scraped = Scrape(AgentAdmin(agent).metrics_text())
            assert scraped.value("pvtunnel_agent_reconnects_total") == agent.reconnects
            remembered = repr(vars(agent))
            assert not [address for address in gone if address in remembered]
            nursery.cancel_scope.cancel()


async def test_reconnects_only_go_up_when_an_address_returns_while_its_link_drains() -> None:
    """The address leaves with a request in flight (its link drains), comes back at
    once (a new link for it), and leaves again: both links' counts are kept, in all
    and in the address's own series (one series while two links share it)."""
    seen: list[int] = []
    per_address: list[float] = []

    def scrape(agent: TunnelAgent) -> None:
        seen.append(agent.reconnects)
        series = Scrape(AgentAdmin(agent).metrics_text()).series(
            "pvtunnel_agent_server_reconnects_total"
        )
        per_address.extend(
            value for labels, value in series.items() if ("address", "127.0.0.1") in labels
        )

    with trio.fail_after(LIMIT_S * 2):
        async with trio.open_nursery() as nursery:
            replicas = await two_replicas(nursery)
            agent, names = replicas.agent, replicas.names
            replicas.first_scope.cancel()  # the first link counts a few reconnects
            await wait_for(agent, lambda: agent.reconnects >= 3)
            await replicas.start_first_again()
            scrape(agent)
            # A request in flight through it, and its address leaves: the link drains.
            (session,) = replicas.first.server.sessions
            nursery.start_soon(get, replicas.first, b"/hold")
            await replicas.upstream.hold_started.wait()
            names.answer = ("127.0.0.2",)
            await session.tunnel.going_away.wait()
            # Back at once: a second link for the address while the first drains.
            names.answer = ("127.0.0.1", "127.0.0.2")
            await wait_for(agent, lambda: replicas.links_to_first() == 2)
            scrape(agent)
            replicas.upstream.release.set()
            await wait_for(agent, lambda: replicas.links_to_first() == 1)
            scrape(agent)
            # The second link counts reconnects of its own, then its address leaves.
            before = agent.reconnects
            replicas.first_scope.cancel()
            await wait_for(agent, lambda: agent.reconnects > before)
            await replicas.start_first_again()
            scrape(agent)
            names.answer = ("127.0.0.2",)
            await wait_for(agent, lambda: replicas.links_to_first() == 0)
            seen.append(agent.reconnects)
            nursery.cancel_scope.cancel()
    assert seen == sorted(seen), seen
    assert seen[-1] > seen[0]
    assert len(per_address) == 4, per_address
    assert per_address == sorted(per_address), per_address
    assert per_address[-1] > per_address[0]


async def test_tls_verifies_the_urls_host_name_not_the_address(tmp_path: Path) -> None:
    named = issue(tmp_path, "named", NAME)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            files = {"tls_cert": named.cert_file, "tls_key": named.key_file}
            replicas = await start_replicas(nursery, 2, **files)
            _, port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1", "127.0.0.2"))
            agent = discovering_agent(
                replicas, names, {"app": port}, scheme="wss", ca_file=named.ca_file
            )
            await nursery.start(agent.serve)
            await wait_for(agent, lambda: len(connected_addresses(agent)) == 2)
            for running in replicas:
                assert (await get(running, b"/")).status == 200
            nursery.cancel_scope.cancel()


async def test_a_certificate_for_the_address_alone_is_refused(tmp_path: Path) -> None:
    addressed = issue(tmp_path, "addressed", "127.0.0.1")
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            files = {"tls_cert": addressed.cert_file, "tls_key": addressed.key_file}
            replicas = await start_replicas(nursery, 1, **files)
            _, port = await start_upstream(nursery, "svc")
            agent = discovering_agent(
                replicas,
                Names(("127.0.0.1",)),
                {"app": port},
                scheme="wss",
                ca_file=addressed.ca_file,
            )
            with pytest.raises(ServerCertificateError, match=NAME):
                await agent.serve()
            nursery.cancel_scope.cancel()


async def test_the_agent_ends_once_every_address_left_in_dns_refused_it() -> None:
    """One replica refuses the agent's token, the other takes it, then leaves DNS:
    no server left can take the agent, which stops as if all had refused it."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            other_token = Secret("another-token-entirely")
            refusing = await start_server(
                nursery, replica_config("127.0.0.1", 0, token=other_token)
            )
            port = refusing.addresses.internal[1]
            taking = await start_server(nursery, replica_config("127.0.0.2", port))
            _, upstream_port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1", "127.0.0.2"))
            agent = discovering_agent(
                [refusing, taking], names, {"app": upstream_port}, discover_interval_s=0.05
            )
            ended: list[BaseException] = []

            async def run() -> None:
                try:
                    await agent.serve()
                except HandshakeRefusedError as exc:
                    ended.append(exc)

            async with trio.open_nursery() as running:
                running.start_soon(run)
                await wait_for(
                    agent,
                    lambda: (
                        any(link.refusal for link in agent.links)
                        and any(link.connected for link in agent.links)
                    ),
                )
                names.answer = ("127.0.0.1",)  # the replica that took the agent goes away
            assert len(ended) == 1
            assert "401" in str(ended[0])
            nursery.cancel_scope.cancel()


def test_link_figures_without_discovery_keep_their_labels() -> None:
    figures = ServerLinkFigures(url="ws://a", connected=True, reconnects=0)
    assert figures.address is None


async def test_two_urls_that_resolve_to_one_address_make_one_link_to_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two names for the same replicas (two headless Services selecting the same
    pods, a move from one name to another): two links would register one client id
    twice with each server, and each registration would replace the other, forever."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            (replica,) = await start_replicas(nursery, 1)
            _, port = await start_upstream(nursery, "svc")
            names = Names(answer=("127.0.0.1",))
            found = discovering_agent([replica], names, {"app": port}, discover_interval_s=0.05)
            first_url = found.config.server.urls[0]
            other_url = f"ws://other.{NAME}:{replica.addresses.internal[1]}"

            async def resolve(host: str, port: int) -> tuple[str, ...]:
                return await names.resolve(NAME, port)

            endpoint = attrs.evolve(found.config.server, urls=(first_url, other_url))
            agent = TunnelAgent(attrs.evolve(found.config, server=endpoint), resolve=resolve)
            await nursery.start(agent.serve)

            async def resolutions(count: int) -> None:
                for url in (first_url, other_url):
                    server = agent.discovered[url]
                    goal = server.resolutions + count
                    while server.resolutions < goal:
                        await server.wait_resolved()

            await resolutions(3)
            assert [(link.url, link.address) for link in agent.links] == [(first_url, "127.0.0.1")]
            # The other URL may have linked first (the two resolve at once), the two
            # links replacing each other until it gave the address up: a race that
            # ends, after which nothing connects again (no loop of replacements).
            await wait_for(agent, lambda: [link.connected for link in agent.links] == [True])
            settled = replica.server.state.metrics.agent_connects, agent.reconnects
            await resolutions(5)
            assert (replica.server.state.metrics.agent_connects, agent.reconnects) == settled
            assert [(link.url, link.address) for link in agent.links] == [(first_url, "127.0.0.1")]
            assert (await get(replica, b"/")).status == 200
            nursery.cancel_scope.cancel()
    said = [r.getMessage() for r in caplog.records]
    overlaps = [line for line in said if f"as {first_url} does" in line]
    assert len(overlaps) == 1, overlaps
    # Where the other URL's link got to the server first, it heard the same server id
    # there, and said so once: no loop of these either.
    same_server = [line for line in said if f"reaches the same server as {first_url}" in line]
    assert len(same_server) <= 1, same_server


async def test_a_link_left_to_an_earlier_url_tells_its_server_so() -> None:
    """The later URL linked the address first; once the earlier one links it too, the
    later one's link leaves, and its server hears that reason, not that the address
    left DNS (it is still there)."""
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            replicas = await start_replicas(nursery, 2)
            _, port = await start_upstream(nursery, "svc")
            found = discovering_agent(replicas, Names(()), {"app": port}, discover_interval_s=0.05)
            first_url = found.config.server.urls[0]
            other = f"other.{NAME}"
            answers: dict[str, tuple[str, ...]] = {NAME: ("127.0.0.2",), other: ("127.0.0.1",)}
            # Once both names lead to 127.0.0.1, the earlier URL's answer waits for
            # the later URL to be resolving, and the later URL's for that answer to
            # be applied: the twin leaves before the earlier URL's new link has
            # registered, which would have the server replace the twin's session.
            later_resolving = trio.Event()

            async def resolve(host: str, port: int) -> tuple[str, ...]:
                if "127.0.0.1" in answers[NAME]:
                    if host == NAME:
                        await later_resolving.wait()
                    else:
                        later_resolving.set()
                        await agent.discovered[first_url].wait_resolved()
                return answers[host]

            endpoint = attrs.evolve(
                found.config.server,
                urls=(first_url, f"ws://{other}:{replicas[0].addresses.internal[1]}"),
            )
            agent = TunnelAgent(attrs.evolve(found.config, server=endpoint), resolve=resolve)
            await nursery.start(agent.serve)
            await wait_for(agent, lambda: len(connected_addresses(agent)) == 2)
            (twin,) = replicas[0].server.sessions
            answers[NAME] = ("127.0.0.1", "127.0.0.2")
            while twin in replicas[0].server.sessions:
                await replicas[0].server.state.wait_sessions_changed()
            closed = twin.tunnel.ws.closed
            assert closed is not None
            assert (closed.code, closed.reason) == (
                1000,
                "an earlier URL links this server's address",
            )
            await wait_for(
                agent,
                lambda: (
                    [(link.url, link.address, link.connected) for link in agent.links]
                    == [(first_url, "127.0.0.2", True), (first_url, "127.0.0.1", True)]
                ),
            )
            nursery.cancel_scope.cancel()
