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
        while True:
            request: h11.Request | None = None
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if conn.they_are_waiting_for_100_continue:
                        await stream.send_all(
                            conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                        )
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            assert request is not None
            if request.target.startswith(b"/echo"):
                payload = bytes(body)
            else:
                host = dict(request.headers).get(b"host", b"?")
                payload = GREETING + b"You asked for %s%s through the tunnel.\n" % (
                    host,
                    request.target,
                )
            response = h11.Response(
                status_code=200,
                headers=[
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(payload)),
                ],
            )
            await stream.send_all(
                (conn.send(response) or b"")
                + (conn.send(h11.Data(data=payload)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()
