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
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TYPE_CHECKING, Final

import h11
import trio

from pvtunnel._errors import ClientGoneError, ErrorCode, LocalProtocolError, TunnelClosedError
from pvtunnel._http import headers as hdr
from pvtunnel._http.admission import Refuse, WaitForRoute, admit, forward_to
from pvtunnel._http.framing import refused_head_status, request_head_problem
from pvtunnel._http.holding import HoldOutcome, hold_answer
from pvtunnel._http.max_forwards import decremented, remaining_forwards
from pvtunnel._http.routing import is_origin_form, split_target
from pvtunnel._trio.answers import Phase
from pvtunnel._trio.closing import close_after_answer, close_with_reset
from pvtunnel._trio.hangups import peer_address, unless_hung_up
from pvtunnel._trio.plain_on_tls import PLAIN_ON_TLS, answer_in_plain_http, speaks_plain_http
from pvtunnel._trio.relay import ResponseRelay
from pvtunnel._trio.sockio import BROKEN
from pvtunnel._trio.tunnel import Channel, first_error
from pvtunnel._wire.heads import RequestHead

if TYPE_CHECKING:
    from pvtunnel._trio.state import AgentSession, ServerState

# The access log's lines come from `ServerState.log_request`; this one says the rest.
logger = logging.getLogger("pvtunnel.server")


# Where the client may still be sending when the server closes: in a request body
# it has not finished, or in whatever followed a request h11 refused.
_MAY_STILL_SEND: Final = frozenset({h11.SEND_BODY, h11.ERROR})
_BLANK: Final = (b"\r", b"\n")


class ClientConnection(ResponseRelay):
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

    async def _proxy(self, request: h11.Request, headers: list[tuple[bytes, bytes]]) -> bool:
        """Proxy one request; False when the connection must be closed afterwards."""
        self.waited_from = None
        self.route, self.request_bytes = None, 0
        chunked = hdr.is_chunked(headers)
        has_body = self.has_body = chunked or bool(hdr.content_length(headers))
        if not has_body:
            # h11 still owes us the EndOfMessage of a bodiless request; it needs no I/O.
            end = self.conn.next_event()
            assert isinstance(end, h11.EndOfMessage), end
        authority, origin_target = split_target(request.target, request.method)
        if authority is None and not is_origin_form(origin_target, request.method):
            return await self._refuse(
                request, 400, "the request target must be a path or an http(s) URL"
            )
        if b"#" in request.target:
            # RFC 9112 section 3.2: a request target has no fragment (clients keep
            # it to themselves); passed on, each hop would read it its own way.
            return await self._refuse(request, 400, "a request target has no fragment (#)")
        host_override = authority
        switch = hdr.protocol_switch(request.method, headers)
        if (
            switch is not None
            and switch.upgrade is not None
            and (request.http_version != b"1.1" or has_body)
        ):
            # RFC 9110 section 7.8: an Upgrade in an HTTP/1.0 request is ignored, and a
            # server may ignore any (one with a body would start its pipe after a body
            # the switch has no room for). The request goes on as an ordinary one:
            # its Upgrade and Connection lines are hop-by-hop, the upstream never sees them.
            switch = None
        if request.method == b"CONNECT":
            if has_body:
                # RFC 9110 section 9.3.6: CONNECT has no content, and what follows
                # its head is the tunnel's; framing fields make it neither.
                return await self._refuse(request, 400, "a CONNECT request has no content")
            authority = request.target  # authority-form: the route is the target
        if authority is None:
            authority = hdr.header_value(headers, b"host")
        # A request no agent has seen is sent again, as admission picks anew, when
        # the agent it went to turned out to be leaving: it went away as the stream
        # opened, or refused the stream (its GOAWAY crossed the request). A request
        # with a body is not: its bytes are on their way to the agent.
        for attempt in range(_ATTEMPTS):
            outcome = await self._forward(
                request,
                headers,
                authority,
                host_override,
                origin_target,
                switch,
                chunked,
                retry=attempt + 1 < _ATTEMPTS,
            )
            if outcome is not None:
                return outcome
        raise AssertionError("the last attempt answers")  # pragma: no cover

    async def _forward(
        self,
        request: h11.Request,
        headers: list[tuple[bytes, bytes]],
        authority: bytes | None,
        host_override: bytes | None,
        origin_target: bytes,
        switch: hdr.Switch | None,
        chunked: bool,
        *,
        retry: bool,
    ) -> bool | None:
        """Admit and forward the request once; None: not forwarded after all, try again
        (only when ``retry``: see `_proxy`)."""
        state = self.state
        config = state.config
        has_body = self.has_body
        limit = config.limits.max_streams_per_agent
        admission = admit(
            authority=authority,
            headers=headers,
            token=config.external.token,
            draining=state.draining,
            router=state.router,
            max_streams_per_agent=limit,
        )
        if isinstance(admission, WaitForRoute):
            # A route whose agents left lately waits for one to come back. The wait
            # has its own bound (`hold_s`, then 503); the upstream's time starts
            # once the request can go to an agent, or its refusal be written.
            self.deadline.set(math.inf)
            waited_from = self.waited_from = trio.current_time()
            held = await self._wait_held(admission.authority)
            self.started = trio.current_time()
            self.deadline.set(self.started + config.timeouts.upstream_response_s)
            if not isinstance(held, tuple):
                # Not forwarded after all: logged with the wait it had, under the
                # departed route it waited for (the one operators watch on a redeploy).
                route = state.held.remembered_name(state.router, admission.authority)
                if held is None:
                    self.unlogged = None
                    state.log_request(request, self.address, 499, 0, None, waited_from, route=route)
                    return False
                status, detail, extra = hold_answer(held, state.held.hold_s)
                return await self._refuse(
                    request, status, detail, extra=extra, route=route, started=waited_from
                )
            admission = forward_to(*held, limit)
        if isinstance(admission, Refuse):
            self.route = admission.route
            return await self._refuse(
                request,
                admission.status,
                admission.reason,
                extra=admission.headers,
                route=admission.route,
            )
        route, session = admission.route, admission.session
        self.route = route
        forwards = remaining_forwards(request.method, headers)
        if forwards == 0:
            return await self._answer_as_final_recipient(request, headers, route)
        forwarded = hdr.request_headers(
            headers,
            client_address=self.address,
            host=host_override,
            proto=self.proto,
            is_chunked=chunked,
            http_version=request.http_version,
        )
        if forwards is not None:
            forwarded = decremented(forwarded, forwards)
        head = RequestHead(
            route=route,
            method=request.method,
            target=origin_target,
            headers=forwarded + (switch.request_headers() if switch is not None else ()),
        )
        try:
            # A switching request keeps its half open: raw bytes may follow the head.
            channel = session.tunnel.open_stream(head, end_stream=not has_body and switch is None)
        except TunnelClosedError:
            if retry:
                return None
            return await self._refuse(
                request, 502, "the agent for this host went away", route=route
            )
        except LocalProtocolError:
            # The head h11 accepted grew on the way (X-Forwarded-Host copies the Host,
            # X-Forwarded-For and Via add to it) past one HEAD frame (protocol.md
            # section 10). Method, target and route cannot be the problem: h11 and
            # the router checked them.
            return await self._refuse(
                request, 431, "request head too large to forward", route=route
            )
        state.stream_started(session)
        self.exchange = (session.client_id, channel.stream_id)
        try:
            if switch is not None and not has_body:
                # Watched for a hang-up until the switch (the pipe then reads the
                # socket itself; see `check_hangup`), as any request waiting is.
                self._watch_hangup(channel)
                return await self._relay_response(channel, request, session.client_id, switch)
            if not has_body:
                # A hang-up while we wait is noticed by `watch_hangups`, which costs no
                # task per request (a task each cost a sixth of the server's CPU).
                self._watch_hangup(channel)
                keep = await self._relay_response(
                    channel, request, session.client_id, retry_refused=retry
                )
                if keep is None:
                    return None  # refused unseen: sent again
                return keep and self.client_error is None
            # The request body is pumped upstream while the response comes. The
            # response timeout starts once the body is sent (`_pump_request_body`);
            # until then each piece must come within `idle_s` of the last.
            self.phase = Phase.BODY
            self.deadline.set(trio.current_time() + state.config.timeouts.idle_s)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_request_body, channel)
                    keep = await self._relay_response(channel, request, session.client_id)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise first_error(group) from None
            return keep and self.client_error is None
        finally:
            state.awaiting.pop(self, None)
            session.tunnel.forget(channel.stream_id)
            if channel.failure is None and session.tunnel.mux.is_stream_open(channel.stream_id):
                channel.reset(ErrorCode.CANCEL, "client request ended")
            state.stream_finished(session)

    async def _wait_held(self, key: str) -> tuple[str, AgentSession] | HoldOutcome | None:
        """Hold the request until an agent serves ``key``; None if the client left
        meanwhile (its place is free now, not after ``hold_s``)."""
        state = self.state
        return await unless_hung_up(
            self.stream, functools.partial(state.held.wait_for_agent, state.router, key)
        )

    async def _pump_request_body(self, channel: Channel) -> None:
        """Client body -> stream. A broken client resets the stream."""
        timeouts = self.state.config.timeouts
        http = self.http
        pending: h11.Event | None = None
        try:
            while True:
                event = pending if pending is not None else await http.next_event()
                pending = None
                if isinstance(event, h11.Data):
                    data, pending = await http.gather(event.data)
                    self.body_waits_for_agent = True
                    await channel.send_data(data)
                    self.body_waits_for_agent = False
                    self.request_bytes += len(data)
                    if self.phase is Phase.BODY:
                        self.deadline.set(trio.current_time() + timeouts.idle_s)
                elif isinstance(event, h11.EndOfMessage):
                    channel.end()
                    if self.phase is Phase.BODY:
                        self.phase = Phase.RESPONSE
                        self.deadline.set(trio.current_time() + timeouts.upstream_response_s)
                    # Nobody reads the socket now: watch it for a hang-up instead.
                    self._watch_hangup(channel)
                    return
                else:
                    raise ClientGoneError(f"unexpected {type(event).__name__} in request body")
        except (h11.RemoteProtocolError, ClientGoneError, *BROKEN) as exc:
            if isinstance(exc, h11.RemoteProtocolError):
                self.state.metrics.client_protocol_errors += 1  # a malformed body
            self.client_error = exc
            channel.reset(ErrorCode.CANCEL, "client request body broke off")
        except TunnelClosedError:
            return  # the response side reports it


# Admissions of one request whose agent turned out to be leaving (see `_proxy`).
_ATTEMPTS: Final = 3


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
