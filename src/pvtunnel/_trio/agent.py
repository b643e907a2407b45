"""`pvtunnel agent`: dial out to the server, announce routes, replay what it sends.

Failures split in two (SPEC section 5): a refused token (HTTP 401 at the upgrade)
or a REJECT of the hello is final and raises `HandshakeRefusedError`; anything
the network does (refused, reset, a server restart) is retried with capped,
jittered exponential backoff, forever.

A server certificate that does not verify is configuration, not the network (a
missing ``ca_file``, a wrong host name): before the agent has ever registered it
is final (`ServerCertificateError`), so a mistake shows at once instead of as a
retry loop. Once registered, the server has proven itself with a good
certificate, so a later failure (a botched renewal) is logged as an error and
retried, and agents come back by themselves when the certificate is fixed.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from typing import TYPE_CHECKING, Final

import attrs
import trio

from pvtunnel._backoff import Backoff
from pvtunnel._errors import (
    ErrorCode,
    HandshakeRefusedError,
    ProtocolError,
    RemoteProtocolError,
    TunnelClosedError,
)
from pvtunnel._metrics import AgentMetrics
from pvtunnel._trio.admin import AgentAdmin, serve_admin
from pvtunnel._trio.tunnel import Channel, Tunnel, first_error
from pvtunnel._trio.upstream import Replay, UpstreamPool
from pvtunnel._trio.websocket import (
    ConnectionRejected,
    HandshakeError,
    WebSocket,
    WebSocketClosed,
    connect,
)
from pvtunnel._wire import events as ev
from pvtunnel._wire.mux import Multiplexer, Role

if TYPE_CHECKING:
    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._wire.heads import RequestHead

logger = logging.getLogger("pvtunnel.agent")

INITIAL_BACKOFF_S: Final = 0.5
# A session that lasted this long resets the backoff: it was not a crash loop.
STABLE_SESSION_S: Final = 10.0


class ServerCertificateError(HandshakeRefusedError):
    """The server's TLS certificate failed verification (see the module docstring)."""


@attrs.frozen(kw_only=True)
class AgentStatus:
    """What a started agent registered: the server and the routes it now serves."""

    server_url: str
    routes: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]
    admin: tuple[str, int] | None = None


class TunnelAgent:
    """The agent side of pvtunnel, embeddable in any Trio program.

    Args:
        config: a finished `AgentConfig` with a server URL, a token and routes.
    """

    def __init__(self, config: AgentConfig) -> None:
        problems = config.validate_runnable()
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.routes: dict[str, Route] = {route.name: route for route in config.routes}
        self.metrics = AgentMetrics()
        self.pool = UpstreamPool(config, self.metrics)
        self.connected = False
        # trio.current_time() at registration; /status turns it into wall-clock time.
        self.connected_at = 0.0
        self.draining = False
        self.admin_address: tuple[str, int] | None = None
        self.reconnects = 0
        self._tunnel: Tunnel | None = None
        self._started = False

    @property
    def in_flight(self) -> int:
        return self._tunnel.in_flight if self._tunnel is not None else 0

    async def serve(
        self, *, task_status: trio.TaskStatus[AgentStatus] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Stay connected until cancelled (startable: returns once first registered).

        With ``config.admin`` set, the admin listener starts first, so probes are
        answered (``/ready``: 503) while the agent is not yet registered.

        Raises:
            HandshakeRefusedError: the server refused the token or the hello.
            OSError: the admin port cannot be bound.
        """
        admin = self.config.admin
        if admin is None:
            await self._serve_sessions(task_status)
            return
        try:
            async with trio.open_nursery() as nursery:
                self.admin_address = await nursery.start(serve_admin, admin, AgentAdmin(self))
                await self._serve_sessions(task_status)
        except BaseExceptionGroup as group:
            # Callers catch HandshakeRefusedError itself, with or without the listener.
            raise first_error(group) from None

    async def _serve_sessions(self, task_status: trio.TaskStatus[AgentStatus]) -> None:
        """Connect, serve until the connection ends, back off, reconnect: forever."""
        url = self.config.server.urls[0]
        backoff = Backoff(INITIAL_BACKOFF_S, self.config.timeouts.reconnect_max_s)
        try:
            while True:
                began = trio.current_time()
                try:
                    await self._session(url, task_status)
                    logger.warning("the connection to %s ended", url)
                except ServerCertificateError as exc:
                    logger.error("%s", exc)
                    if not self._started:
                        raise
                except (
                    OSError,
                    HandshakeError,
                    WebSocketClosed,
                    TunnelClosedError,
                    ProtocolError,
                    trio.TooSlowError,
                ) as exc:
                    if isinstance(exc, ProtocolError):
                        self.metrics.protocol_errors += 1
                    logger.warning("connection to %s failed: %s", url, _describe(exc))
                if trio.current_time() - began > STABLE_SESSION_S:
                    backoff.reset()
                delay = backoff.next_delay()
                logger.info("reconnecting in %.1fs", delay)
                await trio.sleep(delay)
                self.reconnects += 1
        finally:
            await self.pool.aclose()

    async def drain(self) -> None:
        """Say GOAWAY to the server and wait (up to ``timeouts.grace_s``) for in-flight streams."""
        grace_s = self.config.timeouts.grace_s
        self.draining = True
        tunnel = self._tunnel
        if tunnel is None:
            return
        tunnel.mux.goaway(ErrorCode.NO_ERROR, "agent shutting down")
        tunnel.wake_writer()
        with trio.move_on_after(grace_s):
            while tunnel.in_flight and tunnel.closed is None:
                await tunnel.wait_stream_finished()

    async def _session(self, url: str, task_status: trio.TaskStatus[AgentStatus]) -> None:
        try:
            await self._session_tasks(url, task_status)
        except BaseExceptionGroup as group:
            # The session's nursery wraps even one failure; the retry loop and the
            # CLI decide on the leaf (network error: retry; refusal: exit).
            raise _final_if_refused(first_error(group), url) from None
        except ConnectionRejected as exc:
            raise _final_if_refused(exc, url) from None

    async def _session_tasks(self, url: str, task_status: trio.TaskStatus[AgentStatus]) -> None:
        target = urllib.parse.urlsplit(url)
        host = target.hostname or ""
        port = target.port or (443 if target.scheme == "wss" else 80)
        with trio.fail_after(self.config.timeouts.connect_s):
            stream = await _open_stream(host, port, _client_ssl_context(url, self.config))
        # We own the transport, so it is closed however the handshake ends.
        async with stream:
            with trio.fail_after(self.config.timeouts.connect_s):
                ws = await self._handshake(stream, host, port, target)
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        await self._register_and_run(ws, url, nursery, task_status)
                    finally:
                        self._tunnel = None
                        self.connected = False
                        nursery.cancel_scope.cancel()
            finally:
                # Outside the cancelled nursery, so the close is said, not cut short.
                await ws.aclose()

    async def _handshake(
        self,
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
        host: str,
        port: int,
        target: urllib.parse.SplitResult,
    ) -> WebSocket:
        token = self.config.server.token
        assert token is not None
        default_port = 443 if target.scheme == "wss" else 80
        host_header = host if port == default_port else f"{host}:{port}"
        if ":" in host:
            host_header = f"[{host}]" if port == default_port else f"[{host}]:{port}"
        resource = (target.path or "/") + (f"?{target.query}" if target.query else "")
        return await connect(
            stream,
            host_header,
            resource,
            [(b"authorization", b"Bearer " + token.reveal().encode())],
        )

    async def _register_and_run(
        self,
        ws: WebSocket,
        url: str,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[AgentStatus],
    ) -> None:
        config = self.config
        mux = Multiplexer(
            Role.AGENT,
            window=config.stream_window_bytes,
            connection_window=config.connection_window_bytes,
            max_streams=config.max_streams,
        )
        tunnel = Tunnel(
            ws,
            mux,
            on_stream=self._serve_stream,
            label=url,
            heartbeat_s=config.timeouts.heartbeat_s,
            heartbeat_timeout_s=config.timeouts.heartbeat_timeout_s,
        )
        mux.send_hello(client_id=config.client_id, routes=tuple(self.routes))
        with trio.fail_after(config.timeouts.connect_s):
            await tunnel.flush()
            accepted = await _receive_answer(tunnel)
        refused = accepted.refused
        for name, reason in refused:
            logger.error("route %s refused by the server: %s", name, reason)
        served = tuple(r for r in self.routes if r not in dict(refused))
        if not served:
            raise HandshakeRefusedError("the server refused every route of this agent")
        status = AgentStatus(
            server_url=url, routes=served, refused=refused, admin=self.admin_address
        )
        self._tunnel = tunnel
        self.connected = True
        self.connected_at = trio.current_time()
        logger.info("registered with %s: routes %s", url, ", ".join(served))
        if not self._started:
            self._started = True
            task_status.started(status)
        nursery.start_soon(self._leave_when_told, tunnel)
        await tunnel.run()

    @staticmethod
    async def _leave_when_told(tunnel: Tunnel) -> None:
        """After the server's GOAWAY, finish in-flight streams, then hang up and reconnect."""
        await tunnel.going_away.wait()
        while tunnel.in_flight and tunnel.closed is None:
            await tunnel.wait_stream_finished()
        await tunnel.aclose("the server asked this agent to go away")

    async def _serve_stream(self, channel: Channel, head: RequestHead) -> None:
        route = self.routes.get(head.route)
        if route is None:
            channel.reset(ErrorCode.UNKNOWN_ROUTE, f"no route {head.route!r} here")
            return
        self.metrics.stream_started(route.name)
        await Replay(channel, head, route, self.pool).run()


async def _receive_answer(tunnel: Tunnel) -> ev.Accepted:
    answer = await tunnel.receive_handshake()
    if isinstance(answer, ev.Rejected):
        raise HandshakeRefusedError(f"the server rejected this agent: {answer.reason}")
    if not isinstance(answer, ev.Accepted):
        raise RemoteProtocolError("the server's first frame must be ACCEPT or REJECT")
    return answer


def _final_if_refused(exc: BaseException, url: str) -> BaseException:
    if isinstance(exc, ConnectionRejected) and exc.status_code in (401, 403):
        return HandshakeRefusedError(
            f"the server at {url} refused this agent's token (HTTP {exc.status_code})"
        )
    return exc


async def _open_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if ssl_context is None:
        return await trio.open_tcp_stream(host, port)
    stream = await trio.open_ssl_over_tcp_stream(
        host, port, ssl_context=ssl_context, https_compatible=True
    )
    # Shake hands here, so a TLS failure is told apart from a refused upgrade.
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        raise _tls_failure(exc.__cause__, host, port) from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


def _tls_failure(cause: BaseException | None, host: str, port: int) -> Exception:
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ServerCertificateError(
            f"TLS certificate verification failed for the server at {server}: "
            f"{cause.verify_message or cause.reason} "
            "(a server with a private CA needs [server] ca_file)"
        )
    reason = cause or "the connection closed"
    return TunnelClosedError(f"TLS handshake with the server at {server} failed: {reason}")


def _client_ssl_context(url: str, config: AgentConfig) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    ca_file = config.server.ca_file
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRejected):
        return f"the server answered HTTP {exc.status_code}"
    if isinstance(exc, WebSocketClosed):
        return f"connection closed ({exc.reason})"
    return str(exc) or type(exc).__name__
