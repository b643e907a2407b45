"""`pvtunnel agent`: dial out to the server, announce routes, replay what it sends.

Failures split in two (SPEC section 5): a refused token (HTTP 401 at the upgrade)
or a REJECT of the hello is final and raises `HandshakeRefusedError`; anything
the network does (refused, reset, a server restart) is retried with capped,
jittered exponential backoff, forever.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from typing import TYPE_CHECKING, Final

import attrs
import trio
import trio_websocket

from pvtunnel._errors import (
    ErrorCode,
    HandshakeRefusedError,
    ProtocolError,
    RemoteProtocolError,
    TunnelClosedError,
)
from pvtunnel._trio.tunnel import (
    WEBSOCKET_MAX_MESSAGE,
    WEBSOCKET_RECEIVE_BUFFER,
    Channel,
    Tunnel,
    close_websocket,
    first_error,
)
from pvtunnel._trio.upstream import Replay, UpstreamPool
from pvtunnel._wire import events as ev
from pvtunnel._wire.mux import Multiplexer, Role

if TYPE_CHECKING:
    from pvtunnel._config import AgentConfig, Route
    from pvtunnel._wire.heads import RequestHead

logger = logging.getLogger("pvtunnel.agent")

INITIAL_BACKOFF_S: Final = 0.5
# A session that lasted this long resets the backoff: it was not a crash loop.
STABLE_SESSION_S: Final = 10.0


@attrs.frozen(kw_only=True)
class AgentStatus:
    """What a started agent registered: the server and the routes it now serves."""

    server_url: str
    routes: tuple[str, ...]
    refused: tuple[tuple[str, str], ...]


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
        self.pool = UpstreamPool(config)
        self.connected = False
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

        Raises:
            HandshakeRefusedError: the server refused the token or the hello.
        """
        url = self.config.server.urls[0]
        backoff = INITIAL_BACKOFF_S
        try:
            while True:
                began = time.monotonic()
                try:
                    await self._session(url, task_status)
                    logger.warning("server %s closed the connection", url)
                except (
                    OSError,
                    trio_websocket.HandshakeError,
                    trio_websocket.ConnectionClosed,
                    TunnelClosedError,
                    ProtocolError,
                    trio.TooSlowError,
                ) as exc:
                    logger.warning("connection to %s failed: %s", url, _describe(exc))
                if time.monotonic() - began > STABLE_SESSION_S:
                    backoff = INITIAL_BACKOFF_S
                delay = random.uniform(backoff / 2, backoff)
                logger.info("reconnecting in %.1fs", delay)
                await trio.sleep(delay)
                backoff = min(backoff * 2, self.config.timeouts.reconnect_max_s)
                self.reconnects += 1
        finally:
            await self.pool.aclose()

    async def drain(self, grace_s: float) -> None:
        """Say GOAWAY to the server and wait (bounded) for in-flight streams to finish."""
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
        except trio_websocket.ConnectionRejected as exc:
            raise _final_if_refused(exc, url) from None

    async def _session_tasks(self, url: str, task_status: trio.TaskStatus[AgentStatus]) -> None:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.config.timeouts.connect_s):
                ws = await self._connect(nursery, url)
            try:
                await self._register_and_run(ws, url, nursery, task_status)
            finally:
                self._tunnel = None
                self.connected = False
                nursery.cancel_scope.cancel()
                await close_websocket(ws)

    async def _connect(self, nursery: trio.Nursery, url: str) -> trio_websocket.WebSocketConnection:
        token = self.config.server.token
        assert token is not None
        # A refusal (HTTP 401) surfaces from trio-websocket's reader task, which runs
        # in ``nursery``: `_session` turns it into HandshakeRefusedError.
        return await trio_websocket.connect_websocket_url(
            nursery,
            url,
            _client_ssl_context(url, self.config),
            extra_headers=[(b"authorization", b"Bearer " + token.reveal().encode())],
            max_message_size=WEBSOCKET_MAX_MESSAGE,
            receive_buffer_size=WEBSOCKET_RECEIVE_BUFFER,
        )

    async def _register_and_run(
        self,
        ws: trio_websocket.WebSocketConnection,
        url: str,
        nursery: trio.Nursery,
        task_status: trio.TaskStatus[AgentStatus],
    ) -> None:
        config = self.config
        mux = Multiplexer(
            Role.AGENT, window=config.stream_window_bytes, max_streams=config.max_streams
        )
        tunnel = Tunnel(ws, mux, on_stream=self._serve_stream, label=url)
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
        status = AgentStatus(server_url=url, routes=served, refused=refused)
        self._tunnel = tunnel
        self.connected = True
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
        await Replay(channel, head, route, self.pool).run()


async def _receive_answer(tunnel: Tunnel) -> ev.Accepted:
    message = await tunnel.ws.get_message()
    if isinstance(message, str):
        raise RemoteProtocolError("text WebSocket message on the tunnel")
    events = tunnel.mux.receive_data(message)
    if not events:
        raise RemoteProtocolError("the server's first message held no answer")
    answer = events[0]
    if isinstance(answer, ev.Rejected):
        raise HandshakeRefusedError(f"the server rejected this agent: {answer.reason}")
    if not isinstance(answer, ev.Accepted):
        raise RemoteProtocolError("the server's first frame must be ACCEPT or REJECT")
    return answer


def _final_if_refused(exc: BaseException, url: str) -> BaseException:
    if isinstance(exc, trio_websocket.ConnectionRejected) and exc.status_code in (401, 403):
        return HandshakeRefusedError(
            f"the server at {url} refused this agent's token (HTTP {exc.status_code})"
        )
    return exc


def _client_ssl_context(url: str, config: AgentConfig) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    ca_file = config.server.ca_file
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"the server answered HTTP {exc.status_code}"
    if isinstance(exc, trio_websocket.ConnectionClosed):
        return f"connection closed ({exc.reason})"
    return str(exc) or type(exc).__name__
