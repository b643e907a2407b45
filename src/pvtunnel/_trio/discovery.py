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

A link dials its address but speaks to the URL's host: TLS sends the host name
(SNI) and verifies the certificate against it, and the upgrade's Host header is
the URL's, so a replica is addressed exactly as the load balancer would address it.
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import trio

from pvtunnel._backoff import Backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

logger = logging.getLogger("pvtunnel.agent")

# A burst of failing links (a replica going down) asks for one resolution, not one each.
MIN_RESOLVE_INTERVAL_S: Final = 1.0
RESOLVE_RETRY_INITIAL_S: Final = 0.5


class DiscoveredLink(Protocol):
    """What discovery needs of an agent link: its address, whether it is registered
    now, and whether a refusal ended it."""

    @property
    def address(self) -> str | None: ...

    @property
    def connected(self) -> bool: ...

    @property
    def has_ended(self) -> bool: ...


async def resolve_addresses(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` resolves to for TCP, in the resolver's order, each once.

    Only addresses of the family the resolver lists first (its preference, RFC
    6724): a dual-stack server has an IPv4 and an IPv6 address, and two links to
    it would register the same agent twice, each replacing the other.

    Raises:
        OSError: The name does not resolve (``socket.gaierror``) or the resolver failed.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return first_family(infos)


def first_family(
    infos: Sequence[tuple[socket.AddressFamily, object, object, object, tuple[object, ...]]],
) -> tuple[str, ...]:
    """The addresses of ``getaddrinfo``'s answer in the family of its first one, each once."""
    if not infos:
        return ()
    family = infos[0][0]
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos if info[0] == family))


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
        # The linked addresses whose link has failed at least once.
        self._failed: set[str] = set()
        # trio.current_time() at the first answer, of those since, without the address.
        self._missing_since: dict[str, float] = {}
        self.resolutions = 0
        self._link_failed = trio.Event()
        self._resolved = trio.lowlevel.ParkingLot()

    def link_failed(self, link: LinkT) -> None:
        """A link's connection failed: resolve again soon (the replica may be gone)."""
        if link.address is not None and self.links.get(link.address) is link:
            self._failed.add(link.address)
        self._link_failed.set()

    async def wait_resolved(self) -> None:
        """Wait until the next resolution has been applied (for status pages and tests)."""
        await self._resolved.park()

    async def serve(
        self,
        nursery: trio.Nursery,
        new_link: Callable[[str], LinkT],
        run_link: Callable[[LinkT], Awaitable[None]],
        retire_link: Callable[[LinkT, trio.CancelScope], Awaitable[None]],
    ) -> None:
        """Resolve, open and retire links, until cancelled.

        Args:
            nursery: Where the links run (the agent's), so a retiring link can
                finish its requests after this URL's own loop has moved on.
            new_link: Builds the link for an address (not yet running).
            run_link: Runs a link until it ends (by refusal) or its scope is cancelled.
            retire_link: Drains a link whose address is gone, then cancels its scope.
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
        retire_link: Callable[[LinkT, trio.CancelScope], Awaitable[None]],
    ) -> None:
        addresses = self._own(answer)
        now = trio.current_time()
        for address, link in list(self.links.items()):
            if address in addresses:
                self._missing_since.pop(address, None)
                continue
            if address in answer:
                why = "is left to an earlier URL"
            elif self._is_down(address, link):
                why = "is gone from DNS and its connection is down"
            elif now >= self._missing_since.setdefault(address, now) + self.interval_s:
                why = "has been gone from DNS for a resolution interval"
            else:
                continue
            logger.info("%s: %s %s; closing its connection", self.url, address, why)
            self._retire(address, nursery, retire_link)
        for address in addresses:
            if address in self.links:
                continue
            logger.info("%s: server found at %s", self.url, address)
            link = self.links[address] = new_link(address)
            scope = self.scopes[address] = trio.CancelScope()
            nursery.start_soon(_run_in_scope, run_link, link, scope)

    def _is_down(self, address: str, link: LinkT) -> bool:
        """Refused for good, or failed and not registered again since."""
        return link.has_ended or (address in self._failed and not link.connected)

    def _retire(
        self,
        address: str,
        nursery: trio.Nursery,
        retire_link: Callable[[LinkT, trio.CancelScope], Awaitable[None]],
    ) -> None:
        self._failed.discard(address)
        self._missing_since.pop(address, None)
        link = self.links.pop(address)
        nursery.start_soon(retire_link, link, self.scopes.pop(address))

    @property
    def has_ended(self) -> bool:
        """Every link ended for good (refused): nothing here can take the agent any more."""
        return bool(self.links) and all(link.has_ended for link in self.links.values())


async def _run_in_scope(
    run_link: Callable[[LinkT], Awaitable[None]], link: LinkT, scope: trio.CancelScope
) -> None:
    with scope:
        await run_link(link)
