"""`pvtunnel serve`: the internal WebSocket listener for agents and the external HTTP port.

`TunnelServer.serve` is startable: ``addresses = await nursery.start(server.serve)``
returns once both listeners accept, and it runs until cancelled. `drain` is the
graceful half of a shutdown: stop accepting, tell agents GOAWAY, and wait (up to
the grace period) for in-flight requests to finish; cancel afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import ssl
import time
from typing import TYPE_CHECKING, Final

import attrs
import trio

from pvtunnel._config import rules
from pvtunnel._errors import (
    ConfigError,
    ErrorCode,
    InvalidValue,
    ProtocolError,
    RemoteProtocolError,
    TunnelClosedError,
    WebSocketClosed,
)
from pvtunnel._metrics import render_server
from pvtunnel._status import ServerAgentEntry, ServerRouteEntry, ServerStatusDocument, iso_utc
from pvtunnel._tls import load_cert_chain
from pvtunnel._trio.admin import serve_admin
from pvtunnel._trio.front import handle_client
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.hangups import peer_address, watch_hangups
from pvtunnel._trio.listeners import open_listeners, serve_listeners
from pvtunnel._trio.state import AgentSession, ServerState
from pvtunnel._trio.tunnel import Tunnel
from pvtunnel._trio.websocket import TRANSPORT_GONE, WebSocket, read_upgrade
from pvtunnel._wire import events as ev
from pvtunnel._wire.identity import SERVER_ID_HEADER, new_server_id
from pvtunnel._wire.mux import Multiplexer, Role

if TYPE_CHECKING:
    from pvtunnel._config import ServerConfig

logger = logging.getLogger("pvtunnel.server")

_ROUTE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.:[]*_")
# A route name is a host name and an optional ":port" (`rules.route_name`).
_MAX_ROUTE_NAME: Final = rules.MAX_HOST_NAME_LENGTH + len(":65535")


@attrs.frozen(kw_only=True)
class ServerAddresses:
    """Where a started server listens (real ports, also when port 0 was asked)."""

    internal: tuple[str, int]
    external: tuple[str, int]
    admin: tuple[str, int] | None = None


class TunnelServer:
    """The server side of pvtunnel, embeddable in any Trio program.

    Args:
        config: a finished `ServerConfig` (tokens resolved; see `load_server_config`).
    """

    def __init__(self, config: ServerConfig) -> None:
        if config.internal.token is None and not config.internal.tokens:
            raise ConfigError(["internal.token: the server needs a token for its agents"])
        self.config = config
        self.state = ServerState(config)
        # Sent with every upgrade (protocol.md 1.1): an agent whose two URLs reach
        # this one process then registers through one of them only.
        self.server_id = new_server_id(secrets.token_bytes(16))
        self._listen_scope = trio.CancelScope()
        self._served = False

    @property
    def sessions(self) -> frozenset[AgentSession]:
        return frozenset(self.state.sessions)

    async def serve(
        self, *, task_status: trio.TaskStatus[ServerAddresses] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on both ports until cancelled (startable).

        A `TunnelServer` serves once: its state (sessions, held requests, a
        drain) is that one run's. To serve again, create a new one.

        Raises:
            OSError: a listener could not be opened (its message names which), or a
                TLS certificate or key could not be read: the error itself, as
                `TunnelAgent.serve` raises its own, not inside an exception group.
            RuntimeError: this server has served (or is serving) already.
        """
        if self._served:
            raise RuntimeError(
                "a TunnelServer serves once: create a new TunnelServer to serve again"
            )
        self._served = True
        try:
            await self._serve(task_status)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _serve(self, task_status: trio.TaskStatus[ServerAddresses]) -> None:
        config = self.config
        # Read before any listener opens: one that fails leaves no port taken.
        internal_ssl = _ssl_context("internal", config.internal.tls_cert, config.internal.tls_key)
        ext_ssl = _ssl_context("external", config.external.tls_cert, config.external.tls_key)
        async with trio.open_nursery() as handlers:
            handlers.start_soon(watch_hangups, self.state)
            handlers.start_soon(self.state.deadlines.run)
            # First and outside `listening`, so probes get answers (/ready: 503) while
            # the listeners start, and during a drain.
            admin: tuple[str, int] | None = None
            if config.admin is not None:
                admin = await handlers.start(serve_admin, config.admin, ServerAdmin(self))
            async with trio.open_nursery() as listening:
                self._listen_scope = listening.cancel_scope
                internal_listeners = await open_listeners(
                    "internal", config.internal.port, config.host
                )
                internal = internal_listeners[0].socket.getsockname()
                await listening.start(
                    functools.partial(
                        serve_listeners,
                        self._handle_agent,
                        _secure(internal_listeners, internal_ssl),
                        what="internal",
                        log=logger,
                        handler_nursery=handlers,
                    )
                )
                listeners = await open_listeners("external", config.external.port, config.host)
                external = listeners[0].socket.getsockname()
                handler = functools.partial(
                    handle_client, state=self.state, proto=b"http" if ext_ssl is None else b"https"
                )
                await listening.start(
                    functools.partial(
                        serve_listeners,
                        handler,
                        _secure(listeners, ext_ssl),
                        what="external",
                        log=logger,
                        handler_nursery=handlers,
                    )
                )
                self.state.listening = True
                self.state.held.server_started(config.timeouts.startup_hold_s)
                task_status.started(
                    ServerAddresses(
                        internal=(internal[0], internal[1]),
                        external=(external[0], external[1]),
                        admin=admin,
                    )
                )
            # Draining: no more listeners; connections finish until we are cancelled.
            await trio.sleep_forever()

    async def drain(self) -> None:
        """Stop accepting, send GOAWAY to agents, wait for in-flight requests.

        Returns once nothing is in flight or the grace period is over; the caller
        then cancels `serve`. Keep-alive clients get no new requests proxied after
        this: the agents have been told to go away and leave the router. With
        ``timeouts.drain_delay_s``, ``/ready`` answers 503 for that long first while
        requests are still served, so load balancers stop sending clients before
        the listeners close. Kept-alive client connections that wait for a request
        are closed at once, and every answer from then on closes its connection, so
        clients come back on a new connection (to another server) rather than meet
        a 503.
        """
        state = self.state
        if self.config.timeouts.drain_delay_s and not state.withdrawn:
            # Readiness goes first (see TimeoutsConfig.drain_delay_s); requests are
            # still proxied meanwhile, so none is refused in the gap.
            state.withdrawn = True
            state.close_idle_clients()
            logger.info(
                "not ready; closing the listeners in %.1fs", self.config.timeouts.drain_delay_s
            )
            await trio.sleep(self.config.timeouts.drain_delay_s)
        self.state.draining = True
        state.close_idle_clients()
        self._listen_scope.cancel()
        self.state.held.close()
        for session in list(self.state.sessions):
            self.state.unroute(session)
            session.tunnel.mux.goaway(ErrorCode.NO_ERROR, "server shutting down")
            session.tunnel.wake_writer()
        with trio.move_on_after(self.config.timeouts.grace_s):
            await self.state.idle.wait()

    async def _handle_agent(self, stream: trio.abc.Stream) -> None:
        """Serve one agent connection; never raises for what a peer does."""
        try:
            await self._serve_agent(stream)
        except Exception:
            # Boundary: one agent connection's failure must not reach the listener,
            # whose nursery is the server's.
            logger.exception("internal error on the agent connection from %s", peer_address(stream))
            await trio.aclose_forcefully(stream)

    async def _serve_agent(self, stream: trio.abc.Stream) -> None:
        # The WebSocket's reader task lives in this nursery; it ends once the
        # transport is closed, so the transport is closed inside.
        async with trio.open_nursery() as nursery:
            try:
                upgraded = await self._upgrade(nursery, stream)
                if upgraded is not None:
                    await self._serve_upgraded(*upgraded)
            finally:
                await trio.aclose_forcefully(stream)

    async def _upgrade(
        self, nursery: trio.Nursery, stream: trio.abc.Stream
    ) -> tuple[WebSocket, tuple[str, ...]] | None:
        """The agent's WebSocket and its token's route scopes; None once refused or gone."""
        config = self.config
        address = peer_address(stream)
        request = None
        with trio.move_on_after(config.timeouts.handshake_s):
            request = await read_upgrade(nursery, stream)
        if request is None:  # not an upgrade (answered), or gone, or too slow
            return None
        token = _bearer(request.headers)
        scopes = self._token_scopes(token)
        draining = self.state.draining
        if scopes is None or draining:
            logger.warning(
                "agent connection from %s refused: %s",
                address,
                "server draining" if draining else "bad or missing token",
            )
            refusing = trio.move_on_after(config.timeouts.handshake_s)
            with contextlib.suppress(*TRANSPORT_GONE), refusing:
                await request.reject(
                    503 if draining else 401,
                    extra_headers=[(b"content-type", b"text/plain; charset=utf-8")],
                    body=b"server draining\n"
                    if draining
                    else b"401 Unauthorized: bad or missing agent token\n",
                )
            return None
        try:
            with trio.fail_after(config.timeouts.handshake_s):
                connection = await request.accept(
                    extra_headers=[(SERVER_ID_HEADER, self.server_id.encode())]
                )
        except (*TRANSPORT_GONE, trio.TooSlowError) as exc:
            logger.info("agent connection from %s lost before the upgrade: %s", address, exc)
            return None
        return WebSocket(connection, stream, address), scopes

    async def _serve_upgraded(self, ws: WebSocket, scopes: tuple[str, ...]) -> None:
        config = self.config
        address = ws.remote
        mux = Multiplexer(
            Role.SERVER,
            window=config.limits.stream_window_bytes,
            connection_window=config.limits.connection_window_bytes,
        )
        tunnel = Tunnel(
            ws,
            mux,
            label=address,
            heartbeat_s=config.timeouts.heartbeat_s,
            heartbeat_timeout_s=config.timeouts.heartbeat_timeout_s,
        )
        try:
            with trio.fail_after(config.timeouts.handshake_s):
                hello = await _receive_hello(tunnel)
            _check_client_id(mux, hello.client_id)
            refused = _refusals(hello.routes, scopes)
            refused_names = {name for name, _ in refused}
            accepted = tuple(
                dict.fromkeys(r.lower() for r in hello.routes if r not in refused_names)
            )
            _accept(mux, refused)
            await tunnel.flush()
        except (
            ProtocolError,
            TunnelClosedError,
            trio.TooSlowError,
            WebSocketClosed,
            trio.BrokenResourceError,
        ) as exc:
            if isinstance(exc, ProtocolError):
                self.state.metrics.agent_protocol_errors += 1
            closed = ws.closed
            if isinstance(exc, TunnelClosedError) and closed is not None and closed.code == 1000:
                # The agent's own choice, not a failure: it has a connection here by
                # another URL already (protocol.md 1.1), and says so in the reason.
                logger.info(
                    "agent connection from %s closed before its HELLO: %a", address, closed.reason
                )
            else:
                logger.warning("agent handshake from %s failed: %s", address, exc)
            await tunnel.aclose("handshake failed")
            return
        session = AgentSession(
            tunnel=tunnel,
            client_id=hello.client_id,
            address=address,
            routes=accepted,
            scopes=scopes,
        )
        if refused:
            # One line, however many: a HELLO may list thousands of names.
            shown = "; ".join(f"{name!a}: {reason}" for name, reason in refused[:_REFUSALS_SHOWN])
            more = len(refused) - _REFUSALS_SHOWN
            logger.warning(
                "agent %s: %d route(s) refused: %s%s",
                hello.client_id,
                len(refused),
                shown,
                f"; and {more} more" if more > 0 else "",
            )
        self._replace_same_client(session)
        self.state.add_session(session)
        self.state.metrics.agent_connects += 1
        if self.state.draining:
            # The drain began after this agent's upgrade, and told only the agents
            # it found: this one goes to another server the same way.
            mux.goaway(ErrorCode.NO_ERROR, "server shutting down")
        else:
            self.state.route(session, accepted)
        # Its GOAWAY (in-flight requests finish, new ones go elsewhere) or its close.
        tunnel.on_leaving = functools.partial(self.state.unroute, session)
        logger.info(
            "agent %s connected from %s with routes %s",
            hello.client_id,
            address,
            ", ".join(accepted) or "(none)",
        )
        try:
            with session.scope:
                await tunnel.run()
        except* ProtocolError as group:
            self.state.metrics.agent_protocol_errors += 1
            # The leaf, not a nested group's summary: it says what the agent did.
            logger.warning("agent %s broke the protocol: %s", hello.client_id, first_error(group))
        except* Exception:
            # Boundary: one agent connection's failure must not reach the listener.
            logger.exception("agent %s: internal error", hello.client_id)
        finally:
            self.state.unroute(session)
            self.state.discard_session(session)
            self.state.metrics.agent_disconnects += 1
            logger.info("agent %s disconnected", hello.client_id)
            await ws.aclose()

    def _replace_same_client(self, session: AgentSession) -> None:
        """A reconnecting agent wins over the session the server still holds for it.

        The old connection is most likely dead (its network went away before the
        heartbeat noticed); its in-flight requests fail with 502 and new ones go to
        the new connection.

        Only a connection whose token has the same scope counts as a reconnect: a
        ``client_id`` is the agent's own claim, and another team's token naming it
        must not evict that agent (both then stay, each with its own routes).

        A connection that is leaving already (its agent said GOAWAY, as in a rolling
        restart, and is out of the router) is not stale: it is finishing requests,
        and keeps its connection until they are done.
        """
        for old in [s for s in self.state.sessions if s.client_id == session.client_id]:
            if old.tunnel.going_away.is_set():
                continue
            if old.scopes != session.scopes:
                logger.warning(
                    "agent %s from %s has the client id of a connection from %s whose "
                    "token has another scope; both stay connected",
                    session.client_id,
                    session.address,
                    old.address,
                )
                continue
            logger.info(
                "agent %s reconnected from %s; closing its previous connection from %s",
                session.client_id,
                session.address,
                old.address,
            )
            self.state.unroute(old)
            self.state.discard_session(old)
            old.scope.cancel()

    def _token_scopes(self, token: bytes | None) -> tuple[str, ...] | None:
        """Route patterns the token may claim (("*",) = any), or None if it is no token."""
        if token is None:
            return None
        internal = self.config.internal
        if internal.token is not None and internal.token.matches(token):
            return ("*",)
        for scoped in internal.tokens:
            if scoped.token.matches(token):
                return scoped.routes
        return None


async def _receive_hello(tunnel: Tunnel) -> ev.HelloReceived:
    event = await tunnel.receive_handshake()
    if not isinstance(event, ev.HelloReceived):
        raise RemoteProtocolError("the first frame must be HELLO")
    return event


# Refused routes named in the log line; the rest are counted.
_REFUSALS_SHOWN: Final = 10


def _accept(mux: Multiplexer, refused: tuple[tuple[str, str], ...]) -> None:
    """ACCEPT the agent, or REJECT it when its refused routes do not fit in one frame.

    Raises:
        RemoteProtocolError: rejected (REJECT is queued, to go out first).
    """
    try:
        mux.accept(refused=refused)
    except ValueError:
        # Each refusal is listed with its reason, so the agent (and its /status) can
        # tell which names are not served; only an agent offering thousands of
        # unusable names gets here.
        reason = f"{len(refused)} routes refused: too many to list in an ACCEPT"
        mux.reject(reason)
        raise RemoteProtocolError(reason) from None


def _check_client_id(mux: Multiplexer, client_id: str) -> None:
    """REJECT a HELLO whose client_id the agent's own config would refuse.

    The id reaches log lines and /status: a newline or ESC in it could forge a log
    line or drive a terminal, and a long one would flood both.

    Raises:
        RemoteProtocolError: the id is invalid (REJECT is queued, to go out first).
    """
    try:
        rules.client_id(client_id)
    except InvalidValue:
        reason = (
            f"client_id must be 1 to {rules.MAX_CLIENT_ID_LENGTH} printable characters "
            "without spaces"
        )
        mux.reject(reason)
        # ascii(): the id itself must not reach the log raw.
        raise RemoteProtocolError(f"{reason}, got {client_id[:64]!a}") from None


def _refusals(routes: tuple[str, ...], scopes: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    refused: list[tuple[str, str]] = []
    for route in routes:
        name = route.lower()
        if not name or not _ROUTE_CHARS.issuperset(name) or len(name) > _MAX_ROUTE_NAME:
            refused.append((route, "not a valid route name"))
        elif not any(_covers(pattern, name) for pattern in scopes):
            refused.append((route, "this agent's token does not cover that name"))
    return tuple(refused)


def _covers(pattern: str, name: str) -> bool:
    pattern = pattern.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


def _ssl_context(what: str, cert: object, key: object) -> ssl.SSLContext | None:
    """The listener's TLS context, None without a certificate.

    Raises:
        OSError: the certificate or key cannot be read or used (``ssl.SSLError`` is
            one too); the message names the listener and both files, which
            ``ssl`` leaves out.
    """
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        load_cert_chain(context, str(cert), None if key is None else str(key))
    except OSError as exc:
        where = f"the {what} listener's certificate {cert} and key {key}"
        reason = exc.strerror or str(exc)
        if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, no system one
            raise OSError(f"{where}: {reason}") from None
        raise OSError(exc.errno, f"{where}: {reason}") from None
    return context


def _secure(
    listeners: list[trio.SocketListener], context: ssl.SSLContext | None
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    if context is None:
        return list(listeners)
    return [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]


class ServerAdmin:
    """The server's `AdminSource`: its figures, read from its live state at each request."""

    def __init__(self, server: TunnelServer) -> None:
        self._server = server

    def is_ready(self) -> bool:
        state = self._server.state
        return state.listening and not state.draining and not state.withdrawn

    def metrics_text(self) -> str:
        state = self._server.state
        return render_server(
            state.metrics,
            active_streams=state.in_flight,
            connected_agents=len(state.sessions),
            held_requests=state.held.waiting,
            client_connections=state.client_connections,
        )

    def status(self) -> ServerStatusDocument:
        state = self._server.state
        now = time.time()
        sessions = sorted(state.sessions, key=lambda s: (s.client_id, s.connected_at))
        agents = [
            ServerAgentEntry(
                client_id=session.client_id,
                address=session.address,
                connected_since=iso_utc(session.connected_at),
                connected_for_s=round(now - session.connected_at, 3),
                routes=list(session.routes),
                in_flight=session.in_flight,
                requests=session.requests,
            )
            for session in sessions
        ]
        routes = [
            ServerRouteEntry(name=name, agents=sorted(session.client_id for session in serving))
            for name, serving in sorted(state.router.names().items())
        ]
        return ServerStatusDocument(
            kind="server",
            server_id=self._server.server_id,
            ready=self.is_ready(),
            draining=state.draining,
            in_flight=state.in_flight,
            agents=agents,
            routes=routes,
        )
