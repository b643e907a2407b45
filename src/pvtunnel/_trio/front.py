"""The external port: HTTP/1.1 clients in, one tunnel stream per request out.

One task per client connection, one h11 connection in it. Time limits use a
single cancel scope per client connection, whose limit moves with the phase
(waiting for a head, waiting for the upstream's response) and is kept by the
server's `Deadlines` task: a move is an attribute write, where a scope per request,
or a scope's own deadline moved, would cost Trio heap work on every request. What
the limit meant when it fired is read from ``phase``.

Failure rules: before the response head goes out, a failure
becomes a short text/plain error response; after it, the client connection is
closed so the client sees a truncated body, never a spliced one.

This module holds the keep-alive loop, which reads each request head and answers
what cannot be read, and `handle_client`, which admits a connection and has the
last word when its deadline cuts a request. The rest of `ClientConnection` is in the
classes it builds on, one idea a module: its state and the server's own answers
(`answers`), the response relay (`relay`), the forwarding of a request
(`forwarding`). Each is a base class of the next, so a call from one part to
another is a plain method call, with no step between.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import h11
import trio

from pvtunnel._http.framing import refused_head_status, request_head_problem
from pvtunnel._trio.answers import Phase
from pvtunnel._trio.closing import close_after_answer, close_with_reset
from pvtunnel._trio.forwarding import RequestForwarding
from pvtunnel._trio.hangups import peer_address
from pvtunnel._trio.plain_on_tls import PLAIN_ON_TLS, answer_in_plain_http, speaks_plain_http
from pvtunnel._trio.sockio import BROKEN

if TYPE_CHECKING:
    from pvtunnel._trio.state import ServerState

# The access log's lines come from `ServerState.log_request`; this one says the rest.
logger = logging.getLogger("pvtunnel.server")


# Where the client may still be sending when the server closes: in a request body
# it has not finished, or in whatever followed a request h11 refused.
_MAY_STILL_SEND: Final = frozenset({h11.SEND_BODY, h11.ERROR})
_BLANK: Final = (b"\r", b"\n")


class ClientConnection(RequestForwarding):
    """One client TCP connection: keep-alive loop, routing, relaying."""

    async def serve(self) -> None:
        """Serve requests until the client leaves, breaks framing or times out."""
        timeouts = self.state.config.timeouts
        conn = self.conn
        first = True
        with self.scope:
            while True:
                self.phase = Phase.HEAD
                self.method = None
                self.unlogged = self.exchange = None
                trailing, closed = conn.trailing_data
                if trailing[:1] in _BLANK:
                    # Empty lines before a request line are ignored (RFC 9112 section
                    # 2.2), where h11 refuses them: the cycle starts on a connection
                    # fed what follows them, which is all a new cycle carries over.
                    conn = self._restart(trailing.lstrip(b"\r\n"), closed)
                    trailing = conn.trailing_data[0]
                self.http.skip_blank_lines = not trailing
                # A head already read with the last one (pipelined) counts as received.
                self.http.received = len(trailing)
                # The head's raw bytes for request_head_problem, starting with any
                # pipelined bytes h11 already holds; recording stops at the head.
                self.http.recording = bytearray(trailing)
                # A kept-alive connection may idle for `idle_s`; a head has
                # `request_head_s` from its first byte on, however slowly it comes.
                has_head_bytes = first or bool(trailing)
                self.deadline.set(
                    (self.connected_at if first else trio.current_time())
                    + (timeouts.request_head_s if has_head_bytes else timeouts.idle_s)
                )
                self.http.on_data = None if has_head_bytes else self._head_started
                if not has_head_bytes:
                    # Kept alive, waiting for a head: a drain closes it at once.
                    self.state.idle_clients.add(self.scope)
                first = False
                try:
                    event = await self.http.next_event()
                except h11.RemoteProtocolError as exc:
                    # A head h11 refused (also one that grew past the limit in pieces):
                    # answered, and logged with what only the head would have said as -.
                    status, reason = refused_head_status(
                        exc.error_status_hint, self.http.recording or b"", self.max_head_bytes
                    )
                    self.state.metrics.client_protocol_errors += 1
                    await self._send_error(status, reason, close=True)
                    self.state.log_unreadable(self.address, status)
                    return
                finally:
                    self.state.idle_clients.discard(self.scope)
                if isinstance(event, h11.ConnectionClosed):
                    return
                assert isinstance(event, h11.Request), event
                self.method = event.method
                received, self.http.recording = self.http.recording, None
                if (
                    self.http.received > self.max_head_bytes
                    and _head_size(event) > self.max_head_bytes
                ):
                    # RFC 9112 section 3: a request line alone past the limit is 414
                    # (measured as `refused_head_status` measures one h11 refused).
                    line = len(event.method) + len(event.target) + len(b"  HTTP/1.1\r\n")
                    status = 414 if line > self.max_head_bytes else 431
                    reason = (
                        "request target too long" if status == 414 else "request head too large"
                    )
                    await self._send_error(status, reason, close=True)
                    self.state.log_request(event, self.address, status, 0, None)
                    return
                # h11's header sequence is slow to iterate; the checks below go over it
                # about ten times, so they share one list. The names keep the client's
                # spelling (the `_http` functions compare them case-insensitively).
                headers = event.headers.raw_items()
                problem = request_head_problem(headers, event.http_version, received or b"")
                if problem is not None:
                    # RFC 9112 section 6.3: answer, then close without reading the
                    # body, whose framing we cannot trust.
                    self.state.metrics.client_protocol_errors += 1
                    await self._send_error(400, problem, close=True)
                    self.state.log_request(event, self.address, 400, 0, None)
                    return
                # From here the upstream has `upstream_response_s` to answer.
                self.started = trio.current_time()
                self.deadline.set(self.started + timeouts.upstream_response_s)
                self.phase = Phase.RESPONSE
                self.unlogged = event
                if not await self._proxy(event, headers):
                    return
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        if self.scope.cancelled_caught and self.phase is Phase.HEAD:
            logger.debug("closing idle or slow client connection from %s", self.address)
            if self.http.received:
                # Part of a head came, not all of it in time: logged as nginx logs
                # one (408, closed without an answer).
                self.state.log_unreadable(self.address, 408)

    def _restart(self, data: bytes, closed: bool) -> h11.Connection:
        """A fresh h11 connection, fed ``data`` (and the end of input if ``closed``)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
        if data:
            conn.receive_data(data)
        if closed:
            conn.receive_data(b"")
        self.conn = self.http.conn = conn
        return conn

    def _head_started(self) -> None:
        """The first bytes of a kept-alive connection's next head: its time starts
        (and a drain lets it finish: the connection is no longer idle)."""
        self.state.idle_clients.discard(self.scope)
        self.deadline.set(
            min(
                self.deadline.due,
                trio.current_time() + self.state.config.timeouts.request_head_s,
            )
        )


# How long a client cut by the end of the shutdown grace period may take its 503.
_LAST_WORD_S: Final = 1.0


async def handle_client(
    stream: trio.abc.Stream, state: ServerState, *, proto: bytes = b"http"
) -> None:
    """Serve one client connection; never raises for client misbehaviour."""
    address = peer_address(stream)
    client = ClientConnection(stream, state, address, proto)
    state.client_connections += 1
    try:
        refusal: tuple[int, str] | None = None
        if state.client_connections > state.config.limits.max_client_connections:
            state.metrics.connections_refused["at_limit"] += 1
            refusal = 503, "the server is at its connection limit"
        elif not state.config.external.allows(address):
            state.metrics.connections_refused["not_allowed"] += 1
            refusal = 403, "your address may not use this tunnel"
        # The head's time counts from the connection's start, whatever comes first:
        # a TLS handshake, a refusal that waits for one, the look at the first byte.
        head_due = client.connected_at + state.config.timeouts.request_head_s
        if isinstance(stream, trio.SSLStream):
            # Before anything is answered in TLS (a refusal too): see `plain_on_tls`.
            plain: bool | None = None
            with trio.move_on_at(head_due):
                plain = await speaks_plain_http(stream)
            if plain is None:
                return  # nothing at all in time: closed as a head that never came
            if plain and refusal is not None:
                await answer_in_plain_http(stream, *refusal)
                return
            if plain:
                state.metrics.client_protocol_errors += 1
                state.log_unreadable(address, 400)
                await answer_in_plain_http(stream, 400, PLAIN_ON_TLS)
                return
        if refusal is not None:
            # Bounded as a head is: over TLS the answer waits for the client's
            # handshake, and a client that never makes one must not keep its place.
            with trio.move_on_at(head_due):
                await client._send_error(*refusal, close=True)
            return
        await client.serve()
        if client.scope.cancelled_caught and client.phase is Phase.RESPONSE:
            await client.last_word(504, "the upstream service took too long")
        elif client.scope.cancelled_caught and client.phase is Phase.BODY:
            if client.body_waits_for_agent:
                await client.last_word(504, "the upstream stopped taking the body")
            else:
                await client.last_word(408, "the request body stalled")
    except BROKEN:
        client.log_cut_short(499)  # the client went away before its answer
    except Exception:
        # Boundary: one client connection's failure must not reach the listener.
        logger.exception("internal error serving %s", address)
        await client.last_word(500, "internal error")
    finally:
        client.deadline.release()
        # Still unlogged, a request was cut from outside (the end of the shutdown
        # grace period) before its response head: its client is told so, if it still
        # reads, and the line says what it was told.
        if client.unlogged is not None and client.conn.our_state is h11.SEND_RESPONSE:
            with trio.CancelScope(shield=True), trio.move_on_after(_LAST_WORD_S):
                await client._send_error(503, "the server is shutting down", close=True)
        client.log_cut_short(503)
        state.client_connections -= 1
        if client.ends_at_close:
            await close_with_reset(stream)
        else:
            # A client that closed first, or a pipe's, leaves nothing owed.
            await close_after_answer(
                stream,
                may_still_send=client.conn.their_state in _MAY_STILL_SEND,
                may_hold_unread=client.conn.their_state is not h11.CLOSED and client.pipe is None,
            )


def _head_size(request: h11.Request) -> int:
    """Bytes of the head as sent, near enough: request line plus ``name: value\r\n`` lines."""
    size = len(request.method) + len(request.target) + 14
    for name, value in request.headers:
        size += len(name) + len(value) + 4
    return size
