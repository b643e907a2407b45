#!/usr/bin/env python3
"""In-loop microbenchmarks of pvtunnel's own per-request work: no sockets, no wrk.

Each case runs one request's worth of one layer in a tight loop and prints the time
per operation in microseconds, so a change that makes the multiplexer, the frame
codec or the HTTP head handling dearer shows up in seconds, on any machine, long
before it shows in ``run.py``'s figures:

- ``mux``: one request through two `Multiplexer` objects, server and agent, past
  their handshake: the server opens a stream with a GET head, the agent receives it
  and answers with a response head, 1 KiB of body and the end, the server receives
  that and acknowledges the body (credit goes back to the agent);
- ``request head`` / ``response head``: a head with typical fields encoded as a
  HEAD frame, then decoded by a `FrameDecoder` back into the head object;
- ``server http``: what the server does with HTTP per request on a keep-alive
  connection: h11 parses a request, pvtunnel's header rules build the forwarded
  head, and the response head, 1 KiB of body and its end are serialised;
- ``agent http``: the agent's side: the forwarded request built (checked) and
  serialised towards the upstream, and the upstream's response (head, 1 KiB, end)
  parsed.

Usage::

    python benchmarks/micro.py                  # every case, about 10 s
    python benchmarks/micro.py --only mux --repeat 9

Figures are the best of ``--repeat`` runs of about ``--seconds`` each (the best is
the least disturbed by whatever else the machine does), with the median beside
it. Compare them between commits on one machine, not between machines.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from typing import TYPE_CHECKING, Final

import h11

from pvtunnel._config import Route, RouteType
from pvtunnel._http import headers as hdr
from pvtunnel._trio.upstream import upstream_request
from pvtunnel._wire import events as ev, frames as fr
from pvtunnel._wire.heads import RequestHead, ResponseHead
from pvtunnel._wire.mux import Multiplexer
from pvtunnel._wire.states import Role

if TYPE_CHECKING:
    from collections.abc import Callable

BODY: Final = b"b" * 1024
CLIENT_REQUEST: Final = (
    b"GET /api/items?page=2 HTTP/1.1\r\n"
    b"Host: app.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) micro/1.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Cookie: session=4f2a9c1e7b3d5a60; theme=dark\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)
UPSTREAM_HEADERS: Final = (
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Sun, 06 Dec 2026 05:00:00 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"1024"),
    (b"Last-Modified", b"Sat, 05 Dec 2026 12:00:00 GMT"),
    (b"Connection", b"keep-alive"),
    (b"ETag", b'"6931c2a0-400"'),
    (b"Cache-Control", b"no-cache"),
)
UPSTREAM_RESPONSE: Final = (
    b"HTTP/1.1 200 OK\r\n"
    + b"".join(name + b": " + value + b"\r\n" for name, value in UPSTREAM_HEADERS)
    + b"\r\n"
    + BODY
)


def _request_head() -> RequestHead:
    """The head the server forwards for `CLIENT_REQUEST`."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(CLIENT_REQUEST)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    return RequestHead(
        route="app",
        method=request.method,
        target=request.target,
        headers=hdr.request_headers(
            request.headers.raw_items(),
            client_address="127.0.0.1",
            host=None,
            proto=b"http",
            is_chunked=False,
        ),
    )


REQUEST_HEAD: Final = _request_head()
RESPONSE_HEAD: Final = ResponseHead(status=200, reason=b"OK", headers=UPSTREAM_HEADERS)
STREAM_ID: Final = fr.StreamId(1)


# --------------------------------------------------------------------------- cases


def mux_case() -> Callable[[], None]:
    """One request and its 1 KiB response through a server and an agent multiplexer."""
    agent = Multiplexer(Role.AGENT)
    agent.send_hello(client_id="micro", routes=("app",))
    server = Multiplexer(Role.SERVER)
    server.receive_data(agent.data_to_send())
    server.accept()
    agent.receive_data(server.data_to_send())

    def once() -> None:
        stream_id = server.open_stream(REQUEST_HEAD, end_stream=True)
        opened = agent.receive_data(server.data_to_send())
        assert isinstance(opened[0], ev.StreamOpened)
        agent.send_response(stream_id, RESPONSE_HEAD)
        agent.send_data(stream_id, BODY)
        agent.end_stream(stream_id)
        answered = server.receive_data(agent.data_to_send())
        assert isinstance(answered[-1], ev.StreamEnded)
        server.acknowledge_data(stream_id, len(BODY))
        if server.has_data_to_send:  # credit back, in batches of a quarter window
            agent.receive_data(server.data_to_send())

    return once


def head_case(head: RequestHead | ResponseHead) -> Callable[[], None]:
    """A head to a HEAD frame's bytes, and back through a `FrameDecoder`."""
    fields = tuple(head.to_fields())

    def once() -> None:
        (frame,) = fr.FrameDecoder().feed(fr.encode(fr.Head(stream_id=STREAM_ID, fields=fields)))
        assert isinstance(frame, fr.Head)
        if isinstance(head, RequestHead):
            RequestHead.from_fields(frame.fields)
        else:
            ResponseHead.from_fields(frame.fields, is_informational=False)

    return once


def server_http_case() -> Callable[[], None]:
    """The server's HTTP work for one request on a keep-alive client connection."""
    conn = h11.Connection(h11.SERVER)

    def once() -> None:
        conn.receive_data(CLIENT_REQUEST)
        request = conn.next_event()
        assert isinstance(request, h11.Request)
        hdr.request_headers(
            request.headers.raw_items(),
            client_address="127.0.0.1",
            host=None,
            proto=b"http",
            is_chunked=False,
        )
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        response = h11.Response(
            status_code=RESPONSE_HEAD.status,
            headers=hdr.response_headers(RESPONSE_HEAD.headers),
            reason=RESPONSE_HEAD.reason,
        )
        wire = [conn.send(response), conn.send(h11.Data(data=BODY)), conn.send(h11.EndOfMessage())]
        b"".join(piece for piece in wire if piece)  # one write, as the server sends it
        conn.start_next_cycle()

    return once


def agent_http_case() -> Callable[[], None]:
    """The agent's HTTP work for one request on a pooled upstream connection."""
    conn = h11.Connection(h11.CLIENT)
    route = Route(name="app", value="127.0.0.1", port=8080, type=RouteType.IP)

    def once() -> None:
        request, _ = upstream_request(REQUEST_HEAD, route)
        conn.send(request)
        conn.send(h11.EndOfMessage())
        conn.receive_data(UPSTREAM_RESPONSE)
        response = conn.next_event()
        assert isinstance(response, h11.Response)
        ResponseHead(
            status=response.status_code,
            reason=response.reason,
            headers=tuple(response.headers.raw_items()),
        )
        data = conn.next_event()
        assert isinstance(data, h11.Data)
        assert isinstance(conn.next_event(), h11.EndOfMessage)
        conn.start_next_cycle()

    return once


CASES: Final[dict[str, Callable[[], Callable[[], None]]]] = {
    "mux": mux_case,
    "request head": lambda: head_case(REQUEST_HEAD),
    "response head": lambda: head_case(RESPONSE_HEAD),
    "server http": server_http_case,
    "agent http": agent_http_case,
}


# --------------------------------------------------------------------------- timing


def time_loop(once: Callable[[], None], count: int) -> float:
    """Seconds for ``count`` calls, with the garbage collector paused (as timeit does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(count):
            once()
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def calibrate(once: Callable[[], None], seconds: float) -> int:
    """How many calls take about ``seconds`` (doubling from 10 calls)."""
    count = 10
    while (elapsed := time_loop(once, count)) < seconds / 4:
        count *= 2
    return max(1, round(count * seconds / elapsed))


def measure(name: str, seconds: float, repeat: int) -> tuple[float, float, int]:
    """Best and median microseconds per operation over ``repeat`` runs, and the count."""
    once = CASES[name]()
    count = calibrate(once, seconds)
    runs = [time_loop(once, count) / count * 1e6 for _ in range(repeat)]
    return min(runs), statistics.median(runs), count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", action="append", choices=tuple(CASES), help="run this case (repeatable)"
    )
    parser.add_argument("--seconds", type=float, default=0.4, help="length of each run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case")
    args = parser.parse_args(argv)
    if not 0.01 <= args.seconds <= 10 or not 1 <= args.repeat <= 50:
        parser.error("--seconds must be in [0.01, 10] and --repeat in [1, 50]")
    print(f"python {sys.version.split()[0]}; best and median of {args.repeat} runs\n")
    print("| case | us/op best | us/op median | ops per run |")
    print("|---|---:|---:|---:|")
    for name in args.only or CASES:
        best, middle, count = measure(name, args.seconds, args.repeat)
        print(f"| {name} | {best:.2f} | {middle:.2f} | {count:,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
