"""A client connection's state, and the answers the server writes of its own.

The response relay (`relay`), the forwarding of a request (`forwarding`) and the
keep-alive loop (`front`'s `ClientConnection`) build on this class, each on the
one before, so that all the parts of a client connection read one state (the h11
connection, the one cancel scope and its deadline, the phase that says what the
deadline meant, the current request's log facts) and answer one way: an error, a
refusal instead of proxying or the last word after a deadline goes out only if
no response has started, and a request whose body is not all read ends the
connection after it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

import h11
import trio

from pvtunnel._http.errors import error_body, reason_phrase
from pvtunnel._http.max_forwards import final_answer
from pvtunnel._trio.dates import http_date
from pvtunnel._trio.http11 import H11Stream
from pvtunnel._trio.sockio import BROKEN

if TYPE_CHECKING:
    from pvtunnel._trio.pipe import PipeBytes
    from pvtunnel._trio.state import ServerState

_TEXT: Final = (b"content-type", b"text/plain; charset=utf-8")


class Phase(enum.Enum):
    HEAD = "head"  # waiting for (the rest of) a request head
    BODY = "body"  # the request body is flowing, no response head yet
    PROXYING = "proxying"
    RESPONSE = "response"  # waiting for the upstream's response head


class ClientAnswers:
    """The state every part of a client connection reads, and the answers of its own."""

    def __init__(
        self, stream: trio.abc.Stream, state: ServerState, address: str, proto: bytes
    ) -> None:
        self.stream = stream
        self.state = state
        self.address = address
        self.proto = proto
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=state.config.limits.max_request_head_bytes
        )
        self.http = H11Stream(self.conn, stream)
        self.scope = trio.CancelScope()
        self.deadline = state.deadlines.deadline(self.scope)
        # The first head's `request_head_s` counts from here (see `handle_client`).
        self.connected_at = trio.current_time()
        self.phase = Phase.HEAD
        self.client_error: Exception | None = None
        # The current request's method: an answer to HEAD has a head only.
        self.method: bytes | None = None
        # The current request's route and request body bytes forwarded, for its log line.
        self.route: str | None = None
        self.request_bytes = 0
        # Whether the current request has a body (a refusal then closes the connection).
        self.has_body = False
        # While the body flows: whether we wait for the agent's credit (else the client).
        self.body_waits_for_agent = False
        # When the current request's head was read (trio clock), or, if it waited
        # for an agent, when that wait ended, for its log line and its deadline.
        self.started = 0.0
        # When the current request began to wait for an agent, if it did.
        self.waited_from: float | None = None
        # The current request until its log line is written, and the agent and
        # stream it went to: a deadline that ends it early still logs it.
        self.unlogged: h11.Request | None = None
        self.exchange: tuple[str, int] | None = None
        # h11 caps only incomplete heads; a whole head that arrived at once is checked here.
        self.max_head_bytes = state.config.limits.max_request_head_bytes
        # Writes to the client (a response's, or a pipe's: see `pipe.WriteWatch`): one
        # under way, how many ended, and what `check_hangup` last saw of them (a count
        # that does not move while a write is under way is a client that stopped
        # reading).
        self.writing = False
        self.writes = 0
        self._writes_seen = -1
        self._writes_seen_at = 0.0
        self.stopped_reading = False
        # While a response waits for more of its body from the agent.
        self.waits_for_body = False
        # While the connection is a pipe (after a protocol switch): what it moved.
        self.pipe: PipeBytes | None = None
        # Whether a response that ends where the connection ends (no Content-Length
        # to an HTTP/1.0 client) is under way and not all written: cut short, its
        # connection is closed with a reset, or the cut would look like its end.
        self.ends_at_close = False

    async def _send_error(
        self,
        status: int,
        detail: str,
        *,
        close: bool = False,
        extra: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """A short text/plain answer, if the response has not started yet."""
        await self._answer(status, error_body(status, detail), (_TEXT, *extra), close=close)

    async def _answer(
        self,
        status: int,
        body: bytes,
        fields: tuple[tuple[bytes, bytes], ...],
        *,
        close: bool = False,
    ) -> None:
        """A response of the server's own, if the response has not started yet."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        # A request whose body is not all read ends the connection after the
        # answer (its framing cannot be found again), and so does any answer while
        # the server shuts down: the answer says so.
        close = close or self.conn.their_state is h11.SEND_BODY or self.state.closing_connections
        headers = [*fields, (b"content-length", b"%d" % len(body)), (b"date", http_date())]
        if close:
            headers.append((b"connection", b"close"))
        http = self.http
        try:
            http.queue(
                h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
            )
            if self.method != b"HEAD":  # h11 refuses body bytes there (and nothing went out)
                http.queue(h11.Data(data=body))
            http.queue(h11.EndOfMessage())
            await http.flush()
        except (*BROKEN, h11.LocalProtocolError):
            http.discard()
            return

    async def _refuse(
        self,
        request: h11.Request,
        status: int,
        detail: str,
        *,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        route: str | None = None,
        started: float | None = None,
    ) -> bool:
        """Answer with an error instead of proxying (see `_answer_instead`)."""
        body = error_body(status, detail)
        return await self._answer_instead(
            request, status, body, (_TEXT, *extra), route=route, logged=0, started=started
        )

    async def _answer_instead(
        self,
        request: h11.Request,
        status: int,
        body: bytes,
        fields: tuple[tuple[bytes, bytes], ...],
        *,
        route: str | None,
        logged: int,
        started: float | None = None,
    ) -> bool:
        """Answer without proxying, and log it with ``logged`` body bytes (and the time
        since ``started``, for a request that waited); keep the connection (True)
        only if the request has no body."""
        # Reading an unread body to keep the connection is not worth it: close instead.
        await self._answer(status, body, fields, close=self.has_body)
        self.unlogged = None
        self.state.log_request(request, self.address, status, logged, None, started, route=route)
        return not self.has_body

    async def _answer_as_final_recipient(
        self, request: h11.Request, headers: list[tuple[bytes, bytes]], route: str
    ) -> bool:
        """An OPTIONS or TRACE at Max-Forwards 0 is answered here, not forwarded."""
        fields, body = final_answer(request.method, request.target, request.http_version, headers)
        return await self._answer_instead(request, 200, body, fields, route=route, logged=len(body))

    async def last_word(self, status: int, detail: str) -> None:
        """Answer a request its deadline (or an internal error) ended, close, and log it.

        The answer is written outside the connection's scope, which has ended: it
        gets `idle_s` of its own, the longest a client may take none of what it is
        sent, so a client that stopped reading (its buffers full of earlier
        answers) cannot hold the connection, and its place, forever.
        """
        if not self.stopped_reading:  # cut for taking nothing: it would take none of this
            with trio.move_on_after(self.state.config.timeouts.idle_s):
                await self._send_error(status, detail, close=True)
        self.log_cut_short(status)

    def log_cut_short(self, status: int) -> None:
        """Log the current request, if a deadline or an internal error ended it
        before its log line was written, with the status it was answered with."""
        request, self.unlogged = self.unlogged, None
        if request is None:
            return
        agent, stream_id = self.exchange or (None, None)
        self.state.log_request(
            request,
            self.address,
            status,
            0,
            agent,
            self.started if agent is not None else None,
            route=self.route,
            bytes_in=self.request_bytes,
            stream_id=stream_id,
            waited_from=self.waited_from if agent is not None else None,
        )
