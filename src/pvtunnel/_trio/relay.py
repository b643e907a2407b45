"""The response relay: what comes back on a tunnel stream, written to its client.

A final head after any 1xx, then the body in as few writes as what has arrived
allows, or, after a protocol switch, a pipe; each exchange is logged once, however
it ends. Once a head has gone out, a failure can no longer be answered (the
client would read a spliced response): the relay cuts instead, and this is where
that rule is kept. The client is watched meanwhile (`check_hangup`, called by
`hangups.watch_hangups`), so one that leaves or stops reading holds neither its
stream nor the agent connection's window until the upstream ends.

The forwarding of a request (`forwarding`) builds on this class.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Final

import h11
import trio

from pvtunnel._errors import ClientGoneError, ErrorCode, StreamResetError, TunnelClosedError
from pvtunnel._http import headers as hdr
from pvtunnel._http.errors import status_for_reset
from pvtunnel._http.framing import response_head_problem
from pvtunnel._trio.answers import ClientAnswers, Phase
from pvtunnel._trio.dates import http_date
from pvtunnel._trio.hangups import has_hung_up
from pvtunnel._trio.pipe import PipeBytes, run_pipe
from pvtunnel._trio.sockio import BROKEN
from pvtunnel._trio.stream import END, Channel
from pvtunnel._wire.heads import ResponseHead

logger = logging.getLogger("pvtunnel.server")

FLUSH_BYTES: Final = 65536
# A response write to a client that takes nothing for `idle_s` ends the exchange (as
# nginx's send_timeout does); sooner, after this, when the agent connection is short
# of credit. A client that does not read keeps its stream's window (2 MiB by default)
# held in the server, and a few such clients hold the connection's whole window,
# which every other stream of that agent needs to move at all.
STALLED_WHEN_SHORT_S: Final = 5.0

_BODILESS: Final = frozenset({204, 304})

# What the client is told of a stream reset before its response head, by its code.
_RESET_DETAIL: Final = {
    ErrorCode.UPSTREAM_CONNECT_FAILED: "the agent could not reach the upstream service",
    ErrorCode.UPSTREAM_PROTOCOL_ERROR: "the upstream service sent an invalid response",
    ErrorCode.UPSTREAM_CLOSED: "the upstream service closed the connection without an answer",
    ErrorCode.REFUSED_STREAM: "the agent refused the request (at its limit or leaving)",
    ErrorCode.UPSTREAM_TIMEOUT: "the upstream service took too long",
    ErrorCode.UNKNOWN_ROUTE: "the agent does not serve this host",
    ErrorCode.LENGTH_REQUIRED: (
        "the upstream service speaks HTTP/1.0 and takes no body of unknown length "
        "this big: send it with a Content-Length"
    ),
}


class ResponseRelay(ClientAnswers):
    """A tunnel stream's response to the client, and the watch on the client meanwhile."""

    async def _relay_response(
        self,
        channel: Channel,
        request: h11.Request,
        agent: str,
        switch: hdr.Switch | None = None,
        *,
        retry_refused: bool = False,
    ) -> bool | None:
        """Stream -> client. False when the client connection must be closed; None
        when the agent refused the stream unseen and ``retry_refused`` says the caller
        sends the request again (nothing is answered or logged then)."""
        started = self.started
        try:
            head = await self._receive_final_head(channel, switch)
            self.phase = Phase.PROXYING
        except StreamResetError as exc:
            if retry_refused and exc.code is ErrorCode.REFUSED_STREAM and self.client_error is None:
                return None
            if isinstance(self.client_error, ClientGoneError):
                # Nobody is left to answer; logged as nginx does, 499 "client closed".
                self._log_proxied(request, 499, 0, agent, started, channel)
                return False
            if self.client_error is not None:
                await self._send_error(400, "malformed request body", close=True)
                self._log_proxied(request, 400, 0, agent, started, channel)
                return False
            status = status_for_reset(exc.code)
            await self._send_error(status, _RESET_DETAIL.get(exc.code, "the upstream failed"))
            self._log_proxied(request, status, 0, agent, started, channel)
            return True
        except TunnelClosedError:
            await self._send_error(502, "the agent went away before answering")
            self._log_proxied(request, 502, 0, agent, started, channel)
            return True
        if switch is not None:
            if switch.accepts(head.status):
                self.deadline.set(math.inf)
                await self._switch(channel, request, agent, started, head, switch)
                return False
            # Refused: the client sends nothing more on this request. A stream reset
            # by now (an upstream that cut its answer short, the client's hang-up) is
            # for the relay below to meet, as for any response: what came goes out.
            with contextlib.suppress(TunnelClosedError):
                channel.end()
        sent = 0
        http = self.http
        try:
            # `_receive_final_head` ran `response_head_problem`, which checks every
            # field as h11's constructor would (and more): ``_parsed`` skips the
            # second pass over the same bytes. h11 still lower-cases the names and
            # checks Content-Length, Transfer-Encoding and the status.
            headers = hdr.response_headers(head.headers, status=head.status, date=http_date())
            if self.conn.their_state is h11.SEND_BODY or self.state.closing_connections:
                # Answered before the request's body is all read (the upstream did
                # not wait for it), or the server is shutting down: the connection
                # ends after this, and says so (a client retries elsewhere).
                headers.append((b"connection", b"close"))
            # h11 frames a body without a length by the close for an HTTP/1.0 client
            # (chunked for HTTP/1.1); a response without a body ends at its head.
            self.ends_at_close = (
                self.conn.their_http_version == b"1.0"
                and self.method != b"HEAD"
                and head.status not in _BODILESS
                and hdr.content_length(headers) is None
            )
            http.queue(
                h11.Response(
                    status_code=head.status, headers=headers, reason=head.reason, _parsed=True
                )
            )
            # Write what has arrived in one send; wait (flushed) only when nothing has.
            # Credit goes back once bytes are handed to the socket, so what we hold
            # stays within the stream window plus one flush. Writes are bounded by
            # `check_hangup`, not the time limit; a wait for more of the body by
            # `idle_s`, as nginx's proxy_read_timeout bounds one: an upstream that
            # stops mid-body would otherwise hold the client and a stream slot forever.
            idle_s = self.state.config.timeouts.idle_s
            if self.has_body:
                # Watched from now on whatever its body does, for a client that
                # stops reading (bodiless requests are watched already).
                self._watch_hangup(channel)
            while True:
                item = channel.receive_nowait()
                if item is None:
                    self.deadline.set(math.inf)
                    await self._write()
                    self.deadline.set(trio.current_time() + idle_s)
                    self.waits_for_body = True
                    item = await channel.receive()
                    self.waits_for_body = False
                if item is END:
                    http.queue(h11.EndOfMessage())
                    self.deadline.set(math.inf)
                    await self._write()
                    # Written whole only now: h11 took the end when it was queued.
                    self.ends_at_close = False
                    break
                assert isinstance(item, bytes)
                # Counted once queued for the client: a write cut short (a client that
                # stops reading, a shutdown) logs what was on its way.
                sent += len(item)
                if http.queue(h11.Data(data=item)) >= FLUSH_BYTES:
                    self.deadline.set(math.inf)
                    await self._write()
                channel.consume(len(item))
        except trio.Cancelled:
            if self.waits_for_body and self.scope.cancel_called:
                logger.info(
                    "response to %s cut: its body stalled for %.1fs after %d bytes",
                    self.address,
                    idle_s,
                    sent,
                )
            # Cut by `check_hangup`, the body's deadline or the end of the shutdown
            # grace period: logged with what went out.
            self._log_proxied(request, head.status, sent, agent, started, channel)
            raise
        except (TunnelClosedError, h11.LocalProtocolError, *BROKEN) as exc:
            if not isinstance(exc, BROKEN):
                # What arrived before the reset, or before a body that broke its own
                # framing (more than its Content-Length, a body on a 204), still goes
                # out, so the client sees a truncated response rather than none at all.
                with contextlib.suppress(*BROKEN):
                    await http.flush()
            http.discard()
            logger.info("response to %s aborted after %d body bytes: %s", self.address, sent, exc)
            self._log_proxied(request, head.status, sent, agent, started, channel)
            return False
        self._log_proxied(request, head.status, sent, agent, started, channel)
        return True

    async def _receive_final_head(
        self, channel: Channel, switch: hdr.Switch | None
    ) -> ResponseHead:
        # RFC 9110 section 15.2: a proxy forwards every 1xx (a 100 the client asked
        # for or not, a second one, 103 Early Hints), except to an HTTP/1.0 client,
        # and a client must read any of them before its final answer.
        while True:
            item = await channel.receive()
            if not isinstance(item, ResponseHead):
                raise StreamResetError(ErrorCode.UPSTREAM_PROTOCOL_ERROR, "no response head")
            problem = response_head_problem(item.reason, item.headers)
            if item.status == 101 and (switch is None or not switch.accepts(101)):
                # A final 1xx has no HTTP/1.1 form but a protocol switch's.
                problem = "101 Switching Protocols to a request that asked for no upgrade"
            elif (
                item.status == 101
                and problem is None
                and not hdr.header_value(item.headers, b"upgrade")
            ):
                # RFC 9110 section 7.8: a 101 names the protocol it switches to; a
                # WebSocket client must fail a handshake without it (RFC 6455).
                problem = "101 Switching Protocols without an Upgrade field"
            if problem is not None:
                # Written as it came, the head could smuggle a second response to the
                # client (CRLF in the reason): a 502 instead, and the stream is reset.
                logger.warning(
                    "stream %d: invalid response head from the agent: %s",
                    channel.stream_id,
                    problem,
                )
                raise StreamResetError(ErrorCode.UPSTREAM_PROTOCOL_ERROR, problem)
            if not item.is_informational:
                return item
            if self.conn.their_http_version != b"1.1":
                continue
            await self._send_head(
                h11.InformationalResponse(
                    status_code=item.status,
                    headers=hdr.response_headers(item.headers, status=item.status),
                    reason=item.reason,
                )
            )

    async def _switch(
        self,
        channel: Channel,
        request: h11.Request,
        agent: str,
        started: float,
        head: ResponseHead,
        switch: hdr.Switch,
    ) -> None:
        """Answer the switch, then pipe raw bytes until both sides are done."""
        event: h11.InformationalResponse | h11.Response
        if switch.upgrade is not None:
            headers = hdr.response_headers(head.headers, status=head.status)
            upgrade = hdr.header_value(head.headers, b"upgrade") or switch.upgrade
            headers += [(b"Connection", b"upgrade"), (b"Upgrade", upgrade)]
            event = h11.InformationalResponse(status_code=101, headers=headers, reason=head.reason)
        else:  # CONNECT's 2xx: a final response, which carries a Date
            headers = hdr.response_headers(head.headers, status=head.status, date=http_date())
            event = h11.Response(status_code=head.status, headers=headers, reason=head.reason)
        try:
            await self._send_head(event)
        except BROKEN:
            channel.reset(ErrorCode.CANCEL, "the client went away")
            self._log_proxied(request, 499, 0, agent, started, channel)
            return
        except trio.Cancelled:
            # Cut before the pipe began: the client took none of the head
            # (`check_hangup`), or the shutdown's grace period ended.
            self._log_proxied(request, head.status, 0, agent, started, channel)
            raise
        initial, _ = self.conn.trailing_data
        counts = self.pipe = PipeBytes()
        # Its writes are watched, as a response's are, for a client that stops reading
        # (`check_hangup`), until the pipe ends.
        self._watch_hangup(channel)
        try:
            await run_pipe(self.stream, channel, bytes(initial), counts, watch=self)
        finally:
            # Logged when the pipe ends (as nginx logs an upgraded connection), with
            # what crossed it each way and its whole life as the duration.
            self.request_bytes = counts.from_socket
            self._log_proxied(request, head.status, counts.to_socket, agent, started, channel)

    def _log_proxied(
        self,
        request: h11.Request,
        status: int,
        sent: int,
        agent: str,
        started: float,
        channel: Channel,
    ) -> None:
        self.unlogged = None
        self.state.log_request(
            request,
            self.address,
            status,
            sent,
            agent,
            started,
            route=self.route,
            bytes_in=self.request_bytes,
            stream_id=channel.stream_id,
            waited_from=self.waited_from,
        )

    async def _send_head(self, event: h11.InformationalResponse | h11.Response) -> None:
        """Write a head alone (a 1xx, a switch's answer), watched as `_write` is: the
        deadline may be off by then, and a client that takes none of it is cut."""
        self.http.queue(event)
        await self._write()

    async def _write(self) -> None:
        """Write what is queued to the client, watched by `check_hangup` meanwhile."""
        self.writing = True
        try:
            await self.http.flush()
        finally:
            self.writing = False
        self.writes += 1

    def _watch_hangup(self, channel: Channel) -> None:
        """Have `watch_hangups` look at this client until the exchange ends."""
        state = self.state
        if not state.awaiting:
            state.awaiting_started.unpark_all()
        state.awaiting[self] = channel

    async def check_hangup(self, channel: Channel) -> bool:
        """Reset the stream if the client closed its connection, or stopped reading
        its response; True once settled.

        Settled means the exchange is over (the stream is reset, and a client that
        stopped reading is disconnected). A client that sent data (a pipelined
        request, left for the keep-alive loop) stays watched: it may still close
        behind that data, and a stream it left must not hold an agent's stream slot
        until the upstream ends.
        """
        if self.writing and self._stopped_reading(channel):
            # A response's write or a pipe's (it counts its writes here too).
            logger.info(
                "%s to %s cut: the client took nothing for %.1fs",
                "response" if self.pipe is None else "pipe",
                self.address,
                trio.current_time() - self._writes_seen_at,
            )
            self.stopped_reading = True
            channel.reset(ErrorCode.CANCEL, "the client stopped reading")
            self.scope.cancel()
            return True
        if self.pipe is not None:
            # A half-close is the pipe's own business: it passes it on.
            return False
        if not await has_hung_up(self.stream):
            return False
        self.client_error = ClientGoneError("the client closed its connection")
        channel.reset(ErrorCode.CANCEL, "the client went away")
        return True

    def _stopped_reading(self, channel: Channel) -> bool:
        """Whether the write under way has taken nothing for too long (see
        `STALLED_WHEN_SHORT_S`)."""
        now = trio.current_time()
        if self.writes != self._writes_seen:
            self._writes_seen, self._writes_seen_at = self.writes, now
            return False
        limit = self.state.config.timeouts.idle_s
        if channel.connection_short():
            limit = min(limit, STALLED_WHEN_SHORT_S)
        return now - self._writes_seen_at >= limit
