"""DNS discovery's bookkeeping on a fake clock and a fake resolver.

`DiscoveredServer` is driven with links that only record what happens to them;
the resolver is a list the test edits. Time moves only when the test jumps the
`MockClock`, so "re-resolved every interval_s, sooner after a failure" is checked
at its edges without sleeping. The real resolver and real links are in
``tests/integration/test_discovery.py``.
"""

from __future__ import annotations

import itertools
import logging
import socket
from typing import TYPE_CHECKING

import attrs
import pytest
import trio
import trio.testing

from pvtunnel._trio.discovery import (
    MIN_RESOLVE_INTERVAL_S,
    DiscoveredServer,
    by_family,
    resolve_addresses,
    url_host_port,
)

if TYPE_CHECKING:
    from collections.abc import Callable


@attrs.define(eq=False)
class FakeLink:
    address: str
    connected: bool = True
    has_registered: bool = True
    has_ended: bool = False
    running: bool = False


@attrs.define
class Fixture:
    """A resolver answering ``answer`` (or raising when it is None) and the links it led to."""

    answer: tuple[str, ...] | None = ("127.0.0.1", "127.0.0.2")
    # Whether a new link registers (else it has yet to connect).
    registers: bool = True
    resolutions: int = 0
    links: list[FakeLink] = attrs.field(factory=list)
    retired: list[str] = attrs.field(factory=list)
    # Why each retired address's link was retired, as its server would be told.
    reasons: dict[str, str] = attrs.field(factory=dict)

    async def resolve(self, host: str, port: int) -> tuple[str, ...]:
        assert (host, port) == ("servers.example.com", 8081)
        self.resolutions += 1
        if self.answer is None:
            raise OSError("Name or service not known")
        return self.answer

    def new_link(self, address: str) -> FakeLink:
        link = FakeLink(address, connected=self.registers, has_registered=self.registers)
        self.links.append(link)
        return link

    @staticmethod
    async def run_link(link: FakeLink) -> None:
        link.running = True
        try:
            await trio.sleep_forever()
        finally:
            link.running = False

    async def retire_link(self, link: FakeLink, scope: trio.CancelScope, reason: str) -> None:
        self.retired.append(link.address)
        self.reasons[link.address] = reason
        scope.cancel()

    def running(self) -> list[str]:
        return [link.address for link in self.links if link.running]


async def start(
    nursery: trio.Nursery,
    fixture: Fixture,
    *,
    interval_s: float = 30.0,
    linked_elsewhere: Callable[[str], str | None] = lambda address: None,
) -> DiscoveredServer[FakeLink]:
    server: DiscoveredServer[FakeLink] = DiscoveredServer(
        "ws://servers.example.com:8081",
        interval_s=interval_s,
        retry_max_s=8.0,
        resolve=fixture.resolve,
        linked_elsewhere=linked_elsewhere,
    )
    nursery.start_soon(
        server.serve, nursery, fixture.new_link, fixture.run_link, fixture.retire_link
    )
    await trio.testing.wait_all_tasks_blocked()
    return server


async def elapse(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move the clock on, then let every task do what is due by then."""
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def test_one_link_per_address_and_changes_follow_each_resolution(
    mock_clock: trio.testing.MockClock,
) -> None:
    fixture = Fixture(answer=("127.0.0.1", "127.0.0.2", "127.0.0.1"))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture, interval_s=30.0)
        assert fixture.running() == ["127.0.0.1", "127.0.0.2"]
        assert set(server.links) == {"127.0.0.1", "127.0.0.2"}
        fixture.answer = ("127.0.0.2", "127.0.0.3")
        await elapse(mock_clock, 29.9)
        assert fixture.resolutions == 1  # not before interval_s
        await elapse(mock_clock, 0.1)
        assert fixture.resolutions == 2
        assert fixture.running() == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        await elapse(mock_clock, 30.0)  # missing from a second answer: retired
        assert fixture.resolutions == 3
        assert fixture.retired == ["127.0.0.1"]
        assert fixture.running() == ["127.0.0.2", "127.0.0.3"]
        assert set(server.links) == {"127.0.0.2", "127.0.0.3"}
        # An unchanged answer opens and closes nothing.
        await elapse(mock_clock, 30.0)
        assert fixture.resolutions == 4
        assert len(fixture.links) == 3
        nursery.cancel_scope.cancel()


async def test_a_failing_link_asks_for_a_resolution_soon_and_bursts_share_one(
    mock_clock: trio.testing.MockClock,
) -> None:
    fixture = Fixture()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture, interval_s=30.0)
        fixture.answer = ("127.0.0.2",)
        failing = fixture.links[0]
        failing.connected = False
        server.link_failed(failing, unreachable=True)
        server.link_failed(failing, unreachable=True)
        await trio.testing.wait_all_tasks_blocked()
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S - 0.01)
        assert fixture.resolutions == 1
        await elapse(mock_clock, 0.01)
        assert fixture.resolutions == 2
        assert fixture.retired == ["127.0.0.1"]  # down and gone: at once
        # The burst is spent: the next resolution waits for the interval again.
        await elapse(mock_clock, 29.0)
        assert fixture.resolutions == 2
        nursery.cancel_scope.cancel()


async def test_a_healthy_link_stays_until_its_address_has_been_missing_for_an_interval(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A resolver answering with a rotating part of the records: a link missing from
    one answer is not drained, to be dialled again at the next."""
    fixture = Fixture(answer=("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture, interval_s=30.0)
        for answer in [("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.3")] * 2:
            fixture.answer = answer
            await elapse(mock_clock, 30.0)
        assert fixture.resolutions == 5
        assert fixture.retired == []
        assert len(fixture.links) == 3
        # A failure elsewhere asks again soon: missing from two answers a second
        # apart is not missing for an interval.
        fixture.answer = ("127.0.0.2",)
        for _ in range(2):
            server.link_failed(fixture.links[1], unreachable=False)
            await trio.testing.wait_all_tasks_blocked()
            await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        assert fixture.resolutions == 7
        assert fixture.retired == []
        await elapse(mock_clock, 30.0 - 0.01)
        assert fixture.resolutions == 7
        assert fixture.retired == []
        await elapse(mock_clock, 0.01)
        assert fixture.resolutions == 8
        assert sorted(fixture.retired) == ["127.0.0.1", "127.0.0.3"]
        assert fixture.running() == ["127.0.0.2"]
        nursery.cancel_scope.cancel()


async def test_a_link_that_is_down_retires_at_the_first_answer_without_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    fixture = Fixture(answer=("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture, interval_s=30.0)
        failing, recovered, refused = fixture.links
        failing.connected = False
        server.link_failed(failing, unreachable=True)
        server.link_failed(recovered, unreachable=True)  # failed, then registered again: healthy
        refused.has_ended = True
        refused.connected = False
        fixture.answer = ()
        await trio.testing.wait_all_tasks_blocked()
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        assert fixture.resolutions == 2
        assert sorted(fixture.retired) == ["127.0.0.1", "127.0.0.3"]
        assert fixture.running() == ["127.0.0.2"]
        nursery.cancel_scope.cancel()


async def test_a_link_left_to_an_earlier_url_does_not_say_its_address_left_dns(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The server hears why its link goes: the address is still in DNS when another
    URL of the agent, listed earlier, links it (its twin would replace it there)."""
    fixture = Fixture(answer=("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    elsewhere: dict[str, str] = {}
    async with trio.open_nursery() as nursery:
        await start(nursery, fixture, interval_s=30.0, linked_elsewhere=elsewhere.get)
        elsewhere["127.0.0.1"] = "ws://earlier.example.com:8081"
        fixture.answer = ("127.0.0.1", "127.0.0.2")
        await elapse(mock_clock, 30.0)
        assert fixture.retired == ["127.0.0.1"]
        await elapse(mock_clock, 30.0)
        assert fixture.retired == ["127.0.0.1", "127.0.0.3"]
        nursery.cancel_scope.cancel()
    assert fixture.reasons == {
        "127.0.0.1": "an earlier URL links this server's address",
        "127.0.0.3": "this server's address left DNS",
    }


async def test_a_name_that_does_not_resolve_is_retried_with_backoff(
    mock_clock: trio.testing.MockClock,
) -> None:
    fixture = Fixture(answer=None)
    async with trio.open_nursery() as nursery:
        await start(nursery, fixture)
        assert fixture.resolutions == 1
        assert fixture.links == []
        for _ in range(6):  # 0.5, 1, 2, 4, 8, 8 s at most: never the 30 s interval
            await elapse(mock_clock, 8.0)
        assert fixture.resolutions >= 6
        fixture.answer = ("127.0.0.9",)
        await elapse(mock_clock, 8.0)
        assert fixture.running() == ["127.0.0.9"]
        nursery.cancel_scope.cancel()


def has_ended(server: DiscoveredServer[FakeLink]) -> bool:
    return server.has_ended


async def test_the_server_has_ended_once_every_link_has(mock_clock: trio.testing.MockClock) -> None:
    fixture = Fixture()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture)
        assert not has_ended(server)
        fixture.links[0].has_ended = True
        assert not has_ended(server)
        fixture.links[1].has_ended = True
        assert has_ended(server)
        nursery.cancel_scope.cancel()
    empty: DiscoveredServer[FakeLink] = DiscoveredServer("ws://x", interval_s=1, retry_max_s=1)
    assert not empty.has_ended  # nothing found yet is not "every link refused"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://servers.example.com:8081", ("servers.example.com", 8081)),
        ("wss://servers.example.com", ("servers.example.com", 443)),
        ("ws://servers.example.com/tunnel", ("servers.example.com", 80)),
        ("ws://[::1]:9000", ("::1", 9000)),
    ],
)
def test_url_host_port(url: str, expected: tuple[str, int]) -> None:
    assert url_host_port(url) == expected


def test_addresses_by_family_in_the_order_of_their_first() -> None:
    answer = ("fd00::1", "10.0.0.1", "fe80::1%eth0", "10.0.0.2")
    assert by_family(answer) == {
        socket.AF_INET6: ("fd00::1", "fe80::1%eth0"),
        socket.AF_INET: ("10.0.0.1", "10.0.0.2"),
    }
    assert list(by_family(answer[1:])) == [socket.AF_INET, socket.AF_INET6]
    assert by_family(()) == {}


def families_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage().split(": ", 1)[1] for r in caplog.records if "using IPv" in r.message]


def family(server: DiscoveredServer[FakeLink]) -> socket.AddressFamily | None:
    return server.family


async def fail(
    server: DiscoveredServer[FakeLink], *links: FakeLink, unreachable: bool = True
) -> None:
    """The links' connections fail (and stay down), as a refused dial does (or, not
    ``unreachable``, as one the server answers with a 503 does)."""
    for link in links:
        link.connected = False
        server.link_failed(link, unreachable=unreachable)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_family_no_link_can_connect_to_gives_way_to_the_other_until_it_leaves(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A dual-stack name in front of servers listening on IPv4 only."""
    caplog.set_level(logging.INFO, "pvtunnel.agent")
    fixture = Fixture(answer=("fd00::1", "10.0.0.1", "fd00::2", "10.0.0.2"), registers=False)
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture, interval_s=30.0)
        assert fixture.running() == ["fd00::1", "fd00::2"]  # one family: the first
        first, second = fixture.links
        await fail(server, first)
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        assert fixture.resolutions == 2
        assert fixture.running() == ["fd00::1", "fd00::2"]  # one may still connect
        await fail(server, second)
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        assert fixture.resolutions == 3
        assert sorted(fixture.retired) == ["fd00::1", "fd00::2"]
        assert fixture.running() == ["10.0.0.1", "10.0.0.2"]
        assert family(server) == socket.AF_INET
        # IPv4 works: kept, even through its servers' restarts, while IPv6 is there.
        for link in fixture.links[2:]:
            link.connected = link.has_registered = True
        for _ in range(3):
            await elapse(mock_clock, 30.0)
        await fail(server, *fixture.links[2:])
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        for link in fixture.links[2:]:
            link.connected = True
        assert fixture.running() == ["10.0.0.1", "10.0.0.2"]
        assert len(fixture.links) == 4
        # Until the IPv4 addresses leave the answer.
        fixture.answer = ("fd00::1", "fd00::2")
        await elapse(mock_clock, 30.0)
        assert fixture.running() == ["10.0.0.1", "10.0.0.2"]
        await elapse(mock_clock, 30.0)
        assert fixture.running() == ["fd00::1", "fd00::2"]
        assert family(server) == socket.AF_INET6
        nursery.cancel_scope.cancel()
    assert families_said(caplog) == [
        "using IPv6 addresses (the resolver's preference)",
        "using IPv4 addresses (no IPv6 address could be connected to)",
        "using IPv6 addresses (no IPv4 address is left)",
    ]


async def test_links_dropped_for_the_other_family_tell_their_servers_so(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Their addresses are still in the answer: not "left DNS", but the agent's turn
    to the other family."""
    fixture = Fixture(answer=("fd00::1", "10.0.0.1", "fd00::2"), registers=False)
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture)
        await fail(server, *fixture.links)
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        assert fixture.running() == ["10.0.0.1"]
        nursery.cancel_scope.cancel()
    assert fixture.reasons == {
        "fd00::1": "this agent switched to IPv4 addresses",
        "fd00::2": "this agent switched to IPv4 addresses",
    }


async def test_servers_that_answer_keep_their_family_however_they_refuse(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that answers at all (a 503 while it drains, a TLS handshake that
    fails, a protocol version it does not take) was reached: its family works, and
    the other family's servers would most likely answer the same. Only connects that
    reach no server, at every address of the family, give way to the other."""
    caplog.set_level(logging.INFO, "pvtunnel.agent")
    fixture = Fixture(answer=("fd00::1", "10.0.0.1", "fd00::2"), registers=False)
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture, interval_s=30.0)
        first, second = fixture.links
        for _ in range(5):
            await fail(server, first, second, unreachable=False)
            await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        # One address that reached no server is not the family failing either.
        await fail(server, first, unreachable=True)
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        await elapse(mock_clock, 30.0)
        assert fixture.resolutions == 8
        assert fixture.retired == []
        assert fixture.running() == ["fd00::1", "fd00::2"]
        assert family(server) == socket.AF_INET6
        await fail(server, second, unreachable=True)
        await elapse(mock_clock, MIN_RESOLVE_INTERVAL_S)
        assert fixture.running() == ["10.0.0.1"]
        assert family(server) == socket.AF_INET
        nursery.cancel_scope.cancel()
    assert families_said(caplog) == [
        "using IPv6 addresses (the resolver's preference)",
        "using IPv4 addresses (no IPv6 address could be connected to)",
    ]


async def test_an_answer_without_the_family_in_use_once_changes_nothing(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One of the two look-ups (AAAA, A) timed out: the other family alone answers."""
    caplog.set_level(logging.INFO, "pvtunnel.agent")
    fixture = Fixture(answer=("fd00::1", "fd00::2"))
    async with trio.open_nursery() as nursery:
        await start(nursery, fixture, interval_s=30.0)
        fixture.answer = ("10.0.0.1",)
        await elapse(mock_clock, 30.0)
        fixture.answer = ("fd00::1", "10.0.0.1", "fd00::2")
        await elapse(mock_clock, 30.0)
        assert [link.address for link in fixture.links] == ["fd00::1", "fd00::2"]
        assert fixture.running() == ["fd00::1", "fd00::2"]
        nursery.cancel_scope.cancel()
    assert families_said(caplog) == []


async def test_while_neither_family_connects_the_switches_slow_down(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Each switch dials the other family's addresses afresh: without a pause
    growing between switches, a dead name would be dialled every second."""
    fixture = Fixture(answer=("::1", "127.0.0.1"), registers=False)
    switched_at: list[int] = []
    async with trio.open_nursery() as nursery:
        server = await start(nursery, fixture)  # switches at most retry_max_s (8 s) apart
        for second in range(1, 121):
            await fail(server, *[link for link in fixture.links if link.running])
            linked = len(fixture.links)
            await elapse(mock_clock, 1.0)
            if len(fixture.links) > linked:
                switched_at.append(second)
        nursery.cancel_scope.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(switched_at)]
    assert switched_at[0] == 1  # the first at once
    assert gaps[:3] == sorted(gaps[:3])
    assert all(4 <= gap <= 8 for gap in gaps[3:]), gaps  # half the cap to the cap


async def test_the_system_resolver_gives_each_address_once() -> None:
    # getaddrinfo answers a literal once per socket type; TCP only is asked for.
    assert await resolve_addresses("127.0.0.1", 80) == ("127.0.0.1",)
