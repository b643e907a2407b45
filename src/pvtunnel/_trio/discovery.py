"""DNS discovery of server replicas: one agent link per address a URL's host resolves to.

Servers behind a load balancer share no state, so an agent must hold a connection
to every one of them: a server routes only to the agents connected to it. With
``[server] discover = "dns"`` the URL's host name stands for all of them, as a
Kubernetes headless Service or a round-robin name does: `DiscoveredServer`
resolves it with the system resolver
(``getaddrinfo``, so /etc/hosts, search domains and the cluster's DNS apply as for
any program), keeps one link per address, and resolves again every
``discover_interval_s`` and whenever one of its links fails (a replica replaced in
a rollout fails first, then is gone from the answer). Links to new addresses open
at once; links to addresses that are gone drain (GOAWAY, in-flight requests
finish within ``grace_s``) and close.

An address is gone once it has been missing from every answer for
``discover_interval_s`` (two periodic resolutions in a row), not at the first
answer without it: a resolver may answer with part of a large record set (a
response cut down to a few records, a rotating subset), and retiring a healthy
link there would drain it only to dial it again at the next answer. A link that
is down (its connection failed and has not come back, or a refusal ended it) is
retired at the first answer without its address: a replaced replica is not
dialled for another interval.

A name may resolve to addresses of both families (AAAA and A records). Links go
to one family at a time: a dual-stack server has both addresses, and two links
to it would register the same agent twice, each replacing the other. The family
the resolver lists first (its preference, RFC 6724) is dialled first. When no
link to it has registered and each one's latest attempt reached no server (the
connect was refused, found no route to the address or its network, was reset,
or got no answer within ``connect_s``: servers listening on IPv4 only behind a
name that also has IPv6 addresses, an IPv6 route that goes nowhere) while the
answer also holds the other family, the next resolution, a second after the
failures, drops those links and dials the other family: Happy Eyeballs (RFC
8305) for the set of replicas rather than for one connection. A server that
answered at all does not count, whatever it said (a 503 while it drains, a
refused token, a TLS or WebSocket handshake that fails, a protocol version it
does not take): the family did carry the agent to it, and the other family's
addresses, most likely the same servers, would answer the same. The family
that works is kept while it works, since dropping healthy links for a
preference would cut requests in flight for nothing; the other is tried again
once this one fails the same way or leaves the answer. While neither family
gets a link registered, the switches back and forth slow down as reconnects do
(up to ``reconnect_max_s`` apart), rather than dialling each family anew every
second.

A retired link's GOAWAY and close say why it goes: its address left the answer,
an earlier URL links the address (see ``linked_elsewhere``), or the agent
switched to the other family. Only the first means the replica is on its way
out; told that instead, whoever reads the server's side of the others would go
looking for a rollout that never happened.

A link dials its address but speaks to the URL's host: TLS sends the host name
(SNI) and verifies the certificate against it, and the upgrade's Host header is
the URL's, so a replica is addressed exactly as the load balancer would address it.
"""

from __future__ import annotations

import logging
import math
import socket
import urllib.parse
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import trio

from pvtunnel._backoff import Backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

logger = logging.getLogger("pvtunnel.agent")

# A burst of failing links (a replica going down) asks for one resolution, not one each.
MIN_RESOLVE_INTERVAL_S: Final = 1.0
RESOLVE_RETRY_INITIAL_S: Final = 0.5
FAMILY_NAMES: Final = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
# Why a link retires, as its server is told, when the address is gone from the answer.
LEFT_DNS: Final = "this server's address left DNS"


class DiscoveredLink(Protocol):
    """What discovery needs of an agent link: its address, whether it is registered
    now or ever was, and whether a refusal ended it."""

    @property
    def address(self) -> str | None: ...

    @property
    def has_registered(self) -> bool: ...

    @property
    def connected(self) -> bool: ...

    @property
    def has_ended(self) -> bool: ...


async def resolve_addresses(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` resolves to for TCP, in the resolver's order, each once.

    Both families, in the order of the resolver's preference (RFC 6724):
    `DiscoveredServer` links to one of them at a time.

    Raises:
        OSError: The name does not resolve (``socket.gaierror``) or the resolver failed.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def by_family(addresses: Iterable[str]) -> dict[socket.AddressFamily, tuple[str, ...]]:
    """The addresses by family, the families in the order of their first address."""
    families: dict[socket.AddressFamily, list[str]] = {}
    for address in addresses:
        # An IPv6 address, a scoped one included, is the one with a colon.
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        families.setdefault(family, []).append(address)
    return {family: tuple(members) for family, members in families.items()}


def url_host_port(url: str) -> tuple[str, int]:
    """The host (IPv6 without brackets) and port an agent URL names (default 80/443)."""
    target = urllib.parse.urlsplit(url)
    return target.hostname or "", target.port or (443 if target.scheme == "wss" else 80)


LinkT = TypeVar("LinkT", bound=DiscoveredLink)


class DiscoveredServer(Generic[LinkT]):
    """One URL with ``discover = "dns"``: the links to its current addresses.

    Args:
        url: The configured URL; its host is resolved, its port is dialled.
        interval_s: How often to resolve again while nothing fails.
        retry_max_s: The cap of the backoff between failed resolutions.
        resolve: The resolver (``resolve_addresses``; tests may pass their own).
        linked_elsewhere: Which other URL already links to an address at this
            URL's port, if one does. Two links there would be one agent (one
            client id) registering twice with one server, each replacing the
            other in turn: the address is left to that URL.
    """

    def __init__(
        self,
        url: str,
        *,
        interval_s: float,
        retry_max_s: float,
        resolve: Callable[[str, int], Awaitable[tuple[str, ...]]] = resolve_addresses,
        linked_elsewhere: Callable[[str], str | None] = lambda address: None,
    ) -> None:
        self.url = url
        self.host, self.port = url_host_port(url)
        self.interval_s = interval_s
        self.retry_max_s = retry_max_s
        self._resolve = resolve
        self._linked_elsewhere = linked_elsewhere
        # The URLs found sharing an address with this one, each said once: an
        # overlap stays for as long as both names stand, and so would the warning.
        self._overlaps_said: set[str] = set()
        self.links: dict[str, LinkT] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        # The linked addresses whose link has failed at least once, each with whether
        # its latest failure was a connect that reached no server (`link_failed`).
        self._failed: dict[str, bool] = {}
        # trio.current_time() at the first answer, of those since, without the address.
        self._missing_since: dict[str, float] = {}
        self.resolutions = 0
        # The family linked to: the answer's first, until every link to it fails.
        self.family: socket.AddressFamily | None = None
        # Paces the switches from one family to the other while neither registers.
        self._switches = Backoff(MIN_RESOLVE_INTERVAL_S, retry_max_s)
        self._switch_after = -math.inf
        self._link_failed = trio.Event()
        self._resolved = trio.lowlevel.ParkingLot()

    def link_failed(self, link: LinkT, *, unreachable: bool) -> None:
        """A link's connection failed: resolve again soon (the replica may be gone).

        ``unreachable``: no TCP connection to the address could be made (refused,
        no route, timed out). Only such failures count against the address's
        family; a server that answered at all, if only with a 503 or a refusal,
        was reached through it.
        """
        if link.address is not None and self.links.get(link.address) is link:
            self._failed[link.address] = unreachable
        self._link_failed.set()

    async def wait_resolved(self) -> None:
        """Wait until the next resolution has been applied (for status pages and tests)."""
        await self._resolved.park()

    async def serve(
        self,
        nursery: trio.Nursery,
        new_link: Callable[[str], LinkT],
        run_link: Callable[[LinkT], Awaitable[None]],
        retire_link: Callable[[LinkT, trio.CancelScope, str], Awaitable[None]],
    ) -> None:
        """Resolve, open and retire links, until cancelled.

        Args:
            nursery: Where the links run (the agent's), so a retiring link can
                finish its requests after this URL's own loop has moved on.
            new_link: Builds the link for an address (not yet running).
            run_link: Runs a link until it ends (by refusal) or its scope is cancelled.
            retire_link: Drains a link this URL no longer wants, then cancels its
                scope; the last argument says why, in words for the link's server
                (the reason of its GOAWAY and of its close).
        """
        failures = Backoff(RESOLVE_RETRY_INITIAL_S, self.retry_max_s)
        while True:
            try:
                addresses = await self._resolve(self.host, self.port)
            except OSError as exc:
                delay = failures.next_delay()
                logger.warning(
                    "cannot resolve %s for %s (retrying in %.1fs): %s",
                    self.host,
                    self.url,
                    delay,
                    exc,
                )
                self._resolved.unpark_all()
                await trio.sleep(delay)
                continue
            failures.reset()
            self.resolutions += 1
            self._apply(addresses, nursery, new_link, run_link, retire_link)
            self._resolved.unpark_all()
            with trio.move_on_after(self.interval_s):
                await self._link_failed.wait()
                await trio.sleep(MIN_RESOLVE_INTERVAL_S)
            self._link_failed = trio.Event()

    def _own(self, addresses: tuple[str, ...]) -> tuple[str, ...]:
        """The addresses no other URL links to already (a link there would be its twin)."""
        own = []
        for address in addresses:
            other = self._linked_elsewhere(address)
            if other is None:
                own.append(address)
            elif other not in self._overlaps_said:
                self._overlaps_said.add(other)
                logger.warning(
                    "%s resolves to %s, as %s does: left to that URL, since an agent "
                    "registered twice with one server replaces itself there in a loop",
                    self.url,
                    address,
                    other,
                )
        return tuple(own)

    def _apply(
        self,
        answer: tuple[str, ...],
        nursery: trio.Nursery,
        new_link: Callable[[str], LinkT],
        run_link: Callable[[LinkT], Awaitable[None]],
        retire_link: Callable[[LinkT, trio.CancelScope, str], Awaitable[None]],
    ) -> None:
        addresses = self._own(answer)
        families = by_family(addresses)
        now = trio.current_time()
        if any(link.has_registered for link in self.links.values()):
            self._switches.reset()
            self._switch_after = -math.inf
        fallback = self._fallback(families, now)
        for address, link in list(self.links.items()):
            # `why` completes the log's line about the address; `reason` is the server's.
            if fallback is not None:
                why = "could not be connected to"
                reason = f"this agent switched to {FAMILY_NAMES[fallback]} addresses"
            elif address in addresses:
                self._missing_since.pop(address, None)
                continue
            elif address in answer:
                why = "is left to an earlier URL"
                reason = "an earlier URL links this server's address"
            elif self._is_down(address, link):
                why = "is gone from DNS and its connection is down"
                reason = LEFT_DNS
            elif now >= self._missing_since.setdefault(address, now) + self.interval_s:
                why = "has been gone from DNS for a resolution interval"
                reason = LEFT_DNS
            else:
                continue
            logger.info("%s: %s %s; closing its connection", self.url, address, why)
            self._retire(address, nursery, retire_link, reason)
        if fallback is not None:
            self._switch_after = now + self._switches.next_delay()
        self._choose_family(families, fallback)
        wanted = () if self.family is None else families.get(self.family, ())
        for address in wanted:
            if address in self.links:
                continue
            logger.info("%s: server found at %s", self.url, address)
            link = self.links[address] = new_link(address)
            scope = self.scopes[address] = trio.CancelScope()
            nursery.start_soon(_run_in_scope, run_link, link, scope)

    def _fallback(
        self, families: dict[socket.AddressFamily, tuple[str, ...]], now: float
    ) -> socket.AddressFamily | None:
        """The other family in the answer, if no link to this one has ever registered
        and each one's latest failure reached no server (and the last switch is not
        too recent)."""
        others = [family for family in families if family != self.family]
        if not others or not self.links or now < self._switch_after:
            return None
        unreachable = all(
            self._failed.get(address, False) and not link.has_registered and not link.has_ended
            for address, link in self.links.items()
        )
        return others[0] if unreachable else None

    def _choose_family(
        self,
        families: dict[socket.AddressFamily, tuple[str, ...]],
        fallback: socket.AddressFamily | None,
    ) -> None:
        """Take up ``fallback``, or the answer's first family once the one in use has
        neither links nor addresses left; said when the answer held a choice."""
        before = self.family
        if fallback is not None:
            self.family = fallback
        elif not self.links and families and before not in families:
            self.family = next(iter(families))
        if self.family == before or self.family is None:
            return
        if before is None:
            if len(families) == 1:
                return
            why = "the resolver's preference"
        elif fallback is not None:
            why = f"no {FAMILY_NAMES[before]} address could be connected to"
        else:
            why = f"no {FAMILY_NAMES[before]} address is left"
        logger.info("%s: using %s addresses (%s)", self.url, FAMILY_NAMES[self.family], why)

    def _is_down(self, address: str, link: LinkT) -> bool:
        """Refused for good, or failed and not registered again since."""
        return link.has_ended or (address in self._failed and not link.connected)

    def _retire(
        self,
        address: str,
        nursery: trio.Nursery,
        retire_link: Callable[[LinkT, trio.CancelScope, str], Awaitable[None]],
        reason: str,
    ) -> None:
        self._failed.pop(address, None)
        self._missing_since.pop(address, None)
        link = self.links.pop(address)
        nursery.start_soon(retire_link, link, self.scopes.pop(address), reason)

    @property
    def has_ended(self) -> bool:
        """Every link ended for good (refused): nothing here can take the agent any more."""
        return bool(self.links) and all(link.has_ended for link in self.links.values())


async def _run_in_scope(
    run_link: Callable[[LinkT], Awaitable[None]], link: LinkT, scope: trio.CancelScope
) -> None:
    with scope:
        await run_link(link)
