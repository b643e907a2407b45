"""A tiny upstream for `pvtunnel demo`: enough to see the tunnel work end to end.

``GET /`` answers a greeting that names the request's Host and path; any request
to ``/echo`` answers with its own body. Plain h11, one task per connection.
"""

from __future__ import annotations

import functools
from typing import Final

import h11
import trio

GREETING: Final = b"Hello from the private service behind pvtunnel!\n"


async def serve_demo_upstream(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve on 127.0.0.1, any free port, until cancelled; ``started`` gets the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(trio.serve_listeners, _serve_connection, listeners))
        task_status.started(port)


async def _serve_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while (received := await read_request(stream, conn)) is not None:
            request, body = received
            if request.target.startswith(b"/echo"):
                payload = body
            else:
                host = dict(request.headers).get(b"host", b"?")
                payload = GREETING + b"You asked for %s%s through the tunnel.\n" % (
                    host,
                    request.target,
                )
            await send_response(
                stream, conn, payload, headers=[(b"content-type", b"text/plain; charset=utf-8")]
            )
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def read_request(
    stream: trio.abc.Stream, conn: h11.Connection
) -> tuple[h11.Request, bytes] | None:
    """The client's next request and its whole body; None once the client is done.

    Answers ``Expect: 100-continue`` on the way. Shared by the small upstreams of the
    demo, the tests and the benchmarks, which all want a request at a time.

    Raises:
        h11.RemoteProtocolError: the client broke HTTP/1.1 (or left mid-request).
    """
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                continue_ = h11.InformationalResponse(status_code=100, headers=[])
                await stream.send_all(conn.send(continue_) or b"")
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        else:  # ConnectionClosed, or a pipelined request while ours is unanswered
            return None


async def send_response(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    payload: bytes,
    *,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A whole response with a Content-Length, in one write."""
    head = h11.Response(
        status_code=status,
        headers=[*(headers or []), (b"content-length", b"%d" % len(payload))],
    )
    await stream.send_all(
        (conn.send(head) or b"")
        + (conn.send(h11.Data(data=payload)) or b"")
        + (conn.send(h11.EndOfMessage()) or b"")
    )
