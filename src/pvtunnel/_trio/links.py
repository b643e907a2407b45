"""The agent's link to one server: its state, its reconnect loop, and each session on it.

`TunnelAgent` holds a link per server URL (or per address DNS discovery finds for
one) and serves what the servers send; what a link does on its own is the same for
every one of them: dial, upgrade, say HELLO, run the connection until it ends, back
off, dial again. A link sees its agent only as a `LinkOwner`, so this module sits
below the agent's.

Failures split in two: a refused token (HTTP 401 at the upgrade)
or a REJECT of the hello is final for that server and ends its link;
anything the network does (refused, reset, a server restart) is retried with
capped, jittered exponential backoff, forever.

Two URLs may lead to one server (127.0.0.1 and localhost, two names for one
host): the server keeps one connection per client id, so two registrations there
would replace each other, forever. Each server says who it is at the upgrade (its
server id, protocol.md 1.1); a link whose upgrade reaches a server another link of
the agent is connected to already closes before its HELLO, and tries again at its
reconnect pace, as the address may later lead to another server.

A server certificate that does not verify is configuration, not the network (a
missing ``ca_file``, a wrong host name): before a link has ever registered it is
final for that link (`ServerCertificateError`), so a mistake shows at once
instead of as a retry loop. Once registered, the server has proven itself with a
good certificate, so a later failure (a botched renewal) is logged as an error
and retried, and agents come back by themselves when the certificate is fixed.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from pvtunnel._backoff import Backoff
from pvtunnel._errors import (
    ErrorCode,
    HandshakeError,
    HandshakeRefusedError,
    ProtocolError,
    RemoteProtocolError,
    SameServerError,
    ServerCertificateError,
    ServerUnreachableError,
    TunnelClosedError,
    WebSocketClosed,
)
from pvtunnel._trio.dial import (
    client_ssl_context,
    describe_failure,
    dial,
    final_if_refused,
)
from pvtunnel._trio.discovery import url_host_port
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.tunnel import Tunnel
from pvtunnel._trio.websocket import ConnectionRejected, WebSocket, connect
from pvtunnel._wire import events as ev
from pvtunnel._wire.identity import server_id_from
from pvtunnel._wire.mux import Multiplexer, Role

if TYPE_CHECKING:
    from collections.abc import Awaitable, Mapping, Sequence

    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._metrics import AgentMetrics
    from pvtunnel._trio.stream import Channel
    from pvtunnel._wire.heads import RequestHead

logger = logging.getLogger("pvtunnel.agent")

INITIAL_BACKOFF_S: Final = 0.5
# A session that lasted this long resets the backoff: it was not a crash loop.
STABLE_SESSION_S: Final = 10.0


@attrs.frozen(kw_only=True)
class AgentStatus:
    """What a started agent registered: the server and the routes it now serves.

    ``server_url`` is the server that accepted the agent first; with several URLs
    the others register on their own (see `TunnelAgent.links`).
    """

    server_url: str
    routes: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    admin: tuple[str, int] | None = None


class _LinkFailed(Protocol):
    """Where a failed session is reported, so discovery resolves again. ``unreachable``
    (no TCP connection was made, where a server that answered, even to refuse, was
    reached) is what discovery weighs before it gives up on an address family."""

    def __call__(self, link: ServerLink, /, *, unreachable: bool) -> None: ...


@attrs.define(eq=False)
class ServerLink:
    """The agent's connection to one server URL, as ``/status`` and `drain` read it.

    Live state, rewritten by the link's own reconnect loop: the tunnel while
    registered, and why the link ended if a refusal ended it for good. A link
    found by DNS discovery dials ``address`` and still speaks to the URL's host.
    """

    url: str
    address: str | None = None
    # Told when a session fails, so discovery resolves again (the replica may be gone).
    on_failure: _LinkFailed | None = attrs.field(default=None, repr=False)
    tunnel: Tunnel | None = None
    # trio.current_time() at the latest registration; /status turns it into wall time.
    connected_at: float = 0.0
    reconnects: int = 0
    # A server that once showed a good certificate gets retried after a bad one.
    has_registered: bool = False
    refusal: HandshakeRefusedError | None = None
    # The routes this server refused at the latest registration (name -> its reason).
    refused_routes: dict[str, str] = attrs.field(factory=dict)
    # The agent drains and this link is down: it dials no more until the agent stops.
    stood_down: bool = False
    # The id the server answered this link's upgrade with (protocol.md 1.1), from the
    # upgrade until the session ends; None between sessions, and from a server that
    # sends none. Another link's upgrade that finds it here is to the same server.
    server_id: str | None = None
    # The link (its label) that held the server this one's latest upgrade reached:
    # this one then did not register. None once an upgrade reaches a server of its own.
    same_server_as: str | None = None

    @property
    def connected(self) -> bool:
        return self.tunnel is not None

    @property
    def has_ended(self) -> bool:
        """Refused for good: the link's loop has returned."""
        return self.refusal is not None

    @property
    def label(self) -> str:
        """The URL, and the address when discovery found it: how logs name the link."""
        return self.url if self.address is None else f"{self.url} ({self.address})"

    @property
    def in_flight(self) -> int:
        return self.tunnel.in_flight if self.tunnel is not None else 0


# The close that ends such a connection, before its HELLO, says why to the server.
SAME_SERVER_REASON: Final = "this agent is connected to this server by another URL"


class _Reporter(Protocol):
    """Where a link reports its registration, and that a refusal ended it."""

    def registered(self, status: AgentStatus) -> None: ...

    def link_ended(self) -> None: ...


class LinkOwner(Protocol):
    """What a link needs of its agent (`pvtunnel.TunnelAgent` has all of it). The two
    underscored members are the agent's own business with its links, kept out of the
    public API of `TunnelAgent`, which programs embed."""

    @property
    def config(self) -> AgentConfig: ...
    @property
    def routes(self) -> Mapping[str, Route]: ...
    @property
    def links(self) -> Sequence[ServerLink]: ...
    @property
    def metrics(self) -> AgentMetrics: ...
    @property
    def draining(self) -> bool: ...
    @property
    def admin_address(self) -> tuple[str, int] | None: ...
    def _serve_stream(self, channel: Channel, head: RequestHead) -> Awaitable[None]: ...
    def _links_changed(self) -> None: ...


async def serve_link(agent: LinkOwner, link: ServerLink, startup: _Reporter) -> None:
    """Connect, serve until the connection ends, back off, reconnect: until refused."""
    backoff = Backoff(INITIAL_BACKOFF_S, agent.config.timeouts.reconnect_max_s)
    while True:
        if agent.draining:
            await _stand_down(agent, link)
        began = trio.current_time()
        unreachable = False
        try:
            await _session(agent, link, startup)
            logger.warning("the connection to %s ended", link.label)
        except SameServerError as exc:
            _say_same_server(link, exc)
        except ServerCertificateError as exc:
            if not link.has_registered:
                _end_link(agent, link, exc, startup)
                return
            logger.error("%s", exc)
        except HandshakeRefusedError as exc:
            _end_link(agent, link, exc, startup)
            return
        except (
            OSError,
            HandshakeError,
            ConnectionRejected,
            WebSocketClosed,
            TunnelClosedError,
            ProtocolError,
            trio.TooSlowError,
        ) as exc:
            if isinstance(exc, ProtocolError):
                agent.metrics.protocol_errors += 1
            unreachable = isinstance(exc, ServerUnreachableError)
            logger.warning("connection to %s failed: %s", link.label, describe_failure(exc))
        if link.on_failure is not None:
            link.on_failure(link, unreachable=unreachable)
        # Counted from the registration, not the dial: a dial or handshake
        # that times out takes `connect_s` (10 s by default) and must not pass
        # for a session that lasted.
        registered = link.has_registered and link.connected_at >= began
        if registered and trio.current_time() - link.connected_at > STABLE_SESSION_S:
            backoff.reset()
        delay = backoff.next_delay()
        logger.info("reconnecting to %s in %.1fs", link.label, delay)
        await trio.sleep(delay)
        if not agent.draining:
            link.reconnects += 1
            agent._links_changed()


def _say_same_server(link: ServerLink, exc: SameServerError) -> None:
    """Warn once, while the same link keeps holding that server; retries say it quietly."""
    holder = exc.holder
    if link.same_server_as == holder:
        logger.info("%s still reaches the server %s is connected to", link.label, holder)
        return
    link.same_server_as = holder
    logger.warning(
        "%s reaches the same server as %s (server id %s), which this agent is connected "
        "to already: not registering twice, since the server keeps one connection per "
        "client id and the two would replace each other; retrying at the reconnect pace",
        link.label,
        holder,
        exc.server_id,
    )


async def _stand_down(agent: LinkOwner, link: ServerLink) -> None:
    """Stay down until the agent is stopped (never returns).

    An agent on its way out takes no new work. A connection opened now would
    announce its routes before its GOAWAY, and the server would route to it
    at once, sending it the requests it holds for them, which the agent
    could only refuse. The drain ends with the agent cancelled, which ends this.
    """
    link.stood_down = True
    agent._links_changed()
    await trio.sleep_forever()


def _end_link(
    agent: LinkOwner, link: ServerLink, refusal: HandshakeRefusedError, startup: _Reporter
) -> None:
    """A refusal is final for its server: never retried, since retrying cannot fix it."""
    link.refusal = refusal
    if len(agent.links) > 1:
        logger.error("giving up on %s: %s", link.label, refusal)
    # With one server the refusal is what `serve` raises: its caller says it.
    agent._links_changed()
    startup.link_ended()


async def _session(agent: LinkOwner, link: ServerLink, startup: _Reporter) -> None:
    try:
        await _session_tasks(agent, link, startup)
    except BaseExceptionGroup as group:
        # The session's nursery wraps even one failure; the retry loop and the
        # CLI decide on the leaf (network error: retry; refusal: exit).
        raise final_if_refused(first_error(group), link.label) from None
    except ConnectionRejected as exc:
        raise final_if_refused(exc, link.label) from None


async def _session_tasks(agent: LinkOwner, link: ServerLink, startup: _Reporter) -> None:
    url = link.url
    target = urllib.parse.urlsplit(url)
    host, port = url_host_port(url)
    ssl_context = client_ssl_context(url, agent.config)
    stream = await dial(
        host, port, ssl_context, link.address, timeout_s=agent.config.timeouts.connect_s
    )
    # We own the transport, so it is closed however the session ends; the
    # WebSocket's reader task lives in ``connection`` and ends with it.
    async with stream, trio.open_nursery() as connection:
        try:
            with trio.fail_after(agent.config.timeouts.connect_s):
                ws = await _handshake(agent, connection, stream, host, port, target)
            # No checkpoint between the look and the claim: of two links upgrading
            # to one server at once, the first to get here keeps it.
            server_id = server_id_from(ws.connection.handshake_headers)
            holder = _holding(agent.links, link, server_id)
            if holder is not None:
                assert server_id is not None
                await ws.aclose(1000, SAME_SERVER_REASON)
                raise SameServerError(holder.label, server_id)
            link.server_id = server_id
            link.same_server_as = None
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await _register_and_run(agent, ws, link, nursery, startup)
                    finally:
                        if link.tunnel is not None:
                            link.tunnel = None
                            agent._links_changed()
                        nursery.cancel_scope.cancel()
            finally:
                link.server_id = None
                # Outside the cancelled nursery, so the close is said, not cut short.
                await ws.aclose()
        finally:
            await trio.aclose_forcefully(stream)


def _holding(
    links: Sequence[ServerLink], link: ServerLink, server_id: str | None
) -> ServerLink | None:
    """The other link whose session reached the server ``server_id`` names, if any.

    A link holds its server from its upgrade to the end of its session, so one that
    has yet to register counts too, and so does one draining (its GOAWAY said): the
    GOAWAY may reach the server after the other link's HELLO, which would then
    replace it while its requests finish.
    """
    if server_id is None:
        return None
    return next((o for o in links if o is not link and o.server_id == server_id), None)


async def _handshake(
    agent: LinkOwner,
    nursery: trio.Nursery,
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    host: str,
    port: int,
    target: urllib.parse.SplitResult,
) -> WebSocket:
    token = agent.config.server.token
    assert token is not None
    default_port = 443 if target.scheme == "wss" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host:
        host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    resource = (target.path or "/") + (f"?{target.query}" if target.query else "")
    return await connect(
        nursery,
        stream,
        host_header,
        resource,
        [(b"authorization", b"Bearer " + token.reveal().encode())],
    )


async def _register_and_run(
    agent: LinkOwner,
    ws: WebSocket,
    link: ServerLink,
    nursery: trio.Nursery,
    startup: _Reporter,
) -> None:
    config = agent.config
    mux = Multiplexer(
        Role.AGENT,
        window=config.stream_window_bytes,
        connection_window=config.connection_window_bytes,
        max_streams=config.max_streams,
    )
    tunnel = Tunnel(
        ws,
        mux,
        on_stream=agent._serve_stream,
        label=link.label,
        heartbeat_s=config.timeouts.heartbeat_s,
        heartbeat_timeout_s=config.timeouts.heartbeat_timeout_s,
    )
    mux.send_hello(client_id=config.client_id, routes=tuple(agent.routes))
    with trio.fail_after(config.timeouts.connect_s):
        await tunnel.flush()
        accepted = await _receive_answer(tunnel)
    refused = accepted.refused
    server = "the server" if len(agent.links) == 1 else link.label
    for name, reason in refused:
        logger.error("route %s refused by %s: %s", name, server, reason)
    served = tuple(r for r in agent.routes if r not in dict(refused))
    if not served:
        raise HandshakeRefusedError("the server refused every route of this agent")
    link.tunnel = tunnel
    link.connected_at = trio.current_time()
    link.has_registered = True
    link.refused_routes = dict(refused)
    if agent.draining:
        # The drain began while this link was registering (links that are down
        # stay down): it leaves like the others, so its server routes no new
        # requests to an agent on its way out.
        mux.goaway(ErrorCode.NO_ERROR, "agent shutting down")
    agent._links_changed()
    logger.info("registered with %s: routes %s", link.label, ", ".join(served))
    startup.registered(
        AgentStatus(server_url=link.url, routes=served, refused=refused, admin=agent.admin_address)
    )
    nursery.start_soon(_leave_when_told, tunnel)
    await tunnel.run()


async def _leave_when_told(tunnel: Tunnel) -> None:
    """After the server's GOAWAY, finish in-flight streams, then hang up and reconnect."""
    await tunnel.going_away.wait()
    if tunnel.closed is not None:
        # Not a GOAWAY: the connection ended, and `Tunnel.run` closes it with the
        # reason (1002 for the server's protocol error), which 1000 must not hide.
        return
    await wait_answers_delivered(tunnel)
    await tunnel.aclose("the server asked this agent to go away")


async def wait_answers_delivered(tunnel: Tunnel) -> None:
    """Until every stream has finished and the server has read all of it.

    A stream finishes once its last frames are queued, and up to a window of its
    answer may still wait to be sent: closing then would cut the client's response
    short. Once a PING queued after them is answered, the server has them all.
    """
    while tunnel.in_flight and tunnel.closed is None:
        await tunnel.wait_stream_finished()
    await tunnel.wait_round_trip()


async def _receive_answer(tunnel: Tunnel) -> ev.Accepted:
    answer = await tunnel.receive_handshake()
    if isinstance(answer, ev.Rejected):
        raise HandshakeRefusedError(f"the server rejected this agent: {answer.reason}")
    if not isinstance(answer, ev.Accepted):
        raise RemoteProtocolError("the server's first frame must be ACCEPT or REJECT")
    return answer
