"""Forwarding one request to an agent: admission, the head it gets, its body.

Admission sends a request to an agent, holds it for a route whose agents left
lately, or refuses it; one at Max-Forwards 0 is answered here. A request no agent
has seen goes again when its agent turns out to be leaving. The head gets this
hop's forwarding fields, and a body is pumped into the stream while the response
relay (`relay`) waits for the answer: forwarding calls the relay, never the other
way round, so the relay is the class below this one.

`front`'s `ClientConnection` builds on this class.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Final

import h11
import trio

from pvtunnel._errors import ClientGoneError, ErrorCode, LocalProtocolError, TunnelClosedError
from pvtunnel._http import headers as hdr
from pvtunnel._http.admission import Refuse, WaitForRoute, admit, forward_to
from pvtunnel._http.holding import HoldOutcome, hold_answer
from pvtunnel._http.max_forwards import decremented, remaining_forwards
from pvtunnel._http.routing import is_origin_form, split_target
from pvtunnel._trio.answers import Phase
from pvtunnel._trio.groups import first_error
from pvtunnel._trio.hangups import unless_hung_up
from pvtunnel._trio.relay import ResponseRelay
from pvtunnel._trio.sockio import BROKEN
from pvtunnel._wire.heads import RequestHead

if TYPE_CHECKING:
    from pvtunnel._trio.state import AgentSession
    from pvtunnel._trio.stream import Channel

# Admissions of one request whose agent turned out to be leaving (see `_proxy`).
_ATTEMPTS: Final = 3


class RequestForwarding(ResponseRelay):
    """One request to an agent and its body, with the relay of its response beside it."""

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
