"""A recording HTTP/1.1 upstream for integration tests, written with h11.

Every request it receives is appended to ``requests`` (head and whole body), so
tests can assert on exactly what crossed the tunnel. Paths choose behaviour:

- ``/status/NNN``: answer NNN with a short body (none for 1xx/204/304).
- ``/chunked``: answer with a chunked body of the pieces in ``?parts=N`` (default 3).
- ``/echo``: answer the request body back with Content-Length.
- ``/bytes/N``: answer N bytes of a repeating pattern.
- ``/hold``: wait until ``release`` is set, then answer.
- ``/watch``: like ``/hold``, but record a hang-up (``hangups``, ``hung_up``) if the
  tunnel closes the connection first.
- ``/never``: never answer (the tunnel must time out).
- ``/close``: send a partial body, then drop the connection.
- anything else: 200 with a body naming the upstream and the target.
"""

from __future__ import annotations

from typing import Final

import attrs
import h11
import trio

from pvtunnel._trio.demo import read_request
from tests.integration.listen import serve_on_loopback

PATTERN: Final = bytes(range(256)) * 256


@attrs.frozen(kw_only=True)
class Recorded:
    """A request as the upstream received it: ``headers`` with names lower-cased (as
    h11 reports them, for lookups), ``names`` each as it was written on the wire."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    names: tuple[bytes, ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)


class RecordingUpstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Recorded] = []
        self.connections = 0
        self.release = trio.Event()
        self.holding = 0
        self.hold_started = trio.Event()
        self.hangups = 0
        self.hung_up = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_on_loopback(self._connection, task_status=task_status)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)

        async def send(*events: h11.Event) -> None:
            await stream.send_all(b"".join(conn.send(e) or b"" for e in events))

        try:
            while (received := await read_request(stream, conn)) is not None:
                request, body = received
                self.requests.append(
                    Recorded(
                        method=request.method,
                        target=request.target,
                        headers=tuple(request.headers),
                        names=tuple(name for name, _ in request.headers.raw_items()),
                        body=body,
                    )
                )
                await self._answer(request, body, send, stream)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError:
            # A request head came (we owe it an answer) and its sender left mid-body.
            if conn.their_state is h11.ERROR and conn.our_state is h11.SEND_RESPONSE:
                self._hang_up()
            return
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    def _hang_up(self) -> None:
        self.hangups += 1
        self.hung_up.set()

    async def _answer(
        self, request: h11.Request, body: bytes, send: object, stream: trio.SocketStream
    ) -> None:
        assert callable(send)
        path = request.target.split(b"?", 1)[0]
        query = request.target.split(b"?", 1)[1] if b"?" in request.target else b""
        if path.startswith(b"/status/"):
            status = int(path.rsplit(b"/", 1)[1])
            payload = b"" if status in (204, 304) else b"status %d\n" % status
            headers = [(b"content-length", b"%d" % len(payload))] if payload else []
            await send(
                h11.Response(status_code=status, headers=headers),
                *([h11.Data(data=payload)] if payload else []),
                h11.EndOfMessage(),
            )
            return
        if path == b"/chunked":
            parts = int(query.split(b"=", 1)[1]) if query.startswith(b"parts=") else 3
            await send(h11.Response(status_code=200, headers=[(b"transfer-encoding", b"chunked")]))
            for index in range(parts):
                await send(h11.Data(data=b"part %d;" % index))
            await send(h11.EndOfMessage())
            return
        if path == b"/echo":
            await send(
                h11.Response(
                    status_code=200,
                    headers=[
                        (b"content-length", b"%d" % len(body)),
                        (b"x-upstream", self.name.encode()),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
            return
        if path.startswith(b"/bytes/"):
            size = int(path.rsplit(b"/", 1)[1])
            await send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % size)]))
            sent = 0
            while sent < size:
                chunk = PATTERN[: min(len(PATTERN), size - sent)]
                await send(h11.Data(data=chunk))
                sent += len(chunk)
            await send(h11.EndOfMessage())
            return
        if path == b"/watch":
            # Hold until released, but notice (and record) the tunnel hanging up.
            self.holding += 1
            self.hold_started.set()
            async with trio.open_nursery() as nursery:

                async def released() -> None:
                    await self.release.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(released)
                if await stream.receive_some(1) == b"":
                    self._hang_up()
                    return
                nursery.cancel_scope.cancel()
        if path == b"/hold":
            self.holding += 1
            self.hold_started.set()
            await self.release.wait()
        if path == b"/trickle":
            # The head and part of the body at once; the rest once released.
            await send(
                h11.Response(status_code=200, headers=[(b"content-length", b"10")]),
                h11.Data(data=b"first"),
            )
            self.holding += 1
            self.hold_started.set()
            await self.release.wait()
            await send(h11.Data(data=b"-rest"), h11.EndOfMessage())
            return
        if path.startswith(b"/sleep/"):
            # Answered after that many milliseconds: a request that stays in flight.
            await trio.sleep(int(path.rsplit(b"/", 1)[1]) / 1000)
        if path == b"/never":
            await trio.sleep_forever()
        if path == b"/close":
            await send(
                h11.Response(status_code=200, headers=[(b"content-length", b"1000")]),
                h11.Data(data=b"partial"),
            )
            await stream.aclose()
            return
        payload = b"%s saw %s %s" % (self.name.encode(), request.method, request.target)
        await send(
            h11.Response(
                status_code=200,
                headers=[
                    (b"content-length", b"%d" % len(payload)),
                    (b"x-upstream", self.name.encode()),
                ],
            ),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        )
