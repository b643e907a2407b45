"""The inspector's page and API on the admin listener (``/inspect``, ``/inspect/api/``).

The admin listener reads the request head and hands inspector requests here,
outside its own short deadline: the event stream stays open as long as the page
does, and a replay lasts as long as the upstream takes (bounded by
`REPLAY_DEADLINE_S`). Everything else answers at once. Which request may do what
is decided by `pvtunnel._http.inspect`; the API is described in ``docs/inspector.md``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import json
import logging
from typing import TYPE_CHECKING, Final

import attrs
import h11
import trio

from pvtunnel._errors import EditError, ReplayRefusedError
from pvtunnel._http import inspect as rules
from pvtunnel._http.admin import JSON, AdminResponse
from pvtunnel._inspect.edits import parse_edits
from pvtunnel._trio.hangups import hung_up_when_readable, unless_hung_up
from pvtunnel._trio.sockio import BROKEN

if TYPE_CHECKING:
    from pvtunnel._config import Secret
    from pvtunnel._inspect.capture import Event
    from pvtunnel._inspect.edits import Edits
    from pvtunnel._trio.http11 import H11Stream
    from pvtunnel._trio.inspector import Inspector

logger = logging.getLogger("pvtunnel.admin")

# Reading a replay's edits: a small JSON document from a local page or script.
BODY_DEADLINE_S: Final = 10.0
MAX_EDITS_BYTES: Final = 8 * 1024 * 1024
# Events queued for one page, in count and in bytes; a page this far behind is sent
# away (its browser reconnects at once and reloads the list) rather than held in
# memory. They are queued as the text they go out as (one copy, however many
# pages listen): an exchange the ring has let go is not kept alive by a queue.
EVENT_QUEUE: Final = 256
EVENT_QUEUE_BYTES: Final = 1024 * 1024
MAX_EVENT_STREAMS: Final = 16
# What a replay refused for the limit is told to wait, in seconds: most replays
# take far less than their deadline.
RETRY_REPLAY_S: Final = b"1"
# A comment line this often, so a page that went away is noticed and let go.
KEEPALIVE_S: Final = 15.0
# The reason (`pvtunnel._metrics.REPLAY_REFUSAL_REASONS`) of a replay answered with
# this status. Read off the answer rather than counted where each is made: one
# place sees every answer, and counts each once.
_REFUSAL_REASONS: Final = {
    429: "busy",
    404: "not_found",
    400: "bad_edits",
    408: "bad_edits",
    413: "bad_edits",
    409: "not_replayable",
}


async def answer_inspect(
    http: H11Stream[trio.abc.Stream],
    request: h11.Request,
    inspector: Inspector | None,
    token: Secret | None,
) -> AdminResponse | None:
    """Serve one inspector request.

    Returns:
        The answer for the admin listener to send, with `rules.SECURITY_HEADERS`
        (whatever it is: a refusal too), or None when the event stream was
        served here (the connection is then done).
    """
    answer = await _answer(http, request, inspector, token)
    if answer is None:
        return None
    return attrs.evolve(answer, headers=(*answer.headers, *rules.SECURITY_HEADERS))


async def _answer(
    http: H11Stream[trio.abc.Stream],
    request: h11.Request,
    inspector: Inspector | None,
    token: Secret | None,
) -> AdminResponse | None:
    headers = list(request.headers)
    refusal = rules.check_access(token, request.method, headers)
    if refusal is not None:
        return refusal
    if inspector is None:
        return AdminResponse(
            status=404,
            body=b"404 Not Found: the inspector is off (pvtunnel agent --inspect turns it on)\n",
        )
    decision = rules.route(request.method, request.target)
    if isinstance(decision, AdminResponse):
        return decision
    capture = inspector.capture
    match decision.action:
        case rules.Action.ASSET:
            assert decision.asset is not None
            name, content_type = decision.asset
            return AdminResponse(status=200, body=_asset(name), content_type=content_type)
        case rules.Action.LIST:
            return _json([exchange.summary() for exchange in capture.newest_first()])
        case rules.Action.ONE:
            assert decision.exchange_id is not None
            exchange = capture.get(decision.exchange_id)
            if exchange is None:
                return _no_such_exchange()
            return _json(exchange.detail())
        case rules.Action.REPLAY:
            assert decision.exchange_id is not None
            answer = await _replay_within_limit(http, inspector, decision.exchange_id)
            reason = None if answer is None else _REFUSAL_REASONS.get(answer.status)
            if reason is not None:
                inspector.metrics.replays_refused[reason] += 1
            return answer
        case rules.Action.EVENTS:
            if inspector.event_streams >= MAX_EVENT_STREAMS:
                return AdminResponse(status=503, body=b"503: too many inspector pages open\n")
            inspector.event_streams += 1
            try:
                await _serve_events(http, inspector)
            finally:
                inspector.event_streams -= 1
            return None


@functools.cache
def _asset(name: str) -> bytes:
    return importlib.resources.files("pvtunnel._inspect").joinpath("static", name).read_bytes()


def _json(
    document: object, status: int = 200, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> AdminResponse:
    body = json.dumps(document, separators=(",", ":")).encode() + b"\n"
    return AdminResponse(status=status, body=body, content_type=JSON, headers=headers)


def _error(
    status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> AdminResponse:
    return _json({"error": message}, status, headers)


async def _replay_within_limit(
    http: H11Stream[trio.abc.Stream], inspector: Inspector, exchange_id: int
) -> AdminResponse | None:
    if inspector.replays >= inspector.max_replays:
        held_back = inspector.busy_log.allow(trio.current_time())
        if held_back is not None:
            _log_too_many_replays(exchange_id, inspector.max_replays, held_back)
        return _too_many_replays(inspector.max_replays)
    # Held from before the edits are read: they may be 8 MiB each.
    inspector.replays += 1
    try:
        return await _replay(http, inspector, exchange_id)
    finally:
        inspector.replays -= 1


def _too_many_replays(limit: int) -> AdminResponse:
    # Refused at once, not queued: a queue would hold what the limit is there to bound.
    message = f"too many replays at once (at most {limit}): try again when one has ended"
    return _error(429, message, ((b"retry-after", RETRY_REPLAY_S),))


def _log_too_many_replays(exchange_id: int, limit: int, held_back: int) -> None:
    # A warning: a limit that is hit may be set too low for how the inspector is
    # used. Only numbers are named: the edits are not read yet, and may hold secrets.
    more = f"; {held_back} more refused since the last such line" if held_back else ""
    logger.warning(
        "inspector replay of request %d refused: max_replays (%d) already in flight%s",
        exchange_id,
        limit,
        more,
    )


def _no_such_exchange() -> AdminResponse:
    return _error(404, "no such request (it may have left the inspector's buffer)")


async def _read_body(http: H11Stream[trio.abc.Stream]) -> bytes | None:
    """The request body, or None when it is larger than `MAX_EDITS_BYTES`."""
    body = bytearray()
    while True:
        event = await http.next_event()
        if isinstance(event, h11.EndOfMessage):
            return bytes(body)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_EDITS_BYTES:
                return None
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")


async def _read_edits(http: H11Stream[trio.abc.Stream]) -> Edits | AdminResponse:
    """The replay's edits, or the answer when there are none to use.

    Only the edits outlive this: the JSON they came in (up to `MAX_EDITS_BYTES`)
    is not held while the replay waits for its answer.
    """
    with trio.move_on_after(BODY_DEADLINE_S) as scope:
        data = await _read_body(http)
    if scope.cancelled_caught:
        return _error(408, "the edits did not arrive in time")
    if data is None:
        return _error(413, f"the edits are larger than {MAX_EDITS_BYTES} bytes")
    try:
        return parse_edits(data)
    except EditError as exc:
        return _error(400, str(exc))


async def _replay(
    http: H11Stream[trio.abc.Stream], inspector: Inspector, exchange_id: int
) -> AdminResponse | None:
    edits = await _read_edits(http)
    if isinstance(edits, AdminResponse):
        return edits
    try:
        exchange = await unless_hung_up(
            http.stream, functools.partial(inspector.replay, exchange_id, edits)
        )
    except KeyError:
        return _no_such_exchange()
    except EditError as exc:
        return _error(400, str(exc))
    except ReplayRefusedError as exc:
        return _error(409, str(exc))
    if exchange is None:
        logger.info("inspector replay of request %d cut: its client went away", exchange_id)
        return None
    logger.info(
        "inspector replayed request %d as %d: %s", exchange_id, exchange.id, exchange.status
    )
    return _json(exchange.detail())


async def _serve_events(http: H11Stream[trio.abc.Stream], inspector: Inspector) -> None:
    """The server-sent event stream: ``exchange`` (started, changed, ended) and ``removed``."""
    send_channel, receive_channel = trio.open_memory_channel[bytes](EVENT_QUEUE)
    queued = 0

    def listen(event: Event) -> None:
        nonlocal queued
        message = _event_message(inspector, event)
        try:
            if queued + len(message) > EVENT_QUEUE_BYTES:
                raise trio.WouldBlock
            send_channel.send_nowait(message)
            queued += len(message)
        except trio.WouldBlock:
            send_channel.close()  # too far behind: end the stream after what is queued
        except trio.ClosedResourceError:
            pass

    unsubscribe = inspector.capture.subscribe(listen)
    try:
        await http.send(
            h11.Response(
                status_code=200,
                headers=[
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"connection", b"close"),
                    *rules.SECURITY_HEADERS,
                ],
            )
        )
        # `retry`: how soon the browser comes back after the stream ends.
        await http.send(h11.Data(data=b"retry: 1000\n: pvtunnel inspector\n\n"))
        async with trio.open_nursery() as nursery:
            # A page that closes is let go at once, not at the next write; its place
            # (one of `MAX_EVENT_STREAMS`) is free for the next page.
            nursery.start_soon(_end_when_gone, http.stream, nursery.cancel_scope)
            # Caught in here: out of the nursery's body it would come wrapped in a group.
            with contextlib.suppress(*BROKEN):
                async with receive_channel:
                    while True:
                        message = b": keepalive\n\n"
                        with trio.move_on_after(KEEPALIVE_S):
                            try:
                                message = await receive_channel.receive()
                            except trio.EndOfChannel:
                                break
                            queued -= len(message)
                        # A page that stops reading is let go, not waited for.
                        with trio.move_on_after(KEEPALIVE_S) as scope:
                            await http.send(h11.Data(data=message))
                        if scope.cancelled_caught:
                            break
            nursery.cancel_scope.cancel()
    except BROKEN:
        return
    finally:
        unsubscribe()
        send_channel.close()


async def _end_when_gone(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    # A page sends nothing after its request: readable means it closed (or sent
    # something it should not have, which is let be).
    if await hung_up_when_readable(stream):
        scope.cancel()


def _event_message(inspector: Inspector, event: Event) -> bytes:
    """The event as the stream sends it, rendered once for all the pages listening."""
    last, message = inspector.last_event
    if last is not event:
        kind, exchange = event
        payload = exchange.summary() if kind == "exchange" else {"id": exchange.id}
        data = json.dumps(payload, separators=(",", ":"))
        message = f"event: {kind}\ndata: {data}\n\n".encode()
        inspector.last_event = (event, message)
    return message
