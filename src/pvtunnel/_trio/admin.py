"""The admin listener: ``/metrics``, ``/live``, ``/ready`` and ``/status`` over HTTP/1.1.

A separate port from the tunnel's, loopback by default, so that
probes and scrapes never compete with proxied traffic and the figures are not
exposed where clients connect. One request per connection, then close: scrapers
and probes ask every few seconds, and a short-lived connection under one deadline
needs no idle-timeout bookkeeping. What to answer is decided by
`pvtunnel._http.admin.respond`, over the `AdminSource` it is given: the listener
knows that protocol only, and the server (`pvtunnel._trio.server.ServerAdmin`) and
the agent (`pvtunnel._trio.agent_admin.AgentAdmin`) each bring their own.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Final

import h11
import trio

from pvtunnel._http.admin import AdminResponse, AdminSource, respond
from pvtunnel._http.inspect import is_inspect_path
from pvtunnel._trio.closing import close_after_answer
from pvtunnel._trio.http11 import H11Stream
from pvtunnel._trio.inspect_http import answer_inspect
from pvtunnel._trio.listeners import open_listeners, serve_listeners
from pvtunnel._trio.sockio import BROKEN

if TYPE_CHECKING:
    from pvtunnel._config import AdminConfig, Secret
    from pvtunnel._trio.inspector import Inspector

logger = logging.getLogger("pvtunnel.admin")

# A probe or a scrape is one small request: a client still busy after this is stuck.
CONNECTION_DEADLINE_S: Final = 10.0
MAX_HEAD_BYTES: Final = 16384


async def serve_admin(
    config: AdminConfig,
    source: AdminSource,
    inspector: Inspector | None = None,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints until cancelled (startable: ``started`` gets the address).

    Args:
        config: Where to listen, and the token ``/metrics`` and ``/status`` require.
        source: The server or agent whose figures to show.
        inspector: The agent's request inspector, served at ``/inspect``.

    Raises:
        OSError: The port cannot be bound (taken, or no such address).
    """
    listeners = await open_listeners("admin", config.port, config.host)
    sockname = listeners[0].socket.getsockname()
    address = (str(sockname[0]), int(sockname[1]))
    handler = functools.partial(
        _serve_connection, source=source, inspector=inspector, token=config.token
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(serve_listeners, handler, listeners, what="admin", log=logger)
        )
        logger.info("admin listener on %s:%d", *address)
        task_status.started(address)


async def _serve_connection(
    stream: trio.abc.Stream,
    *,
    source: AdminSource,
    inspector: Inspector | None,
    token: Secret | None,
) -> None:
    http = H11Stream(h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES), stream)
    inspect: h11.Request | None = None
    try:
        with trio.move_on_after(CONNECTION_DEADLINE_S):
            try:
                event = await http.next_event()
            except h11.RemoteProtocolError as exc:
                answer = AdminResponse(status=exc.error_status_hint, body=b"malformed request\n")
                await _send(http, answer, head_only=False)
                return
            if isinstance(event, h11.Request):
                if is_inspect_path(event.target):
                    inspect = event
                else:
                    answer = respond(
                        source,
                        token,
                        event.method,
                        event.target,
                        event.headers,
                        inspector=inspector is not None,
                    )
                    await _send(http, answer, head_only=event.method == b"HEAD")
        if inspect is not None:
            # Served past the deadline: its event stream lasts as long as the page.
            answer_or_none = await answer_inspect(http, inspect, inspector, token)
            if answer_or_none is not None:
                with trio.move_on_after(CONNECTION_DEADLINE_S):
                    await _send(http, answer_or_none, head_only=inspect.method == b"HEAD")
    except (*BROKEN, h11.RemoteProtocolError):
        pass
    except Exception:
        # Boundary: a failing figure must not take the listener (or its owner) down.
        logger.exception("admin request failed")
        await _send(http, AdminResponse(status=500, body=b"internal error\n"), head_only=False)
    finally:
        # An answer sent before the request's body was read (a refusal, a replay
        # past the limit) would be destroyed by the reset of a close over unread
        # bytes, those here now or those of a body still on its way.
        await close_after_answer(stream, may_still_send=_may_still_send(http))


def _may_still_send(http: H11Stream[trio.abc.Stream]) -> bool:
    """Whether the client may still be sending its request (its body, or a head
    that broke the rules). What was read already is passed over: a bodiless
    request's end is there without a read, since nothing here asks for it."""
    try:
        while http.conn.their_state is h11.SEND_BODY:
            if http.buffered_event() is None:
                return True
    except h11.RemoteProtocolError:
        return True
    return http.conn.their_state is h11.ERROR


async def _send(
    http: H11Stream[trio.abc.Stream], answer: AdminResponse, *, head_only: bool
) -> None:
    if http.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", b"%d" % len(answer.body)),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
        *answer.headers,
    ]
    try:
        await http.send(h11.Response(status_code=answer.status, headers=headers))
        if not head_only:
            await http.send(h11.Data(data=answer.body))
        await http.send(h11.EndOfMessage())
    except (*BROKEN, h11.LocalProtocolError):
        return
